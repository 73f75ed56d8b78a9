"""Where scores live beside a pool, and reading them back.

Layout (all paths relative to the pool folder)::

    scores.json                          summaries with CIs, one entry per scorer (see report.py)
    scores.png                           distributions drawn for the latest scorer
    scores/<scorer-slug>/rows.parquet    one row per pool row, keyed by row_id (ROW_SCHEMA)
    scores/<scorer-slug>/items.parquet   one row per item and modality (ITEM_SCHEMA)
    scores/<scorer-slug>/embeddings/     the embedding cache (embeddings.py)
    scores/.lock                         held by the `augment score` run writing this pool's scores, and
                                         briefly by a command reading them (`reading_scores`)

Side tables carry `scores_version` in their parquet metadata and scores.json at its top level;
readers refuse other versions. The tables also carry the `inputs_key` of the run that wrote them,
and each scores.json entry the key of its run: a run renames its tables into place and then writes
its entry, so a run stopped in between leaves new tables beside the old entry, and readers
(`read_entry_table`) refuse a pair whose keys differ instead of mixing two runs. The pool's own
rows are never modified.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from augment.atomic import temporary_path
from augment.errors import PoolError, first_line
from augment.json_records import DamagedRecord, read_json_object

SCORES_VERSION = 1
SCORES_JSON = "scores.json"
SCORES_PLOT = "scores.png"
SCORES_DIR = "scores"
ROWS_FILE = "rows.parquet"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_DIR = "embeddings"
LOCK_FILE = ".lock"


def _schemas():
    import pyarrow as pa

    rows = pa.schema([
        ("row_id", pa.string()),
        ("source_image_id", pa.string()),
        ("source_caption_index", pa.int32()),
        ("modality", pa.string()),
        ("method", pa.string()),
        # cosine of the row's image and caption embeddings (see alignment_partner)
        ("alignment", pa.float64()),
        ("clipscore", pa.float64()),
        # what the row's new content was paired with: "source image", "source caption",
        # "source captions (mean)" or "row" (pair rows: both new)
        ("alignment_partner", pa.string()),
        # 1 - cos to the nearest original of the same modality; null where the row has none new
        ("text_distance_to_source", pa.float64()),
        ("image_distance_to_source", pa.float64()),
    ])
    items = pa.schema([
        ("source_image_id", pa.string()),
        ("source_caption_index", pa.int32()),
        ("modality", pa.string()),  # "text" or "image": which embeddings the set holds
        ("set_size", pa.int32()),  # originals + augmentations
        ("mean_pairwise_distance", pa.float64()),
        ("vendi", pa.float64()),
    ])
    return rows, items


def row_schema():
    return _schemas()[0]


def item_schema():
    return _schemas()[1]


def scorer_dir(pool_path: str | os.PathLike, slug: str) -> Path:
    return Path(pool_path) / SCORES_DIR / slug


def default_cache_dir(pool_path: str | os.PathLike, slug: str) -> Path:
    return scorer_dir(pool_path, slug) / EMBEDDINGS_DIR


class TableWriter:
    """Streams record batches into a parquet file under a temporary name; `finish` completes the
    file, `commit` renames it into place (`close`: both). A run finishes its tables, computes its
    summary, and only then commits them: an error or interrupt before leaves the stored tables."""

    def __init__(self, path: Path, schema, metadata: dict):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.path)  # a killed run's leftovers: augment.atomic.remove_stale_temporaries
        self.schema = schema.with_metadata({k: json.dumps(v) for k, v in metadata.items()})
        self.writer = pq.ParquetWriter(str(self.tmp), self.schema)

    def write(self, columns: dict) -> None:
        import pyarrow as pa

        if columns and len(next(iter(columns.values()))):
            self.writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))

    def finish(self) -> None:
        self.writer.close()  # a second close is a no-op

    def commit(self) -> Path:
        self.finish()
        os.replace(self.tmp, self.path)
        return self.path

    def close(self) -> Path:
        return self.commit()

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)  # already committed: nothing left to remove


# ---------------------------------------------------------------------------------------------
# One writer per pool; readers between its runs
# ---------------------------------------------------------------------------------------------

_held_locks: dict[tuple[int, Path], int] = {}  # (thread, lock file) held -> nesting depth


def scores_lock_path(pool_path: str | os.PathLike) -> Path:
    return Path(pool_path) / SCORES_DIR / LOCK_FILE


@contextlib.contextmanager
def scoring_lock(pool_path: str | os.PathLike):
    """Within: this process alone writes `pool_path`'s scores (scores.json, side tables, plot).
    Two runs that read-modify-write scores.json at once lose one's entry, and their tables can
    cross. A second run waits for the first (saying so once on stderr), then usually finds its
    scores stored and reuses them. The lock is the kernel's (flock, through filelock): a killed
    holder's lock goes with it. Re-entrant within one thread (score_and_save holds it around
    update_scores_json, which takes it too); another thread waits as another process does."""
    with _scores_lock(pool_path, reading=False):
        yield


@contextlib.contextmanager
def reading_scores(pool_path: str | os.PathLike):
    """Within: no `augment score` writes `pool_path`'s scores, so scores.json and the side tables read
    here are of one state, before a run or after it (a run renames its tables into place, then writes
    its entry: read in between, the new tables stand beside the old entry and `read_entry_table`
    refuses them). The writers' lock, waited for as they wait for each other. Read unlocked, and
    nothing created, where the pool has no scores folder (a run starting meanwhile writes its tables
    before its entry) or its lock file cannot be made (a read-only pool: no run of this user can
    write its scores either)."""
    with _scores_lock(pool_path, reading=True):
        yield


@contextlib.contextmanager
def _scores_lock(pool_path: str | os.PathLike, reading: bool):
    """The lock of `scoring_lock` (`reading`: of `reading_scores`, which reads on without it)."""
    import threading

    from filelock import FileLock, Timeout

    path = scores_lock_path(pool_path).absolute()
    held = (threading.get_ident(), path)
    if held in _held_locks:
        _held_locks[held] += 1
        try:
            yield
        finally:
            _held_locks[held] -= 1
        return
    lock = None
    try:
        if not reading:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not reading or path.parent.is_dir():
            lock = FileLock(str(path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                print(f"{pool_path}: another `augment score` is writing its scores (or a command is reading them); "
                      f"waiting for it to finish (lock {path})", file=sys.stderr, flush=True)
                lock.acquire(timeout=-1)
    except OSError as exc:  # the lock file cannot be made: a read-only folder, a full disk
        if not reading:
            raise PoolError(f"{pool_path}: cannot lock its scores for writing ({first_line(exc)})") from None
        lock = None
    if lock is None:
        yield
        return
    _held_locks[held] = 1
    try:
        yield
    finally:
        del _held_locks[held]
        lock.release()


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_scores_json(pool_path: str | os.PathLike) -> dict | None:
    path = Path(pool_path) / SCORES_JSON
    if not path.is_file():
        return None
    try:
        document = read_json_object(path)
    except DamagedRecord as problem:
        raise PoolError(f"{path}: corrupt ({problem}); delete it and run `augment score {pool_path}` again") from None
    check_scores_document(document, path, pool_path)
    return document


# what the readers of an entry (select, push, `augment score`) index, and its type: a scores.json
# edited by hand must fail here in one line, not as a KeyError deep in a reader
_ENTRY_KEYS = ((("scorer",), dict, "an object"), (("scorer", "name"), str, "a text"), (("scorer", "id"), str, "a text"),
               (("pool",), dict, "an object"), (("tables",), dict, "an object"), (("tables", "rows"), str, "a text"))
# the measures' summaries, by modality, that push's data card reads where present (data_cards.render): each an
# object of objects (or nulls); `"alignment": "x"` was an AttributeError traceback of augment push
_SUMMARY_GROUPS = ("alignment", "clipscore", "diversity", "gap")


def check_scores_document(document, path: Path, pool_path: str | os.PathLike) -> None:
    """PoolError (one line naming `path` and the key) unless `document` has the shape `augment score` writes."""
    way_out = f"delete it and run `augment score {pool_path}` again"
    if not isinstance(document, dict) or not isinstance(document.get("scorers", {}), dict):
        raise PoolError(f"{path}: not a scores document (expected an object with 'scorers'); {way_out}")
    if document.get("scores_version") != SCORES_VERSION:  # `augment score` reads it too: deleting it is the way out
        raise PoolError(f"{path}: scores version {document.get('scores_version')}, this mat-plus reads "
                        f"{SCORES_VERSION}; {way_out}")
    scorers = document.get("scorers", {})
    for slug, entry in scorers.items():
        if not isinstance(entry, dict):
            raise PoolError(f"{path}: the entry of scorer {slug!r} is not an object; {way_out}")
        for (*parents, key), kind, what in _ENTRY_KEYS:
            holder = entry
            for parent in parents:  # checked as an object by an earlier row
                holder = holder[parent]
            if not isinstance(holder.get(key), kind):
                found = f"{holder[key]!r}, not {what}" if key in holder else "missing"
                raise PoolError(f"{path}: in the entry of scorer {slug!r}, {'.'.join((*parents, key))!r} is {found}; {way_out}")
        for group in _SUMMARY_GROUPS:
            value = entry.get(group)
            if value is not None and not (isinstance(value, dict) and all(v is None or isinstance(v, dict)
                                                                          for v in value.values())):
                raise PoolError(f"{path}: in the entry of scorer {slug!r}, {group!r} is {str(value)[:60]!r}, not an "
                                f"object of its modalities' statistics; {way_out}")
    latest = document.get("latest")
    if scorers and not (isinstance(latest, str) and latest in scorers):
        raise PoolError(f"{path}: 'latest' is {latest!r}, not the name of one of its scorers ({', '.join(scorers)}); {way_out}")


def find_scorer_entry(pool_path: str | os.PathLike, scorer: str | None) -> dict:
    """The scores.json entry of `scorer` (its slug, or the model name it was scored with);
    without `scorer`, the latest one. A name several stored entries match (a model folder
    retrained in place is another scorer, another slug, under the same name) gives the latest
    entry when it is one of them, else a PoolError listing their slugs (each picks one): never
    one chosen by the order of the slugs. PoolError telling to run `augment score` when absent."""
    document = read_scores_json(pool_path)
    hint = f"run `augment score {pool_path}" + (f" --scorer {scorer}`" if scorer else "`") + " first"
    if not document or not document.get("scorers"):
        raise PoolError(f"{pool_path}: has no scores; {hint}")
    entries = document["scorers"]
    if scorer is None:
        return entries[document["latest"]]
    if scorer in entries:  # a slug names one entry
        return entries[scorer]
    matches = {slug: e for slug, e in entries.items() if scorer in (e["scorer"]["name"], _bare_name(e))}
    if not matches:
        known = ", ".join(f"{e['scorer']['name']} ({slug})" for slug, e in entries.items())
        raise PoolError(f"{pool_path}: not scored with {scorer!r} (scored with: {known}); {hint}")
    if len(matches) == 1:
        return next(iter(matches.values()))
    if document["latest"] in matches:
        return matches[document["latest"]]
    listed = ", ".join(f"{slug} (created {e.get('created', 'at an unknown time')})" for slug, e in sorted(matches.items()))
    raise PoolError(f"{pool_path}: {len(matches)} stored scores are of a scorer named {scorer!r} ({listed}), none the "
                    f"latest; pass one of these slugs as --scorer, or run `augment score {pool_path} --scorer {scorer}` "
                    "again to make the current one the latest")


def scored_as_it_is(entry: dict, pool) -> bool:
    """Whether a scores.json `entry` was computed from `pool` as it is now: pool.json's finish stamp
    (a rewrite renews it, to the second) and, where recorded, its data files' names, sizes and
    modification times (a rewrite within that second, a shard edited in place, a copy without its
    times, an export's other file names)."""
    from augment.scoring.pool_scores import pool_file_stamps

    recorded = entry["pool"]
    return recorded.get("finished") == pool.meta.get("finished") and (
        "files" not in recorded or recorded["files"] == pool_file_stamps(pool))


def _bare_name(entry: dict) -> str:
    """The name without the open_clip tag suffix ("ViT-B-16" for "ViT-B-16:openai")."""
    return entry["scorer"]["name"].split(":")[0]


def intervals_are_current(entry: dict) -> bool:
    """Whether a scorer entry's confidence intervals were drawn by this version's resampling scheme
    (`measures.RESAMPLING`; an entry written before it was recorded was drawn by an earlier one, which
    covered the mean ~70% of the time at a nominal 95%). `augment score` recomputes such an entry, or
    stamps one its inputs key shows current."""
    from augment.scoring.measures import RESAMPLING

    return entry.get("resampling") == RESAMPLING


def table_is_current(path: Path, inputs_key: str | None = None) -> bool:
    """Whether side table `path` exists, readable, in this scores version (and, given `inputs_key`,
    written from those inputs); reads only its schema. A damaged table is not current: scored again."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        metadata = pq.read_schema(path).metadata or {}
        current = json.loads(metadata.get(b"scores_version", b"null")) == SCORES_VERSION
        return current and (inputs_key is None or json.loads(metadata.get(b"inputs_key", b"null")) == inputs_key)
    except Exception:  # noqa: BLE001 - truncated, not parquet, bad metadata: score it again
        return False


def table_inputs_key(path: Path) -> str | None:
    """The `inputs_key` a side table's run wrote into its metadata (None: none recorded)."""
    import pyarrow.parquet as pq

    return json.loads((pq.read_schema(path).metadata or {}).get(b"inputs_key", b"null"))


def read_entry_table(pool_path: str | os.PathLike, entry: dict, table: str, columns: list[str] | None = None):
    """Side table `table` ("rows" or "items") of scores.json `entry`, as `read_table` reads it, refused
    in one line unless its run's `inputs_key` is the entry's: tables renamed into place by a run
    stopped before it wrote its entry (or by another run) are never read as that entry's."""
    path = Path(pool_path) / entry["tables"][table]
    read = read_table(path, columns)  # missing, damaged, another version: its own line
    written_by = table_inputs_key(path)
    # a table without a key was written before tables recorded one (2026-11-29 .. 12-02): read as its entry's
    if written_by is not None and written_by != entry.get("inputs_key"):
        scorer = entry["scorer"]
        raise PoolError(f"{pool_path}: the stored scores of scorer {scorer['name']} ({scorer.get('slug', '?')}) do not "
                        f"match their side table {entry['tables'][table]}, written by another `augment score` run "
                        f"(one stopped before it wrote scores.json); run `augment score {pool_path} --scorer "
                        f"{scorer['name']}` again")
    return read


def read_table(path: Path, columns: list[str] | None = None):
    """A side table as a pyarrow Table, refusing another scores_version or a requested column that is
    missing or of another type than `augment score` writes."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise PoolError(f"{path}: missing; run `augment score` on the pool again")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # truncated or not parquet
        raise PoolError(f"{path}: unreadable ({first_line(exc)}); run `augment score` on the pool again") from None
    version = json.loads((schema.metadata or {}).get(b"scores_version", b"null"))
    if version != SCORES_VERSION:
        raise PoolError(f"{path}: scores version {version}, this mat-plus reads {SCORES_VERSION}; run `augment score` again")
    written = {field.name: field.type for table in _schemas() for field in table}
    for name in columns or []:
        found = schema.field(name).type if name in schema.names else None
        if found is None or found != written.get(name, found):
            raise PoolError(f"{path}: column {name!r} is {'missing' if found is None else f'of type {found}'}, "
                            f"expected {written.get(name)}; run `augment score` on the pool again")
    return pq.read_table(path, columns=columns)
