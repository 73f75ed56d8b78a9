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

import csv
import functools
import gc
import hashlib
import io
import json
import os
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from augment.atomic import write_json_atomic
from augment.errors import SourceError, first_line
from augment.schema import SOURCE_FEATURES, SPLITS
from augment.source_cache import SourceCache, default_cache_folder, file_identity, folder_stamp, path_identity
from datasets import Image  # augment.schema imports datasets already

if TYPE_CHECKING:
    import datasets
    from PIL import Image as PILImage

KARPATHY_KEYS = {"filename", "filepath", "split", "sentences", "sentids", "imgid", "cocoid"}
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text")
ID_COLUMNS = ("image_id", "img_id", "id", "filename", "file_name")
# modes holding more than 8 bits per grey value: scaled down, never clipped (PIL's convert clips)
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass
class SourceRecord:
    """One image with its captions before validation; `where` names it in errors."""

    where: str
    image_id: str
    captions: list[str]
    split: str
    image_path: str | None = None
    image_bytes: bytes | None = None
    meta: dict = field(default_factory=dict)
    problem: str | None = None  # found while reading (a path outside the root...), raised by the checks
    image_found: bool = False  # image_path was seen to be a file while reading (no second stat)


@dataclass
class LoadReport:
    """What `load_source` read and what it skipped (with `skip_bad`)."""

    source: str
    format: str
    skipped: list[dict] = field(default_factory=list)
    validated: bool = False  # every image decoded once at load time

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"source": self.source, "format": self.format, "skipped": self.skipped})
        return path

    def write_skipped(self, path: str | os.PathLike | None, out: str | os.PathLike | None) -> Path:
        """`--skip-bad`'s report: at `path` (`--skip-report`), else beside `out` (OUT.skipped.json),
        else ./skipped.json."""
        default = Path(str(out).rstrip("/") + ".skipped.json") if out else Path("skipped.json")
        return self.write(path or default)


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
        if not os.path.isfile(path):  # the default `where` already names the path: say it once
            raise SourceError(f"{where}: image file not found: {path}" if named else f"image file not found: {path}")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise SourceError(f"{where}: image too large to decode safely ({first_line(exc)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SourceError(f"{where}: unreadable or corrupt image ({first_line(exc)})") from None


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


# ----------------------------------------------------------------------------- detection


TABLE_SUFFIXES = (".csv", ".tsv")  # .tsv: open_clip_train's tab-separated file


def is_table_file(source: str | None) -> bool:
    """A CSV/TSV source (the only kind the --csv-* options describe) is a file with that suffix."""
    return source is not None and Path(str(source)).suffix.lower() in TABLE_SUFFIXES


def table_options_problem(img_key: str | None, caption_key: str | None, separator: str | None) -> str | None:
    """What is wrong with a CSV/TSV source's column options (open_clip_train's `--csv-*`), or None."""
    if not img_key or not caption_key:
        return "--csv-img-key and --csv-caption-key must not be empty"
    if separator is not None and len(separator) != 1:
        return f"--csv-separator must be one character, got {separator!r}"
    return None


def detect_format(source: str) -> str:
    """Name the reader for `source`: karpathy, albef, disk, parquet, imagefolder, csv or hub."""
    path = Path(source)
    if path.is_dir():
        from augment.pool import POOL_META

        if (path / POOL_META).is_file():  # its parquet shards would otherwise read as a source without images
            raise SourceError(f"{source}: is a pool ({POOL_META}), not an image-caption source; pass the source "
                              f"it was made from (its {POOL_META} names it; training takes pools with --pools)")
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "disk"
        if (path / "metadata.jsonl").exists():
            return "imagefolder"
        karpathy = sorted(path.glob("dataset_*.json"))
        if len(karpathy) == 1:
            return "karpathy"
        if any(path.glob("*.parquet")) or any(path.glob("data/*.parquet")):
            return "parquet"
        raise SourceError(
            f"{source}: folder has no recognised source (expected a dataset_*.json, metadata.jsonl, "
            "parquet files or a save_to_disk dataset)"
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            head = _read_json(path)
            if isinstance(head, dict) and "images" in head:
                return "karpathy"
            if isinstance(head, list):
                return "albef"
            raise SourceError(f"{source}: JSON is neither Karpathy ({{'images': [...]}}) nor ALBEF ([{{image, caption}}])")
        if suffix in TABLE_SUFFIXES:
            return "csv"
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".jsonl" and path.name == "metadata.jsonl":
            return "imagefolder"
        raise SourceError(f"{source}: unsupported file type {suffix!r}")
    if _looks_like_hub_id(source):
        return "hub"
    raise SourceError(f"{source}: no such file or folder")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return (
        len(parts) in (1, 2)
        and all(parts)
        and not source.startswith((".", "/", "~"))
        and not Path(source).suffix
    )


def _not_utf8(path: Path) -> SourceError:
    """One line naming the first line of `path` that is not UTF-8 (decoders report chunk offsets)."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return SourceError(f"{path}: not UTF-8 text (byte 0x{line[exc.start]:02x} on line {number}, "
                                   f"column {exc.start + 1}); save it as UTF-8")
    return SourceError(f"{path}: not UTF-8 text; save it as UTF-8")


def _read_json(path: Path) -> Any:
    stat = path.stat()
    return _read_json_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)  # detect_format and the reader parse the same file once
def _read_json_cached(path: str, mtime_ns: int, size: int) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a UTF-8 byte-order mark is fine
            return json.load(handle)
    except UnicodeDecodeError:
        raise _not_utf8(Path(path)) from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


# ----------------------------------------------------------------------------- field checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: Any, where: str, name: str) -> str:
    """A field that must hold text (a number is not silently turned into a file name or caption)."""
    if not isinstance(value, str):
        shown = "" if value is None else " " + json.dumps(value, default=str)[:40]  # "got null", not "got null null"
        raise SourceError(f"{where}: {name} must be a string, got {_type_name(value)}{shown}")
    return value


def _caption_list(value: Any, where: str, name: str) -> list[str]:
    """Captions given as a list of strings or of {"raw": str} (Karpathy sentences)."""
    if not isinstance(value, list):
        raise SourceError(f"{where}: {name} must be a list of captions, got {_type_name(value)}")
    captions = []
    for number, item in enumerate(value):
        if isinstance(item, dict):
            captions.append(_string(item.get("raw"), where, f"{name}[{number}].raw"))
        else:
            captions.append(_string(item, where, f"{name}[{number}]"))
    return captions


def _id(value: Any, where: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SourceError(f"{where}: {name} must be a string or an integer, got {_type_name(value)}")
    return str(value)


# ----------------------------------------------------------------------------- readers


def _default_image_roots(anchor: Path, image_root: str | None) -> list[Path]:
    if image_root:
        return [Path(image_root)]
    folder = anchor if anchor.is_dir() else anchor.parent
    return [folder, folder / "images"]


class _FolderListings:
    """Which names each image folder holds, read once per `load_source` (one `os.scandir` per
    folder) with each folder's real path: resolving a record is then two dictionary lookups, not
    a stat and a realpath (a dozen system calls) per record, so reading a source's paths does not
    cost per-record file-system work on top of its JSON."""

    def __init__(self):
        self._names: dict[str, dict[str, bool]] = {}  # folder -> {name: is a symlink}, regular files and links only
        self._real: dict[str, str] = {}
        self.stamps: dict[str, int | None] = {}  # folder -> mtime_ns before it was read (the source cache's check)

    def note(self, folder: str) -> None:
        """Record a folder whose contents the reading depended on (its mtime, taken before reading it)."""
        if folder not in self.stamps:
            self.stamps[folder] = folder_stamp(folder)

    def kind(self, folder: str, name: str) -> str | None:
        """"file" (a regular file), "link" (a symlink: resolved the slow way), or None."""
        names = self._names.get(folder)
        if names is None:
            names = {}
            self.note(folder)
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.is_symlink():
                            names[entry.name] = True
                        elif entry.is_file(follow_symlinks=False):
                            names[entry.name] = False
            except OSError:  # no such folder, not a folder, unreadable: nothing found there
                pass
            self._names[folder] = names
        if name not in names:
            return None
        return "link" if names[name] else "file"

    def real(self, folder: str) -> str:
        if folder not in self._real:
            self._real[folder] = os.path.realpath(folder)
        return self._real[folder]


def _resolve_image(relative: str, roots: list[Path], allow_outside_root: bool,
                   listings: _FolderListings) -> tuple[str, str | None, bool]:
    """(path, problem, found): the first existing candidate, else all of them joined by ' or '.

    A candidate that resolves (symlinks followed) outside its root is a problem unless allowed.
    A plain relative path (no '..', not absolute) to a regular file is looked up in the folder
    listings; anything else (symlinks, '..', absolute paths) takes the per-file route.
    """
    plain = bool(relative) and not os.path.isabs(relative) and os.path.normpath(relative) == relative \
        and not relative.startswith("..")
    candidates = []
    for root in roots:
        candidate = os.path.join(str(root), relative) if plain else str(root / relative)
        candidates.append(candidate)
        if plain:
            folder, name = os.path.split(candidate)
            kind = listings.kind(folder, name)
            if kind is None:
                continue
            if kind == "file":
                if allow_outside_root:
                    return candidate, None, True
                real_folder, base = listings.real(folder), listings.real(str(root))
                if real_folder == base or real_folder.startswith(base.rstrip(os.sep) + os.sep):
                    return candidate, None, True
                return candidate, _outside_root(relative, root, os.path.join(real_folder, name)), True
        listings.note(os.path.dirname(candidate) or ".")
        path = Path(candidate)
        if path.is_file():
            if not allow_outside_root:
                real, base = path.resolve(), root.resolve()
                if real != base and base not in real.parents:
                    return candidate, _outside_root(relative, root, real), True
            return candidate, None, True
    return " or ".join(candidates), None, False


def _outside_root(relative: str, root: Path, real) -> str:
    return (f"image path {relative!r} leads outside the image root {root} (to {real}); "
            "pass --allow-outside-root to read it anyway")


def _record_with_image(where: str, image_id: str, captions: list[str], split: str, relative: str,
                       roots: list[Path], allow_outside_root: bool, listings: _FolderListings,
                       meta: dict | None = None) -> SourceRecord:
    path, problem, found = _resolve_image(relative, roots, allow_outside_root, listings)
    return SourceRecord(where, image_id, captions, split, path, meta=meta or {}, problem=problem, image_found=found)


def _read_karpathy(source: Path, image_root: str | None, allow_outside_root: bool,
                   listings: _FolderListings) -> Iterable[SourceRecord]:
    json_path = source if source.is_file() else sorted(source.glob("dataset_*.json"))[0]
    data = _read_json(json_path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise SourceError(f"{json_path}: Karpathy JSON needs an 'images' list")
    roots = _default_image_roots(json_path, image_root)
    for index, entry in enumerate(images):
        where = f"{json_path.name}: images[{index}]"
        if not isinstance(entry, dict) or "filename" not in entry:
            raise SourceError(f"{where}: entry has no 'filename'")
        filename = _string(entry["filename"], where, "'filename'")
        where = f"{where} ({filename})"
        relative = os.path.join(_string(entry.get("filepath", ""), where, "'filepath'"), filename)
        image_id = _id(entry["cocoid"], where, "'cocoid'") if "cocoid" in entry else Path(filename).stem
        captions = _caption_list(entry.get("sentences", []), where, "'sentences'")
        split = _string(entry.get("split", ""), where, "'split'")
        meta = {k: v for k, v in entry.items() if k not in KARPATHY_KEYS}
        yield _record_with_image(where, image_id, captions, split, relative, roots, allow_outside_root, listings, meta)


def _split_from_name(name: str, default: str | None) -> str:
    lowered = name.lower()
    for split in ("train", "val", "test"):
        if f"_{split}" in lowered or lowered.startswith(split):
            return split
    return default or "train"


def _read_albef(source: Path, image_root: str | None, split: str | None, allow_outside_root: bool,
                listings: _FolderListings) -> Iterable[SourceRecord]:
    data = _read_json(source)
    roots = _default_image_roots(source, image_root)
    file_split = split or _split_from_name(source.stem, None)
    grouped: "OrderedDict[str, SourceRecord]" = OrderedDict()
    for index, entry in enumerate(data):
        where = f"{source.name}: [{index}]"
        if isinstance(entry, dict) and "caption" not in entry and "text" in entry:
            entry = {**entry, "caption": entry["text"]}  # ALBEF's grounding files: referring expressions
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise SourceError(f"{where}: entry needs 'image' and 'caption'")
        image = _string(entry["image"], where, "'image'")
        caption = entry["caption"]
        captions = _caption_list(caption, where, "'caption'") if isinstance(caption, list) else [_string(caption, where, "'caption'")]
        if image not in grouped:
            image_id = _id(entry["image_id"], where, "'image_id'") if "image_id" in entry else Path(image).stem
            grouped[image] = _record_with_image(f"{where} ({image})", image_id, [], file_split, image, roots, allow_outside_root,
                                                listings)
        grouped[image].captions.extend(captions)
    yield from grouped.values()


def _read_csv(source: Path, image_root: str | None, split: str | None,
              allow_outside_root: bool, listings: _FolderListings, img_key: str = "image",
              caption_key: str = "caption", separator: str | None = None) -> Iterable[SourceRecord]:
    roots = _default_image_roots(source, image_root)
    grouped: "OrderedDict[str, SourceRecord]" = OrderedDict()
    separator = separator or ("\t" if source.suffix.lower() == ".tsv" else ",")
    with open(source, newline="", encoding="utf-8-sig") as handle:
        # strict: a stray quote is an error (as pandas, open_clip_train's reader, says "EOF inside string"),
        # not a field that silently swallows the rest of the file
        reader = csv.DictReader(handle, delimiter=separator, strict=True)
        line = 1
        try:
            if not reader.fieldnames or not {img_key, caption_key} <= set(reader.fieldnames):
                raise SourceError(f"{source}: CSV needs a header with {img_key!r} and {caption_key!r} columns "
                                  f"(separator {separator!r}), got {reader.fieldnames}")
            while True:
                line = reader.line_num + 1  # the record's first physical line (a quoted caption may span several)
                row = next(reader, None)
                if row is None:
                    break
                if None in row or None in row.values():  # DictReader's restkey / restval
                    count = len(reader.fieldnames) + len(row.get(None) or ()) - sum(v is None for v in row.values())
                    raise SourceError(f"{source}: line {line}: {count} fields where the header has "
                                      f"{len(reader.fieldnames)} (separator {separator!r})")
                image = row[img_key] or ""
                if image not in grouped:
                    image_id = str(Path(image).with_suffix("")) if image else f"line-{line}"
                    grouped[image] = _record_with_image(
                        f"{source.name}: line {line} ({image})", image_id, [], row.get("split") or split or "train",
                        image, roots, allow_outside_root, listings,
                    )
                    if not image:
                        grouped[image].problem = "empty 'image' field"
                grouped[image].captions.append(row[caption_key] or "")
        except UnicodeDecodeError:
            raise _not_utf8(source) from None
        except csv.Error as exc:
            raise SourceError(f"{source}: malformed CSV in the record starting on line {line}: {exc}") from None
    yield from grouped.values()


def _read_imagefolder(source: Path, split: str | None, allow_outside_root: bool,
                      listings: _FolderListings) -> Iterable[SourceRecord]:
    folder = source if source.is_dir() else source.parent
    metadata = folder / "metadata.jsonl"
    try:
        with open(metadata, encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"metadata.jsonl: line {line_no}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{where}: malformed JSON: {exc.msg}") from None
                if not isinstance(entry, dict) or "file_name" not in entry:
                    raise SourceError(f"{where}: entry has no 'file_name'")
                file_name = _string(entry["file_name"], where, "'file_name'")
                captions = _captions_of(entry, where)
                image_id = _id(entry["image_id"], where, "'image_id'") if "image_id" in entry else Path(file_name).stem
                meta = {k: v for k, v in entry.items() if k not in {"file_name", "image_id", "split", *CAPTION_COLUMNS}}
                row_split = _string(entry.get("split") or split or "train", where, "'split'")
                yield _record_with_image(f"{where} ({file_name})", image_id, captions, row_split, file_name,
                                         [folder], allow_outside_root, listings, meta)
    except UnicodeDecodeError:
        raise _not_utf8(metadata) from None


def _captions_of(entry: dict, where: str) -> list[str]:
    for column in CAPTION_COLUMNS:
        if column in entry and entry[column] is not None:
            value = entry[column]
            if isinstance(value, list):
                return _caption_list(value, where, repr(column))
            return [_string(value, where, repr(column))]
    raise SourceError(f"{where}: no caption column (expected one of {list(CAPTION_COLUMNS)})")


def _read_table(dataset_or_dict: Any, name: str, split: str | None) -> Iterable[SourceRecord]:
    """Normalise a `datasets` Dataset/DatasetDict (disk, parquet or Hub) into records, without
    decoding its images (an Image column is read as stored bytes/paths)."""
    from datasets import DatasetDict, Image

    parts = dataset_or_dict.items() if isinstance(dataset_or_dict, DatasetDict) else [(None, dataset_or_dict)]
    for part_split, table in parts:
        columns = set(table.column_names)
        if "image" not in columns:
            raise SourceError(f"{name}: table has no 'image' column (columns: {sorted(columns)})")
        if isinstance(table.features.get("image"), Image):
            table = table.cast_column("image", Image(decode=False))
        table = table.with_format(None)
        id_column = next((c for c in ID_COLUMNS if c in columns), None)
        for index, row in enumerate(table):
            where = f"{name}: row {index}" + (f" of split {part_split!r}" if part_split else "")
            image = row["image"]
            image_id = str(row[id_column]) if id_column else f"{part_split or 'row'}-{index}"
            record = SourceRecord(
                where, image_id, _captions_of(row, where),
                row.get("split") or part_split or split or "train",
            )
            if isinstance(image, dict):
                record.image_bytes, record.image_path = image.get("bytes"), image.get("path")
                if record.image_bytes is not None and not record.image_path:
                    record.image_path = where  # a name for errors; the bytes are the image
            elif isinstance(image, str):
                record.image_path = image
            elif isinstance(image, (bytes, bytearray)):
                record.image_bytes, record.image_path = bytes(image), where
            else:
                record.problem = f"unsupported 'image' value of type {_type_name(image)}"
            meta = row.get("meta")
            if isinstance(meta, str) and meta:
                try:
                    record.meta = json.loads(meta)
                except json.JSONDecodeError as exc:
                    record.problem = f"'meta' is not JSON ({exc.msg})"
            yield record


def _load_table(source: str, fmt: str) -> Any:
    import datasets

    try:
        if fmt == "disk":
            return datasets.load_from_disk(source)
        if fmt == "parquet":
            path = Path(source)
            files = [str(path)] if path.is_file() else sorted(str(p) for p in list(path.glob("*.parquet")) + list(path.glob("data/*.parquet")))
            return datasets.load_dataset("parquet", data_files=files, split="train")
        return datasets.load_dataset(source)
    except SourceError:
        raise
    except Exception as exc:  # offline, 404, damaged files, any client error: one line, no token
        from augment.cli_common import scrub_secrets

        what = "the Hub dataset" if fmt == "hub" else f"the {fmt} source"
        cause = exc.__cause__ or exc
        raise SourceError(scrub_secrets(f"{source}: cannot load {what} ({type(cause).__name__}: {first_line(cause)})")) from None


# ----------------------------------------------------------------------------- validation


def _check_image(record: SourceRecord) -> None:
    """Fully decode the image once so truncated files fail here, not mid-training."""
    if record.image_bytes is None:
        if not record.image_path:
            raise SourceError(f"{record.where}: no image")
        if not os.path.isfile(record.image_path):
            raise SourceError(f"{record.where}: image file not found: {record.image_path}")
    open_image({"path": record.image_path, "bytes": record.image_bytes}, where=record.where)


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
        if not isinstance(caption, str) or not caption.strip():
            raise SourceError(f"{record.where}: caption {number} is empty")
    if record.image_bytes is None and not record.image_found and (not record.image_path or not os.path.isfile(record.image_path)):
        raise SourceError(f"{record.where}: image file not found: {record.image_path}")
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
            # the parsed JSON is read: drop it now (millions of objects the collector would
            # otherwise scan for as long as the process lives)
            _read_json_cached.cache_clear()


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
    from tqdm.auto import tqdm

    source = str(source)
    path = Path(source)
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
    listings = _FolderListings()  # one listing per image folder for this read
    if path.is_dir():
        listings.note(source)  # a file added there can change what the folder is read as
    if fmt == "karpathy":
        records = _read_karpathy(path, image_root, allow_outside_root, listings)
    elif fmt == "albef":
        records = _read_albef(path, image_root, split, allow_outside_root, listings)
    elif fmt == "csv":
        records = _read_csv(path, image_root, split, allow_outside_root, listings, *csv_options)
    elif fmt == "imagefolder":
        records = _read_imagefolder(path, split, allow_outside_root, listings)
    else:
        records = _read_table(_load_table(source, fmt), source, split)

    validate = validate or skip_bad
    report = LoadReport(source=source, format=fmt, validated=validate)
    columns: dict[str, list] = {name: [] for name in SOURCE_FEATURES}
    seen: set[str] = set()
    for record in tqdm(records, desc=f"reading {path.name or source}", unit="img", disable=not progress):
        record.captions = [c.strip() if isinstance(c, str) else c for c in record.captions]
        try:
            _check_record(record, seen, validate)
        except SourceError as exc:
            if not skip_bad:
                raise
            report.skipped.append({"record": record.where, "image_id": record.image_id, "problem": str(exc)})
            continue
        seen.add(record.image_id)
        columns["image_id"].append(record.image_id)
        columns["image"].append({"path": record.image_path, "bytes": record.image_bytes})
        columns["captions"].append(record.captions)
        columns["split"].append(record.split)
        columns["meta"].append(json.dumps(record.meta, sort_keys=True) if record.meta else "{}")
    if not columns["image_id"]:
        raise SourceError(f"{source}: no usable records" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    import pyarrow as pa

    # the same table `Dataset.from_dict` builds, converted by arrow in one go, without its
    # per-value Python encoding (12x faster at 20k rows)
    table = pa.table(columns, schema=lazy_source_features().arrow_schema)
    dataset = _dataset_of_table(table)
    if entry is not None and not report.skipped and not entry.racy(identities, listings.stamps):
        entry.store(table, fmt, source_fingerprint(dataset), identities, listings.stamps)
    return dataset, report


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


def validate_images(dataset: "datasets.Dataset", progress: bool = False) -> None:
    """Decode every image of a loaded source once (SourceError naming the first bad one)."""
    from tqdm.auto import tqdm

    stored = undecoded(dataset).select_columns(["image_id", "image"])
    for row in tqdm(stored, total=len(stored), desc="decoding images", unit="img", disable=not progress):
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


def arrow_columns(dataset: "datasets.Dataset", names: list[str]) -> list:
    """Whole columns of `dataset` as arrow arrays, in its row order: read row by row they cost 40x
    more, and they are formatted in place (select_columns/with_format deep-copy the dataset object)."""
    with dataset.formatted_as("arrow", columns=list(names)):
        table = dataset[:]
    return [table[name] for name in names]


def select_split(dataset: "datasets.Dataset", split: str | None) -> "datasets.Dataset":
    """Rows of one split (None or "all" keeps every row); an absent split is an error."""
    if split in (None, "all"):
        return dataset
    if split not in SPLITS:
        raise SourceError(f"unknown split {split!r} (expected one of {list(SPLITS)} or 'all')")
    import numpy as np
    import pyarrow.compute as pc

    [splits] = arrow_columns(dataset, ["split"])
    indices = np.flatnonzero(pc.equal(splits, split).to_numpy(zero_copy_only=False))
    if not len(indices):
        present = sorted(set(splits.to_pylist()))
        raise SourceError(f"source has no {split!r} rows (splits present: {present})")
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


def image_files_fingerprint(dataset: "datasets.Dataset") -> str:
    """Which pixels a source's rows read, where `source_fingerprint` (ids, splits, captions, which
    pools must share) does not look: each stored image's `source_cache.path_identity` (absolute
    path, size, modification and change times: another --image-root, an image replaced in place,
    even with its old mtime as `cp -p` keeps it) or its embedded bytes' hash. No image is
    decoded. Resume tags and the score cache's key hold it."""
    [column] = arrow_columns(dataset, ["image"])  # the stored structs: nothing decoded
    identities = []
    for value in column.to_pylist():  # one list, hashed once: a re-score pays a few us per image
        data, path = (value or {}).get("bytes"), (value or {}).get("path")
        identities.append(("bytes", hashlib.sha256(data).hexdigest()) if data else path_identity(path) if path else None)
    digest = hashlib.sha256(repr(identities).encode())
    return digest.hexdigest()[:16]


def scene_of(row: dict) -> dict | None:
    """The sample world's scene description of a source row, if it has one."""
    meta = row.get("meta")
    if not meta:
        return None
    return json.loads(meta).get("scene")
