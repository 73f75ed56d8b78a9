"""Load any supported image-caption source into one normalised `datasets.Dataset`.

Every command that reads data calls `load_source`. The result always has `SOURCE_FEATURES`:
one row per image with `image_id`, `image` (decoded as RGB), `captions`, `split`, `meta`.

Supported inputs (detected from the path):

* Karpathy split JSON (`dataset_flickr30k.json`, `dataset_coco.json`, the sample world's
  `dataset_sample.json`), or a folder holding exactly one `dataset_*.json`;
* the ALBEF/SGA retrieval JSON (`flickr30k_train.json`: `[{image, caption, image_id}]`;
  test/val: `[{image, caption: [...]}]`);
* a `datasets` folder written by `save_to_disk`, parquet files or a folder of them;
* an image folder with `metadata.jsonl` (`file_name` plus `caption`/`captions`/`text`);
* a CSV with `image,caption` rows (several rows per image allowed, optional `split` column);
* a Hugging Face Hub dataset id (`org/name`).

Bad records raise `SourceError` naming the record; with `skip_bad=True` they are skipped and
listed in the returned report instead.
"""
from __future__ import annotations

import csv
import io
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from augment.errors import SourceError
from augment.schema import SOURCE_FEATURES, SPLITS

if TYPE_CHECKING:
    import datasets

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
    image_bytes: bytes | None = None
    image_obj: Any = None  # an already-decoded PIL image (datasets / Hub sources)
    meta: dict = field(default_factory=dict)


@dataclass
class LoadReport:
    """What `load_source` read and what it skipped (with `skip_bad`)."""

    source: str
    format: str
    skipped: list[dict] = field(default_factory=list)

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"source": self.source, "format": self.format, "skipped": self.skipped}, indent=2))
        os.replace(tmp, path)
        return path


# ----------------------------------------------------------------------------- detection


def detect_format(source: str) -> str:
    """Name the reader for `source`: karpathy, albef, disk, parquet, imagefolder, csv or hub."""
    path = Path(source)
    if path.is_dir():
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
        if suffix == ".csv":
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


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


# ----------------------------------------------------------------------------- readers


def _default_image_roots(anchor: Path, image_root: str | None) -> list[Path]:
    if image_root:
        return [Path(image_root)]
    folder = anchor if anchor.is_dir() else anchor.parent
    return [folder, folder / "images"]


