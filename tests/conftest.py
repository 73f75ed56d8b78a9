"""Shared fixtures. Tests never touch the network: the Hub is switched off before any import."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Keep datasets' cache and the tiny models in a per-session folder."""
    root = tmp_path_factory.mktemp("caches")
    os.environ.setdefault("HF_DATASETS_CACHE", str(root / "datasets"))
    os.environ.setdefault("MATPLUS_TINY_DIR", str(root / "tiny"))
    yield


def write_image(path: Path, mode: str = "RGB", size=(16, 12), colour=120) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.new("RGB", size, (colour, 10, 200)).convert("P")
    elif mode == "CMYK":
        image = Image.new("CMYK", size, (colour, 10, 20, 0))
    elif mode == "RGBA":
        image = Image.new("RGBA", size, (colour, 10, 20, 128))
    elif mode == "L":
        image = Image.new("L", size, colour)
    else:
        image = Image.new("RGB", size, (colour, 30, 60))
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        fmt = "PNG"
    image.save(path, format=fmt)
    return path


@pytest.fixture
def karpathy_dir(tmp_path) -> Path:
    """A tiny Karpathy-layout dataset with images in several modes."""
    modes = ["RGB", "L", "RGBA", "P", "CMYK", "RGB"]
    splits = ["train", "train", "train", "val", "test", "test"]
    images = []
    for i, (mode, split) in enumerate(zip(modes, splits)):
        name = f"{i:03d}.{'jpg' if mode in ('CMYK', 'RGB') else 'png'}"
        write_image(tmp_path / "images" / name, mode=mode, colour=20 * i)
        images.append({
            "filename": name, "imgid": i, "split": split,
            "sentences": [{"raw": f"caption {j} of image {i}"} for j in range(5)],
            "scene": {"objects": i},
        })
    (tmp_path / "dataset_toy.json").write_text(json.dumps({"images": images}))
    return tmp_path
