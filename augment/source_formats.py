"""The source formats: which one a path is (`detect_format`) and how each is read into
`SourceRecord`s (ids, captions, splits and image paths, checked field by field; no image opened).

`augment.sources.load_source` calls `read_records` and builds the dataset; the formats are listed in
its module docstring.
"""
from __future__ import annotations

import csv
import functools
import glob
import json
import os
import unicodedata
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from augment.errors import SourceError, first_line
from augment.source_cache import folder_stamp


KARPATHY_KEYS = {"filename", "filepath", "split", "sentences", "sentids", "imgid", "cocoid"}
CAPTION_COLUMNS = ("captions", "caption", "sentences", "text")
ID_COLUMNS = ("image_id", "img_id", "id", "filename", "file_name")


@dataclass
class SourceRecord:
    """One image with its captions before validation; `where` names it in errors."""

    where: str
    image_id: str
    captions: list[str]
    split: str
    image_path: str | None = None
    stored: "StoredBytes | None" = None  # the table holding this record's image bytes (`_read_table`)
    stored_row: int = -1  # its row there
    meta: dict = field(default_factory=dict)
    problem: str | None = None  # found while reading (a path outside the root...), raised by the checks
    image_found: bool = False  # image_path was seen to be a file while reading (no second stat)
    caption_where: list[str] | None = None  # where each caption is, when not `where` (a table's own rows)


# ----------------------------------------------------------------------------- detection


TABLE_SUFFIXES = (".csv", ".tsv")  # .tsv: open_clip_train's tab-separated file
# the options saying how a CSV/TSV's columns are read (open_clip_train's names), as argparse
# dests and pool.json keys: a pool records those given, so its source can be read again alone
TABLE_KEYS = ("csv_img_key", "csv_caption_key", "csv_separator")


def is_table_file(source: str | None) -> bool:
    """A CSV/TSV source (the only kind the --csv-* options describe) is a file with that suffix."""
    return source is not None and Path(str(source)).suffix.lower() in TABLE_SUFFIXES


def csv_separator(separator: str | None) -> str | None:
    """The separator a user typed: `--csv-separator '\\t'` (a backslash and a t, as open_clip_train
    users write it: pandas reads it as a tab) is a tab here too."""
    return "\t" if separator == "\\t" else separator


def default_csv_separator(table_file: str | os.PathLike) -> str:
    """The separator a CSV/TSV file is read with when none is given: a tab for `.tsv`, else a comma."""
    return "\t" if Path(str(table_file)).suffix.lower() == ".tsv" else ","