def _resolve_image(relative: str, roots: list[Path]) -> str:
    """Return the first existing candidate; else all of them joined by ' or ' for the error."""
    candidates = [root / relative for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return " or ".join(str(c) for c in candidates)


def _read_karpathy(source: Path, image_root: str | None) -> Iterable[SourceRecord]:
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
        filename = entry["filename"]
        where = f"{where} ({filename})"
        relative = os.path.join(entry.get("filepath", ""), filename)
        image_id = str(entry["cocoid"]) if "cocoid" in entry else Path(filename).stem
        sentences = entry.get("sentences", [])
        captions = [s.get("raw", "") if isinstance(s, dict) else str(s) for s in sentences]
        meta = {k: v for k, v in entry.items() if k not in KARPATHY_KEYS}
        yield SourceRecord(where, image_id, captions, str(entry.get("split", "")), _resolve_image(relative, roots), meta=meta)


def _split_from_name(name: str, default: str | None) -> str:
    lowered = name.lower()
    for split in ("train", "val", "test"):
        if f"_{split}" in lowered or lowered.startswith(split):
            return split
    return default or "train"


def _read_albef(source: Path, image_root: str | None, split: str | None) -> Iterable[SourceRecord]:
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
        image = entry["image"]
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        key = image
        if key not in grouped:
            image_id = str(entry.get("image_id", Path(image).stem))
            grouped[key] = SourceRecord(f"{where} ({image})", image_id, [], file_split, _resolve_image(image, roots))
        grouped[key].captions.extend(captions)
    yield from grouped.values()


def _read_csv(source: Path, image_root: str | None, split: str | None) -> Iterable[SourceRecord]:
    roots = _default_image_roots(source, image_root)
    grouped: "OrderedDict[str, SourceRecord]" = OrderedDict()
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise SourceError(f"{source}: CSV needs a header with 'image' and 'caption' columns, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            image = row["image"]
            if image not in grouped:
                image_id = str(Path(image).with_suffix(""))
                grouped[image] = SourceRecord(
                    f"{source.name}: line {line} ({image})", image_id, [], row.get("split") or split or "train",
                    _resolve_image(image, roots),
                )
            grouped[image].captions.append(row["caption"] or "")
    yield from grouped.values()


def _read_imagefolder(source: Path, split: str | None) -> Iterable[SourceRecord]:
    folder = source if source.is_dir() else source.parent
    metadata = folder / "metadata.jsonl"
    with open(metadata, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"metadata.jsonl: line {line_no}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: malformed JSON: {exc.msg}") from None
            if "file_name" not in entry:
                raise SourceError(f"{where}: entry has no 'file_name'")
            captions = _captions_of(entry, where)
            file_name = entry["file_name"]
            image_id = str(entry.get("image_id", Path(file_name).stem))
            meta = {k: v for k, v in entry.items() if k not in {"file_name", "image_id", "split", *CAPTION_COLUMNS}}
            yield SourceRecord(
                f"{where} ({file_name})", image_id, captions, entry.get("split") or split or "train",
                str(folder / file_name), meta=meta,
            )


def _captions_of(entry: dict, where: str) -> list[str]:
    for column in CAPTION_COLUMNS:
        if column in entry and entry[column] is not None:
            value = entry[column]
            if isinstance(value, list):
                return [v.get("raw", "") if isinstance(v, dict) else str(v) for v in value]
            return [str(value)]
    raise SourceError(f"{where}: no caption column (expected one of {list(CAPTION_COLUMNS)})")


def _read_table(dataset_or_dict: Any, name: str, split: str | None) -> Iterable[SourceRecord]:
    """Normalise a `datasets` Dataset/DatasetDict (disk, parquet or Hub) into records."""
    from datasets import DatasetDict

    parts = dataset_or_dict.items() if isinstance(dataset_or_dict, DatasetDict) else [(None, dataset_or_dict)]
    for part_split, table in parts:
        columns = set(table.column_names)
        if "image" not in columns:
            raise SourceError(f"{name}: table has no 'image' column (columns: {sorted(columns)})")
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
            elif isinstance(image, str):
                record.image_path = image
            else:
                record.image_obj = image
            meta = row.get("meta")
            if isinstance(meta, str) and meta:
                record.meta = json.loads(meta)
            yield record


def _load_table(source: str, fmt: str) -> Any:
    import datasets

    if fmt == "disk":
        return datasets.load_from_disk(source)
    if fmt == "parquet":
        path = Path(source)
        files = [str(path)] if path.is_file() else sorted(str(p) for p in list(path.glob("*.parquet")) + list(path.glob("data/*.parquet")))
        return datasets.load_dataset("parquet", data_files=files, split="train")
    return datasets.load_dataset(source)


# ----------------------------------------------------------------------------- validation


def _check_image(record: SourceRecord) -> None:
    """Fully decode the image once so truncated files fail here, not mid-training."""
    from PIL import Image, UnidentifiedImageError

    if record.image_obj is not None:
        return
    if record.image_bytes is None:
        if not record.image_path:
            raise SourceError(f"{record.where}: no image")
        if not os.path.isfile(record.image_path):
            raise SourceError(f"{record.where}: image file not found: {record.image_path}")
    try:
        handle = io.BytesIO(record.image_bytes) if record.image_bytes is not None else record.image_path
        with Image.open(handle) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SourceError(f"{record.where}: unreadable or corrupt image ({exc})") from None


def _check_record(record: SourceRecord, seen_ids: set[str], verify_images: bool) -> None:
    if record.split not in SPLITS:
        raise SourceError(f"{record.where}: unknown split {record.split!r} (expected one of {list(SPLITS)})")
    if record.image_id in seen_ids:
        raise SourceError(f"{record.where}: duplicate image id {record.image_id!r}")
    if not record.captions:
        raise SourceError(f"{record.where}: image has no captions")
    for number, caption in enumerate(record.captions):
        if not isinstance(caption, str) or not caption.strip():
            raise SourceError(f"{record.where}: caption {number} is empty")
    if verify_images:
        _check_image(record)


# ----------------------------------------------------------------------------- entry point


def load_source(
    source: str,
    image_root: str | None = None,
    split: str | None = None,
    skip_bad: bool = False,
    verify_images: bool = True,
    progress: bool = False,
) -> tuple["datasets.Dataset", LoadReport]:
    """Read `source` into a `SOURCE_FEATURES` dataset; raise `SourceError` on the first bad record.

    `split` is the split for formats that carry none (CSV, ALBEF without a split in its name).
    With `skip_bad`, bad records are left out and listed in the report instead.
    """
    import datasets
    from tqdm.auto import tqdm

    source = str(source)
    fmt = detect_format(source)
    path = Path(source)
    if fmt == "karpathy":
        records = _read_karpathy(path, image_root)
    elif fmt == "albef":
        records = _read_albef(path, image_root, split)
    elif fmt == "csv":
        records = _read_csv(path, image_root, split)
    elif fmt == "imagefolder":
        records = _read_imagefolder(path, split)
    else:
        records = _read_table(_load_table(source, fmt), source, split)

    report = LoadReport(source=source, format=fmt)
    columns: dict[str, list] = {name: [] for name in SOURCE_FEATURES}
    seen: set[str] = set()
    for record in tqdm(records, desc=f"reading {path.name or source}", unit="img", disable=not progress):
        record.captions = [c.strip() if isinstance(c, str) else c for c in record.captions]
        try:
            _check_record(record, seen, verify_images)
        except SourceError as exc:
            if not skip_bad:
                raise
            report.skipped.append({"record": record.where, "image_id": record.image_id, "problem": str(exc)})
            continue
        seen.add(record.image_id)
        columns["image_id"].append(record.image_id)
        if record.image_obj is not None:
            columns["image"].append(record.image_obj)
        else:
            columns["image"].append({"path": record.image_path, "bytes": record.image_bytes})
        columns["captions"].append(record.captions)
        columns["split"].append(record.split)
        columns["meta"].append(json.dumps(record.meta, sort_keys=True))
    if not columns["image_id"]:
        raise SourceError(f"{source}: no usable records" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    dataset = datasets.Dataset.from_dict(columns, features=SOURCE_FEATURES)
    return dataset, report


def select_split(dataset: "datasets.Dataset", split: str | None) -> "datasets.Dataset":
    """Rows of one split (None or "all" keeps every row); an absent split is an error."""
    if split in (None, "all"):
        return dataset
    if split not in SPLITS:
        raise SourceError(f"unknown split {split!r} (expected one of {list(SPLITS)} or 'all')")
    indices = [i for i, s in enumerate(dataset["split"]) if s == split]
    if not indices:
        present = sorted(set(dataset["split"]))
        raise SourceError(f"source has no {split!r} rows (splits present: {present})")
    return dataset.select(indices)


def source_fingerprint(dataset: "datasets.Dataset") -> str:
    """Content hash of ids, splits and captions: pools record it to detect a changed source."""
    digest = hashlib.sha256()
    for image_id, split, captions in zip(dataset["image_id"], dataset["split"], dataset["captions"]):
        digest.update(json.dumps([image_id, split, captions]).encode())
    return digest.hexdigest()[:16]


def scene_of(row: dict) -> dict | None:
    """The sample world's scene description of a source row, if it has one."""
    meta = row.get("meta")
    if not meta:
        return None
    return json.loads(meta).get("scene")
