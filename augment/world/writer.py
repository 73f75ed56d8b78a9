"""Writing the sample world in the Karpathy layout: every image rebuilt alone from (seed, index).

The same arguments write byte-identical files.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterable

from PIL import Image

from augment.errors import SourceError
from augment.world.captions import caption_tokens, captions_for_scene
from augment.world.expressions import expressions_for_scene
from augment.world.render import render_scene
from augment.world.scene import POSITIONS, Scene, sample_scene


def item_rng(seed: int, index: int, purpose: str) -> random.Random:
    # a string seed is hashed with SHA-512: stable everywhere, and each image can be rebuilt alone
    return random.Random(f"sample-world/{purpose}/{seed}/{index}")


def split_sizes(n: int, val_frac: float, test_frac: float) -> dict[str, int]:
    val, test = round(n * val_frac), round(n * test_frac)
    return {"train": n - val - test, "val": val, "test": test}


def _check_arguments(n: int, val_frac: float, test_frac: float, n_captions: int) -> None:
    if n < 1:
        raise SourceError(f"the sample world needs at least 1 image, not {n}")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise SourceError(f"val and test fractions must be in [0, 1) and sum below 1, not {val_frac} and {test_frac}")
    if split_sizes(n, val_frac, test_frac)["train"] < 1:
        raise SourceError(f"{n} images leave no training images with val {val_frac} and test {test_frac}")
    if not 1 <= n_captions <= 10:
        raise SourceError(f"captions per image must be between 1 and 10, not {n_captions}")


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SourceError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SourceError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace it")


def _move_into_place(built: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        built.rename(out_dir)
        return
    # rename cannot replace a non-empty folder: move the old one aside first, drop it after
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    built.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _progress(iterable: Iterable, total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc="sample world", unit="image",
                disable=total < 500 or not sys.stderr.isatty())


def _image_record(index: int, filename: str, split: str, scene: Scene, captions: list[str],
                  n_captions: int) -> dict:
    sentids = [index * n_captions + j for j in range(len(captions))]
    sentences = [
        {"raw": caption, "tokens": caption_tokens(caption), "imgid": index, "sentid": sentid}
        for caption, sentid in zip(captions, sentids)
    ]
    return {"filename": filename, "imgid": index, "split": split, "sentids": sentids,
            "sentences": sentences, "scene": scene.to_dict()}


def build_item(seed: int, index: int, n_captions: int = 5) -> tuple[Scene, Image.Image, list[str]]:
    """Scene, image and captions of image `index` of the world with `seed` (independent of n)."""
    scene = sample_scene(item_rng(seed, index, "scene"))
    captions = captions_for_scene(scene, item_rng(seed, index, "captions"), n_captions)
    return scene, render_scene(scene), captions


def write_sample(out_dir, n: int = 4000, seed: int = 0, val_frac: float = 0.125, test_frac: float = 0.125,
                 n_captions: int = 5, overwrite: bool = False, expressions: int = 0) -> Path:
    """Write the sample world in the Karpathy layout and return `out_dir`.

    `out_dir/dataset_sample.json` lists the images (train first, then val, then test, each with
    its scene) and `out_dir/images/` holds the PNGs. The same arguments give byte-identical
    files. The folder is built as a hidden sibling and renamed into place at the end, so an
    interrupted run leaves `out_dir` untouched.

    `expressions` > 0 (grounding): each image's captions are instead its objects' referring
    expressions, that many per object, and its record lists them per object with the true box
    (`objects`), as `build_grounding_item` makes them.
    """
    out_dir = Path(out_dir)
    _check_arguments(n, val_frac, test_frac, n_captions)
    _refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sizes = split_sizes(n, val_frac, test_frac)
    splits = ["train"] * sizes["train"] + ["val"] * sizes["val"] + ["test"] * sizes["test"]
    digits = max(6, len(str(n - 1)))
    building = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        (building / "images").mkdir(parents=True)
        records = []
        for index in _progress(range(n), n):
            if expressions > 0:
                scene, image, objects = build_grounding_item(seed, index, expressions)
                captions = [text for obj in objects for text in obj["expressions"]]
            else:
                scene, image, captions = build_item(seed, index, n_captions)
            filename = f"{index:0{digits}d}.png"
            image.save(building / "images" / filename, format="PNG", optimize=False, compress_level=6)
            per_image = n_captions if expressions <= 0 else expressions * len(POSITIONS)
            records.append(_image_record(index, filename, splits[index], scene, captions, per_image))
            if expressions > 0:
                records[-1]["objects"] = objects
        document = {"dataset": "sample", "images": records}
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        (building / "dataset_sample.json").write_text(text + "\n", encoding="utf-8")
        _move_into_place(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out_dir


def build_grounding_item(seed: int, index: int, n_expressions: int = 3) -> tuple[Scene, Image.Image, list[dict]]:
    """Scene, image and per-object expressions of image `index` of the world with `seed`
    (the same scene and image as `build_item`; expressions from their own random stream)."""
    scene = sample_scene(item_rng(seed, index, "scene"))
    return scene, render_scene(scene), expressions_for_scene(scene, item_rng(seed, index, "expressions"), n_expressions)