def table_options_problem(img_key: str | None, caption_key: str | None, separator: str | None) -> str | None:
    """What is wrong with a CSV/TSV source's column options (open_clip_train's `--csv-*`), or None."""
    if not img_key or not caption_key:
        return "--csv-img-key and --csv-caption-key must not be empty"
    separator = csv_separator(separator)
    if separator is not None and len(separator) != 1:
        return f"--csv-separator must be one character (or \\t for a tab), got {separator!r}"
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
        if _pool_shards_without_meta(path):
            raise SourceError(f"{source}: looks like an unfinished pool (data/shard-*.parquet but no {POOL_META}, as a killed "
                              f"`augment generate` leaves it): re-run that generate command to finish it, and pass "
                              f"the dataset it was made from as --source (augment) or --train-data (train)")
        if any(path.glob("*.parquet")) or any(path.glob("data/*.parquet")):
            return "parquet"
        if len(karpathy) > 1:
            names = ", ".join(p.name for p in karpathy[:4]) + (", ..." if len(karpathy) > 4 else "")
            raise SourceError(f"{source}: folder holds {len(karpathy)} dataset_*.json files ({names}): pass one of them "
                              "as --source (augment) or --train-data (train)")
        raise SourceError(
            f"{source}: folder has no recognised source (expected a dataset_*.json, metadata.jsonl, "
            "parquet files or a save_to_disk dataset)"
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            head = _read_json(path)
            if isinstance(head, dict) and "images" in head and "annotations" in head:
                # COCO's own captions_*.json: its images' entries lack Karpathy's fields, which the
                # reader would blame one by one, sending the user to mend a file that is not broken
                raise SourceError(f"{source}: a COCO annotation file (images + annotations), which is not a "
                                  "supported source: use Karpathy's dataset_coco.json (the splits retrieval papers "
                                  "report) or ALBEF's coco_karpathy_*.json")
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
    """A source that is no local path reads as a Hub dataset id when spelled as one (`name` or
    `owner/name`) and not as a path (no leading `.`, `/`, `~`, no file extension)."""
    return not source.startswith((".", "/", "~")) and not Path(source).suffix and is_hub_id_spelling(source)


def is_hub_id_spelling(text: str) -> bool:
    """Whether `text` is spelled as a Hub repository id (huggingface_hub's own rule: `name` or
    `owner/name`, allowed characters, no `--` or `..`, at most 96 characters)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


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


class FolderListings:
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
                   listings: FolderListings) -> tuple[str, str | None, bool]:
    """(path, problem, found): the first existing candidate, else all of them joined by ' or '.

    A candidate that resolves (symlinks followed) outside its root is a problem unless allowed.
    A plain relative path (no '..', not absolute) to a regular file is looked up in the folder
    listings; anything else (symlinks, '..', absolute paths) takes the per-file route.
    """
    plain = bool(relative) and not os.path.isabs(relative) and os.path.normpath(relative) == relative \
        and not relative.startswith("..")
    candidates = []
    unlisted = []  # plain candidates no listing names: checked one by one if no root has the file
    for root in roots:
        candidate = os.path.join(str(root), relative) if plain else str(root / relative)
        candidates.append(candidate)
        if plain:
            folder, name = os.path.split(candidate)
            kind = listings.kind(folder, name)
            if kind is None:
                unlisted.append((root, candidate))
                continue
            if kind == "file":
                if allow_outside_root:
                    return candidate, None, True
                real_folder, base = listings.real(folder), listings.real(str(root))
                if real_folder == base or real_folder.startswith(base.rstrip(os.sep) + os.sep):
                    return candidate, None, True
                return candidate, _outside_root(relative, root, os.path.join(real_folder, name)), True
        found = _file_at(candidate, root, relative, allow_outside_root, listings)
        if found:
            return found
    # a listing holds names as stored: on a case- or normalisation-insensitive file system (macOS,
    # Windows) `Photo.JPG` or a composed `café.jpg` opens a file listed under another spelling
    for root, candidate in unlisted:
        found = _file_at(candidate, root, relative, allow_outside_root, listings)
        if found:
            return found
    return " or ".join(candidates), None, False


def _file_at(candidate: str, root: Path, relative: str, allow_outside_root: bool,
             listings: FolderListings) -> tuple[str, str | None, bool] | None:
    """The per-file route (a stat, and a realpath for the root check): `_resolve_image`'s answer, or None."""
    listings.note(os.path.dirname(candidate) or ".")
    path = Path(candidate)
    if not path.is_file():
        return None
    if not allow_outside_root:
        real, base = path.resolve(), root.resolve()
        if real != base and base not in real.parents:
            return candidate, _outside_root(relative, root, real), True
    return candidate, None, True


def _outside_root(relative: str, root: Path, real) -> str:
    return (f"image path {relative!r} leads outside the image root {root} (to {real}); "
            "pass --allow-outside-root to read it anyway")


def _record_with_image(where: str, image_id: str, captions: list[str], split: str, relative: str,
                       roots: list[Path], allow_outside_root: bool, listings: FolderListings,
                       meta: dict | None = None) -> SourceRecord:
    path, problem, found = _resolve_image(relative, roots, allow_outside_root, listings)
    return SourceRecord(where, image_id, captions, split, path, meta=meta or {}, problem=problem, image_found=found)


def _read_karpathy(source: Path, image_root: str | None, allow_outside_root: bool,
                   listings: FolderListings) -> Iterable[SourceRecord]:
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
                listings: FolderListings) -> Iterable[SourceRecord]:
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
            grouped[image].caption_where = []
        # an image's entries are merged: a bad caption is named by the entry that holds it, not the first
        grouped[image].captions.extend(captions)
        grouped[image].caption_where.extend([f"{where} ({image})"] * len(captions))
    yield from grouped.values()


