"""`augment score` / `augment select` after a review: tables of one run never read with another
run's entry, --seed refused before any work, --scorer NAME never picked by slug order, scores.png
following the latest scorer, one writer per pool's scores, a shared embedding cache kept readable."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from augment.errors import PoolError

N_ITEMS = 6


@pytest.fixture(scope="module")
def source(sample_world_dir):
    from augment.sources import load_source

    dataset, _ = load_source(str(sample_world_dir))
    return dataset


@pytest.fixture(scope="module")
def tiny_scorer():
    from augment.scoring.scorers import load_scorer

    return load_scorer("tiny-clip", batch_size=128)


@pytest.fixture(scope="module")
def train_items(source):
    from datasets import Image

    undecoded = source.cast_column("image", Image(decode=False))
    train = [i for i, split in enumerate(source["split"]) if split == "train"][:N_ITEMS]
    return list(undecoded.select(train))


def text_pool(path: Path, train_items, source_dir: Path):
    """A pool of one new caption per item (another item's caption: alignments spread out)."""
    from augment.pool import load_pool, write_pool

    rows = [{
        "row_id": f"t:{item['image_id']}:0:{k}", "source_image_id": item["image_id"], "source_caption_index": 0,
        "split": item["split"], "modality": "text", "image": None,
        "caption": train_items[(position + k) % len(train_items)]["captions"][0], "method": "t", "seed": k,
        "provenance": "{}",
    } for position, item in enumerate(train_items) for k in range(2)]
    write_pool(path, rows, {"method": "t", "source": str(source_dir)})
    return load_pool(path)


def settings(**overrides):
    from augment.scoring.pool_scores import ScoreSettings

    return ScoreSettings(**{"bootstrap": 20, "gap_bootstrap": 2, **overrides})


def table_files(pool) -> dict[str, bytes]:
    """Every file under POOL/scores/<slug>/ but the embedding cache, by path."""
    folder = pool.path / "scores"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "embeddings" not in p.parts and p.name != ".lock"}


def cli(capsys, *argv) -> tuple[int, str]:
    from augment.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ 1. tables of another run


def test_an_error_while_summarising_leaves_the_stored_tables(tmp_path, source, train_items, tiny_scorer,
                                                             sample_world_dir, monkeypatch):
    """The tables were renamed into place before the summary (the gap bootstrap, ~12 s at real
    widths) was computed: a Ctrl-C there left new tables beside the old entry."""
    from augment.scoring import pool_scores
    from augment.select import SelectFilters, select_rows

    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    pool_scores.score_and_save(pool, source, tiny_scorer, settings(), plot=False)
    before = table_files(pool)
    selected_before, _ = select_rows(pool, SelectFilters(min_alignment=0.0))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pool_scores, "summarise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool_scores.score_and_save(pool, source, tiny_scorer, settings(seed=5), plot=False)
    assert table_files(pool) == before  # no temporaries left either
    selected_after, _ = select_rows(pool, SelectFilters(min_alignment=0.0))
    np.testing.assert_array_equal(selected_after, selected_before)


def test_select_and_the_plot_refuse_tables_written_by_another_run(tmp_path, source, train_items, tiny_scorer,
                                                                 sample_world_dir, capsys):
    """A run killed after renaming its tables, before writing its entry (or any other run's tables):
    select filtered the stored entry's pool on the other run's alignments, silently."""
    from augment.scoring import pool_scores, report
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    entry = pool_scores.score_and_save(pool, source, tiny_scorer, settings(), plot=False)
    scores_json = (pool.path / "scores.json").read_bytes()
    embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path / "cache", tiny_scorer.id))
    pool_scores.score_pool(pool, source, embedder, settings(seed=3), inputs_key="another run's inputs")
    assert (pool.path / "scores.json").read_bytes() == scores_json

    code, err = cli(capsys, "select", pool.path, "--out", tmp_path / "out", "--min-alignment", "0")
    [line] = err.splitlines()
    assert code == 2 and "Traceback" not in err
    assert line.startswith(f"error: {pool.path}: the stored scores of scorer tiny-clip ({entry['scorer']['slug']}) "
                           "do not match their side table scores/"), line
    assert line.endswith(f"run `augment score {pool.path} --scorer tiny-clip` again"), line
    assert not (tmp_path / "out").exists()
    with pytest.raises(PoolError, match="do not match their side table"):
        report.plot_scores(pool.path, entry)
    # scored again: the entry and its tables agree, select reads them
    entry = pool_scores.score_and_save(pool, source, tiny_scorer, settings(), plot=False)
    assert cli(capsys, "select", pool.path, "--out", tmp_path / "out", "--min-alignment", "-1")[0] == 0
    # tables written before they recorded their run's key (2026-11-29 .. 12-02) are read as their entry's
    import pyarrow.parquet as pq

    for table in entry["tables"].values():
        path = pool.path / table
        stored = pq.read_table(path)
        metadata = {k: v for k, v in stored.schema.metadata.items() if k != b"inputs_key"}
        pq.write_table(stored.replace_schema_metadata(metadata), path)
    assert cli(capsys, "select", pool.path, "--out", tmp_path / "out2", "--min-alignment", "-1")[0] == 0


