"""Every bad input ends in one line naming the file or record, exit status 2, nothing half written.

The bad-input corpus is built here by the tests themselves (broken sources, broken pools, hostile
--transforms, a failing Hub, launcher environments); each case of issue 17 has its test.
"""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from augment.cli import main as augment_main
from augment.errors import SourceError
from augment.sources import load_source
from tests.conftest import write_image

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- corpus helpers


def fails(capsys, argv, *expected, main=augment_main) -> str:
    """Run a command in-process; it must exit 2 with one error line holding every `expected`."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def karpathy(folder: Path, entries: list, name="dataset_x.json", encoding_prefix=b"") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(encoding_prefix + json.dumps({"images": entries}).encode())
    return path


def entry(filename, captions=("a red circle", "a circle that is red", "one red round shape"), split="train"):
    return {"filename": filename, "split": split, "sentences": [{"raw": c} for c in captions]}


def small_source(folder: Path, n=3, captions=3) -> Path:
    for i in range(n):
        write_image(folder / "images" / f"{i}.png", colour=40 * i)
    caps = ("a red circle", "a circle that is red", "one red round shape")[:captions]
    return karpathy(folder, [entry(f"{i}.png", caps) for i in range(n)])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncate_image(path: Path) -> Path:
    """Rewrite `path` as a PNG of noise cut to half its bytes: its header reads, its pixels fail
    ("image file is truncated", the same message whether PIL is given the path or the bytes)."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(path, format="PNG")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- images


def test_decompression_bomb_is_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bomb.png").write_bytes(png_header_only(20000, 20000))
    write_image(tmp_path / "images" / "ok.png")
    path = karpathy(tmp_path, [entry("ok.png"), entry("bomb.png")])
    fails(capsys, ["inspect", "--source", path], "images[1] (bomb.png)", "too large to decode safely")
    lazy, _ = load_source(str(path))  # lazily: the load passes, reading the row names the file
    with pytest.raises(SourceError, match=r"bomb\.png: image too large"):
        lazy[1]["image"]


def test_a_large_image_below_pillows_error_limit_is_one_warning_line_naming_it(tmp_path, monkeypatch, caplog):
    """An image over Pillow's pixel limit (89 Mpx) but under twice it decodes; Pillow's own warning was
    two lines naming no record, now one log line naming it (the limit lowered here: 10 x 9 pixels)."""
    import warnings

    from PIL import Image

    from augment.sources import open_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)
    write_image(tmp_path / "big.png", size=(10, 9))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = open_image(str(tmp_path / "big.png"), where="images[3] (big.png)")
    assert image.size == (10, 9)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert [r.getMessage() for r in caplog.records] == [
        "images[3] (big.png): a very large image (10 x 9, 90 pixels; Pillow's safety limit is 60): decoded"]


def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    from PIL import Image

    grey = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    (tmp_path / "images").mkdir()
    Image.fromarray(grey).save(tmp_path / "images" / "deep.png")
    assert Image.open(tmp_path / "images" / "deep.png").mode.startswith("I")
    dataset, _ = load_source(str(karpathy(tmp_path, [entry("deep.png")])))
    pixels = np.asarray(dataset[0]["image"], dtype=np.float64)
    assert dataset[0]["image"].mode == "RGB"
    assert abs(pixels.mean() - (grey / 257.0).mean()) < 1.0  # ~127.5, not 255
    assert pixels.min() == 0 and pixels.max() == 255


def test_exif_orientation_one_rule_everywhere(tmp_path, capsys):
    """Pixels as stored (as ALBEF/BLIP/SGA read them): inspect, rows and the scorer agree."""
    from PIL import Image

    from augment.scoring.embeddings import decode_image

    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "images" / "turned.jpg", exif=exif.tobytes())
    path = karpathy(tmp_path, [entry("turned.jpg")])
    capsys.readouterr()
    assert augment_main(["inspect", "--source", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_sizes"] == {"64x48": 1}
    dataset, _ = load_source(str(path))
    assert dataset[0]["image"].size == (64, 48)
    assert decode_image((tmp_path / "images" / "turned.jpg").read_bytes()).size == (64, 48)


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_image_path_leaving_the_root_is_refused(tmp_path, capsys, how):
    write_image(tmp_path / "outside" / "x.png")
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    if how == "dotdot":
        name = "../outside/x.png"
    else:
        name = "link.png"
        (root / "images" / "link.png").symlink_to(tmp_path / "outside" / "x.png")
    path = karpathy(root, [entry(name)])
    fails(capsys, ["inspect", "--source", path], "images[0]", "leads outside the image root", "--allow-outside-root")
    capsys.readouterr()
    assert augment_main(["inspect", "--source", str(path), "--allow-outside-root", "--json"]) == 0


# ----------------------------------------------------------------------------- text files


def test_non_utf8_json_csv_and_jsonl_are_one_line(tmp_path, capsys):
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "dataset_latin.json").write_bytes(
        b'{"images": [{"filename": "a.png", "split": "train",\n "sentences": [{"raw": "un caf\xe9"}]}]}')
    fails(capsys, ["inspect", "--source", tmp_path / "dataset_latin.json"], "dataset_latin.json", "not UTF-8", "line 2")
    (tmp_path / "c.csv").write_bytes(b"image,caption\nimages/a.png,a dog\nimages/a.png,un caf\xe9\n")
    fails(capsys, ["inspect", "--source", tmp_path / "c.csv"], "c.csv", "not UTF-8", "line 3")
    folder = tmp_path / "imagefolder"
    write_image(folder / "a.png")
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "caption": "caf\xe9"}\n')
    fails(capsys, ["inspect", "--source", folder], "metadata.jsonl", "not UTF-8", "line 1")


