"""Reading and writing pools: a sharded parquet `datasets` table plus `pool.json`.

On-disk layout (also exactly what the Hub holds after `augment push`, so `load_dataset(DIR)`
reads it)::

    POOL/
      pool.json                 provenance: method, model, parameters, seed, source fingerprint...
      data/shard-00000.parquet  one file per work unit of source items, written atomically
      data/shard-00001.parquet
      README.md                 data card (written by `augment push`)

Every shard is written to a temporary name and renamed into place, so a killed run leaves only
whole shards; re-running the same command skips them and writes the rest (resume).

A finished pool also gets a minimal README.md whose YAML `configs` names `data/*.parquet` as the
rows, so `datasets.load_dataset(POOL)` reads the rows only, never the side tables that
`augment score` writes under `scores/` (`augment push` writes the full data card elsewhere).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import glob
import itertools
import json
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

# write_json_atomic lives in augment.atomic; importing it from here keeps working
from augment.atomic import atomic_write_text, remove_stale_temporaries, temporary_path, write_json_atomic  # noqa: F401
from augment.atomic import naming_write_errors
from augment.errors import PoolError, PoolIdentityError, first_line
from augment.json_records import DamagedRecord, read_json_object
from augment.schema import (
    POOL_FEATURES,
    POOL_SCHEMA_VERSION,
    ROW_RULE_COLUMNS,
    SchemaError,
    check_pool_features,
    check_pool_row,
    pool_row_problems,
)

POOL_META = "pool.json"
DATA_DIR = "data"
SHARD_PATTERN = "shard-{index:05d}.parquet"
# rows a shard's writer checks, encodes and takes into arrow at a time (`PoolWriter.write_shard`)
SHARD_SLICE_ROWS = 64

# these meta keys must match for a re-run to resume into an existing pool ("parent": a selection's, see
# `identity_value`)
IDENTITY_KEYS = ("method", "model", "model_revision", "params", "recipe", "seed", "source_fingerprint", "source_images",
                 "n", "split", "limit", "shard_size", "parent", "device_type")
# identity keys a pool written before them lacks (source_images: 2026-12-02; device_type, the device a
# model method sampled on: 2026-12-05): such a pool resumes as it did then, unchecked on that key, and
# records it from then on
KEYS_ADDED_SINCE = ("source_images", "device_type")
# what a generated pool's `shard_inputs` (one fingerprint per shard of what it is made from: the shard's
# source records and, for a pixel method, its image files) checks shard by shard in place of these
# whole-source keys: a change to records of shards not yet written (an image fixed, one --skip-bad
# left out) does not stop a resume, and a kept shard whose inputs changed is refused by name
SHARD_CHECKED_KEYS = ("source_fingerprint", "source_images")

_PACKAGES = ("mat-plus", "torch", "open_clip_torch", "transformers", "diffusers", "datasets", "nltk", "Pillow")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            pass
    return versions


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


POOL_CARD = "README.md"
_POOL_CARD_MARK = "<!-- mat-plus pool: rows are data/*.parquet -->"


def _users_own_card(card: Path) -> bool:
    """Whether `card` (a pool folder's README.md) is there and written by the user, not generated."""
    return card.exists() and _POOL_CARD_MARK not in card.read_text(encoding="utf-8", errors="replace")


def read_pool_meta(path: Path) -> dict:
    """pool.json as a dict; PoolError (one line) when it is unreadable, not JSON, or not an object."""
    meta_path = path / POOL_META
    try:
        meta = read_json_object(meta_path)
    except DamagedRecord as problem:
        raise PoolError(f"{meta_path}: {problem}; the pool's provenance is damaged: regenerate it, or restore "
                        "pool.json") from None
    for key, kinds, what in _META_TYPES:
        value = meta.get(key)
        # bool is an int to isinstance, and no provenance key is a bool
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise PoolError(f"{meta_path}: {key!r} should be {what}, not {value!r}; "
                            "the pool's provenance is damaged: regenerate it, or restore pool.json")
    return meta


# the provenance keys commands read, with their types (None is allowed for each): a hand-edited
# pool.json of the wrong types would otherwise fail deep inside score, push or a card
_META_TYPES = (
    ("name", str, "a text"), ("method", str, "a text"), ("modality", str, "a text"), ("model", str, "a text"),
    ("source", str, "a text"), ("image_root", str, "a text"), ("source_split", str, "a text"),
    ("source_format", str, "a text"), ("source_fingerprint", str, "a text"), ("split", str, "a text"),
    ("status", str, "a text"), ("params", dict, "an object"), ("seed", int, "a whole number"),
    ("n", int, "a whole number"), ("limit", int, "a whole number"), ("shard_size", int, "a whole number"),
    ("num_rows", int, "a whole number"), ("source_items", int, "a whole number"),
    ("csv_img_key", str, "a text"), ("csv_caption_key", str, "a text"), ("csv_separator", str, "a text"),
)


def open_shard(shard: Path, where: str | None = None):
    """The parquet shard opened (its footer read once: row count, schema, then its columns); PoolError
    naming it when it is truncated or not parquet."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(shard)
    except Exception as exc:  # ArrowInvalid, OSError...: a damaged file, whatever pyarrow calls it
        raise PoolError(f"{where or shard}: unreadable parquet shard (truncated or not parquet: {first_line(exc)}); "
                        "delete it and re-run the command that wrote it") from None


def check_shard_readable(shard: Path, where: str | None = None) -> int:
    """The number of rows of a parquet shard; PoolError naming it when it is truncated or not parquet."""
    return open_shard(shard, where).metadata.num_rows


def check_shard_rows(shard, where: str, row_ids: set[str]) -> None:
    """The rules every written row met (`schema.pool_row_problems`: modality, a caption on text and
    pair rows, a source image id) and row ids unique across the pool (`row_ids`: those of the shards
    before), on a shard (an open `pyarrow.parquet.ParquetFile`) as it is now: one edited or written
    by another tool would otherwise be pushed, scored and selected as it is (a duplicate id gets its
    first copy's scores). The first offending row is named through `check_pool_row`'s own message."""
    import pyarrow.compute as pc

    try:
        table = shard.read(columns=ROW_RULE_COLUMNS)
    except Exception as exc:  # pages damaged under a whole footer
        raise PoolError(f"{where}: damaged ({first_line(exc)}); delete it and re-run the command that wrote it") from None
    # the rows flagged (normally none) go through `check_pool_row`, the rules' reference, for the message;
    # one array, not the table's chunks: pyarrow 25 (Python 3.10's newest) segfaults on indices_nonzero of
    # a chunked array with no chunks, which an empty shard (`select --allow-empty`) reads as
    for k in pc.indices_nonzero(pool_row_problems(table).combine_chunks()).to_pylist():
        row = {name: table[name][k].as_py() for name in ROW_RULE_COLUMNS}
        check_pool_row({**row, "image": True}, f"{where}, row {k} ({row['row_id']!r})")
    for k, row_id in enumerate(table["row_id"].to_pylist()):
        if not row_id:
            raise PoolError(f"{where}: row {k} has no row_id")
        if row_id in row_ids:
            raise PoolError(f"{where}: row {k} has row_id {row_id!r}, which another row of the pool has too "
                            "(row ids name rows, once each)")
        row_ids.add(row_id)


def write_pool_card(out_dir: Path, meta: dict) -> None:
    """A minimal README.md declaring the rows' files, unless the folder has a card of its own.

    Its `dataset_info` (row count and byte sizes) is there for `datasets`' cache: the cache key
    of a local folder with a card is its folder name plus the card's configs and infos, so without
    it two pools both called `pool` would share one cache entry.
    """
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    card = out_dir / POOL_CARD
    if _users_own_card(card):
        return
    shards = sorted((out_dir / DATA_DIR).glob("*.parquet"))
    size = sum(shard.stat().st_size for shard in shards)
    info = DatasetInfo(config_name="default", features=POOL_FEATURES, splits=SplitDict())
    info.splits.add(SplitInfo(name="train", num_bytes=size, num_examples=int(meta.get("num_rows") or 0)))
    info.download_size = info.dataset_size = size
    card_data = DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}}).to_dataset_card_data(card_data)
    atomic_write_text(card, (
        f"---\n{card_data.to_yaml()}\n---\n{_POOL_CARD_MARK}\n"
        f"# {meta.get('name') or out_dir.name}\n\n"
        f"A mat-plus pool (method `{meta.get('method')}`, {meta.get('num_rows')} rows, finished "
        f"{meta.get('finished')}); provenance in `{POOL_META}`. `augment push` writes its full data card.\n"
    ))


def write_card_of_pool_there(out_dir: str | os.PathLike) -> None:
    """`write_pool_card` for the pool in `out_dir` now (its pool.json read again), while no `augment
    generate --overwrite` or `select` can swap another in (their lock, `sole_pool_writer`); skipped while
    one writes there (its pool comes with its own card) or when no pool is there. A reader's card of the
    pool it had read (`augment score`) replaced the card of one swapped in meanwhile, with the other's row
    count, which `datasets.load_dataset(POOL)` then refused (NonMatchingSplitsSizesError)."""
    out_dir = Path(out_dir)
    try:
        with sole_pool_writer(out_dir):
            if (out_dir / POOL_META).is_file():
                write_pool_card(out_dir, read_pool_meta(out_dir))
    except PoolError:
        return


def make_row_id(method: str, image_id: str, caption_index: int, k: int) -> str:
    return f"{method}:{image_id}:{caption_index}:{k}"


# ----------------------------------------------------------------------------- writing


def _only_leftovers(folder: Path) -> bool:
    """Whether `folder` holds nothing but what a writer killed before its first pool.json leaves: an
    empty (or temporaries-only) data/, temporary files and its lock file: a new pool may be written there."""
    from augment.atomic import is_temporary

    for entry in folder.iterdir():
        if entry.name == DATA_DIR and entry.is_dir() and all(is_temporary(e) for e in entry.iterdir()):
            continue
        if not is_temporary(entry) and entry.name != WRITER_LOCK:
            return False
    return True


# held (flock) by the `augment generate` or `select` writing the pool in a folder (`sole_pool_writer`): kept
# there after it, as RUN/.train.lock is; a folder holding nothing else is no pool yet
WRITER_LOCK = ".generate.lock"


def sole_pool_writer(out_dir: str | os.PathLike, rank: int = 0, world_size: int = 1) -> contextlib.ExitStack:
    """This run alone writes the pool at `out_dir` until the returned stack is closed (its processes:
    the first one holds OUT/.generate.lock, `augment.atomic.sole_writer_of_processes`). Another
    `augment generate` or `select` into OUT meanwhile is PoolError, before it reads or writes
    anything there: two runs interleaved their shards (an `--overwrite` run swapped its pool in under a
    running one, which went on writing its shards into it)."""
    from augment.atomic import sole_writer_of_processes

    return sole_writer_of_processes(out_dir, WRITER_LOCK, "another augment generate or select is writing this pool; "
                                    "wait for it to finish, or choose another --out", rank == 0, world_size, PoolError)


def holds_pool(out_dir: Path) -> bool:
    """Whether a pool is already at `out_dir` (False: nothing there, or only a killed writer's
    leftovers). PoolError when the folder holds something that is not a pool."""
    if not out_dir.exists() or _only_leftovers(out_dir):
        return False
    if not (out_dir / POOL_META).exists():
        raise PoolError(f"{out_dir}: exists and is not a pool; choose another --out")
    return True


# when pool.json began to record the recipe (972bf4a): every mat-plus since writes the key
RECIPE_KEY_SINCE = "2026-12-05T15:43:06+00:00"


def _recipe_of_unrecorded(old: dict, meta: dict, recipe_since: str | None) -> int | None:
    """The recipe a pool.json without the key, or with the recipe just before this run's (`old`), is taken
    to record: this run's (`meta`'s) when the pool was made by its method after that recipe began
    (`recipe_since`) by a mat-plus that recorded it so (read as recorded, such a pool was refused though
    this code made it): without the key only before the key came (RECIPE_KEY_SINCE; a pool without it made
    since is an older mat-plus's), with the recipe before this one since then (EDA's recipe 2 and i2t-'s 3
    began after the key, and their code recorded 1 and 2 until raised). None otherwise (as recorded, or
    recipe 1)."""
    import datetime as dt

    recorded, current = old.get("recipe"), meta.get("recipe")
    if not recipe_since or old.get("method") != meta.get("method") or not isinstance(current, int):
        return None
    if not (recorded is None or (isinstance(recorded, int) and not isinstance(recorded, bool) and recorded == current - 1)):
        return None
    try:
        created = dt.datetime.fromisoformat(str(old.get("created")))
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    since, key_since = dt.datetime.fromisoformat(recipe_since), dt.datetime.fromisoformat(RECIPE_KEY_SINCE)
    if recorded is None:  # by a mat-plus before the key
        return current if since <= created < key_since else None
    # by one that recorded the recipe before: only where the key came before this recipe (else it came with it)
    return current if key_since <= since <= created else None


def resumed_meta(out_dir: Path, old: dict, meta: dict, recipe_since: str | None = None) -> dict:
    """`meta` for writing again into the pool at `out_dir` whose provenance is `old`: the old pool's
    keys and creation time kept. PoolIdentityError naming the identity keys that differ.
    `recipe_since`: when the generator's current recipe began (`_recipe_of_unrecorded`)."""
    assumed = _recipe_of_unrecorded(old, meta, recipe_since)
    if assumed is not None:
        old = {**old, "recipe": assumed}
    by_shard = isinstance(old.get("shard_inputs"), list) and isinstance(meta.get("shard_inputs"), list)
    changed = [k for k in IDENTITY_KEYS if identity_value(old, k) != identity_value(meta, k)
               and not (k in KEYS_ADDED_SINCE and k not in old)
               and not (by_shard and k in SHARD_CHECKED_KEYS)]
    if "params" in changed and isinstance(old.get("params"), dict) and isinstance(meta.get("params"), dict):
        # name the parameters (e.g. batch_size), not just "params"
        differing = sorted(k for k in set(old["params"]) | set(meta["params"])
                           if _normalised(old["params"].get(k)) != _normalised(meta["params"].get(k)))
        changed[changed.index("params")] = f"params {differing}"
    if changed:
        why = (f" (recipe {identity_value(old, 'recipe')}, now {identity_value(meta, 'recipe')}: an earlier "
               "mat-plus wrote its rows otherwise, and resuming would mix both)") if "recipe" in changed else ""
        if "device_type" in changed:  # a model samples other rows on another kind of device: say how to go on
            why += (f" (made on {old.get('device_type')}, now {meta.get('device_type')}: a model samples other "
                    f"rows there; --device {old.get('device_type')} resumes it)")
        raise PoolIdentityError(
            f"{out_dir}: holds a pool made with different {', '.join(changed)}{why}; "
            "use another --out, or --overwrite to replace it", changed)
    return {**old, **meta, "created": old.get("created")}


def _stored_image(image) -> bool:
    """Whether a row's image is in the form a shard stores, which `datasets.Image` encodes to itself: none,
    or a {"bytes", "path"} dict with exactly one of them (given both, it keeps only the path of a file
    that exists; a PIL image it encodes)."""
    if image is None:
        return True
    if not (isinstance(image, dict) and image.keys() == {"bytes", "path"}):
        return False
    data, path = image["bytes"], image["path"]
    return (isinstance(data, bytes) and path is None) or (data is None and isinstance(path, str))


def _held_in_the_pool(image):
    """`image` in a form `datasets.Image` encodes to bytes, never to a path outside the pool: it stores a PIL
    image opened from a file (or a {"bytes", "path"} dict naming a file that exists: `_bytes_with_a_name`) as
    that file's path alone, so a generator returning `Image.open(f)` (even drawn on since) or a temporary file's
    bytes with its name made a pool that needed the file, and lost the image with it. A file's image becomes a
    copy (PNG: its pixels, losslessly)."""
    from PIL import Image

    if isinstance(image, Image.Image) and getattr(image, "filename", ""):
        try:
            return image.copy()  # a copy has no file behind it
        except (AssertionError, ValueError, OSError):  # closed before its pixels were read: `with Image.open(f) as
            with Image.open(image.filename) as reopened:  # im: return im`, which datasets stored as its path
                return reopened.copy()
    return image


def _bytes_with_a_name(image) -> dict | None:
    """A {"bytes", "path"} dict holding both (a pool pulled from the Hub, a temporary file's bytes and name) in
    its stored form, bytes and the name's last part: `datasets.Image` would keep the path alone of a file that
    exists (relative to the working folder, too), and the name serves error messages; None for anything else."""
    if isinstance(image, dict) and isinstance(image.get("bytes"), bytes) and isinstance(image.get("path"), str):
        return {"bytes": image["bytes"], "path": os.path.basename(image["path"]) or None}
    return None


def _encoded_slices(rows: Iterable[dict], where: str) -> Iterator:
    """`rows` checked and taken into arrow tables of the pool's schema, `SHARD_SLICE_ROWS` rows at a time (at
    least one table, empty for no rows). A generator's PIL images are encoded here by the column's own
    `datasets.Image` (the bytes `Dataset.from_dict` wrote, a third of a selection's time and, over a whole
    shard, 2.5x its rows' memory); rows copied from a pool (select) hold the stored form already. Slices,
    because one arrow builder over a shard's image bytes grew by doubling and its freed buffers stayed with
    arrow's allocator; each slice's rows are let go before the next slice is read."""
    import pyarrow as pa

    encode = POOL_FEATURES["image"].encode_example
    rows, made = iter(rows), 0
    while True:
        part = list(itertools.islice(rows, SHARD_SLICE_ROWS))
        if not part and made:
            return
        for row in part:
            check_pool_row(row, f"{where}, row {row.get('row_id')!r}")
        columns = {name: [row.get(name) for row in part] for name in POOL_FEATURES}
        columns["image"] = [image if _stored_image(image) else _bytes_with_a_name(image) or encode(_held_in_the_pool(image))
                            for image in columns["image"]]
        full = len(part) == SHARD_SLICE_ROWS
        part = row = None  # this slice's images go before the next slice's are made
        made += 1
        yield pa.Table.from_pydict(columns, schema=POOL_FEATURES.arrow_schema)
        columns = None
        if not full:
            return


class PoolWriter:
    """Writes a pool shard by shard; re-opening the same pool with the same identity resumes it.

    `meta` holds the pool's provenance (see `IDENTITY_KEYS` for what must match on resume).
    """

    def __init__(self, out_dir: str | os.PathLike, meta: dict, overwrite: bool = False, describe_shard=None,
                 recipe_since: str | None = None):
        """`describe_shard(index)`: how a refusal names a kept shard whose inputs changed (default: its file);
        `recipe_since`: when the generator's current recipe began (`resumed_meta`)."""
        self.out_dir = Path(out_dir)
        self.data_dir = self.out_dir / DATA_DIR
        meta_path = self.out_dir / POOL_META
        existing = holds_pool(self.out_dir)
        # a finished pool re-opened: its finish stamp stays when this run writes no shard (scores of
        # the pool compare it: a renewed stamp made select refuse them as "data files changed")
        self._finished_before: str | None = None
        self._shards_written = 0
        if existing and overwrite:  # the old pool.json is replaced unread: --overwrite must mend a corrupt one
            for shard in self.data_dir.glob("*.parquet"):
                shard.unlink()
        elif existing:
            old = read_pool_meta(self.out_dir)
            if old.get("status") == "complete":
                self._finished_before = old.get("finished")
            merged = resumed_meta(self.out_dir, old, meta, recipe_since)
            if isinstance(old.get("shard_inputs"), list) and isinstance(meta.get("shard_inputs"), list):
                self._check_kept_shard_inputs(old["shard_inputs"], meta["shard_inputs"], describe_shard)
            meta = merged
            for shard in sorted(self.data_dir.glob("shard-*.parquet")):  # resume: kept shards must be whole
                check_shard_readable(shard)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.data_dir, recursive=False)  # shards of a killed run
        remove_stale_temporaries(self.out_dir, recursive=False)  # its pool.json / README.md, half-written
        self.meta = {
            "schema_version": POOL_SCHEMA_VERSION,
            "created": meta.get("created") or _utc_now(),
            "package_versions": package_versions(),
            **{k: v for k, v in meta.items() if k != "created"},
            "status": "in-progress",
        }
        write_json_atomic(meta_path, self.meta)

    def _check_kept_shard_inputs(self, old_inputs: list, new_inputs: list, describe_shard) -> None:
        """PoolIdentityError naming the kept shards made from other inputs than this run's (records,
        captions or image files changed since they were written, or no such shard now): kept, the
        pool would mix rows of two versions of one image or caption."""
        changed = []
        for shard in sorted(self.data_dir.glob("shard-*.parquet")):
            number = shard.stem.rpartition("-")[2]
            index = int(number) if number.isdigit() else len(old_inputs)  # not a shard of ours: refused
            recorded = old_inputs[index] if index < len(old_inputs) else None
            if recorded is None or index >= len(new_inputs) or recorded != new_inputs[index]:
                changed.append(describe_shard(index) if describe_shard and number.isdigit() else f"{DATA_DIR}/{shard.name}")
        if changed:
            what = f"shard {changed[0]}" if len(changed) == 1 else f"shards {changed[0]} and {len(changed) - 1} more"
            redo = "delete that shard to redo it" if len(changed) == 1 else "delete those shards to redo them"
            raise PoolIdentityError(
                f"{self.out_dir}: kept {what} made from other source records or image files than this run "
                f"reads (changed since written); restore them, {redo}, or --overwrite to start over",
                ["source records of kept shards"])

    def shard_path(self, index: int) -> Path:
        return self.data_dir / SHARD_PATTERN.format(index=index)

    def has_shard(self, index: int) -> bool:
        return self.shard_path(index).exists()

    def write_shard(self, index: int, rows: Iterable[dict]) -> Path:
        """Validate and write one shard atomically; an empty shard is written too (it marks done).

        `rows` is read once, a slice at a time (`_encoded_slices`), each slice written into an arrow file beside
        the shard before the next is read; the shard is then written from that file, memory-mapped. So rows
        made lazily (`Generator.iter_generate`) are let go slice by slice, and a shard's encoded table is never
        held whole (0.5 GB for 800 img-aug rows of 640x480, ~29 GB for 256 12-megapixel photos at --n 5)."""
        import pyarrow as pa
        from datasets import Dataset, DatasetInfo

        final = self.shard_path(index)
        tmp, staged = temporary_path(final), temporary_path(final, ".arrow")
        # a full disk names the shard; only the writes are in it: an OSError of the rows themselves (a lazy
        # generator's, naming no file) was said to be the shard's
        writing = functools.partial(naming_write_errors, final, tmp, staged)
        try:
            with writing():
                sink = pa.OSFile(str(staged), "wb")
            try:
                with writing():
                    arrow_file = pa.ipc.new_file(sink, POOL_FEATURES.arrow_schema)
                for encoded in _encoded_slices(rows, f"pool {self.out_dir.name}"):
                    with writing():
                        arrow_file.write_table(encoded)
                with writing():
                    arrow_file.close()
            finally:
                with writing():
                    sink.close()
            with writing():
                with pa.memory_map(str(staged)) as source:
                    # a fingerprint given: without one datasets hashes the table by pickling it whole (another copy)
                    table = Dataset(pa.ipc.open_file(source).read_all(), info=DatasetInfo(features=POOL_FEATURES),
                                    fingerprint=f"shard-{index}")
                    table.to_parquet(str(tmp))
                    table = None
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
            staged.unlink(missing_ok=True)
        self._shards_written += 1
        return final

    def finalize(self, expected_shards: int | None = None, notes: Callable[[int], dict] | None = None) -> dict:
        """Mark the pool complete. `notes(num_rows)` gives entries that need the finished row count
        (e.g. images a safety checker dropped): taken here so pool.json is written once, with them."""
        shards = sorted(self.data_dir.glob("shard-*.parquet"))
        if expected_shards is not None and len(shards) != expected_shards:
            raise PoolError(f"{self.out_dir}: {len(shards)} of {expected_shards} shards written; re-run to finish")
        num_rows = sum(check_shard_readable(s) for s in shards)
        self.meta.update(notes(num_rows) if notes is not None else {})
        self.meta["num_rows"] = num_rows
        self.meta["num_shards"] = len(shards)
        self.meta["status"] = "complete"
        unchanged = self._shards_written == 0 and self._finished_before is not None
        self.meta["finished"] = self._finished_before if unchanged else _utc_now()
        write_pool_card(self.out_dir, self.meta)  # before pool.json: a complete pool always has its card
        write_json_atomic(self.out_dir / POOL_META, self.meta)
        return self.meta


