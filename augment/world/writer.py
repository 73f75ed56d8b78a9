"""Writing the sample world in the Karpathy layout: every image rebuilt alone from (seed, index).

The same arguments write byte-identical files.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from PIL import Image

from augment.atomic import interrupts_held, output_folder_problem, swap_folder_into_place
from augment.errors import SourceError
from augment.world.captions import caption_tokens, captions_for_scene
from augment.world.expressions import expressions_for_scene
from augment.world.render import render_scene
from augment.world.scene import POSITIONS, Scene, sample_scene


def item_rng(seed: int, index: int, purpose: str) -> random.Random:
    # a string seed is hashed with SHA-512: stable everywhere, and each image can be rebuilt alone
    return random.Random(f"sample-world/{purpose}/{seed}/{index}")


# the share of a world's images in val and test unless asked otherwise (make-sample, the study's worlds)
VAL_FRAC = TEST_FRAC = 0.125


def split_sizes(n: int, val_frac: float = VAL_FRAC, test_frac: float = TEST_FRAC) -> dict[str, int]:
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


# hidden work folders: `.DIR.partial-PID-xxxxxxxx` beside a DIR that does not exist yet, or
# `DIR/.make-sample.partial-PID-xxxxxxxx` (and `.old-`, the replaced contents) inside one that does
_WORK = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
_INSIDE = "make-sample"


def _work_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _is_work_folder(path: Path, name: str) -> bool:
    match = _WORK.match(path.name)
    return bool(match) and match.group("name") == name and path.is_dir() and not path.is_symlink()


def remove_stale_work_folders(out_dir: Path) -> list[Path]:
    """Delete the hidden work folders that make-sample runs of `out_dir` killed by SIGKILL (or a
    crash) left, beside it or inside it; folders of a live process are kept. Returns them."""
    from augment.atomic import _process_alive

    candidates = []
    if out_dir.parent.is_dir():
        candidates += [p for p in out_dir.parent.iterdir() if _is_work_folder(p, out_dir.name)]
    if out_dir.is_dir():
        candidates += [p for p in out_dir.iterdir() if _is_work_folder(p, _INSIDE)]
    removed = []
    for path in candidates:
        if not _process_alive(int(_WORK.match(path.name).group("pid"))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _refuse_existing(out_dir: Path, given: Path, overwrite: bool) -> None:
    """One SourceError line (naming the folder as the user gave it) for a DIR (`out_dir`, resolved)
    that cannot be written; a path that cannot be a folder was refused before it was resolved."""
    if out_dir.parent == out_dir:
        raise SourceError(f"{given} is the filesystem root; choose a folder for the sample")
    ancestor = out_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not os.access(out_dir if out_dir.is_dir() else ancestor, os.W_OK):
        raise SourceError(f"{given}: cannot write in {out_dir if out_dir.is_dir() else ancestor} (permission denied)")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise SourceError(f"{given} is not empty; --overwrite replaces it (overwrite=True from Python)")
        cwd = Path.cwd().resolve()
        if out_dir in cwd.parents:
            raise SourceError(f"{given} holds the current folder {cwd}; --overwrite would delete it: run elsewhere")


def _renamable(folder: Path) -> bool:
    """Whether an existing DIR can be replaced by a rename: not the current folder (`.`; a folder
    above it is never empty, so `_refuse_existing` has refused it), not a mount point."""
    return folder != Path.cwd().resolve() and not os.path.ismount(folder)


def _move_contents_into(built: Path, out_dir: Path) -> None:
    """An existing DIR (`.`, a mount point, a link's target: it cannot be renamed itself): its
    old contents moved aside into a hidden folder inside it, the finished files moved in, the old
    contents deleted."""
    old = out_dir / _work_name(_INSIDE, "old")
    with interrupts_held():
        old.mkdir()
        for child in list(out_dir.iterdir()):
            if child not in (built, old) and not _is_work_folder(child, _INSIDE):
                child.rename(old / child.name)
        # the dataset file last: a reader never finds it before the images it lists
        for child in sorted(built.iterdir(), key=lambda path: path.name.startswith("dataset_")):
            child.rename(out_dir / child.name)
    shutil.rmtree(old, ignore_errors=True)
    built.rmdir()


def _progress(iterable: Iterable, total: int):
    """A bar for worlds of 500 images or more (smaller ones take seconds): tqdm on a terminal, lines in a log
    (`augment.progress`; until 2026-12-06 it was off there, so a large world's log said nothing until it was done)."""
    from augment.progress import progress_bar

    return progress_bar(iterable, total=total, desc="sample world", unit="image", disable=total < 500)


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


def write_sample(out_dir, n: int = 4000, seed: int = 0, val_frac: float = VAL_FRAC, test_frac: float = TEST_FRAC,
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
    given = Path(out_dir)
    _check_arguments(n, val_frac, test_frac, n_captions)
    problem = output_folder_problem(given.expanduser())  # before resolve(): a dangling link, a file on the way
    if problem:
        raise SourceError(f"{given}: {problem}; choose another folder")
    target = given.resolve()  # `.`, `..`, a link: the folder itself, written through
    remove_stale_work_folders(target)
    _refuse_existing(target, given, overwrite)
    sizes = split_sizes(n, val_frac, test_frac)
    splits = ["train"] * sizes["train"] + ["val"] * sizes["val"] + ["test"] * sizes["test"]
    digits = max(6, len(str(n - 1)))
    existing = target.is_dir() and not _renamable(target)
    try:
        if existing:  # built inside it: DIR is `.`, `..` or a mount point, which no rename can replace
            building = target / _work_name(_INSIDE, "partial")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            building = target.with_name(_work_name(target.name, "partial"))
        (building / "images").mkdir(parents=True)
    except OSError as exc:
        raise SourceError(f"{given}: cannot create the folder ({exc.strerror or exc})") from None
    try:
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
        if existing:
            _move_contents_into(building, target)
        else:
            swap_folder_into_place(building, target, aside=target.with_name(_work_name(target.name, "old")))
    except BaseException as exc:
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a folder made read-only meanwhile: one line naming DIR
            raise SourceError(f"{given}: cannot write the sample ({exc.strerror or exc})") from None
        raise
    return given


def build_grounding_item(seed: int, index: int, n_expressions: int = 3) -> tuple[Scene, Image.Image, list[dict]]:
    """Scene, image and per-object expressions of image `index` of the world with `seed`
    (the same scene and image as `build_item`; expressions from their own random stream)."""
    scene = sample_scene(item_rng(seed, index, "scene"))
    return scene, render_scene(scene), expressions_for_scene(scene, item_rng(seed, index, "expressions"), n_expressions)
