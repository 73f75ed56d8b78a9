"""Load any supported image-caption source into one normalised `datasets.Dataset`.

Every command that reads data calls `load_source`. The result always has the columns of
`SOURCE_FEATURES`: one row per image with `image_id`, `image`, `captions`, `split`, `meta`.

Supported inputs (detected from the path):

* Karpathy split JSON (`dataset_flickr30k.json`, `dataset_coco.json`, the sample world's
  `dataset_sample.json`), or a folder holding exactly one `dataset_*.json`;
* the ALBEF/SGA retrieval JSON (`flickr30k_train.json`: `[{image, caption, image_id}]`;
  test/val: `[{image, caption: [...]}]`);
* a `datasets` folder written by `save_to_disk`, parquet files or a folder of them;
* an image folder with `metadata.jsonl` (`file_name` plus `caption`/`captions`/`text`);
* a CSV with `image,caption` rows (several rows per image allowed, optional `split` column);
* a Hugging Face Hub dataset id (`org/name`).

Detecting the format and reading each one into records is `augment.source_formats`; this module
checks the records, builds the dataset, decodes images and fingerprints sources.

**Lazy images.** Ids, captions, splits and image paths are read and checked up front (cheap:
no image is opened); an image is decoded only when a row is read (`dataset[i]["image"]`), by
`open_image`, which raises `SourceError` naming the file when it is missing, corrupt, or too
large. `validate=True` (`--validate`, `augment inspect`, and `--skip-bad`, which must know what
to skip) decodes every image once at load time instead. The `image` column holds each image
as stored (path or bytes) under `SourceImage`, a `datasets.Image` feature whose decoding is
`open_image`: row access, `select`, `select_columns`, `filter` and iteration give PIL images,
column access (`dataset["captions"]`) decodes nothing, `undecoded(dataset)` gives the stored
`{"path", "bytes"}` values.

**One decoding rule** (`open_image`), used by every command: pixels as stored, EXIF orientation
not applied (what ALBEF, BLIP, SGA and open_clip do: `Image.open(path).convert("RGB")`, so
numbers stay comparable with theirs); 16-bit and 32-bit greyscale scaled to 8 bits (not clipped
to white); every mode converted to RGB; PIL's decompression-bomb limit enforced as an error.

**Image paths stay under the image root**: a record whose path leaves it (`../x.png`, an
absolute path, a symlink pointing out) is refused unless `allow_outside_root=True`
(`--allow-outside-root`).

Bad records raise `SourceError` naming the record; with `skip_bad=True` they are skipped and
listed in the returned report instead.

**Read once.** A JSON, CSV or metadata.jsonl source's normalised table and content fingerprint
are kept in the source cache (`augment.source_cache`) after its first read; later reads map
that Arrow file while the source's files and image folders are unchanged.
"""
from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import os
import re
import stat
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augment.atomic import write_json_atomic
from augment.errors import SourceError, first_line
from augment.schema import SOURCE_FEATURES, SPLIT_ALIASES, SPLITS, is_blank
from augment.source_cache import SourceCache, default_cache_folder, file_identity, identity_within, path_identity
from augment.source_formats import FolderListings, SourceRecord, detect_format, forget_parsed_json, read_records
from datasets import Image  # augment.schema imports datasets already

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from PIL import Image as PILImage

log = logging.getLogger(__name__)

# modes holding more than 8 bits per grey value: scaled down, never clipped (PIL's convert clips)
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# the images this process has said are over Pillow's limit: once each (training decodes them every epoch)
_NAMED_LARGE: set[tuple[str, Any]] = set()
# the folders of the sources this process read (absolute path -> time.time_ns() when the latest read of a
# source there began): an image file under one that changed after that moment is refused when it is read
# (`check_unchanged_since_read`); DataLoader workers get it through `augment.loading.worker_options`
_SOURCES_READ_AT: dict[str, int] = {}


@dataclass
class LoadReport:
    """What `load_source` read and what it skipped (with `skip_bad`)."""

    source: str
    format: str
    skipped: list[dict] = field(default_factory=list)
    validated: bool = False  # every image decoded once at load time
    report_path: Path | None = None  # where `--skip-bad` wrote the report of the skipped records

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"source": self.source, "format": self.format, "skipped": self.skipped})
        return path

    def write_skipped(self, path: str | os.PathLike | None, out: str | os.PathLike | None) -> Path:
        """`--skip-bad`'s report: at `path` (`--skip-report`), else beside `out` (OUT.skipped.json),
        else ./skipped.json. It never replaces a file that is not an earlier report (the source's own
        file, an image...): SourceError instead, as for a path that cannot be written."""
        target = skip_report_target(path, out)
        check_skip_report_target(target, self.source)
        try:
            return self.write(target)
        except OSError as exc:
            raise SourceError(f"{target}: cannot write the --skip-bad report ({exc.strerror or first_line(exc)})") from None