# ------------------------------------------------------------------ 2. --seed


def test_a_negative_seed_is_refused_before_anything_is_scored(tmp_path, train_items, sample_world_dir, capsys):
    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    code, err = cli(capsys, "score", pool.path, "--scorer", "tiny-clip", "--seed", "-1", "--no-progress",
                    "--cache-dir", tmp_path / "cache")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "augment score: error: argument --seed: -1: must not be negative"
    assert not (pool.path / "scores").exists() and not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ 3. select --scorer NAME


def scores_document(pool_path: Path, latest: str, entries: dict[str, tuple[str, str]]) -> None:
    """scores.json with one entry per slug: (scorer name, created)."""
    document = {"scores_version": 1, "latest": latest, "scorers": {
        slug: {"scorer": {"name": name, "id": f"id-{slug}", "slug": slug}, "pool": {}, "created": created,
               "tables": {"rows": f"scores/{slug}/rows.parquet"}}
        for slug, (name, created) in entries.items()}}
    pool_path.mkdir(parents=True, exist_ok=True)
    (pool_path / "scores.json").write_text(json.dumps(document, sort_keys=True))


def test_a_scorer_name_of_several_entries_is_the_latest_or_refused(tmp_path):
    """A model folder retrained in place is another slug under the same name: the slug sorting
    last was taken (scores.json is written with sorted keys), the old weights' scores."""
    from augment.scoring.store import find_scorer_entry

    pool = tmp_path / "pool"
    old, new = "myclip-ffff0000", "myclip-0000ffff"  # the old weights' slug sorts last
    entries = {old: ("/models/myclip", "2024-01-01T00:00:00+00:00"), new: ("/models/myclip", "2024-06-01T00:00:00+00:00"),
               "tiny-clip-1": ("tiny-clip", "2024-07-01T00:00:00+00:00")}
    scores_document(pool, new, entries)
    assert find_scorer_entry(pool, "/models/myclip")["scorer"]["slug"] == new
    assert find_scorer_entry(pool, old)["scorer"]["slug"] == old  # a slug picks one
    assert find_scorer_entry(pool, "tiny-clip")["scorer"]["slug"] == "tiny-clip-1"
    scores_document(pool, "tiny-clip-1", entries)  # another scorer is the latest: which weights is unknowable
    with pytest.raises(PoolError) as refused:
        find_scorer_entry(pool, "/models/myclip")
    message = str(refused.value)
    assert "\n" not in message and f"{new} (created 2024-06-01" in message and f"{old} (created 2024-01-01" in message
    assert "pass one of these slugs as --scorer" in message


# ------------------------------------------------------------------ 4. scores.png


def test_the_plot_is_drawn_again_when_stored_scores_become_the_latest(tmp_path, source, train_items, tiny_scorer,
                                                                      sample_world_dir, monkeypatch):
    from augment.scoring import pool_scores, report, store

    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    entry = pool_scores.score_and_save(pool, source, tiny_scorer, settings(), plot=True)
    assert (pool.path / store.SCORES_PLOT).is_file()
    other = {**entry, "scorer": {**entry["scorer"], "name": "other", "slug": "other-1"}}
    report.update_scores_json(pool.path, other)  # as another scorer's run does (its plot drawn)
    drawn = []
    monkeypatch.setattr(report, "plot_scores", lambda path, shown: drawn.append(shown["scorer"]["slug"]))
    again = pool_scores.score_and_save(pool, source, tiny_scorer, settings(), plot=True)
    assert again["reused"] is True and store.read_scores_json(pool.path)["latest"] == entry["scorer"]["slug"]
    assert drawn == [entry["scorer"]["slug"]]
    pool_scores.score_and_save(pool, source, tiny_scorer, settings(), plot=True)  # already the latest: not redrawn
    assert drawn == [entry["scorer"]["slug"]]


# ------------------------------------------------------------------ 5. one writer per pool