REPLACEMENT_DIR = ".replacement"  # inside a pool folder: the pool `generate --overwrite` builds to replace it


def replacement_folder(out_dir: str | os.PathLike) -> Path:
    """Where `augment generate --overwrite` writes the pool replacing the one at `out_dir`: inside it,
    hidden, so that the swap renames within one folder (a mount point, `--out .`, a link to a pool
    folder) and the pool there stays whole until the new one is complete (its shards were deleted
    when the writer opened: a bad image or Ctrl-C left neither pool)."""
    return Path(out_dir) / REPLACEMENT_DIR


def swap_in_replacement(out_dir: str | os.PathLike) -> None:
    """Put the finished pool of `replacement_folder(out_dir)` in the place of the one at `out_dir`: its
    rows, pool.json and generated card; the old pool's scores stay beside them (recognised as stale by
    their file stamps, as after an in-place rewrite) and so does a card of the user's own. pool.json
    leaves first and comes last, so no reader takes a half-swapped folder for a pool; Ctrl-C and
    SIGTERM wait for the renames (and the clean-up runs before they are raised); a SIGKILL within
    them leaves the old files in `OUT/.replaced-PID`, and the next run finishes the swap
    (`finish_interrupted_swap`)."""
    from augment.atomic import interrupts_held

    out_dir = Path(out_dir)
    replacement, aside = replacement_folder(out_dir), out_dir / f".replaced-{os.getpid()}"
    keep_card = _users_own_card(out_dir / POOL_CARD)
    moved = [name for name in (POOL_META, DATA_DIR, POOL_CARD) if name != POOL_CARD or not keep_card]
    try:
        with interrupts_held():
            aside.mkdir(exist_ok=True)
            for name in moved:
                if (out_dir / name).exists():
                    os.replace(out_dir / name, aside / name)
            _move_in(replacement, out_dir, moved)
    finally:  # also when a held Ctrl-C is raised on leaving the block: the swap is whole by then
        if (out_dir / POOL_META).exists():
            shutil.rmtree(aside, ignore_errors=True)
            shutil.rmtree(replacement, ignore_errors=True)