_REPORT_KEYS = {"source", "format", "skipped"}


def skip_report_target(path: str | os.PathLike | None, out: str | os.PathLike | None) -> Path:
    """Where `--skip-bad`'s report goes: `path` (`--skip-report`), else OUT.skipped.json, else ./skipped.json."""
    if path:
        return Path(path)
    return Path(str(out).rstrip("/") + ".skipped.json") if out else Path("skipped.json")


def _is_skip_report(path: Path) -> bool:
    """Whether the file at `path` is a report `LoadReport.write` wrote (so replacing it loses nothing)."""
    try:
        if path.stat().st_size > 1 << 30:
            return False
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and set(document) == _REPORT_KEYS and isinstance(document["skipped"], list)


def check_skip_report_target(target: str | os.PathLike, source: str | None = None) -> None:
    """SourceError (one line) when `--skip-bad`'s report cannot or must not be written at `target`:
    an existing file that is not an earlier report (the source itself, one of its images, any
    other data), a folder, or a path under a file. Checked before the source is read."""
    target = Path(target)
    what = "the source itself" if source and os.path.exists(source) and target.exists() and \
        os.path.samefile(source, target) else None
    if what is None and os.path.isdir(target):
        what = "a folder"
    elif what is None and target.exists() and not _is_skip_report(target):
        what = "an existing file that is not an earlier --skip-bad report"
    if what:
        raise SourceError(f"--skip-report {target}: is {what}; the report would replace it: name a new file")
    from augment.atomic import output_folder_problem

    problem = output_folder_problem(target.parent)
    if problem:
        raise SourceError(f"--skip-report {target}: its folder {target.parent}: {problem}")


# ----------------------------------------------------------------------------- decoding