def test_a_scores_json_write_waits_for_the_run_holding_the_pool(tmp_path, capsys):
    """scores.json was read-modify-written unlocked: two runs on one pool could lose an entry."""
    from augment.scoring import report, store

    pool = tmp_path / "pool"
    pool.mkdir()
    lock = store.scores_lock_path(pool)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
                               "print('held', flush=True); sys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        entry = {"scorer": {"name": "tiny-clip", "id": "id", "slug": "tiny-clip-1"}, "pool": {}, "tables": {"rows": "r"}}
        writer = threading.Thread(target=report.update_scores_json, args=(pool, entry))
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive() and not (pool / "scores.json").exists()
    finally:
        holder.stdin.close()  # the holder exits: its lock goes with it
        holder.wait(timeout=30)
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert json.loads((pool / "scores.json").read_text())["latest"] == "tiny-clip-1"
    err = capsys.readouterr().err
    assert "another `augment score` is writing its scores" in err and "waiting for it to finish" in err


# ------------------------------------------------------------------ 6. a shared embedding cache


def test_a_cache_file_that_cannot_be_opened_is_kept_and_computed_again(tmp_path, train_items, tiny_scorer, caplog,
                                                                       monkeypatch):
    """A PermissionError (another user's file in a shared --cache-dir) was taken for damage and
    the valid file deleted."""
    import safetensors

    from augment.scoring.embeddings import EmbeddingCache, Embedder

    images = [item["image"] for item in train_items[:3]]
    first = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id)).images(images)
    [theirs] = tmp_path.glob("image-*.safetensors")
    content = theirs.read_bytes()

    def refusing(opener):
        def opened(path, *args, **kwargs):
            if Path(path) == theirs:
                raise PermissionError(13, "Permission denied", str(path))
            return opener(path, *args, **kwargs)
        return opened

    # when the folder's index is read
    with monkeypatch.context() as patched, caplog.at_level("WARNING", logger="augment.scoring.embeddings"):
        patched.setattr(safetensors, "safe_open", refusing(safetensors.safe_open))
        embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id))
        np.testing.assert_allclose(embedder.images(images), first, atol=1e-6)
    assert embedder.encoded["image"] == 3 and theirs.read_bytes() == content
    assert f"embedding cache file {theirs} cannot be read (" in caplog.text and "kept" in caplog.text
    # when its embeddings are read (indexed, then unreadable)
    for other in set(tmp_path.glob("image-*.safetensors")) - {theirs}:
        other.unlink()
    cache = EmbeddingCache(tmp_path, tiny_scorer.id)
    with monkeypatch.context() as patched:
        patched.setattr(safetensors, "safe_open", refusing(safetensors.safe_open))  # now the rows' read-back
        embedder = Embedder(tiny_scorer, cache)
        np.testing.assert_allclose(embedder.images(images), first, atol=1e-6)
    assert embedder.encoded["image"] == 3 and theirs.read_bytes() == content