def _read_csv(source: Path, image_root: str | None, split: str | None,
              allow_outside_root: bool, listings: FolderListings, img_key: str = "image",
              caption_key: str = "caption", separator: str | None = None) -> Iterable[SourceRecord]:
    from augment.schema import SPLIT_ALIASES

    roots = _default_image_roots(source, image_root)
    grouped: "OrderedDict[str, SourceRecord]" = OrderedDict()
    separator = csv_separator(separator) or default_csv_separator(source)
    with open(source, newline="", encoding="utf-8-sig") as handle:
        # quotes read as pandas (open_clip_train's reader) reads them: `"He said ""hi"""` is `He said "hi"`.
        # A CSV's are strict: a stray quote is an error, not a field that silently swallows the rest of
        # the file. A TSV's are lenient as pandas' are (`"Stop" sign on a road` is `Stop sign on a road`,
        # an error under strict reading); a quote it never closes still swallows the lines after it,
        # which pandas refuses ("EOF inside string"), found here as a field that holds a tab
        tsv = separator == "\t"
        reader = csv.DictReader(handle, delimiter=separator, strict=not tsv)
        line = 1
        try:
            # a key typed in another Unicode form than the header spells it (a decomposed "le\u0301gende" written
            # on macOS, typed composed) names that column: both print alike, so the refusal could not be read
            fields = reader.fieldnames or []
            header = {unicodedata.normalize("NFC", name): name for name in fields}
            img_key, caption_key = (key if key in fields else header.get(unicodedata.normalize("NFC", key), key)
                                    for key in (img_key, caption_key))
            if not reader.fieldnames or not {img_key, caption_key} <= set(reader.fieldnames):
                found = f"got {reader.fieldnames}" if reader.fieldnames else "the file is empty"
                raise SourceError(f"{source}: CSV needs a header with {img_key!r} and {caption_key!r} columns "
                                  f"(separator {separator!r}), {found}")
            while True:
                line = reader.line_num + 1  # the record's first physical line (a quoted caption may span several)
                row = next(reader, None)
                if row is None:
                    break
                if None in row or None in row.values():  # DictReader's restkey / restval
                    count = len(reader.fieldnames) + len(row.get(None) or ()) - sum(v is None for v in row.values())
                    raise SourceError(f"{source}: line {line}: {count} fields where the header has "
                                      f"{len(reader.fieldnames)} (separator {separator!r})")
                if tsv and any(separator in (value or "") for value in row.values()):
                    raise SourceError(f"{source}: line {line}: a quote opened in this record is never closed "
                                      f"(its field runs on over the lines after it); close or remove it")
                image = row[img_key] or ""
                row_split = row.get("split") or split or "train"
                row_split = SPLIT_ALIASES.get(row_split, row_split)  # `val` and `validation` are one split
                if image not in grouped:
                    image_id = str(Path(image).with_suffix("")) if image else f"line-{line}"
                    grouped[image] = _record_with_image(
                        f"{source.name}: line {line} ({image})", image_id, [], row_split,
                        image, roots, allow_outside_root, listings,
                    )
                    grouped[image].caption_where = []
                    if not image:
                        grouped[image].problem = f"empty {img_key!r} field"
                elif row_split != grouped[image].split and not grouped[image].problem:
                    # one image in two splits would put one of its captions on the wrong side
                    grouped[image].problem = (f"line {line} puts this image in split {row_split!r}, "
                                              f"an earlier line in {grouped[image].split!r}")
                grouped[image].captions.append(row[caption_key] or "")
                grouped[image].caption_where.append(f"{source.name}: line {line} ({image})")
        except UnicodeDecodeError:
            raise _not_utf8(source) from None
        except csv.Error as exc:
            raise SourceError(f"{source}: malformed CSV in the record starting on line {line}: {exc}") from None
    yield from grouped.values()


def _read_imagefolder(source: Path, split: str | None, allow_outside_root: bool,
                      listings: FolderListings) -> Iterable[SourceRecord]:
    folder = source if source.is_dir() else source.parent
    metadata = folder / "metadata.jsonl"
    entries = []  # (where, entry, file name, captions): ids are chosen once every file name is known
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
                entries.append((where, entry, _string(entry["file_name"], where, "'file_name'"), _captions_of(entry, where)))
    except UnicodeDecodeError:
        raise _not_utf8(metadata) from None
    # an image's id is its file name's stem, as it always was (pools made from the folder keep their
    # ids), unless two files share a stem (train/1.png, val/1.png): then every id is the path without
    # its suffix, as a CSV's, and the two are two images
    named_by_file = {file_name for _, entry, file_name, _ in entries if "image_id" not in entry}
    by_path = len({Path(file_name).stem for file_name in named_by_file}) < len(named_by_file)
    for where, entry, file_name, captions in entries:
        image_id = (_id(entry["image_id"], where, "'image_id'") if "image_id" in entry
                    else str(Path(file_name).with_suffix("")) if by_path else Path(file_name).stem)
        meta = {k: v for k, v in entry.items() if k not in {"file_name", "image_id", "split", *CAPTION_COLUMNS}}
        row_split = _string(entry.get("split") or split or "train", where, "'split'")
        yield _record_with_image(f"{where} ({file_name})", image_id, captions, row_split, file_name,
                                 [folder], allow_outside_root, listings, meta)