def _move_in(replacement: Path, out_dir: Path, names) -> None:
    for name in reversed(list(names)):  # pool.json last
        if (replacement / name).exists():
            os.replace(replacement / name, out_dir / name)


def finish_interrupted_swap(out_dir: str | os.PathLike) -> bool:
    """Finish an `--overwrite` swap a SIGKILL cut short (OUT without pool.json, the finished new pool's
    files still in OUT/.replacement, the old ones in OUT/.replaced-PID), and delete the old files a
    finished swap left; True when it finished one. (The next run deleted the new pool's folder, then
    refused OUT as "not a pool".)"""
    out_dir = Path(out_dir)
    leftovers = sorted(out_dir.glob(".replaced-*")) if out_dir.is_dir() else []
    if not leftovers:
        return False
    replacement = replacement_folder(out_dir)
    finished = False
    if not (out_dir / POOL_META).exists() and (replacement / POOL_META).is_file():
        # what is still in the replacement was not moved in yet, so a file of its name in OUT is the old
        # pool's (the old ones all leave before the first new one comes): aside with the others
        own_card = _users_own_card(out_dir / POOL_CARD)
        names = [name for name in (POOL_META, DATA_DIR, POOL_CARD)
                 if (replacement / name).exists() and not (name == POOL_CARD and own_card)]
        for name in names:
            if (out_dir / name).exists():
                os.replace(out_dir / name, leftovers[0] / f"{name}.old")
        _move_in(replacement, out_dir, names)
        finished = True
    if (out_dir / POOL_META).exists():
        for folder in leftovers:
            shutil.rmtree(folder, ignore_errors=True)
        if finished:
            shutil.rmtree(replacement, ignore_errors=True)
    return finished