def test_cache_files_are_readable_as_the_umask_allows(tmp_path, train_items, tiny_scorer):
    """safetensors >= 0.8 writes 0600: no one else sharing the --cache-dir could read them."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    previous = os.umask(0o022)
    try:
        Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id)).texts(["a red cube", "a blue cone"])
    finally:
        os.umask(previous)
    [written] = tmp_path.glob("text-*.safetensors")
    assert written.stat().st_mode & 0o777 == 0o644


def test_a_worker_death_raised_inside_the_encoding_is_the_one_line_error(tmp_path, train_items, tiny_scorer, monkeypatch):
    """torch's SIGCHLD handler raises a dead decoding worker's RuntimeError wherever the main process is,
    here in the scorer's model: was a traceback; now the loaders' one line (exit 2 at the CLI). Any
    other RuntimeError passes untouched."""
    from augment.loading import DataWorkerDied
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    images = [item["image"] for item in train_items[:3]]
    embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id), workers=2)
    for error, caught in [("DataLoader worker (pid 4242) is killed by signal: Killed. ", DataWorkerDied),
                          ("mat1 and mat2 shapes cannot be multiplied", RuntimeError)]:
        def dies(pixels, error=error):
            raise RuntimeError(error)

        monkeypatch.setattr(tiny_scorer, "encode_prepared", dies)
        with pytest.raises(caught) as raised:
            embedder.images(images)
        assert (type(raised.value) is DataWorkerDied) == (caught is DataWorkerDied)
        if caught is DataWorkerDied:
            assert "likely out of memory: use fewer --workers" in str(raised.value), raised.value


def test_table_and_cache_dir_refuse_a_file_they_are_not(tmp_path, train_items, sample_world_dir, capsys):
    """--table naming the pool's own pool.json (or a source's JSON) silently replaced it with Markdown:
    refused in one line before anything is read; an earlier table is replaced as before. A --cache-dir
    that is a file said only "File exists"."""
    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    provenance = (pool.path / "pool.json").read_bytes()
    common = ["score", pool.path, "--scorer", "tiny-clip", "--no-progress", "--no-plot", "--cache-dir", tmp_path / "c"]
    code, err = cli(capsys, *common[:-2], "--cache-dir", pool.path / "pool.json")  # was "...: File exists"
    assert code == 2 and err.strip() == (f"error: --cache-dir {pool.path / 'pool.json'}: is a file, not a folder: name a "
                                         "folder for the embedding cache"), err
    code, err = cli(capsys, *common, "--table", pool.path / "pool.json")
    assert code == 2 and err.strip() == (f"error: --table {pool.path / 'pool.json'}: is an existing file that is not an "
                                         "earlier comparison table; the table would replace it: name a new file"), err
    assert (pool.path / "pool.json").read_bytes() == provenance and not (pool.path / "scores").exists()
    table = tmp_path / "table.md"
    assert cli(capsys, *common, "--table", table)[0] == 0
    first = table.read_text()
    assert cli(capsys, *common, "--table", table)[0] == 0  # its own earlier table: replaced
    assert table.read_text() == first


def test_an_unwritable_folder_is_refused_before_the_work(tmp_path, train_items, sample_world_dir, capsys, monkeypatch):
    """--table in a folder that cannot be written (a read-only mount, seen by access(2) even as root) failed
    after all the scoring; --out of generate (any output folder) likewise after the generation."""
    import os

    import augment.atomic as atomic

    locked = tmp_path / "read-only"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(atomic.os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode))
    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    common = ["score", pool.path, "--scorer", "tiny-clip", "--no-progress", "--no-plot"]
    code, err = cli(capsys, *common, "--table", locked / "t.md")
    assert code == 2 and err.strip() == (f"error: --table {locked / 't.md'}: its folder {locked}: it cannot be written "
                                         "to (a read-only file system, or no permission)"), err
    assert not (pool.path / "scores").exists()  # refused before the scoring
    code, err = cli(capsys, "generate", "--method", "i2t-human", "--source", sample_world_dir,
                    "--out", locked / "sub" / "pool")
    assert code == 2 and f"{locked} cannot be written to (a read-only file system, or no permission)" in err, err


def test_a_pool_image_that_does_not_decode_names_its_pool_at_the_command_line(tmp_path, train_items, sample_world_dir,
                                                                               capsys):
    """Scoring several pools, the line named the row but not the pool it is in."""
    from augment.pool import write_pool

    item = train_items[0]
    write_pool(tmp_path / "broken", [{
        "row_id": f"i:{item['image_id']}:-1:0", "source_image_id": item["image_id"], "source_caption_index": -1,
        "split": item["split"], "modality": "image", "image": {"bytes": b"not an image", "path": None},
        "caption": None, "method": "i", "seed": 0, "provenance": "{}"}], {"method": "i", "source": str(sample_world_dir)})
    code, err = cli(capsys, "score", tmp_path / "broken", "--scorer", "tiny-clip", "--no-progress", "--no-plot",
                    "--cache-dir", tmp_path / "c")
    assert code == 2 and err.strip() == (f"error: {tmp_path / 'broken'}: pool row i:{item['image_id']}:-1:0: unreadable "
                                         "or corrupt image (cannot identify image file)"), err


def test_copies_of_one_pool_are_told_apart_by_their_folders(tmp_path, train_items, sample_world_dir, capsys):
    """Pools are named by pool.json's `name`: two copies printed two identical names."""
    pool = text_pool(tmp_path / "pool", train_items, sample_world_dir)
    shutil.copytree(pool.path, tmp_path / "copy")
    from augment.cli import main

    code = main([str(a) for a in ("score", pool.path, tmp_path / "copy", "--scorer", "tiny-clip", "--no-progress",
                                  "--no-plot", "--bootstrap", "0", "--gap-bootstrap", "0", "--cache-dir", tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0 and f"\n{pool.path}: " in "\n" + out and f"\n{tmp_path / 'copy'}: " in "\n" + out, out
    assert f"| {pool.path} |" in out and f"| {tmp_path / 'copy'} |" in out, out


def test_a_transformers_prefix_names_the_same_scorer(tmp_path):
    """`--scorer transformers:tiny-hf-clip` got the id `hf_clip:transformers:tiny-hf-clip:None` and
    `transformers:DIR` another slug than DIR: the same model stored as a second scorer, every row
    encoded again (README: `transformers:NAME` is NAME)."""
    from augment.scoring.scorers import scorer_identity
    from models import load_model, save_model

    folder = tmp_path / "clip"
    save_model(load_model("tiny-hf-clip"), folder)
    for plain in ("tiny-hf-clip", str(folder)):
        prefixed = scorer_identity(f"transformers:{plain}")
        assert prefixed is not None and prefixed.id == scorer_identity(plain).id
        assert prefixed.slug == scorer_identity(plain).slug