def _captions_of(entry: dict, where: str) -> list[str]:
    for column in CAPTION_COLUMNS:
        if column in entry and entry[column] is not None:
            value = entry[column]
            if isinstance(value, list):
                return _caption_list(value, where, repr(column))
            return [_string(value, where, repr(column))]
    nulls = [column for column in CAPTION_COLUMNS if column in entry]
    if nulls:  # the column is there, this row's value is not: say so, not "no caption column"
        raise SourceError(f"{where}: {nulls[0]} is missing (null)")
    raise SourceError(f"{where}: no caption column (expected one of {list(CAPTION_COLUMNS)})")


def _read_table(dataset_or_dict: Any, name: str, split: str | None, roots: list[Path], allow_outside_root: bool,
                listings: FolderListings) -> Iterable[SourceRecord]:
    """Normalise a `datasets` Dataset/DatasetDict (disk, parquet or Hub) into records, without
    decoding its images. Embedded image bytes stay in the table's arrow arrays (memory-mapped by
    `datasets`): a record points at its row (`SourceRecord.stored`), so reading a source does not
    copy its images into memory. An image stored as a path only is resolved as the other
    formats' paths are: under `roots`, inside them unless `allow_outside_root`."""
    from datasets import DatasetDict

    from augment.sources import arrow_columns

    parts = dataset_or_dict.items() if isinstance(dataset_or_dict, DatasetDict) else [(None, dataset_or_dict)]
    for part_split, table in parts:
        columns = set(table.column_names)
        if "image" not in columns:
            raise SourceError(f"{name}: table has no 'image' column (columns: {sorted(columns)})")
        [images] = arrow_columns(table, ["image"])
        embedded, paths, problem = _stored_images(images, f"{table._fingerprint}:{part_split}")
        others = [c for c in table.column_names if c != "image"]
        values = [column.to_pylist() for column in arrow_columns(table, others)] if others else []
        id_column = next((c for c in ID_COLUMNS if c in columns), None)
        for index in range(len(table)):
            row = {column: value[index] for column, value in zip(others, values)}
            where = f"{name}: row {index}" + (f" of split {part_split!r}" if part_split else "")
            image_id = row[id_column] if id_column else f"{part_split or 'row'}-{index}"
            record = SourceRecord(
                where, "" if image_id is None else str(image_id), _captions_of(row, where),
                row.get("split") or part_split or split or "train",
            )
            if problem:
                record.problem = problem
            elif embedded is not None and embedded.has[index]:
                record.stored, record.stored_row = embedded, index
                record.image_path = paths[index] or where  # a name for errors; the bytes are the image
            else:
                image = paths[index] or ""
                record.image_path, found_problem, record.image_found = _resolve_image(image, roots, allow_outside_root,
                                                                                      listings)
                record.problem = found_problem or (None if image else "no image (no bytes and no path)")
            meta = row.get("meta")
            if isinstance(meta, str) and meta:
                try:
                    record.meta = json.loads(meta)
                except json.JSONDecodeError as exc:
                    record.problem = f"'meta' is not JSON ({exc.msg})"
            if image_id is None:  # read as the id "None", a null cell named one image, two a duplicate
                record.problem = f"{id_column!r} is missing (null)"
            yield record


@dataclass
class StoredBytes:
    """A table's embedded image bytes, as the arrow array `datasets` maps from its files, and
    which rows have any."""

    array: Any  # pyarrow ChunkedArray of binary
    has: Any  # numpy bool per row
    fingerprint: str  # `datasets`' fingerprint of the table they come from (which files, which version)

    def bytes_of(self, row: int) -> bytes:
        return self.array[row].as_py()