def open_image(value: Any, where: str | None = None) -> "PILImage.Image":
    """Decode one image by the project's single rule (module docstring); SourceError naming it.

    `value` is a stored image (`{"path", "bytes"}`), a file path, or an already decoded PIL image.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return to_rgb(value)
    path, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (value, None)
    named = where is not None
    if where is None:
        where = f"image file {path}" if data is None else f"image {path or '(embedded bytes)'}"
    if data is None:
        if not path:
            raise SourceError(f"{where}: no image")
        try:
            found = os.stat(path)  # the stat `os.path.isfile` made, its times checked too
        except (OSError, ValueError):
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):  # the default `where` already names the path: say it once
            raise SourceError(f"{where}: {image_not_found(path)}" if named else image_not_found(path))
        check_unchanged_since_read(path, found, where)
    try:
        with large_images_named():  # Pillow's own warning (two lines) names no record: one line of ours
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                limit = Image.MAX_IMAGE_PIXELS
                # under twice the limit Pillow decodes it; embedded bytes without a file name are told apart by
                # their digest (each was "image (embedded bytes)", and only the first such image was named)
                large = bool(limit) and image.width * image.height > limit
                key = (where, path or (hashlib.blake2b(data, digest_size=16).hexdigest() if large and data else None))
                if large and key not in _NAMED_LARGE:
                    _NAMED_LARGE.add(key)
                    log.warning("%s: a very large image (%d x %d, %d pixels; Pillow's safety limit is %d): decoded",
                                where, image.width, image.height, image.width * image.height, limit)
                image.load()
                return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise SourceError(f"{where}: image too large to decode safely ({first_line(exc)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL names embedded bytes by their buffer's repr ("<_io.BytesIO object at 0x...>"): nothing to a user
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", first_line(exc))
        raise SourceError(f"{where}: unreadable or corrupt image ({reason})") from None


def note_source_read(source: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
    """Record that the local source `source` (a folder or a file) is read from now on: its image files lie
    under its folder (a file's: the folder holding it) or `image_root`. A later read of a source there
    replaces the record (its captions are then the ones read)."""
    source, started = Path(source), time.time_ns()
    if not source.exists():  # a Hub id: its images are bytes, or files of the Hub's cache
        return
    for folder in {source if source.is_dir() else source.parent, *([Path(image_root)] if image_root else [])}:
        _SOURCES_READ_AT[os.path.abspath(folder)] = started


def sources_read_at() -> dict[str, int]:
    """This process's `note_source_read` records (for a worker process: `restore_sources_read_at`)."""
    return dict(_SOURCES_READ_AT)


def restore_sources_read_at(read_at: dict[str, int]) -> None:
    """In a worker process started by spawn or forkserver (fork copies them): the parent's records."""
    for folder, started in read_at.items():
        _SOURCES_READ_AT.setdefault(folder, started)


def check_unchanged_since_read(path: str, found: os.stat_result, where: str) -> None:
    """SourceError when image file `path` (`found`: its stat) lies under the folder of a source this process
    read and was modified, replaced or had its status changed (its ctime: `cp -p` keeps the old mtime)
    after that read began. Images are read lazily by path, long after the captions: an `augment make-sample
    --overwrite` or an edited image during a run paired new pixels with the old captions, unseen. Costs no
    system call (the stat is the one that found the file) and a few dictionary look-ups. On POSIX the ctime
    decides (an mtime may be set to any time); a time in the future (a clock's, not a change) does not count."""
    if not _SOURCES_READ_AT:
        return
    folder = os.path.dirname(os.path.abspath(path))
    while (started := _SOURCES_READ_AT.get(folder)) is None:
        parent = os.path.dirname(folder)
        if parent == folder:
            return  # under no source folder read here (an image outside its root, with --allow-outside-root)
        folder = parent
    # on POSIX the ctime alone: every change sets it (a write, a rename into place, `cp -p`, `touch -d`), and
    # nothing sets it ahead, while an mtime can be any time (an archive unpacked with times in the future: still
    # in the future at the read, then passed during a long run, it refused an unchanged image). Windows' st_ctime
    # is the creation time: its mtime too. A time later than now is a clock's, not a change (a server's ahead)
    now = time.time_ns()
    times = (found.st_ctime_ns,) if os.name != "nt" else (found.st_mtime_ns, found.st_ctime_ns)
    changed = max((t for t in times if started < t <= now), default=None)
    if changed is not None:
        import datetime

        at = datetime.datetime.fromtimestamp(changed / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise SourceError(f"{where}: the file changed at {at}, after this command read the source's captions: its "
                          "pixels may no longer be those the captions describe (an augment make-sample --overwrite or "
                          "an edited image); run the command again once the source is no longer being written")


@contextmanager
def large_images_named():
    """Pillow's DecompressionBombWarning off while images are decoded (`open_image` names a very large one once, in a
    line of its own) and transformed: a crop over the limit warns again, in two lines naming no record, every time (a
    training crop of a 100 Mpx image, every epoch)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        yield


def to_rgb(image: "PILImage.Image") -> "PILImage.Image":
    """RGB pixels of `image`: wide greyscale (16-bit PNG, 32-bit int, float) scaled to 8 bits,
    every other mode through PIL's own conversion. EXIF orientation is deliberately ignored."""
    import numpy as np
    from PIL import Image

    if image.mode not in _WIDE_GREY_MODES:
        rgb = image.convert("RGB") if image.mode != "RGB" else image.copy()
        rgb.info.pop("exif", None)  # so no later reader (datasets applies it) turns the pixels
        return rgb
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0  # [0, 1] floats or 8-bit range
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        scale = 255.0 / 65535.0  # 16-bit range (PIL reads 16-bit greyscale PNGs as I;16 or I)
    else:
        scale = 1.0
    grey = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


@dataclass(repr=False)
class SourceImage(Image):
    """datasets' Image feature decoded by `open_image` (one rule, one-line errors). It serialises
    as a plain Image: a saved source reads back with datasets' own decoding."""

    def decode_example(self, value, token_per_repo_id=None):
        if not self.decode:
            raise RuntimeError("decoding is disabled for this feature")
        return open_image(value)

    def __repr__(self) -> str:
        return f"SourceImage(mode={self.mode!r}, decode={self.decode})"


def lazy_source_features():
    """SOURCE_FEATURES with the image column decoded by `open_image` when a row is read."""
    from datasets import Features

    features = Features(dict(SOURCE_FEATURES))
    features["image"] = SourceImage(mode=SOURCE_FEATURES["image"].mode)
    return features


def undecoded(dataset: "datasets.Dataset") -> "datasets.Dataset":
    """The source with its stored images (`{"path", "bytes"}`), without decoding any."""
    return dataset.cast_column("image", Image(decode=False))


# ----------------------------------------------------------------------------- validation


def image_not_found(path: str | None) -> str:
    """Why an image file is not there to read: not found, or behind a folder this user may not open
    (a chmod 000 images/ folder was reported as every image missing)."""
    folder = os.path.dirname(os.path.abspath(path)) if path else ""
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if folder and os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
        return f"image file {path}: cannot open its folder {folder} (permission denied)"
    if path and os.path.isdir(path):
        return f"image file {path}: is a folder, not an image file"
    if path and os.path.islink(path) and os.path.lexists(path):  # a link to nothing, or a loop of links
        return f"image file {path}: a symbolic link to no file ({os.readlink(path)})"
    return f"image file not found: {path}"


def _check_image(record: SourceRecord) -> None:
    """Fully decode the image once so truncated files fail here, not mid-training."""
    data = record.stored.bytes_of(record.stored_row) if record.stored is not None else None
    if data is None:
        if not record.image_path:
            raise SourceError(f"{record.where}: no image")
        if not os.path.isfile(record.image_path):
            raise SourceError(f"{record.where}: {image_not_found(record.image_path)}")
    open_image({"path": record.image_path, "bytes": data}, where=record.where)


def _lone_surrogate(text) -> str | None:
    """The first unpaired UTF-16 surrogate in `text` (`\\ud83d`), or None. JSON may escape one
    (`"\\ud83d"`, a tool that cut a caption inside an emoji), Python reads it, and arrow, parquet and
    UTF-8 cannot hold it: a traceback when the table was built, before the record could be named."""
    if not isinstance(text, str) or text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x}"
    return None


def _check_record(record: SourceRecord, seen_ids: set[str], validate: bool) -> None:
    if record.problem:
        raise SourceError(f"{record.where}: {record.problem}")
    if record.split not in SPLITS:
        raise SourceError(f"{record.where}: unknown split {record.split!r} (expected one of {list(SPLITS)})")
    if record.image_id in seen_ids:
        raise SourceError(f"{record.where}: duplicate image id {record.image_id!r}")
    if not record.captions:
        raise SourceError(f"{record.where}: image has no captions")
    for number, caption in enumerate(record.captions):
        if is_blank(caption):
            problem = "is empty"
        elif surrogate := _lone_surrogate(caption):
            problem = (f"holds {surrogate}, half of a UTF-16 surrogate pair alone (JSON's escape of a character cut "
                       "in two, e.g. an emoji): not text UTF-8 can hold")
        else:
            continue
        where = record.caption_where[number] if record.caption_where else record.where
        raise SourceError(f"{where}: caption {number} {problem}")
    for name, value in (("image id", record.image_id), ("image path", record.image_path)):
        surrogate = _lone_surrogate(value)
        if surrogate:
            raise SourceError(f"{record.where}: its {name} holds {surrogate}, half of a UTF-16 surrogate pair alone: "
                              "not text UTF-8 can hold")
    if record.stored is None and not record.image_found and (not record.image_path or not os.path.isfile(record.image_path)):
        raise SourceError(f"{record.where}: {image_not_found(record.image_path)}")
    if validate:
        _check_image(record)


# ----------------------------------------------------------------------------- entry point


@contextmanager
def _without_cycle_collection():
    """Python's cycle collector paused while a source is read: reading a large JSON builds
    millions of long-lived objects, and the collector's repeated scans of them cost more than
    the reading (1.5 s of 4 s at 20,000 images). They hold no cycles to collect."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_source(
    source: str,
    image_root: str | None = None,
    split: str | None = None,
    skip_bad: bool = False,
    validate: bool = False,
    progress: bool = False,
    allow_outside_root: bool = False,
    csv_img_key: str = "image",
    csv_caption_key: str = "caption",
    csv_separator: str | None = None,
    cache: bool | str | os.PathLike = True,
) -> tuple["datasets.Dataset", LoadReport]:
    """Read `source` into a dataset with SOURCE_FEATURES' columns; SourceError on the first bad record.

    Ids, captions, splits and image paths are checked now; images are decoded when rows are read
    (module docstring), or all now with `validate`. `split` is the split for formats that carry
    none (CSV, ALBEF without a split in its name). With `skip_bad`, bad records are left out and
    listed in the report instead (this decodes every image now: a skipped record must be known).
    `csv_*`: a CSV/TSV's image and caption columns and separator (open_clip_train's names; None:
    "," for .csv, tab for .tsv).
    `cache`: JSON, CSV and metadata.jsonl sources are read once and mapped from an Arrow file in
    the source cache afterwards (`augment.source_cache`; True: `$MATPLUS_CACHE/sources`, a
    path: that folder, False: no cache). `skip_bad` never uses it (what it skips depends on the
    images); `validate` reads the source afresh (it decodes every image anyway) and refreshes it.
    """
    with _without_cycle_collection():
        try:
            return _load_source(source, image_root, split, skip_bad, validate, progress, allow_outside_root,
                                (csv_img_key, csv_caption_key, csv_separator), cache)
        finally:
            forget_parsed_json()  # read: its objects need not outlive the call


_CACHED_FORMATS = ("karpathy", "albef", "csv", "imagefolder")  # parsed record by record; images are paths
_CACHED_SUFFIXES = (".json", ".csv", ".tsv", ".jsonl")


def _source_cache(source: str, image_root: str | None, split: str | None, allow_outside_root: bool,
                  csv_options: tuple, cache: bool | str | os.PathLike) -> SourceCache | None:
    """The cache entry for this read, or None for sources not worth caching: `datasets` folders,
    parquet and Hub ids are Arrow already, and copying their tables would copy embedded images."""
    if cache is False or cache is None:
        return None
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() not in _CACHED_SUFFIXES:
            return None
    elif not path.is_dir() or not (any(path.glob("dataset_*.json")) or (path / "metadata.jsonl").exists()):
        return None
    folder = default_cache_folder() if cache is True else Path(cache)
    options = {"image_root": image_root, "split": split, "allow_outside_root": allow_outside_root,
               "csv": list(csv_options)}
    return SourceCache(folder, source, options)


def _parsed_files(path: Path, fmt: str) -> list[Path]:
    """The files a reader of `fmt` parses for `path` (their identity keys the cache)."""
    if path.is_file():
        return [path]
    if fmt == "karpathy":
        return sorted(path.glob("dataset_*.json"))[:1]
    return [path / "metadata.jsonl"]


def _load_source(source: str, image_root: str | None, split: str | None, skip_bad: bool, validate: bool,
                 progress: bool, allow_outside_root: bool, csv_options: tuple[str, str, str | None],
                 cache: bool | str | os.PathLike = True) -> tuple["datasets.Dataset", LoadReport]:
    from augment.progress import progress_bar

    source = str(source)
    path = Path(source)
    note_source_read(path, image_root)  # an image file there changed after now is refused when read
    entry = None if skip_bad else _source_cache(source, image_root, split, allow_outside_root, csv_options, cache)
    if entry is not None and not validate:
        hit = entry.load(lazy_source_features().arrow_schema)
        if hit is not None:
            dataset = _dataset_of_table(hit.table, hit.fingerprint, state=hit.state)
            return dataset, LoadReport(source=source, format=hit.format)
    # identities before reading: a file changed during the read then fails the next hit's check
    identities = {source: file_identity(path)} if path.is_file() else {}
    fmt = detect_format(source)
    if entry is not None and fmt not in _CACHED_FORMATS:
        entry = None
    if entry is not None and path.is_dir():
        identities = {str(p): file_identity(p) for p in _parsed_files(path, fmt)}
    listings = FolderListings()  # one listing per image folder for this read
    if path.is_dir():
        listings.note(source)  # a file added there can change what the folder is read as
    records = read_records(source, fmt, image_root, split, allow_outside_root, listings, csv_options)

    validate = validate or skip_bad
    report = LoadReport(source=source, format=fmt, validated=validate)
    columns: dict[str, Any] = {name: [] for name in SOURCE_FEATURES}
    stored: list[tuple[Any, int] | None] = []  # each kept record's embedded bytes: (their StoredBytes, row)
    seen: set[str] = set()
    for record in progress_bar(records, desc=f"reading {path.name or source}", unit="img", disable=not progress):
        record.captions = [c.strip() if isinstance(c, str) else c for c in record.captions]
        record.split = SPLIT_ALIASES.get(record.split, record.split)
        try:
            _check_record(record, seen, validate)
        except SourceError as exc:
            if not skip_bad:
                raise
            report.skipped.append({"record": record.where, "image_id": record.image_id, "problem": str(exc)})
            continue
        seen.add(record.image_id)
        columns["image_id"].append(record.image_id)
        columns["image"].append(record.image_path)
        stored.append((record.stored, record.stored_row) if record.stored is not None else None)
        columns["captions"].append(record.captions)
        columns["split"].append(record.split)
        columns["meta"].append(json.dumps(record.meta, sort_keys=True) if record.meta else "{}")
    if not columns["image_id"]:
        error = SourceError(f"{source}: no usable records" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
        error.report = report  # what was skipped and why: `--skip-bad` still writes its report
        raise error
    import pyarrow as pa

    # the same table `Dataset.from_dict` builds, converted by arrow in one go, without its
    # per-value Python encoding (12x faster at 20k rows)
    paths = columns["image"]
    columns["image"] = image_column(paths, stored)
    table = pa.table(columns, schema=lazy_source_features().arrow_schema)
    dataset = _dataset_of_table(table, state=_embedded_table_state(columns, paths, stored))
    if entry is not None and not report.skipped and not entry.racy(identities, listings.stamps):
        entry.store(table, fmt, source_fingerprint(dataset), identities, listings.stamps)
    return dataset, report


def image_column(paths: list, stored: list) -> "pa.ChunkedArray":
    """The image column (arrow structs of bytes and path) of records with these paths and these
    embedded bytes ((StoredBytes, row) or None). A run of consecutive rows of one stored table
    is a slice of its arrow array, which shares the memory `datasets` maps from its files: a
    source's embedded images are not copied into this process (2x their size before)."""
    import pyarrow as pa

    pieces: list = []  # binary arrays, in record order

    def flush(run):
        if run is None:
            return
        table, first, count = run
        piece = pa.nulls(count, pa.binary()) if table is None else table.array.slice(first, count)
        for chunk in (piece.chunks if isinstance(piece, pa.ChunkedArray) else [piece]):
            pieces.append(chunk if chunk.type == pa.binary() else chunk.cast(pa.binary()))

    run = None  # (StoredBytes or None, first row, rows)
    for entry in stored:
        table, row = entry if entry is not None else (None, -1)
        if run is not None and run[0] is table and (table is None or row == run[1] + run[2]):
            run = (run[0], run[1], run[2] + 1)
            continue
        flush(run)
        run = (table, row, 1)
    flush(run)
    path_array = pa.array(paths, pa.string())
    fields = [pa.field("bytes", pa.binary()), pa.field("path", pa.string())]
    chunks, offset = [], 0
    for piece in pieces:
        chunks.append(pa.StructArray.from_arrays([piece, path_array.slice(offset, len(piece))], fields=fields))
        offset += len(piece)
    return pa.chunked_array(chunks, type=pa.struct(fields))


