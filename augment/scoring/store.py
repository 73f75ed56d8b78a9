"""Where scores live beside a pool, and reading them back.

Layout (all paths relative to the pool folder)::

    scores.json                          summaries with CIs, one entry per scorer (see report.py)
    scores.png                           distributions drawn for the latest scorer
    scores/<scorer-slug>/rows.parquet    one row per pool row, keyed by row_id (ROW_SCHEMA)
    scores/<scorer-slug>/items.parquet   one row per item and modality (ITEM_SCHEMA)
    scores/<scorer-slug>/embeddings/     the embedding cache (embeddings.py)

Side tables carry `scores_version` in their parquet metadata and scores.json at its top level;
readers refuse other versions. The pool's own rows are never modified.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from augment.atomic import temporary_path
from augment.errors import PoolError, first_line

SCORES_VERSION = 1
SCORES_JSON = "scores.json"
SCORES_PLOT = "scores.png"
SCORES_DIR = "scores"
ROWS_FILE = "rows.parquet"
ITEMS_FILE = "items.parquet"
EMBEDDINGS_DIR = "embeddings"


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
    """Streams record batches into a parquet file under a temporary name; `close` renames it."""

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

    def close(self) -> Path:
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_scores_json(pool_path: str | os.PathLike) -> dict | None:
    path = Path(pool_path) / SCORES_JSON
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoolError(f"{path}: corrupt ({first_line(exc)}); delete it and run `augment score {pool_path}` again") from None
    check_scores_document(document, path, pool_path)
    return document


# what the readers of an entry (select, push, `augment score`) index, and its type: a scores.json
# edited by hand must fail here in one line, not as a KeyError deep in a reader
_ENTRY_KEYS = ((("scorer",), dict, "an object"), (("scorer", "name"), str, "a text"), (("scorer", "id"), str, "a text"),
               (("pool",), dict, "an object"), (("tables",), dict, "an object"), (("tables", "rows"), str, "a text"))


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
    latest = document.get("latest")
    if scorers and not (isinstance(latest, str) and latest in scorers):
        raise PoolError(f"{path}: 'latest' is {latest!r}, not the name of one of its scorers ({', '.join(scorers)}); {way_out}")


def find_scorer_entry(pool_path: str | os.PathLike, scorer: str | None) -> dict:
    """The scores.json entry of `scorer` (its slug, or the model name it was scored with);
    without `scorer`, the latest one. PoolError telling to run `augment score` when absent."""
    document = read_scores_json(pool_path)
    hint = f"run `augment score {pool_path}" + (f" --scorer {scorer}`" if scorer else "`") + " first"
    if not document or not document.get("scorers"):
        raise PoolError(f"{pool_path}: has no scores; {hint}")
    entries = document["scorers"]
    if scorer is None:
        return entries[document["latest"]]
    matches = [e for slug, e in entries.items() if scorer in (slug, e["scorer"]["name"], _bare_name(e))]
    if not matches:
        known = ", ".join(f"{e['scorer']['name']} ({slug})" for slug, e in entries.items())
        raise PoolError(f"{pool_path}: not scored with {scorer!r} (scored with: {known}); {hint}")
    return matches[-1]


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