def test_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    write_image(tmp_path / "images" / "a.png")
    path = karpathy(tmp_path, [entry("a.png")], encoding_prefix=b"\xef\xbb\xbf")
    assert len(load_source(str(path))[0]) == 1
    (tmp_path / "c.csv").write_bytes(b"\xef\xbb\xbfimage,caption\nimages/a.png,a dog\n")
    dataset, _ = load_source(str(tmp_path / "c.csv"))
    assert dataset["captions"][0] == ["a dog"]


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"filename": 7, "split": "train", "sentences": [{"raw": "a dog"}]}, "'filename' must be a string, got int"),
        ({"filename": "a.png", "split": "train", "sentences": "a dog"}, "'sentences' must be a list of captions, got str"),
        ({"filename": "a.png", "split": "train", "sentences": [{"raw": 5}]}, "'sentences'[0].raw must be a string, got int"),
        ({"filename": "a.png", "split": 1, "sentences": [{"raw": "a dog"}]}, "'split' must be a string, got int"),
        ({"filename": "a.png", "split": "train", "sentences": [{"raw": None}]}, "'sentences'[0].raw must be a string, got null"),
    ],
)
def test_karpathy_json_of_the_wrong_shape(tmp_path, capsys, bad, expected):
    write_image(tmp_path / "images" / "a.png")
    path = karpathy(tmp_path, [bad])
    assert "got null null" not in fails(capsys, ["inspect", "--source", path], "images[0]", expected)