def _embedded_table_state(columns: dict, paths: list, stored: list) -> str | None:
    """`datasets`' fingerprint for a table with embedded images: a digest of its other columns
    and of where each image's bytes come from (their table's own fingerprint and row), so that
    `datasets` does not hash the table itself (it serialises every image to do so: their size
    again in memory, and most of the read's time). None when no image is embedded."""
    if not any(entry is not None for entry in stored):
        return None
    digest = hashlib.sha256()
    for name in ("image_id", "captions", "split", "meta"):
        digest.update(json.dumps(columns[name]).encode("utf-8"))
    digest.update(json.dumps(paths).encode("utf-8"))
    digest.update(json.dumps([None if entry is None else (entry[0].fingerprint, entry[1]) for entry in stored]).encode("utf-8"))
    return "embedded-" + digest.hexdigest()[:32]


def _dataset_of_table(table, fingerprint: str | None = None, state: str | None = None) -> "datasets.Dataset":
    """The source dataset over an arrow table of SOURCE_FEATURES' schema (in memory or mapped
    from the source cache: `InMemoryTable` either way, so `datasets` writes no cache files of
    its own beside ours); `fingerprint`: its content fingerprint when already known; `state`:
    `datasets`' fingerprint of the table when known (else `datasets` hashes every row)."""
    import datasets
    from datasets.table import InMemoryTable

    dataset = datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=lazy_source_features()),
                               fingerprint=state)
    if fingerprint is not None:
        _remember_fingerprint(dataset, fingerprint)
    return dataset