def folders_overlap(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two folders are the same or one holds the other (resolved): an output there would
    delete or rewrite the files it reads."""
    a, b = Path(first).resolve(), Path(second).resolve()
    return a == b or a in b.parents or b in a.parents


def _normalised(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def identity_value(meta: dict, key: str) -> Any:
    """What `key` of a pool's provenance must equal for a resume. A selection's parent is its folder
    and what made it (its identity keys), not its whole pool.json: re-running generate on a finished
    pool renews its package versions (and its finish stamp when it writes a shard), not its rows."""
    value = meta.get(key)
    if key == "recipe" and value is None and meta.get("method") is not None:
        value = 1  # written before the key (2026-12-05): every generator's first recipe
    if key == "parent" and isinstance(value, dict):
        made = value.get("meta") if isinstance(value.get("meta"), dict) else {}
        # not the parent's recipe: recorded since 2026-12-05, it made a selection of a pool re-run since
        # "a pool made with different parent" (select rewrites a selection whole from the parent's rows)
        value = {"path": value.get("path"), **{k: identity_value(made, k) for k in IDENTITY_KEYS if k != "recipe"}}
    return _normalised(value)


# a shard `write_pool` writes ends at whichever comes first: `shard_rows` rows or this many bytes of images:
# a shard is held in memory three to four times over while it is written (its rows' bytes, their arrow
# table, the parquet writer's pages), and 5,000 rows of 800 KB images took 2 GB of memory per 300 rows
SHARD_IMAGE_BYTES = 128 * 2**20


def _image_bytes(row: dict) -> int:
    image = row.get("image")
    return len(image["bytes"]) if isinstance(image, dict) and isinstance(image.get("bytes"), bytes) else 0


def write_pool(out_dir: str | os.PathLike, rows: Iterable[dict], meta: dict, overwrite: bool = False, shard_rows: int = 5000) -> dict:
    """Write a whole pool from rows in one go (select, copies), in shards of `shard_rows` rows or
    `SHARD_IMAGE_BYTES` of encoded images, whichever is reached first.

    It is written into a folder beside `out_dir` and swapped in when complete: a pool already at
    `out_dir` (replaced with `overwrite`, or a re-run of the same selection) stays whole until then,
    so a failure or a kill mid-write leaves it as it was. What else that folder holds (its scores,
    a card or files of the user's own) is carried over."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():  # a link to a pool folder: that folder is replaced, the link kept
        out_dir = out_dir.resolve()
    # a generate writing into OUT meanwhile would go on writing into the swapped-in selection
    with sole_pool_writer(out_dir):
        return _write_whole_pool(out_dir, rows, meta, overwrite, shard_rows)


def _write_whole_pool(out_dir: Path, rows: Iterable[dict], meta: dict, overwrite: bool, shard_rows: int) -> dict:
    """`write_pool`, this process holding the pool folder's writer lock."""
    from augment.atomic import naming_staged_errors, staging_path, swap_folder_into_place

    existing = holds_pool(out_dir)  # refusals first: nothing is written before them
    if existing and not overwrite:  # (with --overwrite the pool there is replaced unread)
        meta = resumed_meta(out_dir, read_pool_meta(out_dir), meta)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_path(out_dir)
    try:
        with naming_staged_errors(staged, out_dir):  # an error names OUT, not the hidden staging folder
            writer = PoolWriter(staged, {"name": out_dir.name, **meta})
            buffer: list[dict] = []
            index = held = 0
            for row in rows:
                buffer.append(row)
                held += _image_bytes(row)
                if len(buffer) >= shard_rows or held >= SHARD_IMAGE_BYTES:
                    writer.write_shard(index, buffer)
                    buffer, index, held = [], index + 1, 0
            if buffer or index == 0:
                writer.write_shard(index, buffer)
                index += 1
            if existing:
                carry_over(out_dir, staged)
            written = writer.finalize(expected_shards=index)
            swap_folder_into_place(staged, out_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return written


def carry_over(old: Path, staged: Path) -> None:
    """Everything in the pool folder `old` but its rows, its pool.json and its generated card, into
    `staged` (hard links where the filesystem allows: no copy of a large embedding cache). A user's
    own card stays, and scores of the old rows come along to be recognised as stale by their key,
    as they are when a pool is rewritten in place."""
    from augment.atomic import is_temporary

    def link_or_copy(source, destination):
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    for entry in old.iterdir():
        if entry.name in (DATA_DIR, POOL_META, REPLACEMENT_DIR) or is_temporary(entry):
            continue
        if entry.name == POOL_CARD and not _users_own_card(entry):
            continue  # written anew for the new rows
        target = staged / entry.name
        if target.exists() or target.is_symlink():  # carried by an earlier run killed before its swap
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(entry, target)


# ----------------------------------------------------------------------------- reading


@dataclass
class Pool:
    """A pool as read back: the validated rows and their provenance."""

    path: Path
    dataset: Any  # datasets.Dataset with POOL_FEATURES
    meta: dict

    @property
    def method(self) -> str:
        return self.meta.get("method", "?")

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.name

    def __len__(self) -> int:
        return len(self.dataset)


def resolve_pool_path(path_or_id: str) -> Path:
    """A local pool folder, or a Hub dataset id (`org/name` or `org/name@revision`) downloaded,
    or taken from the cache, as one."""
    from augment.atomic import swap_leftover_note

    path = Path(path_or_id)
    if path.exists():
        return path
    if note := swap_leftover_note(path):  # a local pool a killed swap left aside, not a Hub id
        raise PoolError(f"{path_or_id}: no such pool folder{note}")
    repo_id, _, revision = str(path_or_id).partition("@")
    parts = repo_id.split("/")
    if len(parts) == 2 and all(parts) and not repo_id.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision or None))
        except Exception as exc:  # offline, 401/404...: one line, never a token
            from augment.cli_common import scrub_secrets

            raise PoolError(scrub_secrets(f"no pool folder {path_or_id} here, and cannot fetch pool {path_or_id!r} from the "
                                          f"Hub: {type(exc).__name__}: {first_line(exc)}")) from None
    raise PoolError(f"{path_or_id}: no such pool folder")  # (a swap's leftover beside it: named above)


# reads of a pool that another process swapped in meanwhile, tried again before giving up
SNAPSHOT_TRIES = 5


def _file_stamp(path: Path) -> list | None:
    """`file_identity` (size, modification and change times) and which file it is (device, inode): a file
    renamed in is another file even where the times are whole seconds (ext3, HFS+, some NFS servers) or
    FAT's two, and a pool swapped in within them, of the same sizes, passed for the one read."""
    from augment.source_cache import file_identity

    identity = file_identity(path)
    try:
        stat = os.stat(path)
    except OSError:
        return identity
    return None if identity is None else [*identity, stat.st_dev, stat.st_ino]


def _pool_files(path: Path) -> tuple:
    """Which pool.json and data files `path` holds now (`_file_stamp`): a read whose files were the same
    before and after it read one pool."""
    shards = sorted((path / DATA_DIR).glob("*.parquet")) if (path / DATA_DIR).is_dir() else []
    return (_file_stamp(path / POOL_META), [(s.name, _file_stamp(s)) for s in shards])


def _swap_under_way(path: Path) -> bool:
    """pool.json gone and an old pool's files aside (`.replaced-PID`): a swap between its renames (or
    one a SIGKILL cut short, which the next generate finishes)."""
    return not (path / POOL_META).exists() and path.is_dir() and any(path.glob(".replaced-*"))


def load_pool(path_or_id: str | os.PathLike, allow_partial: bool = False, allow_empty: bool = False) -> Pool:
    """Read and validate a pool; refuse wrong schemas, damaged files, unfinished pools and (unless
    `allow_empty`) pools without rows, each with one clear line. The rows and pool.json are one
    pool's: a read during which an `augment generate --overwrite` or `augment select` swapped another
    pool into the folder (`swap_in_replacement`) is read again (the old pool.json with the new rows
    was read as one pool, and a shard of each was refused as a damaged pool)."""
    import time

    from augment.atomic import wait_out_a_swap

    wait_out_a_swap(path_or_id)  # `select --overwrite` swaps the whole folder: between its renames there is none
    path = resolve_pool_path(str(path_or_id))
    failure: Exception | None = None
    for attempt in range(SNAPSHOT_TRIES):
        before = _pool_files(path)
        try:
            pool = _load_pool_once(path, allow_partial, allow_empty)
        except (PoolError, SchemaError, OSError) as exc:
            if _pool_files(path) == before and not _swap_under_way(path):
                raise
            failure = exc
        else:
            if _pool_files(path) == before:
                return pool
            failure = None
        time.sleep(0.05 * (attempt + 1))  # a swap is a few renames
    if failure is not None and _swap_under_way(path):
        raise failure
    raise PoolError(f"{path}: another process kept replacing this pool while it was read (an augment generate "
                    "--overwrite or select writing it); wait for it to finish, then run again")


def _load_pool_once(path: Path, allow_partial: bool, allow_empty: bool) -> Pool:
    from datasets import Features, load_dataset

    meta_path = path / POOL_META
    if not meta_path.exists():
        raise PoolError(f"{path}: not a pool (no {POOL_META})")
    meta = read_pool_meta(path)
    version = meta.get("schema_version")
    if version != POOL_SCHEMA_VERSION:
        raise SchemaError(f"{path}: pool schema v{version}, this mat-plus reads v{POOL_SCHEMA_VERSION}")
    if meta.get("status") != "complete" and not allow_partial:
        raise PoolError(f"{path}: pool is not finished (status {meta.get('status')!r}); re-run its generate command to resume it")
    shards = sorted((path / DATA_DIR).glob("*.parquet"))
    if not shards:
        raise PoolError(f"{path}: pool has no data shards")
    rows = 0
    row_ids: set[str] = set()
    for shard in shards:
        where = f"{path}/{DATA_DIR}/{shard.name}"
        opened = open_shard(shard, where)
        rows += opened.metadata.num_rows
        check_pool_features(Features.from_arrow_schema(opened.schema_arrow), f"{path.name}/{DATA_DIR}/{shard.name}")
        check_shard_rows(opened, where, row_ids)
    recorded = meta.get("num_rows")
    if meta.get("status") == "complete" and isinstance(recorded, int) and rows != recorded:
        # a shard deleted after a damage report (as that report says) and the command not re-run: the
        # rest was read, scored and pushed as if whole, its card still saying the whole pool's rows
        raise PoolError(f"{path}: its data shards hold {rows} rows, its {POOL_META} says {recorded}: a shard is "
                        "missing or was replaced; re-run the command that wrote the pool to make it whole")
    if rows == 0 and not allow_empty:
        raise PoolError(f"{path}: the pool has no rows (method {meta.get('method')!r} wrote none); "
                        "nothing to train, score, select or push")
    try:
        # data_files are glob patterns to datasets: a folder named `pool[v2]` matched no file (glob.escape)
        dataset = load_dataset("parquet", data_files=[glob.escape(str(s)) for s in shards], split="train", features=POOL_FEATURES,
                               cache_dir=_arrow_cache_dir(shards))
    except Exception as exc:  # a shard whose footer is whole but whose pages are not
        raise PoolError(f"{path}: {_damaged_shard(shards) or 'a data shard'} is damaged "
                        f"({first_line(exc.__cause__ or exc)}); delete it and re-run the command that wrote it") from None
    return Pool(path=path, dataset=dataset, meta=meta)


def _arrow_cache_dir(shards: list[Path]) -> str:
    """The `datasets` cache folder for these shards' Arrow copy, named by the shards' identities
    (`_file_stamp`: size, modification and change times, inode): `datasets` keys its cache on a file's path and mtime
    only, so a shard replaced keeping its old mtime (`cp -p`, `rsync -t`, a restored backup) was
    read as the old rows."""
    import hashlib

    import datasets

    identities = [[os.path.abspath(shard), _file_stamp(shard)] for shard in shards]  # a shard renamed in: another file
    key = hashlib.sha256(json.dumps(identities).encode()).hexdigest()[:16]
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "mat-plus-pools" / key)


def _damaged_shard(shards: list[Path]) -> str | None:
    """The first shard whose pages cannot be read (only looked for after a failed load)."""
    import pyarrow.parquet as pq

    for shard in shards:
        try:
            pq.read_table(shard)
        except Exception:
            return f"{DATA_DIR}/{shard.name}"
    return None