def test_albef_and_imagefolder_of_the_wrong_shape(tmp_path, capsys):
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "flickr_test.json").write_text(json.dumps([{"image": "a.png", "caption": 3}]))
    fails(capsys, ["inspect", "--source", tmp_path / "flickr_test.json"], "[0]", "'caption' must be a string, got int")
    (tmp_path / "flickr_val.json").write_text(json.dumps([{"image": 12, "caption": "a dog"}]))
    fails(capsys, ["inspect", "--source", tmp_path / "flickr_val.json"], "[0]", "'image' must be a string, got int")
    folder = tmp_path / "imagefolder"
    write_image(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": 1, "caption": "a dog"}) + "\n")
    fails(capsys, ["inspect", "--source", folder], "metadata.jsonl: line 1", "'file_name' must be a string, got int")


# ----------------------------------------------------------------------------- lazy sources


def test_images_are_decoded_when_used_and_limit_reads_only_what_it_needs(tmp_path, capsys, monkeypatch):
    import augment.sources as sources

    for i in range(2):
        write_image(tmp_path / "images" / f"{i}.png")
    for i in range(2, 5):
        (tmp_path / "images" / f"{i}.png").write_bytes(b"not an image")
    path = karpathy(tmp_path, [entry(f"{i}.png") for i in range(5)])
    opened = []
    real_open = sources.open_image
    monkeypatch.setattr(sources, "open_image", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    # decoding inline (--workers 0): the count below watches this process
    common = ["generate", "--method", "img-aug", "--source", path, "--n", "1", "--shard-size", "1", "--no-progress",
              "--workers", "0"]
    capsys.readouterr()
    assert augment_main([str(a) for a in [*common, "--out", tmp_path / "two", "--limit", "2"]]) == 0
    assert len(opened) == 2  # two rows read, two images decoded, the three bad ones never opened
    fails(capsys, [*common, "--out", tmp_path / "checked", "--validate"], "images[2] (2.png)", "unreadable or corrupt image")
    assert not (tmp_path / "checked").exists()  # --validate stops before anything is written
    fails(capsys, [*common, "--out", tmp_path / "all"], "2.png", "unreadable or corrupt image")
    shards = sorted(p.name for p in (tmp_path / "all" / "data").iterdir())
    assert shards == ["shard-00000.parquet", "shard-00001.parquet"]  # whole shards kept, no temporaries


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_met_after_loading_names_its_record_in_a_worker_too(tmp_path, capsys, workers):
    """A DataLoader worker reading a source row decodes its image: a bad one must come back as the
    one line the main process gives (naming the record and the file), not torch's wrapper line."""
    from augment.loading import ordered_batches

    path = small_source(tmp_path / "src", n=4)
    image = truncate_image(tmp_path / "src" / "images" / "2.png")
    expected = f"image '2' ({image}): unreadable or corrupt image (image file is truncated)"
    command = ["generate", "--method", "img-aug", "--source", path, "--out", tmp_path / "pool", "--n", "1",
               "--shard-size", "1", "--no-progress", "--workers", workers]
    assert fails(capsys, command) == f"error: {expected}"
    shards = sorted(p.name for p in (tmp_path / "pool" / "data").iterdir())
    assert shards == ["shard-00000.parquet", "shard-00001.parquet"]  # the shards before it are kept
    # train eval's path: rows read (decoded) by the loader, then given to a function
    dataset, _ = load_source(str(path), cache=False)
    with pytest.raises(SourceError) as caught:
        list(ordered_batches(dataset, [[0, 1], [2, 3]], workers, lambda row: row["image"].size))
    assert str(caught.value) == expected


# ----------------------------------------------------------------------------- broken pools


@pytest.fixture
def made_pool(tmp_path, capsys):
    source = small_source(tmp_path / "src")
    out = tmp_path / "pool"
    command = ["generate", "--method", "i2t-human", "--source", str(source), "--out", str(out), "--n", "2", "--no-progress"]
    assert augment_main(command) == 0
    capsys.readouterr()
    return source, out, command


DAMAGE = {
    "corrupt pool.json": lambda pool: (pool / "pool.json").write_text('{"method": "i2t-human", '),
    "pool.json not an object": lambda pool: (pool / "pool.json").write_text("[1, 2, 3]"),
    "truncated shard": lambda pool: (pool / "data" / "shard-00000.parquet").write_bytes(
        (pool / "data" / "shard-00000.parquet").read_bytes()[:300]),
    "garbage shard": lambda pool: (pool / "data" / "shard-00000.parquet").write_bytes(os.urandom(2000)),
    "pool.json of the wrong types": lambda pool: (pool / "pool.json").write_text(
        json.dumps({**json.loads((pool / "pool.json").read_text()), "source": 5})),
    "pool.json with a bool for a number": lambda pool: (pool / "pool.json").write_text(
        json.dumps({**json.loads((pool / "pool.json").read_text()), "seed": True})),
}
EXPECTED = {
    "corrupt pool.json": "pool.json: corrupt JSON",
    "pool.json not an object": "pool.json: a JSON object expected, got list",
    "truncated shard": "shard-00000.parquet: unreadable parquet shard",
    "garbage shard": "shard-00000.parquet: unreadable parquet shard",
    "pool.json of the wrong types": "pool.json: 'source' should be a text, not 5",
    "pool.json with a bool for a number": "pool.json: 'seed' should be a whole number, not True",
}


def test_score_reads_the_source_before_loading_the_scorer(tmp_path, capsys, made_pool, monkeypatch):
    """A wrong --source stops `augment score` in one line before the scorer (a real CLIP) loads."""
    from augment.scoring import scorers

    def loading(*args, **kwargs):
        raise AssertionError("the scorer was loaded before the source was read")

    monkeypatch.setattr(scorers, "load_scorer", loading)
    _, pool, _ = made_pool
    fails(capsys, ["score", pool, "--scorer", "tiny-clip", "--source", tmp_path / "missing"], str(tmp_path / "missing"))


def test_score_names_the_file_of_a_bad_source_image(tmp_path, capsys, made_pool):
    """The scorer decodes the bytes it hashed: the line names the record and the file they were
    read from, as every other command does."""
    source, pool, _ = made_pool
    image = truncate_image(source.parent / "images" / "1.png")
    line = fails(capsys, ["score", pool, "--scorer", "tiny-clip", "--source", source, "--no-progress", "--no-plot"])
    # and the pool being scored (several may be)
    assert line == f"error: {pool}: image '1' ({image}): unreadable or corrupt image (image file is truncated)"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_pool_is_one_line_in_every_command(tmp_path, capsys, made_pool, damage):
    from train.cli import main as train_main

    source, pool, generate = made_pool
    DAMAGE[damage](pool)
    expected = EXPECTED[damage]
    fails(capsys, ["score", pool, "--scorer", "tiny-clip", "--source", source], expected)
    fails(capsys, ["select", pool, "--out", tmp_path / "sel", "--max-per-item", "1"], expected)
    fails(capsys, ["push", pool, "--to-dir", tmp_path / "hub"], expected)
    fails(capsys, ["mat+", "--model", "tiny-clip", "--train-data", source, "--pools", pool, "--out", tmp_path / "run",
                   "--max-steps", "1", "--batch-size", "2", "--cpu", "--no-progress"], expected, main=train_main)
    fails(capsys, generate, expected)  # generate into that folder (a resume)
    assert not (tmp_path / "sel").exists() and not (tmp_path / "hub").exists()
    assert not (tmp_path / "run" / "ckpt").exists()


def test_empty_pools_are_refused_and_empty_results_are_loud(tmp_path, capsys, made_pool):
    from train.cli import main as train_main

    source, pool, _ = made_pool
    fails(capsys, ["select", pool, "--out", tmp_path / "none", "--methods", "eda"], "no row of", "passes the filters")
    assert not (tmp_path / "none").exists()
    assert augment_main(["select", str(pool), "--out", str(tmp_path / "empty"), "--methods", "eda", "--allow-empty"]) == 0
    fails(capsys, ["mat+", "--model", "tiny-clip", "--train-data", source, "--pools", tmp_path / "empty", "--out",
                   tmp_path / "run", "--max-steps", "1", "--batch-size", "2", "--cpu", "--no-progress"],
          "empty", "has no rows", main=train_main)
    one_caption = small_source(tmp_path / "single", captions=1)  # i2t-human has no other caption to give
    capsys.readouterr()
    assert augment_main(["generate", "--method", "i2t-human", "--source", str(one_caption), "--out",
                         str(tmp_path / "zero"), "--n", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "wrote no rows" in err and "images with one caption have none" in err


# ----------------------------------------------------------------------------- --transforms


@pytest.mark.parametrize("spec, expected", [
    ("RandomApply(transforms=['NotATransform(1)'])", "'NotATransform' is not a torchvision.transforms.v2 transform"),
    ("Compose([1, 2])", "Compose: 1 is not a transform"),
    ("RandomApply(transforms='RandomHorizontalFlip()')", "RandomApply needs a non-empty list"),
    ("Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])", "does not support PIL images"),
    ("PILToTensor()", "returns a torch.Tensor, not a PIL image"),  # the dry run checks its result
])
def test_transforms_spec_is_validated_whole_before_anything_is_written(tmp_path, capsys, spec, expected):
    source = small_source(tmp_path / "src", n=2)
    out = tmp_path / "aug"
    fails(capsys, ["generate", "--method", "img-aug", "--policy", "custom", "--transforms", spec, "--source", source,
                   "--out", out, "--n", "1", "--no-progress"], expected)
    assert not out.exists()


def test_nested_transforms_written_as_strings_run(tmp_path, capsys):
    from augment.pool import load_pool

    source = small_source(tmp_path / "src", n=2)
    spec = "RandomApply(transforms=['RandomHorizontalFlip(p=1.0)', 'ColorJitter(brightness=0.4)'], p=1.0)"
    assert augment_main(["generate", "--method", "img-aug", "--policy", "custom", "--transforms", spec, "--source",
                         str(source), "--out", str(tmp_path / "aug"), "--n", "1", "--no-progress"]) == 0
    assert len(load_pool(tmp_path / "aug")) == 2


# ----------------------------------------------------------------------------- Hub and secrets


def test_failing_hub_source_is_one_line_without_the_token(capsys, monkeypatch):
    import datasets

    fails(capsys, ["inspect", "--source", "nobody-here/no-such-set"], "nobody-here/no-such-set")
    secret = "hf_" + "Q" * 30

    def broken(*args, **kwargs):
        raise ConnectionError("Max retries exceeded\n" + "\n".join(f"  frame {i}" for i in range(30))
                              + f"\nheaders: Authorization: Bearer {secret}")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    line = fails(capsys, ["inspect", "--source", "org/name"], "org/name: no folder here, and cannot load the Hub dataset", "ConnectionError")
    assert secret not in line


def test_unexpected_hub_error_is_one_line_with_the_token_scrubbed():
    from augment.hub import HubError, hub_errors

    class Surprise(Exception):
        pass

    token = "hf_" + "Z" * 30
    with pytest.raises(HubError) as info:
        with hub_errors("uploading the data", "org/pool", token):
            raise Surprise(f"server said no to {token}\nand a second line")
    message = str(info.value)
    assert "Surprise" in message and "\n" not in message and token not in message


def test_debug_logging_never_prints_an_authorization_header(tmp_path):
    secret = "hf_" + "S" * 30
    script = f"""
import argparse, logging, sys
from augment.cli_common import run_main
lib = logging.getLogger("somelib")           # a library with its own handler, like transformers
lib.addHandler(logging.StreamHandler(sys.stderr)); lib.propagate = False
def work(args):
    logging.getLogger("urllib3").debug("send: Authorization: Bearer {secret}")
    logging.getLogger("httpx").debug("headers %s", [("authorization", "Bearer {secret}")])
    lib.warning("token is {secret}")
    logging.getLogger("train.trainer").warning("the LR schedule now spans 10 steps")
    return 0
def parser():
    p = argparse.ArgumentParser(); p.set_defaults(func=work); return p
sys.exit(run_main(parser, []))
"""
    env = {**os.environ, "MATPLUS_LOGLEVEL": "DEBUG", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "send: Authorization: Bearer <redacted>" in result.stderr  # the records are there, scrubbed
    assert secret not in result.stderr and secret not in result.stdout
    # the project's own log lines read as its "error: ..." lines do (logging's default was "WARNING:name:...")
    assert "\nwarning: the LR schedule now spans 10 steps\n" in result.stderr and "WARNING:" not in result.stderr


@pytest.mark.parametrize("traceback_env", [False, True], ids=["unexpected", "MATPLUS_TRACEBACK"])
def test_a_traceback_never_prints_a_token(traceback_env):
    """An unexpected error's traceback (and MATPLUS_TRACEBACK's re-raise of an expected one) is
    printed with its secrets scrubbed, as every log line and one-line error is."""
    secret = "hf_" + "T" * 30
    error = "MatPlusError" if traceback_env else "RuntimeError"
    script = f"""
import argparse, sys
from augment.cli_common import run_main
from augment.errors import MatPlusError
def work(args):
    raise {error}("request failed: Authorization: Bearer {secret}")
def parser():
    p = argparse.ArgumentParser(); p.set_defaults(func=work); return p
sys.exit(run_main(parser, []))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MATPLUS_TRACEBACK", None)
    if traceback_env:
        env["MATPLUS_TRACEBACK"] = "1"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr, result.stderr
    assert f"{error}: request failed: Authorization: Bearer <redacted>" in result.stderr
    assert secret not in result.stderr and secret not in result.stdout


def test_scorer_folder_of_another_kind_is_one_line(tmp_path, capsys, made_pool):
    from augment.tiny import save_tiny

    _, pool, _ = made_pool
    folder = save_tiny(tmp_path / "models", ["tiny-mlm"])["tiny-mlm"]
    capsys.readouterr()
    line = fails(capsys, ["score", pool, "--scorer", folder, "--no-progress"], "tiny-mlm")
    assert "scorer" in line
    assert len(capsys.readouterr().out.splitlines()) == 0


# ----------------------------------------------------------------------------- a scored pool keeps its promises


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A pool made from a CSV whose images live under --image-root, scored by `augment score POOL`
    alone (no --source, no --image-root), with a killed score run's temporaries planted first."""
    root = tmp_path_factory.mktemp("scored")
    for i in range(4):
        write_image(root / "pictures" / f"p{i}.png", colour=50 * i)
    lines = ["image,caption"] + [f"p{i}.png,{text} {i}" for i in range(4) for text in ("a shape number", "one object", "a picture of item")]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    pool = root / "pool"
    argv = ["generate", "--method", "i2t-human", "--source", str(root / "captions.csv"), "--image-root",
            str(root / "pictures"), "--out", str(pool), "--n", "2", "--no-progress"]
    assert augment_main(argv) == 0
    stale = [pool / "scores" / "tiny-clip-x" / f".rows.parquet.tmp-{dead_pid()}", pool / f".scores.json.tmp-{dead_pid()}"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    code = augment_main(["score", str(pool), "--scorer", "tiny-clip", "--no-progress", "--no-plot", "--gap-bootstrap", "50"])
    return pool, stale, code


def test_score_reads_the_recorded_image_root_and_cleans_killed_runs(scored):
    pool, stale, code = scored
    assert code == 0
    assert json.loads((pool / "pool.json").read_text())["image_root"].endswith("pictures")
    assert not any(path.exists() for path in stale)


def test_a_scored_pool_still_loads_with_datasets(scored, made_pool):
    import datasets

    from augment.schema import POOL_FEATURES

    pool, _, _ = scored
    rows = datasets.load_dataset(str(pool), split="train")
    assert len(rows) == json.loads((pool / "pool.json").read_text())["num_rows"] > 0
    assert tuple(rows.column_names) == tuple(POOL_FEATURES)
    other = made_pool[1]  # another pool folder also called "pool": its own rows, not a cached copy
    assert other.name == pool.name
    assert len(datasets.load_dataset(str(other), split="train")) == json.loads((other / "pool.json").read_text())["num_rows"]


def test_card_shows_the_scores_language_and_source(scored):
    from augment.pool import load_pool
    from augment.hub import publication

    from data_cards.render import CardOptions

    pool = load_pool(scored[0])
    card, _ = publication(pool, CardOptions())
    scores = json.loads((pool.path / "scores.json").read_text())
    alignment = scores["scorers"][scores["latest"]]["alignment"]["all"]["mean"]
    assert f"| `alignment (all)` | {alignment:.4g} |" in card.text
    assert "text gap: Frechet distance" in card.text
    assert card.data.language == ["en"]
    assert card.data.source_datasets == ["extended|captions"]
    named, _ = publication(pool, CardOptions(source_dataset="nlphuji/flickr30k"))
    assert named.data.source_datasets == ["extended|nlphuji/flickr30k"]
    # the prose and the title name it too, with the local copy beside it (they named the local folder only)
    assert "source dataset `nlphuji/flickr30k` (read from `captions.csv`)" in named.text
    assert "| source dataset | nlphuji/flickr30k (read from captions.csv) |" in named.text
    assert named.data.pretty_name.endswith("pool of nlphuji/flickr30k")
    assert "source dataset `captions.csv`." in card.text and "read from" not in card.text


def test_gap_intervals_contain_their_estimate(scored):
    from augment.scoring.measures import percentile_interval

    pool, _, _ = scored
    scores = json.loads((pool / "scores.json").read_text())
    for gap in scores["scorers"][scores["latest"]]["gap"].values():
        for measure in ("frechet", "mmd2"):
            assert gap[measure]["low"] <= gap[measure]["value"] <= gap[measure]["high"]
    # the case: every resample above the estimate (an upward-biased statistic)
    resamples = list(np.random.default_rng(0).normal(0.08, 0.005, 500))
    interval = percentile_interval(0.043, resamples, 0.95)
    assert interval["low"] <= 0.043 <= interval["high"]
    assert interval["bootstrap_bias"] == pytest.approx(0.037, abs=0.002)
    assert interval["high"] - interval["low"] == pytest.approx(np.percentile(resamples, 97.5) - np.percentile(resamples, 2.5), rel=0.05)


# ----------------------------------------------------------------------------- launchers


def test_torchrun_on_a_cpu_without_cpu_flag_runs_a_gloo_group():
    from train.launch import check_launch_environment

    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "TORCHELASTIC_RUN_ID": "x"}
    plan = check_launch_environment(cpu=False, env=env, cuda_devices=0)
    assert plan.distributed and plan.cpu and plan.backend == "gloo" and plan.launcher == "torchrun"
    assert check_launch_environment(cpu=False, env=env, cuda_devices=2).backend == "nccl"
    assert not check_launch_environment(cpu=False, env={}, cuda_devices=0).distributed


@pytest.mark.parametrize("env, expected", [
    ({"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "accelerate launch started a single process"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR/MASTER_PORT are not set"),
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "only 2 GPU(s) visible"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
])
def test_launch_environments_that_cannot_work_are_one_line(env, expected):
    from train.launch import LaunchError, check_launch_environment

    with pytest.raises(LaunchError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_launch_environment(cpu=False, env=env, cuda_devices=2)


def test_process_group_smaller_than_the_launch_is_refused():
    from train.launch import LaunchError, LaunchPlan, check_process_group

    with pytest.raises(LaunchError, match="started 2 processes but the process group has 1"):
        check_process_group(LaunchPlan(world_size=2, cpu=True, backend="gloo"), 1)


def test_accelerate_launch_of_two_cpu_processes_stops_with_one_line(tmp_path, sample_world_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "train.cli", "clean", "--model", "tiny-clip",
               "--train-data", str(sample_world_dir), "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "single process" in errors[0] and "torch.distributed.run" in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_torchrun_of_two_cpu_processes_without_cpu_flag_trains_as_one_group(tmp_path, sample_world_dir):
    """The launch of the issue: before, two independent copies raced into one folder (world_size 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MATPLUS_LOGLEVEL": "ERROR", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train.cli",
               "clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--out", str(out),
               "--max-steps", "1", "--batch-size", "2", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
                            start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4


def test_generate_under_a_single_process_accelerate_launch_stops_with_one_line(tmp_path, capsys, monkeypatch):
    source = small_source(tmp_path / "src", n=1)
    for name, value in {"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    fails(capsys, ["generate", "--method", "i2t-human", "--source", source, "--out", tmp_path / "pool", "--n", "1"],
          "accelerate launch started a single process")
    assert not (tmp_path / "pool").exists()


def test_a_pool_given_as_a_source_and_a_run_given_as_a_model_say_what_to_pass(tmp_path):
    from augment.errors import ModelLoadError, SourceError
    from augment.sources import load_source
    from models import load_model

    pool = tmp_path / "pool"
    (pool / "data").mkdir(parents=True)
    (pool / "pool.json").write_text("{}")
    (pool / "data" / "shard-00000.parquet").write_bytes(b"")  # was read as a parquet source without images
    with pytest.raises(SourceError, match=r"is a pool \(pool.json\), not an image-caption source; pass the source it was made from"):
        load_source(str(pool))
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=f"a training run's weights are in {run / 'ckpt'}$"):
        load_model(str(run))


# ----------------------------------------------------------------------------- outputs, configs and records of the wrong kind


def usage_fails(capsys, argv, expected, main=augment_main) -> None:
    """An argparse refusal: exit status 2, its one error line holding `expected`, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if ": error: " in line] == [next(
        line for line in err.splitlines() if expected in line)], err


def test_an_output_of_the_wrong_kind_is_refused_before_any_work(tmp_path, capsys, made_pool):
    from analysis.cli import main as analysis_main
    from train.cli import main as train_main

    source, pool, _ = made_pool
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    usage_fails(capsys, ["generate", "--method", "eda", "--source", source, "--out", a_file], "is a file, not a folder")
    usage_fails(capsys, ["select", pool, "--out", a_file, "--max-per-item", "1"], "is a file, not a folder")
    usage_fails(capsys, ["clean", "--model", "tiny-clip", "--train-data", source, "--out", a_file], "is a file, not a folder",
                main=train_main)
    usage_fails(capsys, ["eval", "tiny-clip", "--source", source, "--out", a_file], "is a file, not a folder", main=train_main)
    usage_fails(capsys, ["score", pool, "--scorer", "tiny-clip", "--table", tmp_path], "is a folder, not a file")
    usage_fails(capsys, ["compare", tmp_path, "--out", tmp_path], "is a folder, not a file", main=analysis_main)
    assert a_file.read_text() == "kept"


@pytest.mark.parametrize("argv, expected", [
    (["--temperature", "nan"], "must be a finite number"),
    (["--temperature", "inf"], "must be a finite number"),
    (["--guidance-scale", "inf"], "must be a finite number"),
    (["--guidance-scale", "-1"], "must not be negative"),
])
def test_nan_and_inf_are_refused_by_the_number_checks(tmp_path, capsys, argv, expected):
    usage_fails(capsys, ["generate", "--method", "eda", "--source", tmp_path, "--out", tmp_path / "p", *argv], expected)


@pytest.mark.parametrize("argv", [
    ["select", "POOL", "--out", "OUT", "--min-alignment", "nan"],
    ["select", "POOL", "--out", "OUT", "--max-alignment", "inf"],  # selected every row, exit 0, before
    ["generate", "--method", "img-aug", "--policy", "color-jitter", "--jitter", "nan", "0.4", "0.4", "0.1",
     "--source", "SRC", "--out", "OUT"],  # failed mid-run, leaving an unfinished pool, before
    ["make-sample", "OUT", "--val-frac", "nan"],
])
def test_nan_and_inf_are_refused_before_any_work_in_every_command(tmp_path, capsys, argv):
    names = {"POOL": tmp_path / "pool", "OUT": tmp_path / "out", "SRC": tmp_path}
    usage_fails(capsys, [names.get(a, a) for a in argv], "must be a finite number")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, expected", [
    ("max_steps: 2.5\n", "max_steps: expected a whole number or null, got 2.5 (max_steps from "),
    ("seed: null\n", "seed: expected a whole number, got None (seed from "),
    ("lock_text: maybe\n", "lock_text: expected true or false or null, got 'maybe' (lock_text from "),
    (b"\xff\xfe\x00", "not UTF-8 text; save it as UTF-8"),
])
def test_a_config_of_the_wrong_types_is_one_line_and_writes_nothing(tmp_path, capsys, content, expected):
    from train.cli import main as train_main

    config = tmp_path / "c.yaml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(capsys, ["clean", "--model", "tiny-clip", "--train-data", tmp_path, "--config", config, "--out", tmp_path / "run"],
          expected, main=train_main)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", [["open_clip"], {"name": "open_clip"}, 5])
def test_a_model_info_family_that_is_not_a_name_is_one_line(tmp_path, family):
    """matplus_model.json's 'family' as a list was "TypeError: unhashable type: 'list'" in load_model's
    family lookup, a traceback of train eval (audit AZ); a number was silently ignored."""
    from augment.errors import ModelLoadError
    from models import load_model

    saved = tmp_path / "clip"
    load_model("tiny-clip").save(saved)
    info = saved / "matplus_model.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "family": family}))
    with pytest.raises(ModelLoadError, match=r"matplus_model.json: damaged \('family' must be a family name, got "):
        load_model(str(saved))


def test_damaged_model_info_and_albef_config_are_one_line(tmp_path):
    from augment.errors import ModelLoadError
    from models import load_model

    saved = tmp_path / "albef"
    load_model("tiny-albef").save(saved)
    info = saved / "matplus_model.json"
    kept = info.read_text()
    info.write_text("{bad")
    with pytest.raises(ModelLoadError, match="matplus_model.json: damaged"):
        load_model(str(saved))
    info.write_text("[1]")
    with pytest.raises(ModelLoadError, match="a JSON object expected, got list"):
        load_model(str(saved))
    info.write_text(kept)
    config = saved / "albef_config.json"
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({k: v for k, v in settings.items() if k != "image_res"}))
    with pytest.raises(ModelLoadError, match="albef_config.json lacks the key 'image_res'"):
        load_model(str(saved))
    config.write_text(json.dumps({**settings, "image_res": "big"}))
    with pytest.raises(ModelLoadError, match="albef_config.json has a bad value"):
        load_model(str(saved))


def test_scores_json_of_another_kind_says_how_to_get_out(tmp_path, made_pool, capsys):
    from augment.errors import PoolError
    from augment.scoring.store import SCORES_VERSION, read_scores_json

    _, pool, _ = made_pool
    (pool / "scores.json").write_text(json.dumps({"scores_version": SCORES_VERSION, "scorers": {"tiny-clip": 5}}))
    with pytest.raises(PoolError, match="the entry of scorer 'tiny-clip' is not an object; delete it"):
        read_scores_json(pool)
    (pool / "scores.json").write_text('{"x": 1}')
    # `augment score` reads it too: "run augment score again" would loop
    fails(capsys, ["score", pool, "--scorer", "tiny-clip"], "scores version None", "delete it and run")


def test_a_finished_evaluation_is_not_silently_replaced(tmp_path, capsys, sample_world_dir):
    from train.cli import main as train_main

    out = tmp_path / "eval"
    common = ["eval", "tiny-clip", "--source", sample_world_dir, "--split", "test", "--limit", "4", "--out", out,
              "--no-progress"]
    assert train_main([str(a) for a in [*common, "--attacks", "clean,pgd", "--pgd-steps", "1"]]) == 0
    report = (out / "eval.json").read_text()
    fails(capsys, [*common, "--attacks", "clean"], "holds a finished evaluation (eval.json)", "--restart", main=train_main)
    assert (out / "eval.json").read_text() == report
    assert train_main([str(a) for a in [*common, "--attacks", "clean", "--restart"]]) == 0
    assert list(json.loads((out / "eval.json").read_text())["attacks"]) == ["clean"]


def test_compare_refuses_an_eval_json_of_the_wrong_shape(tmp_path, capsys):
    from analysis.cli import main as analysis_main

    for name, content in (("list", "[1]"), ("number", '{"attacks": 5}'), ("entry", '{"attacks": {"pgd": 5}}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(content)
        fails(capsys, ["compare", tmp_path / name], "not an evaluation report", main=analysis_main)


def test_a_resume_with_another_batch_size_names_it(tmp_path, capsys, made_pool):
    source, pool, _ = made_pool
    out = tmp_path / "eda"
    assert augment_main(["generate", "--method", "i2t-tiny-captioner", "--source", str(source), "--out", str(out),
                         "--n", "1", "--limit", "2", "--no-progress"]) == 0
    fails(capsys, ["generate", "--method", "i2t-tiny-captioner", "--source", source, "--out", out, "--n", "1",
                   "--limit", "2", "--batch-size", "3", "--no-progress"], "different params ['batch_size']")


def test_a_garbage_tensor_file_never_advises_unpickling_it(tmp_path):
    from augment.errors import MatPlusError
    from train.checkpoint import load_tensors

    path = tmp_path / "optimizer.pt"
    path.write_bytes(b"garbage\x80\x02}q")
    with pytest.raises(MatPlusError) as info:
        load_tensors(path, "resume from another checkpoint")
    assert "weights_only" not in str(info.value) and "not plain tensors and numbers" in str(info.value)


@pytest.mark.parametrize("change, problem", [
    (lambda cfg: [1], "a JSON object expected, got list"),
    (lambda cfg: {**cfg, "model_cfg": 5}, "'model_cfg' must be an object, got number"),
    (lambda cfg: {**cfg, "model_cfg": {**cfg["model_cfg"], "vision_cfg": [1]}}, "'model_cfg.vision_cfg' must be an object, got list"),
    (lambda cfg: {**cfg, "model_cfg": {**cfg["model_cfg"], "embed_dim": "x"}}, "'model_cfg.embed_dim' must be a positive whole number, got \"x\""),
    (lambda cfg: {**cfg, "preprocess_cfg": 5}, "'preprocess_cfg' must be an object, got number"),
])
def test_an_open_clip_config_of_the_wrong_shape_names_the_key(tmp_path, change, problem):
    """A saved CLIP's open_clip_config.json of the wrong shape failed in open_clip, in words that name no key:
    "'int' object is not subscriptable", "'list' object has no attribute 'timm_model_name'" (audit AZ's left finding)."""
    import shutil

    from augment import tiny
    from augment.errors import ModelLoadError
    from models import load_model

    saved = tmp_path / "clip"
    shutil.copytree(tiny.tiny_dir("tiny-clip"), saved)
    config = saved / "open_clip_config.json"
    config.write_text(json.dumps(change(json.loads(config.read_text()))))
    with pytest.raises(ModelLoadError, match=f"^{re.escape(str(config))}: damaged \\({re.escape(problem)}\\); copy"):
        load_model(str(saved))


def test_an_open_clip_config_with_a_byte_order_mark_is_one_line(tmp_path):
    """The shape check reads open_clip_config.json with augment.json_records, which allows a byte-order mark (an
    editor on Windows writes one), and passed such a file on: the next reader's json.loads (the text tower check)
    was a JSONDecodeError traceback ("Unexpected UTF-8 BOM"), and open_clip's own json.load refuses it too."""
    import codecs
    import shutil

    from augment import tiny
    from augment.errors import ModelLoadError
    from models import load_model

    saved = tmp_path / "clip"
    shutil.copytree(tiny.tiny_dir("tiny-clip"), saved)
    config = saved / "open_clip_config.json"
    config.write_bytes(codecs.BOM_UTF8 + config.read_bytes())
    with pytest.raises(ModelLoadError, match=f"^{re.escape(str(config))}: damaged \\(a byte-order mark before its JSON"):
        load_model(str(saved))