def validate_images(dataset: "datasets.Dataset") -> None:
    """Decode every image of a loaded source once (SourceError naming the first bad one)."""
    for row in undecoded(dataset).select_columns(["image_id", "image"]):
        open_record_image(row["image"], row["image_id"])


def open_record_image(value: Any, image_id: str) -> "PILImage.Image":
    """`open_image` of a source record's stored image (`{"path", "bytes"}`), an error naming the
    record by its image id and file: `image '000002' (data/images/000002.png): ...`."""
    path = value.get("path") if isinstance(value, dict) else value
    return open_image(value, where=f"image {image_id!r} ({path})")


def table_rows(dataset: "datasets.Dataset"):
    """The rows of its arrow table a selected or shuffled `dataset` holds, in its order (a pyarrow
    ChunkedArray), or None when it is the table as it is. `datasets` keeps them in the private
    `_indices` and has no public reader short of `flatten_indices`, which copies the whole table:
    this is the one place that reads it."""
    mapping = getattr(dataset, "_indices", None)
    return None if mapping is None else mapping.column(0)


def table_positions(dataset: "datasets.Dataset", indices):
    """The positions in `dataset`'s arrow table of its rows `indices` (numpy int64): the same numbers
    unless the dataset is a selection or shuffle of its table (`table_rows`)."""
    import numpy as np

    positions = np.asarray(indices, dtype=np.int64)
    mapping = table_rows(dataset)
    return positions if mapping is None else mapping.to_numpy()[positions]


