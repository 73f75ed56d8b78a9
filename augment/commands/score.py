"""`augment score POOL [POOL ...]`: alignment, diversity and distribution gap of pools.

Writes per pool: scores/<scorer-slug>/rows.parquet and items.parquet (side tables keyed by
row_id / item), scores.json (summaries with bootstrap CIs) and scores.png; with several pools
prints one comparison table (`--table FILE` writes it as Markdown). The source defaults to the
one each pool.json records, when that path exists here. Definitions: see
`augment.scoring.pool_scores`.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from augment.arguments import byte_size, confidence_level, file_path, non_negative_int, positive_int
from augment.errors import ModelLoadError, PoolError, SourceError, first_line
from augment.source_formats import TABLE_KEYS


def _gap_sample_size(text: str) -> int:
    """Embeddings per side for the gap: a Frechet distance or an unbiased MMD needs two at least."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 2 (a distance between distributions needs two samples)")
    return value


def register(subparsers) -> None:
    from augment.commands.common import add_progress_arguments, add_source_arguments
    from augment.loading import add_workers_argument

    parser = subparsers.add_parser(
        "score", allow_abbrev=False, help="score pools: alignment, diversity, distribution gap",
        description=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pools", nargs="+", metavar="POOL", help="pool folders (or Hub dataset ids)")
    parser.add_argument("--scorer", default="default",
                        help="embedding model: open_clip name (with --pretrained), tiny-clip, local folder, "
                             "or a transformers CLIP (Hub id / folder, optionally prefixed 'transformers:') "
                             "(default: the registry's default CLIP, ViT-B-16 openai)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag (or checkpoint file) for --scorer")
    add_source_arguments(parser, required=False)
    parser.add_argument("--device", default=None, help="where the scorer runs: cpu, cuda, cuda:1, mps ... "
                        "(default: cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="scorer batch size (default 64)")
    parser.add_argument("--bootstrap", type=non_negative_int, default=1000,
                        help="bootstrap resamples for the CIs of means (default 1000; 0: no interval)")
    parser.add_argument("--gap-bootstrap", type=non_negative_int, default=200,
                        help="bootstrap resamples for the gap CIs (default 200; 0: no interval)")
    parser.add_argument("--confidence", type=confidence_level, default=0.95, help="CI level, in (0, 1) (default 0.95)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap and the gap samples (default 0)")
    parser.add_argument("--gap-samples", type=_gap_sample_size, default=2000, help="embeddings per side for the gap (uniform sample; default 2000)")
    parser.add_argument("--chunk-rows", type=positive_int, default=1024, help="pool rows read and embedded at a time (default 1024)")
    parser.add_argument("--chunk-bytes", type=byte_size, default="1G", metavar="SIZE",
                        help="... and fewer rows once their stored images reach SIZE (512M, 2G; default 1G): "
                             "bounds memory for pools of large photos")
    parser.add_argument("--cache-dir", default=None,
                        help="embedding cache folder (share it between pools of one source; default POOL/scores/<slug>/embeddings)")
    parser.add_argument("--table", default=None, type=file_path, metavar="FILE", help="write the comparison table (Markdown) here")
    parser.add_argument("--no-plot", action="store_true", help="skip scores.png")
    add_progress_arguments(parser)
    parser.add_argument("--force", action="store_true",
                        help="score again even when the pool, source, scorer and settings are those of its stored scores")
    parser.add_argument("--allow-pool-mismatch", action="store_true",
                        help="score a pool against a source other than the one it was made from (another fingerprint, "
                             "e.g. a superset holding its items); refused otherwise, as train refuses it")
    add_workers_argument(parser)
    # SIGTERM (kill, timeout, a scheduler) stops it as Ctrl-C does: one line, exit 143
    parser.set_defaults(func=run, sigterm_interrupts=True,
                        interrupted="the embeddings computed so far are kept in the cache; re-run the same command "
                                    "to continue")


# where a source read with the --skip-bad its pool recorded lists the skipped records
SOURCE_SKIP_REPORT = "source.skipped.json"


def refuse_replacing_another_file(table: str | None) -> None:
    """--table replaces an earlier comparison table only (as --skip-report an earlier report): naming a
    pool's pool.json or a source's JSON by mistake destroyed it. A folder the table cannot be written
    into is refused too, before the scoring (it failed after all of it)."""
    from augment.atomic import output_folder_problem
    from augment.errors import MatPlusError
    from augment.scoring.report import is_comparison_table

    if table and Path(table).exists() and not is_comparison_table(Path(table)):
        raise MatPlusError(f"--table {table}: is an existing file that is not an earlier comparison table; the table "
                           "would replace it: name a new file")
    problem = output_folder_problem(Path(table).parent) if table else None
    if problem:
        raise MatPlusError(f"--table {table}: its folder {Path(table).parent}: {problem}")


def run(args) -> int:
    from augment.pool import load_pool
    from augment.scoring.pool_scores import ScoreSettings, inputs_keys, reuse_stored, score_and_save, source_root
    from augment.scoring.scorers import scorer_identity
    from augment.atomic import atomic_write_text, remove_stale_temporaries
    from augment.pool import write_card_of_pool_there
    from augment.scoring.report import comparison_table
    from augment.scoring.store import SCORES_DIR, scoring_lock

    settings = ScoreSettings(
        bootstrap=args.bootstrap, gap_bootstrap=args.gap_bootstrap, confidence=args.confidence,
        seed=args.seed, gap_samples=args.gap_samples, chunk_rows=args.chunk_rows, chunk_bytes=args.chunk_bytes,
    )
    from augment.devices import resolve_device

    # one line naming --device, not "cannot load CLIP model" (the scorer loads later)
    args.device = resolve_device(args.device)
    refuse_replacing_another_file(args.table)  # before anything is read: a pool.json or a source named by mistake
    if args.cache_dir and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():  # was "File exists"
        raise PoolError(f"--cache-dir {args.cache_dir}: is a file, not a folder: name a folder for the embedding cache")
    pools = [load_pool(path) for path in args.pools]  # fail on a bad pool before loading a model
    for pool in pools:  # temporaries of a killed score run
        remove_stale_temporaries(pool.path / SCORES_DIR)
        remove_stale_temporaries(pool.path, recursive=False)
    if args.cache_dir:
        remove_stale_temporaries(args.cache_dir)
    from augment.sources import image_files_fingerprint, source_fingerprint

    # every pool's source before the scorer: a wrong path stops in one line before a model loads
    sources: dict[tuple, object] = {}
    fingerprints: dict[tuple, str] = {}
    image_files: dict[tuple, str] = {}  # each source's image files' identity, read once for all its pools
    planned = []  # (pool, its source's key, the source's name)
    for pool in pools:
        source_name = source_of(pool, args.source)
        reading = source_reading(pool, args)
        key = (source_name, *reading.values())
        if key not in sources:
            sources[key] = read_source_named(args, source_name, reading)
            fingerprints[key] = source_fingerprint(sources[key])
            image_files[key] = image_files_fingerprint(sources[key], root=source_root(source_name))
        refuse_other_source(pool, fingerprints[key], source_name, args.allow_pool_mismatch)
        planned.append((pool, key, source_name))
    # pools whose stored scores still hold need no model: with a scorer known by its weights file
    # (a tiny twin, a folder), they are served before it loads, and it loads only if one needs it
    identity = None if args.force else scorer_identity(args.scorer, args.pretrained)
    scorer = None
    entries = []
    shared_names = {name for name, count in Counter(pool.name for pool in pools).items() if count > 1}
    for pool, key, source_name in planned:
        source = sources[key]
        entry = None
        # held from the look-up to the write: a second run on this pool waits, then finds these scores
        with scoring_lock(pool.path):
            if identity is not None:
                inputs = inputs_keys(pool, fingerprints[key], identity, settings, image_files[key])
                entry = reuse_stored(pool, identity, inputs, plot=not args.no_plot, source_name=source_name)
            if entry is None:
                scorer = scorer or load_scorer_or_fail(args)
                # with a known identity the stored scores were looked up just above: not again inside
                try:
                    entry = score_and_save(
                        pool, source, scorer, settings, cache_dir=args.cache_dir, source_name=source_name,
                        plot=not args.no_plot, progress=not args.no_progress, force=args.force or identity is not None,
                        workers=args.workers,
                        source_fp=fingerprints[key], source_images=image_files[key],
                    )
                except SourceError as exc:  # an image that does not decode: which of the pools scored it is in
                    raise SourceError(f"{pool.path}: {first_line(exc)}") from None
        # pools made before the card existed: load_dataset(POOL) keeps working (the card of the pool there now)
        write_card_of_pool_there(pool.path)
        if pool.name in shared_names:  # copies of one pool: told apart by their folders
            entry = {**entry, "pool": {**entry["pool"], "name": str(pool.path)}}
        entries.append(entry)
        print(one_line_summary(entry))
    if len(entries) > 1 or args.table:
        table = comparison_table(entries)
        print(table)
        if args.table:
            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.table, table)
            print(f"table: {args.table}")
    return 0


def load_scorer_or_fail(args):
    """The scorer, or one line when --scorer names something that is not a CLIP (a BERT folder...)."""
    import contextlib
    import io
    import logging

    from augment.scoring.scorers import load_scorer

    quiet = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # a failed load prints a long load report first; the error says enough
    try:
        with contextlib.redirect_stdout(quiet):
            return load_scorer(args.scorer, pretrained=args.pretrained, device=args.device, batch_size=args.batch_size)
    except (ModelLoadError, PoolError):
        raise
    except Exception as exc:  # RuntimeError, ValueError, KeyError, OSError from the model libraries
        raise ModelLoadError(f"--scorer {args.scorer}: cannot be loaded as a CLIP scorer (open_clip or transformers "
                             f"CLIPModel): {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        logging.disable(previous)


def source_reading(pool, args) -> dict:
    """--image-root, --source-split, the CSV/TSV column options and --skip-bad as given, else as the
    pool recorded them (when the pool's own source is used). A --skip-bad taken from the record
    writes its report where --skip-report names, else into the pool's folder (SOURCE_SKIP_REPORT),
    not the working folder."""
    use_recorded = not args.source
    reading = {key: getattr(args, key, None) or (pool.meta.get(key) if use_recorded else None)
               for key in ("image_root", "source_split", *TABLE_KEYS)}
    if use_recorded and pool.meta.get("skip_bad") is True and not args.skip_bad:
        # a --skip-report given is the user's (it was replaced without a word); the pool's folder otherwise
        reading.update(skip_bad=True,
                       skip_report=getattr(args, "skip_report", None) or str(pool.path / SOURCE_SKIP_REPORT))
    return reading


def source_of(pool, given: str | None) -> str:
    """--source, else the pool's recorded source when it is a path that exists here."""
    if given:
        return given
    recorded = pool.meta.get("source")
    if recorded and Path(recorded).exists():
        return str(recorded)
    raise PoolError(f"{pool.path}: pass --source (the pool records {recorded!r}, which is not a path here)")


def refuse_other_source(pool, current: str, source_name: str, allowed: bool) -> None:
    """A source with another fingerprint (`current`) than the pool was made from: refused before
    anything is scored (the scorer's stored entry would be replaced by scores against other
    images: sample worlds, for one, share image ids), unless `allowed` (a superset still holding
    the pool's items: the scoring checks the ids), then a warning."""
    recorded = pool.meta.get("source_fingerprint")
    if recorded and recorded != current:
        message = (f"{pool.path}: the source {source_name} differs from the one the pool was made from "
                   f"(fingerprint {current} vs {recorded})")
        if not allowed:
            raise PoolError(message + "; pass --allow-pool-mismatch to score it against this one anyway")
        print(f"warning: {message}; scored anyway (--allow-pool-mismatch)", file=sys.stderr)


def read_source_named(args, source_name: str, reading: dict | None = None):
    from augment.commands.common import read_source

    source_args = argparse.Namespace(**{**vars(args), **(reading or {}), "source": source_name, "out": None})
    dataset, _ = read_source(source_args)
    return dataset


def one_line_summary(entry: dict) -> str:
    alignment = entry["alignment"]["all"]
    parts = [f"{entry['pool']['name']}: {entry['pool']['num_rows']} rows, alignment {alignment['mean']:.3f}"]
    for modality, stats in entry["diversity"].items():
        parts.append(f"{modality} diversity {stats['mean_pairwise_distance']['mean']:.3f} (Vendi {stats['vendi']['mean']:.2f})")
    for modality, gap in entry["gap"].items():
        if gap.get("frechet"):
            parts.append(f"{modality} gap FD {gap['frechet']['value']:.3f} MMD² {gap['mmd2']['value']:.4f}")
    if entry.get("reused"):
        parts.append(f"unchanged since {entry['created']}: stored scores reused (--force recomputes)")
    else:
        encoded = entry["encoding"]["encoded"]
        parts.append(f"encoded {encoded['text']} texts + {encoded['image']} images")
    return "; ".join(parts)