def _stored_images(images, fingerprint: str) -> tuple[StoredBytes | None, list, str | None]:
    """(embedded bytes, path per row, a problem for every row) of a table's 'image' column: a
    struct of bytes and path (`datasets.Image`), raw bytes, or path strings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = images.type
    count = len(images)
    if pa.types.is_struct(kind) and {kind.field(i).name for i in range(kind.num_fields)} >= {"bytes", "path"}:
        data, paths = pc.struct_field(images, "bytes"), pc.struct_field(images, "path").to_pylist()
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        data, paths = images, [None] * count
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return None, images.to_pylist(), None
    else:
        return None, [None] * count, f"unsupported 'image' column of type {kind}"
    has = pc.is_valid(data).to_numpy(zero_copy_only=False).astype(bool) if count else np.zeros(0, bool)
    return StoredBytes(data, has, fingerprint), paths, None


def _load_table(source: str, fmt: str) -> Any:
    import datasets

    try:
        with _quiet_datasets_errors():
            return _load_table_loudly(datasets, source, fmt)
    except SourceError:
        raise
    except Exception as exc:  # offline, 404, damaged files, any client error: one line, no token
        from augment.cli_common import scrub_secrets

        # a Hub id is also how a missing local folder `data/name` reads: say both
        what = "no folder here, and cannot load the Hub dataset" if fmt == "hub" else f"cannot load the {fmt} source"
        cause = exc.__cause__ or exc
        raise SourceError(scrub_secrets(f"{source}: {what} ({type(cause).__name__}: {first_line(cause)})")) from None


@contextmanager
def _quiet_datasets_errors():
    """`datasets` logs a damaged file's error itself before raising it: the caller's one line says it."""
    import logging

    logger = logging.getLogger("datasets")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


def _load_table_loudly(datasets, source: str, fmt: str) -> Any:
    """The `datasets` table of a disk, parquet or Hub source (its errors raised as they come)."""
    if fmt == "disk":
        return datasets.load_from_disk(source)
    if fmt == "parquet":
        path = Path(source)
        files = [str(path)] if path.is_file() else sorted(str(p) for p in list(path.glob("*.parquet")) + list(path.glob("data/*.parquet")))
        # data_files are glob patterns to datasets: a folder named `flickr[v2]` matched no file
        return datasets.load_dataset("parquet", data_files=[glob.escape(f) for f in files], split="train")
    return datasets.load_dataset(source)


def read_records(source: str, fmt: str, image_root: str | None, split: str | None, allow_outside_root: bool,
                 listings: FolderListings, csv_options: tuple[str, str, str | None]) -> Iterable[SourceRecord]:
    """The records of `source`, read as format `fmt` (`detect_format`); image folders listed through
    `listings`. `split`: for formats that carry none; `csv_options`: image key, caption key, separator."""
    path = Path(source)
    if fmt == "karpathy":
        return _read_karpathy(path, image_root, allow_outside_root, listings)
    if fmt == "albef":
        return _read_albef(path, image_root, split, allow_outside_root, listings)
    if fmt == "csv":
        return _read_csv(path, image_root, split, allow_outside_root, listings, *csv_options)
    if fmt == "imagefolder":
        return _read_imagefolder(path, split, allow_outside_root, listings)
    # paths stored in a table are relative to its folder (a parquet file's, a saved dataset's) or
    # --image-root; a Hub dataset has no folder of its own: the working directory
    roots = _default_image_roots(path, image_root) if fmt != "hub" or image_root else [Path(".")]
    return _read_table(_load_table(source, fmt), source, split, roots, allow_outside_root, listings)


def forget_parsed_json() -> None:
    """Drop the JSON kept for the reader after `detect_format` parsed it (millions of objects for a
    large source, which the cycle collector would otherwise scan for as long as the process lives)."""
    _read_json_cached.cache_clear()


def _pool_shards_without_meta(folder: Path) -> bool:
    """Whether `folder` holds a pool's shards (data/shard-NNNNN.parquet with the pool schema's
    `row_id` and `source_image_id` columns) but no pool.json: a pool that lost its provenance, not a
    user's parquet dataset, which is read as one whatever its files are called."""
    import re

    shards = sorted(p for p in folder.glob("data/shard-*.parquet") if re.fullmatch(r"shard-\d{5}\.parquet", p.name))
    if not shards or any(folder.glob("*.parquet")):
        return False
    try:
        import pyarrow.parquet as pq

        names = set(pq.read_schema(shards[0]).names)
    except Exception:  # unreadable: the parquet reader names the damage
        return False
    return {"row_id", "source_image_id"} <= names