# positions further apart than this many rows are taken from separate slices of a table (`take_table_rows`)
_TAKE_GAP = 1000
_TAKE_RUNS = 64  # ... from at most this many slices (more: positions all over the table, taken in one go)


def take_table_rows(table, positions):
    """`table.take(positions)` (a pyarrow Table, rows in the order asked) at a cost that follows the rows
    taken, not the table: pyarrow's take on a chunked table goes through every chunk of every column
    (74 ms for 1,000 rows of a 600k-row pool's 6,035 chunks: a pass over a pool a block at a time,
    `augment select`'s or `score`'s, was quadratic in the pool). The positions are taken from zero-copy
    slices around runs of nearby positions, then put back in the order asked."""
    import numpy as np
    import pyarrow as pa

    batches, order = _taken_batches(table, positions)
    if batches is None:
        return table.schema.empty_table()
    taken = pa.Table.from_batches(list(batches), schema=table.schema)
    if np.array_equal(order, np.arange(len(order))):  # asked in order (a selection's blocks)
        return taken
    return taken.take(_inverse(order))


def take_table_lists(table, positions) -> dict[str, list]:
    """`take_table_rows(table, positions).to_pydict()`, converted a record batch at a time and put in the
    order asked as Python lists: the arrow copy of the rows taken is never whole at once, nor (asked out of
    order) taken again to reorder it. A chunk of `score`'s 800 rows of 620 KB images held the rows' bytes
    twice in arrow beside their Python copy and the memory-mapped file: 1.9 GB more for 0.5 GB of images."""
    import numpy as np

    batches, order = _taken_batches(table, positions)
    columns: dict[str, list] = {name: [] for name in table.column_names}
    batches = iter(batches or ())
    while (batch := next(batches, None)) is not None:  # each batch's arrow copy let go before the next is taken
        values, batch = batch.to_pydict(), None
        for name in columns:
            columns[name].extend(values[name])
    if order is None or np.array_equal(order, np.arange(len(order))):
        return columns
    inverse = _inverse(order)
    return {name: [values[k] for k in inverse] for name, values in columns.items()}


