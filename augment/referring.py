"""Referring-expression data (visual grounding): one in-memory form, two readers.

`GroundingData` holds images (each with its candidate boxes) and referring expressions (each
with its image, its text and its true box). Boxes are `[x, y, w, h]` in pixels of the original
image, as COCO, RefCOCO+ and ALBEF's detections file write them.

Readers:

* `load_refcoco(ann_file, ...)`: RefCOCO+ in ALBEF's layout (its Grounding.yaml): an annotation
  JSON `refcoco+_{train,val,test}.json` = `[{image, text, ref_id}]` (image: a path under the COCO
  image root), and beside it the folder `refcoco+/` with `dets.json` (`{image_id: [[x, y, w, h,
  ...], ...]}`: the candidate boxes ALBEF ranks) and the refs. ALBEF reads the true box of a ref
  through the refer API from `refs(unc).p` (a pickle) and `instances.json`; pickles are never
  loaded here, so the true box comes from a `bbox` field of the record, or from `refs(unc).json`
  (the same list of refs as JSON: `ref_id`, `ann_id`, `image_id`, `split`) with `instances.json`.
  The split of an expression is its ref's `split` (val, testA, testB), else the record's, else
  the file name's.
* `world_grounding(seed, n, ...)` / `load_world_grounding(folder)`: the sample world's scenes,
  each object with expressions that single it out (`augment.world.expressions.referring_expressions`),
  its true box, and every object of the scene as a candidate.

`load_grounding(source)` picks the reader from the path.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment.errors import SourceError

Box = list  # [x, y, w, h] floats, pixels of the original image


@dataclass
class GroundingImage:
    image_id: str
    width: int
    height: int
    candidates: list[Box]  # the boxes a grounder chooses from
    split: str = ""
    path: str | None = None  # on disk (RefCOCO+), or
    pil: Any = None  # in memory (sample world)
    scene: dict | None = None  # sample world: the scene (for the truth checker)

    def load(self):
        """The image as an RGB PIL image, decoded when asked for (a SourceError names the image)."""
        if self.pil is not None:
            return self.pil
        from augment.sources import open_image

        return open_image(self.path, where=f"image {self.image_id!r} ({self.path})")


@dataclass
class ReferringExpression:
    ref_id: str
    image: int  # index into GroundingData.images
    text: str
    box: Box  # the true box
    split: str = ""
    target: int | None = None  # sample world: the object's index in its scene


@dataclass
class GroundingData:
    images: list[GroundingImage]
    expressions: list[ReferringExpression]
    source: str = ""
    format: str = ""
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.expressions)

    def select(self, split: str | None = None, limit: int | None = None) -> "GroundingData":
        """Expressions of `split` ('all'/None: every one; 'test' also takes testA and testB) on the
        first `limit` images that have any; images re-indexed."""
        keep = [e for e in self.expressions if _in_split(e.split, split)]
        order: dict[int, int] = {}
        for expression in keep:
            if expression.image not in order and (limit is None or len(order) < limit):
                order[expression.image] = len(order)
        images = [self.images[old] for old in order]
        expressions = [ReferringExpression(e.ref_id, order[e.image], e.text, e.box, e.split, e.target)
                       for e in keep if e.image in order]
        return GroundingData(images, expressions, self.source, self.format, dict(self.extras))

    def image_of_text(self) -> list[int]:
        return [e.image for e in self.expressions]

    def splits(self) -> list[str]:
        return sorted({e.split for e in self.expressions})


def _in_split(split: str, wanted: str | None) -> bool:
    if wanted in (None, "all"):
        return True
    return split == wanted or (wanted == "test" and split in ("testA", "testB"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _refs_by_id(path: Path) -> dict[str, dict]:
    """refs(unc) as JSON (a list of {"ref_id", "ann_id", "image_id", "split"}), by ref id; a wrong
    shape names the file and the entry (the file is converted by hand from ALBEF's pickle)."""
    refs = _read_json(path)
    if not isinstance(refs, list):
        raise SourceError(f"{path}: refs must be a list of {{ref_id, ann_id, image_id, split}} entries, "
                          f"got a JSON {type(refs).__name__}")
    by_id = {}
    for index, ref in enumerate(refs):
        if not isinstance(ref, dict) or "ref_id" not in ref:
            raise SourceError(f"{path}: [{index}] is not a ref with a 'ref_id'")
        by_id[str(ref["ref_id"])] = ref
    return by_id


def _instances(path: Path) -> tuple[dict[str, dict], dict[str, tuple[int, int]]]:
    """COCO instances.json: its annotations by id and its images' (width, height) by id."""
    instances = _read_json(path)
    if not isinstance(instances, dict):
        raise SourceError(f"{path}: COCO instances must be an object with 'annotations' and 'images', "
                          f"got a JSON {type(instances).__name__}")
    anns, sizes = {}, {}
    for key in ("annotations", "images"):
        entries = instances.get(key, [])
        if not isinstance(entries, list):
            raise SourceError(f"{path}: '{key}' must be a list")
        for index, entry in enumerate(entries):
            try:
                if key == "annotations":
                    anns[str(entry["id"])] = entry
                else:
                    sizes[str(entry["id"])] = (int(entry["width"]), int(entry["height"]))
            except (KeyError, TypeError, ValueError):
                needs = "an 'id'" if key == "annotations" else "'id', 'width' and 'height' (integers)"
                raise SourceError(f"{path}: {key}[{index}] needs {needs}") from None
    return anns, sizes


def _box(value: Any, where: str) -> Box:
    if not isinstance(value, (list, tuple)) or len(value) < 4:
        raise SourceError(f"{where}: a box needs [x, y, w, h], got {value!r}")
    try:
        x, y, w, h = (float(v) for v in value[:4])
    except (TypeError, ValueError):
        raise SourceError(f"{where}: a box needs numbers [x, y, w, h], got {value!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):  # JSON's NaN / Infinity, which Python's reader takes
        raise SourceError(f"{where}: a box needs finite numbers [x, y, w, h], got {value!r}")
    if w <= 0 or h <= 0:
        raise SourceError(f"{where}: box {value!r} has no area")
    return [x, y, w, h]


# ----------------------------------------------------------------------------- RefCOCO+ (ALBEF layout)

_COCO_ID = re.compile(r"(\d+)\D*$")


def _coco_image_id(image: str) -> str | None:
    """COCO_train2014_000000581857.jpg -> '581857' (the id dets.json and instances.json use)."""
    found = _COCO_ID.search(Path(image).stem)
    return str(int(found.group(1))) if found else None


def _split_of_file(name: str) -> str:
    lowered = name.lower()
    for split in ("testA", "testB", "train", "val", "test"):
        if f"_{split.lower()}" in lowered:
            return split
    return ""


def load_refcoco(ann_file: str | Path, dets_file: str | Path | None = None, refs_file: str | Path | None = None,
                 instances_file: str | Path | None = None, image_root: str | Path | None = None) -> GroundingData:
    """RefCOCO+ expressions of one ALBEF annotation file with their true and candidate boxes.

    Defaults (ALBEF's Grounding.yaml): `dets.json`, `refs(unc).json`, `instances.json` in the
    `refcoco+/` folder beside `ann_file`; images under `image_root`, else beside `ann_file`.
    """
    ann_file = Path(ann_file)
    data_dir = ann_file.parent / "refcoco+"
    dets_path = Path(dets_file) if dets_file else data_dir / "dets.json"
    refs_path = Path(refs_file) if refs_file else data_dir / "refs(unc).json"
    instances_path = Path(instances_file) if instances_file else data_dir / "instances.json"
    # a file named explicitly must exist (the defaults are read where present): a missing --refs or
    # --instances was skipped without a word, or blamed on its content ("annotation 11 ... is not in it")
    for flag, given in (("--refs", refs_file), ("--instances", instances_file)):
        if given and not Path(given).is_file():
            raise SourceError(f"{flag} {given}: no such file")
    records = _read_json(ann_file)
    if not isinstance(records, list):
        raise SourceError(f"{ann_file}: ALBEF grounding annotations are a list of {{image, text, ref_id}}")
    dets = _read_json(dets_path)
    if not isinstance(dets, dict):
        raise SourceError(f"{dets_path}: detections must map image ids to lists of boxes")
    refs, anns, sizes = {}, {}, {}
    needs_refs = any(isinstance(r, dict) and "bbox" not in r for r in records)
    if needs_refs or refs_path.is_file():
        if not refs_path.is_file():
            raise SourceError(f"{ann_file}: records without 'bbox' need the refs as JSON ({refs_path}); "
                              "ALBEF's refs(unc).p is a pickle, which is never loaded")
        refs = _refs_by_id(refs_path)
    if instances_path.is_file():
        anns, sizes = _instances(instances_path)
    file_split = _split_of_file(ann_file.name)
    root = Path(image_root) if image_root else ann_file.parent
    images: list[GroundingImage] = []
    image_index: dict[str, int] = {}
    expressions = []
    for index, record in enumerate(records):
        where = f"{ann_file.name}: [{index}]"
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not isinstance(record.get("text"), str):
            raise SourceError(f"{where}: a record needs 'image' and 'text' strings")
        ref_id = str(record.get("ref_id", index))
        ref = refs.get(ref_id)
        if "bbox" in record:
            box = _box(record["bbox"], where)
        elif ref is None:
            raise SourceError(f"{where}: ref_id {ref_id} is not in {refs_path.name}")
        elif str(ref.get("ann_id")) not in anns:
            raise SourceError(f"{where}: annotation {ref.get('ann_id')} of ref {ref_id} is not in {instances_path.name}")
        else:
            box = _box(anns[str(ref["ann_id"])].get("bbox"), f"{instances_path.name}: annotation {ref['ann_id']}")
        image_id = str(record.get("image_id", ref.get("image_id") if ref else None) or _coco_image_id(record["image"]) or "")
        if image_id not in dets:
            raise SourceError(f"{where}: image {image_id or record['image']} has no detections in {dets_path.name}")
        split = str((ref or {}).get("split") or record.get("split") or file_split)
        if image_id not in image_index:
            path = root / record["image"]
            if not path.is_file():
                raise SourceError(f"{where}: image {path} not found (set the COCO image root)")
            if image_id in sizes:
                width, height = sizes[image_id]
            else:
                from PIL import Image

                with Image.open(path) as image:
                    width, height = image.size
            candidates = [_box(det, f"{dets_path.name}: {image_id}[{k}]") for k, det in enumerate(dets[image_id])]
            if not candidates:
                raise SourceError(f"{dets_path.name}: image {image_id} has no candidate boxes")
            image_index[image_id] = len(images)
            images.append(GroundingImage(image_id, width, height, candidates, split, path=str(path)))
        expressions.append(ReferringExpression(ref_id, image_index[image_id], record["text"], box, split))
    return GroundingData(images, expressions, str(ann_file), "refcoco")


# ----------------------------------------------------------------------------- the sample world


def _check_world_objects(objects, where: str) -> None:
    """SourceError naming the first object of a written world record that lacks what grounding reads
    (it was a KeyError traceback)."""
    if not isinstance(objects, list):
        raise SourceError(f"{where}: 'objects' must be a list")
    for k, obj in enumerate(objects):
        named = f"{where}: objects[{k}]"
        if not isinstance(obj, dict) or not all(key in obj for key in ("object", "box", "expressions")):
            raise SourceError(f"{named}: needs 'object', 'box' and 'expressions'")
        box = obj["box"]
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 and math.isfinite(v) for v in box):
            raise SourceError(f"{named}: 'box' must be 4 finite numbers, got {box!r}")
        if not isinstance(obj["expressions"], list) or not all(isinstance(t, str) for t in obj["expressions"]):
            raise SourceError(f"{named}: 'expressions' must be a list of strings")


def _world_image(image_id: str, scene, pil, objects: list[dict], split: str, path: str | None = None):
    from augment.world.render import IMAGE_SIZE

    image = GroundingImage(image_id, IMAGE_SIZE, IMAGE_SIZE, [list(map(float, o["box"])) for o in objects],
                           split, path=path, pil=pil, scene=scene.to_dict())
    expressions = []
    for obj in objects:
        for k, text in enumerate(obj["expressions"]):
            expressions.append(ReferringExpression(f"{image_id}/{obj['object']}/{k}", -1, text,
                                                   list(map(float, obj["box"])), split, obj["object"]))
    return image, expressions


def world_grounding(seed: int = 0, n: int = 200, split: str = "test", n_expressions: int = 3,
                    start: int = 0) -> GroundingData:
    """Images `start`..`start+n-1` of the sample world with `seed`, every object's expressions."""
    from augment.world.writer import build_grounding_item

    images, expressions = [], []
    for index in range(start, start + n):
        scene, pil, objects = build_grounding_item(seed, index, n_expressions)
        image, found = _world_image(str(index), scene, pil, objects, split)
        for expression in found:
            expression.image = len(images)
        images.append(image)
        expressions += found
    return GroundingData(images, expressions, f"sample-world:{seed}", "world")


def load_world_grounding(folder: str | Path, n_expressions: int = 3, image_root: str | Path | None = None) -> GroundingData:
    """A written sample world (`augment make-sample`): its scenes, images and splits, each object
    with the expressions its record lists (`make-sample --expressions N`), else `n_expressions`
    drawn from a stream seeded by the image's file name (deterministic). Images stay on disk
    (under `image_root`, default the world's `images/`) until used: a split or a limit decodes
    only its own."""
    from augment.world.expressions import expressions_for_scene
    from augment.world.scene import Scene

    folder = Path(folder)
    found = sorted(folder.glob("dataset_*.json")) if folder.is_dir() else [folder]
    if not found:
        raise SourceError(f"{folder}: no dataset_*.json")
    document = _read_json(found[0])
    records = document.get("images") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise SourceError(f"{found[0]}: needs an 'images' list")
    root = Path(image_root) if image_root else found[0].parent / "images"
    images, expressions = [], []
    for index, record in enumerate(records):
        where = f"{found[0].name}: images[{index}]"
        if not isinstance(record, dict) or "scene" not in record or "filename" not in record:
            raise SourceError(f"{where}: a sample-world image needs 'filename' and 'scene'")
        scene = Scene.from_dict(record["scene"])
        objects = record.get("objects")  # written by `make-sample --expressions`
        if objects is None:
            objects = expressions_for_scene(scene, random.Random(f"sample-world/expressions/{record['filename']}"),
                                            n_expressions)
        else:
            _check_world_objects(objects, where)
        image, found_expressions = _world_image(Path(record["filename"]).stem, scene, None, objects,
                                                str(record.get("split", "")), path=str(root / record["filename"]))
        for expression in found_expressions:
            expression.image = len(images)
        images.append(image)
        expressions += found_expressions
    return GroundingData(images, expressions, str(folder), "world")


def load_grounding(source: str | Path, **options) -> GroundingData:
    """Grounding data from a sample-world folder / JSON (with scenes) or an ALBEF annotation JSON.

    `options` go to `load_refcoco` (dets_file, refs_file, instances_file, image_root) or
    `load_world_grounding` (n_expressions, image_root).
    """
    from augment.sources import note_source_read

    path = Path(source)
    note_source_read(path, options.get("image_root"))  # its images are read lazily: one changed after now is refused
    if path.is_dir() or (path.suffix == ".json" and path.name.startswith("dataset_")):
        unread = [flag for key, flag in (("dets_file", "--dets"), ("refs_file", "--refs"), ("instances_file", "--instances"))
                  if options.get(key) is not None]
        if unread:  # RefCOCO+'s files: a sample world has its own boxes (they were ignored, even a missing file)
            raise SourceError(f"{', '.join(unread)}: read only for an ALBEF RefCOCO+ JSON source, not the sample world "
                              f"{source}: leave {'it' if len(unread) == 1 else 'them'} out")
        world = {k: v for k, v in options.items() if k in ("n_expressions", "image_root") and v is not None}
        return load_world_grounding(path, **world)
    if path.suffix == ".json":
        refcoco = {k: v for k, v in options.items() if k in ("dets_file", "refs_file", "instances_file", "image_root")
                   and v is not None}
        return load_refcoco(path, **refcoco)
    raise SourceError(f"{source}: a grounding source is a sample-world folder or an ALBEF refcoco+ JSON")