def _inverse(order):
    import numpy as np

    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


def _taken_batches(table, positions):
    """The rows `positions` of `table` as record batches in ascending position order (an iterator), and the order
    (`argsort`) that puts the asked order into it; (None, None) for no positions. Each batch is taken
    from one chunk: pyarrow's take on a chunked table of binary columns (images) concatenated the chunks
    first, a copy of the whole slice around the positions (up to `_TAKE_GAP` rows between two of them) or,
    for positions spread all over, of the whole table."""
    import numpy as np
    import pyarrow as pa

    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if len(positions) == 0:
        return None, None
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    breaks = np.flatnonzero(np.diff(ordered) > _TAKE_GAP) + 1
    if len(breaks) >= _TAKE_RUNS:  # positions spread over the whole table: one pass over its chunks costs no more
        spans = [(table, 0, ordered)]
    else:
        spans = [(table.slice(int(run[0]), int(run[-1]) - int(run[0]) + 1), int(run[0]), run)
                 for run in np.split(ordered, breaks)]

    def batches():  # taken as they are read: a caller converting each lets it go before the next is taken
        for part, first, run in spans:
            local, offset = run - first, 0
            for batch in part.to_batches():
                low, high = np.searchsorted(local, [offset, offset + batch.num_rows])
                if high > low:
                    yield batch.take(pa.array(local[low:high] - offset))
                offset += batch.num_rows

    return batches(), order


def arrow_columns(dataset: "datasets.Dataset", names: list[str]) -> list:
    """Whole columns of `dataset` as arrow arrays, in its row order: read row by row they cost 40x
    more, and they are formatted in place (select_columns/with_format deep-copy the dataset object)."""
    with dataset.formatted_as("arrow", columns=list(names)):
        table = dataset[:]
    return [table[name] for name in names]


def split_names(split: str) -> tuple[str, ...]:
    """The splits a split argument names: one (`test`), or several joined by `+` as in Hugging Face
    datasets (`train+restval`: Karpathy's COCO training set of 113,287 images is both); Hugging
    Face's names (`validation`) are read as the table's (`val`). An unknown name is one line."""
    names = []
    for part in str(split).split("+"):
        name = SPLIT_ALIASES.get(part.strip(), part.strip())
        if name not in SPLITS:
            raise SourceError(f"unknown split {part.strip()!r} (expected one of {list(SPLITS)}, several joined by "
                              "'+' such as train+restval, or 'all')")
        if name not in names:
            names.append(name)
    return tuple(names)


def warn_of_restval_left_out(dataset: "datasets.Dataset", split: str | None, option: str) -> None:
    """One warning line when `split` (of a train-split option) leaves out the source's `restval` rows:
    Karpathy's COCO training set, what papers train on, is train + restval (113,287 images)."""
    if split in (None, "all") or "restval" in split_names(split):
        return
    [splits] = arrow_columns(dataset, ["split"])
    import pyarrow.compute as pc

    left_out = int(pc.sum(pc.equal(splits, "restval")).as_py() or 0)
    if left_out:
        log.warning("the source's %d restval images are left out (%s %s); %s %s+restval takes them too, as "
                    "Karpathy's COCO training set (ALBEF's and BLIP's coco_karpathy_train.json) does",
                    left_out, option, split, option, split)


def select_split(dataset: "datasets.Dataset", split: str | None, unlabelled_hint: str = "") -> "datasets.Dataset":
    """Rows of a split, or of several joined by '+' (`split_names`; None or "all" keeps every row),
    in the source's order; an absent split is an error, ending in `unlabelled_hint` (what the command
    offers) when every row is "train", as a source that names no split (an open_clip TSV, an ALBEF
    file) is read."""
    if split in (None, "all"):
        return dataset
    names = split_names(split)
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    [splits] = arrow_columns(dataset, ["split"])
    present = set(splits.unique().to_pylist())
    absent = [name for name in names if name not in present]
    if absent:
        hint = f"; a source that names no splits is read as 'train': {unlabelled_hint}" \
            if unlabelled_hint and present == {"train"} else ""
        raise SourceError(f"source has no {absent[0]!r} rows (splits present: {sorted(present)}){hint}")
    indices = np.flatnonzero(pc.is_in(splits, value_set=pa.array(names)).to_numpy(zero_copy_only=False))
    if table_rows(dataset) is None and dataset.format["type"] is None:
        # a whole table (a loaded source): its split's rows taken by arrow in one call. `select`
        # would keep an indices mapping through which every later whole-column read gathers
        # rows one slice at a time in Python (0.3 s for a 15,000-image split, on every start)
        import datasets
        from datasets.fingerprint import generate_random_fingerprint
        from datasets.table import InMemoryTable

        table = dataset.data.table.take(indices)
        return datasets.Dataset(InMemoryTable(table), info=dataset.info.copy(), split=dataset.split,
                                fingerprint=generate_random_fingerprint())
    return dataset.select(indices)


# content fingerprints of whole loaded sources, by their arrow table's id (with a weak reference to
# tell a recycled id): set at load (the cache stores it), so it is computed once per source change
_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def _remember_fingerprint(dataset: "datasets.Dataset", fingerprint: str) -> None:
    import weakref

    table = dataset.data.table
    key = id(table)
    _FINGERPRINTS[key] = (weakref.ref(table, lambda _ref, key=key: _FINGERPRINTS.pop(key, None)), fingerprint)


def _known_fingerprint(dataset: "datasets.Dataset") -> str | None:
    """The remembered fingerprint if `dataset` is a loaded source's whole table (a `select`ed or
    otherwise derived dataset has other rows or another table; a format change keeps both)."""
    table = getattr(getattr(dataset, "data", None), "table", None)
    known = _FINGERPRINTS.get(id(table))
    if known is None or known[0]() is not table or table_rows(dataset) is not None:
        return None
    return known[1]


def source_fingerprint(dataset: "datasets.Dataset") -> str:
    """Content hash of ids, splits and captions: pools record it to detect a changed source."""
    known = _known_fingerprint(dataset)
    if known is not None:
        return known
    digest = hashlib.sha256()
    columns = [column.to_pylist() for column in arrow_columns(dataset, ["image_id", "split", "captions"])]
    for image_id, split, captions in zip(*columns):
        digest.update(json.dumps([image_id, split, captions]).encode())
    fingerprint = digest.hexdigest()[:16]
    if table_rows(dataset) is None and hasattr(dataset, "data"):
        _remember_fingerprint(dataset, fingerprint)
    return fingerprint


def image_files_fingerprint(dataset: "datasets.Dataset", root: str | os.PathLike | None = None) -> str:
    """Which pixels a source's rows read, where `source_fingerprint` (ids, splits, captions, which
    pools must share) does not look: each stored image's `source_cache.path_identity` (absolute
    path, size, modification and change times: another --image-root, an image replaced in place,
    even with its old mtime as `cp -p` keeps it) or its embedded bytes' hash. No image is
    decoded. The score cache's key holds it, with `root` (the source's folder): the paths inside
    it are written relative to it, so a source moved with its images (`mv` keeps their times)
    keeps its fingerprint; a path elsewhere stays absolute."""
    identities = image_identities(dataset)
    if root is not None:
        base = os.path.abspath(root)
        identities = [identity_within(i, base) if isinstance(i, list) else i for i in identities]
    return identities_fingerprint(identities)


def identities_fingerprint(identities: list) -> str:
    """`image_files_fingerprint` of rows whose `image_identities` are these."""
    return hashlib.sha256(repr(identities).encode()).hexdigest()[:16]


def image_identities(dataset: "datasets.Dataset") -> list:
    """`image_files_fingerprint`'s identity of each row's stored image, in row order."""
    [column] = arrow_columns(dataset, ["image"])  # the stored structs: nothing decoded
    identities = []
    for value in column.to_pylist():  # one list, hashed once: a re-score pays a few us per image
        data, path = (value or {}).get("bytes"), (value or {}).get("path")
        identities.append(("bytes", hashlib.sha256(data).hexdigest()) if data else path_identity(path) if path else None)
    return identities


def shard_input_fingerprints(dataset: "datasets.Dataset", shard_size: int, images: list | None = None,
                             whole_source: str | None = None) -> list[str]:
    """One fingerprint per shard of `shard_size` rows: what that shard's pool rows are made from
    (its rows' ids, splits and captions; `images`: the rows' `image_identities`, for a generator
    that reads pixels; `whole_source`, a fingerprint every shard's rows depend
    on, for a generator that reads other rows than the shard's). A resumed pool keeps a shard only
    while its fingerprint is unchanged, so an image fixed or skipped in a shard not yet written
    does not stop the resume, and no pool mixes rows of two versions of one image."""
    columns = [column.to_pylist() for column in arrow_columns(dataset, ["image_id", "split", "captions"])]
    rows = list(zip(*columns))
    images = images if images is not None else [None] * len(rows)
    fingerprints = []
    for start in range(0, max(len(rows), 1), shard_size):
        digest = hashlib.sha256(json.dumps([whole_source, rows[start:start + shard_size],
                                            images[start:start + shard_size]]).encode())
        fingerprints.append(digest.hexdigest()[:16])
    return fingerprints


def scene_of(row: dict) -> dict | None:
    """The sample world's scene description of a source row, if it has one."""
    meta = row.get("meta")
    if not meta:
        return None
    return json.loads(meta).get("scene")
