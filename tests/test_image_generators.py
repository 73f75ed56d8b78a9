"""Image pool generators: t2i-sd, t-i2i-sd (tiny-sd, offline) and img-aug (torchvision v2).

Every diffusion run here is a handful of 64x64 images at 2 steps, so the whole file stays fast on
a loaded 2-core machine.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from augment.cli import main as augment_main
from augment.errors import MatPlusError
from augment.pool import PoolWriter, load_pool

STEPS = "2"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """8 sample-world scenes (6 train), 64x64, 5 captions each."""
    from augment.world.writer import write_sample

    return write_sample(tmp_path_factory.mktemp("imggen") / "sample", n=8, seed=0)


@pytest.fixture(scope="session")
def train_items(sample_dir) -> list[dict]:
    from augment.sources import load_source, select_split

    source, _ = load_source(str(sample_dir))
    train = select_split(source, "train")
    return [train[i] for i in range(len(train))]


@pytest.fixture(scope="module", autouse=True)
def shared_pipelines():
    """Load each tiny pipeline once for the in-process runs of this file (CLI runs included).

    Keyed by everything `load_pipeline` reads, so a run never gets a pipeline other settings
    would have built; generation itself never changes a pipeline.
    """
    from augment.generators import diffusion

    real_load = diffusion.load_pipeline
    loaded = {}

    def load_once(settings, kind):
        key = (settings.model, settings.revision, settings.device, settings.dtype, settings.scheduler,
               settings.safety_checker, kind)
        if key not in loaded:
            loaded[key] = real_load(settings, kind)
        return loaded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diffusion, "load_pipeline", load_once)
        yield loaded


def tiny_settings(**overrides):
    from augment.generators.diffusion import DiffusionSettings

    return DiffusionSettings(**{"model": "tiny-sd", "steps": int(STEPS), "batch_size": 4, **overrides})


def generate(tmp_path: Path, sample_dir: Path, method: str, name: str, *extra: str) -> Path:
    out = tmp_path / name
    code = augment_main([
        "generate", "--method", method, "--source", str(sample_dir), "--out", str(out),
        "--seed", "3", "--no-progress", *extra,
    ])
    assert code == 0
    return out


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pool_images(path: Path) -> dict[str, bytes]:
    """row_id -> the stored (encoded) image bytes, exactly as written."""
    from datasets import Image

    dataset = load_pool(path).dataset.cast_column("image", Image(decode=False))
    return {row["row_id"]: row["image"]["bytes"] for row in dataset}


def item_by_id(items: list[dict], image_id: str) -> dict:
    return next(i for i in items if i["image_id"] == image_id)


# ----------------------------------------------------------------------------- diffusion, via the CLI


T2I_ARGS = ["--model", "tiny-sd", "--steps", STEPS, "--limit", "2", "--captions-per-image", "2",
            "--n", "1", "--batch-size", "2", "--shard-size", "1"]
I2I_SCHEDULER = "EulerDiscreteScheduler"


@pytest.fixture(scope="module")
def t2i_pool(tmp_path_factory, sample_dir) -> Path:
    """2 images x 2 captions x 1: one shard per image, each one call of 2 prompts x 1 image."""
    return generate(tmp_path_factory.mktemp("t2i"), sample_dir, "t2i-sd", "pool", *T2I_ARGS)


@pytest.fixture(scope="module")
def i2i_pool(tmp_path_factory, sample_dir) -> Path:
    """2 images x 2 captions x 1 in calls of 3 then 1 images, with a swapped-in scheduler."""
    return generate(tmp_path_factory.mktemp("i2i"), sample_dir, "t-i2i-sd", "pool",
                    "--model", "tiny-sd", "--steps", STEPS, "--strength", "0.5", "--limit", "2",
                    "--captions-per-image", "2", "--n", "1", "--batch-size", "3", "--scheduler", I2I_SCHEDULER)


def test_t2i_pool_through_cli(t2i_pool):
    pool = load_pool(t2i_pool)
    rows = pool.dataset
    assert len(rows) == 4 and pool.meta["num_shards"] == 2
    assert set(rows["modality"]) == {"image"} and rows["source_caption_index"] == [0, 1, 0, 1]
    assert rows["row_id"][:2] == ["t2i-sd:000000:0:0", "t2i-sd:000000:1:0"]
    assert all(image.size == (64, 64) for image in rows["image"])
    assert pool.meta["model"] == "tiny-sd"
    params = pool.meta["params"]
    assert params["scheduler"] == "DDIMScheduler" and params["steps"] == 2 and params["captions_per_image"] == 2
    provenance = json.loads(rows[3]["provenance"])
    assert provenance["batch"] == {"prompts": 2, "images_per_prompt": 1, "slot": 1}
    assert provenance["model"] == "tiny-sd" and provenance["params"] == params
    assert provenance["nsfw"] is None  # no safety checker by default
    # distinct seeds give distinct images
    assert len({png_bytes(image) for image in rows["image"]}) == 4


def test_i2i_pool_through_cli(i2i_pool, train_items):
    pool = load_pool(i2i_pool)
    rows = pool.dataset
    assert len(rows) == 4
    assert rows["source_caption_index"] == [0, 1, 0, 1]
    assert pool.meta["params"]["scheduler"] == "EulerDiscreteScheduler"
    assert pool.meta["params"]["strength"] == 0.5
    first = json.loads(rows[0]["provenance"])
    assert first["prompt"] == train_items[0]["captions"][0]
    assert first["generation_size"] == [64, 64] and first["source_size"] == [64, 64]
    assert [json.loads(p)["batch"]["slot"] for p in rows["provenance"]] == [0, 1, 2, 0]


def test_t2i_row_regenerates_alone_bit_identical(t2i_pool, train_items):
    from augment.generators.diffusion import TextToImageGenerator

    stored = pool_images(t2i_pool)
    row = load_pool(t2i_pool).dataset[3]  # last slot of its call: where batching effects show
    provenance = json.loads(row["provenance"])
    generator = TextToImageGenerator(tiny_settings(captions_per_image=2))
    again = generator.regenerate_row(item_by_id(train_items, row["source_image_id"]),
                                     row["source_caption_index"], 0, seed=3, batch=provenance["batch"])
    assert again["row_id"] == row["row_id"] == "t2i-sd:000001:1:0" and again["seed"] == row["seed"]
    assert png_bytes(again["image"]) == stored[row["row_id"]]


def test_i2i_row_regenerates_alone_bit_identical(i2i_pool, train_items):
    from augment.generators.diffusion import ImageToImageGenerator

    stored = pool_images(i2i_pool)
    row = load_pool(i2i_pool).dataset[2]
    provenance = json.loads(row["provenance"])
    generator = ImageToImageGenerator(tiny_settings(strength=0.5, scheduler=I2I_SCHEDULER, batch_size=3))
    again = generator.regenerate_row(item_by_id(train_items, row["source_image_id"]),
                                     row["source_caption_index"], 0, seed=3, batch=provenance["batch"])
    assert png_bytes(again["image"]) == stored[row["row_id"]]


def interrupted_then_resumed(tmp_path: Path, sample_dir: Path, monkeypatch, name: str, *args: str) -> Path:
    """A t2i-sd run killed after its first shard, then the same command re-run: the resumed pool."""
    real_write = PoolWriter.write_shard
    written = []

    def write_then_interrupt(self, index, rows):
        if written:
            raise KeyboardInterrupt
        written.append(index)
        return real_write(self, index, rows)

    out = tmp_path / name
    monkeypatch.setattr(PoolWriter, "write_shard", write_then_interrupt)
    assert augment_main(["generate", "--method", "t2i-sd", "--source", str(sample_dir), "--out", str(out),
                         "--seed", "3", "--no-progress", *args]) == 130
    assert json.loads((out / "pool.json").read_text())["status"] == "in-progress"
    assert len(list((out / "data").glob("*.parquet"))) == 1
    monkeypatch.setattr(PoolWriter, "write_shard", real_write)
    return generate(tmp_path, sample_dir, "t2i-sd", name, *args)


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, sample_dir, monkeypatch, t2i_pool):
    """Kill the run after its first shard, re-run the same command: same pool as t2i_pool."""
    out = interrupted_then_resumed(tmp_path, sample_dir, monkeypatch, "pool", *T2I_ARGS)
    assert pool_images(out) == pool_images(t2i_pool)


class FlagOneImage:
    """A stand-in for SD's safety checker (and its feature extractor) that flags one known image,
    as the real one flags: that image's tensor zeroed (black), its flag True."""

    def __init__(self, png: bytes):
        import numpy as np
        import torch
        from PIL import Image

        self.known = torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).copy())

    def extract(self, images, return_tensors="pt"):  # the pipeline's feature_extractor: its PIL images
        import numpy as np
        import torch

        pixels = torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images]))
        return type("Features", (), {"pixel_values": pixels, "to": lambda self, device: self})()

    def __call__(self, images, clip_input):
        import torch

        flags = [bool(torch.equal(pixels, self.known.to(pixels.dtype))) for pixels in clip_input]
        for index, flagged in enumerate(flags):
            if flagged:
                images[index] = torch.zeros_like(images[index])
        return images, flags


def install_checker(monkeypatch, png: bytes, **settings) -> None:
    """The tiny pipeline that runs with --safety-checker (tiny-sd has no checker) gets one flagging `png`."""
    from augment.generators.diffusion import load_pipeline

    pipe = load_pipeline(tiny_settings(safety_checker=True, **settings), "t2i")  # the shared one runs use
    checker = FlagOneImage(png)
    monkeypatch.setattr(pipe, "safety_checker", checker)
    monkeypatch.setattr(pipe, "feature_extractor", checker.extract)


def test_images_the_safety_checker_flags_are_dropped_and_counted(tmp_path, sample_dir, monkeypatch, t2i_pool, capsys):
    """A flagged (black) image is no row; pool.json counts it and the run says so in one line,
    the same after a resume (the flagged image is in the shard the first run kept)."""
    reference = pool_images(t2i_pool)
    flagged = "t2i-sd:000000:1:0"
    install_checker(monkeypatch, reference[flagged])
    args = [*T2I_ARGS, "--safety-checker"]
    import augment.pool

    cards = []  # pool.json is written once, with its note: never complete without it
    write_card = augment.pool.write_pool_card
    monkeypatch.setattr(augment.pool, "write_pool_card",
                        lambda folder, meta: (cards.append(dict(meta)), write_card(folder, meta)))
    whole = generate(tmp_path, sample_dir, "t2i-sd", "whole", *args)
    assert [meta.get("nsfw_dropped") for meta in cards] == [1]
    assert pool_images(whole) == {row_id: png for row_id, png in reference.items() if row_id != flagged}
    pool = load_pool(whole)
    assert pool.meta["params"]["safety_checker"] is True and pool.meta["num_rows"] == 3
    assert pool.meta["nsfw_dropped"] == 1
    assert pool.meta["note"] == "1 of 4 images dropped, not written: flagged by the safety checker"
    assert all(json.loads(p)["nsfw"] is False for p in pool.dataset["provenance"])
    assert capsys.readouterr().err.count("flagged by the safety checker") == 1
    resumed = interrupted_then_resumed(tmp_path, sample_dir, monkeypatch, "resumed", *args)
    assert pool_images(resumed) == pool_images(whole)
    assert {k: load_pool(resumed).meta[k] for k in ("num_rows", "nsfw_dropped", "note")} == \
        {k: pool.meta[k] for k in ("num_rows", "nsfw_dropped", "note")}


def test_a_checked_pool_begun_by_an_older_version_is_not_resumed(tmp_path, sample_dir, monkeypatch, t2i_pool, capsys):
    """Shards written before flagged images were dropped hold them (black): their params lack
    `flagged_images`, so a resume refuses them instead of mixing written and dropped flagged images."""
    reference = pool_images(t2i_pool)
    install_checker(monkeypatch, reference["t2i-sd:000000:1:0"])
    args = [*T2I_ARGS, "--safety-checker"]
    out = interrupted_then_resumed(tmp_path, sample_dir, monkeypatch, "older", *args)
    meta = json.loads((out / "pool.json").read_text())
    assert meta["params"]["flagged_images"] == "dropped"
    del meta["params"]["flagged_images"]  # as the older version recorded it
    meta["status"] = "in-progress"
    (out / "pool.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert augment_main(["generate", "--method", "t2i-sd", "--source", str(sample_dir), "--out", str(out),
                         "--seed", "3", "--no-progress", *args]) == 2
    assert "flagged_images" in capsys.readouterr().err


def test_a_captions_other_rows_note_its_flagged_images(monkeypatch, train_items):
    from augment.generators.diffusion import TextToImageGenerator

    settings = {"captions_per_image": 1, "batch_size": 4}
    plain = TextToImageGenerator(tiny_settings(**settings)).generate(train_items[:2], 2, seed=7)
    install_checker(monkeypatch, png_bytes(plain[1]["image"]), **settings)
    rows = TextToImageGenerator(tiny_settings(safety_checker=True, **settings)).generate(train_items[:2], 2, seed=7)
    assert [r["row_id"] for r in rows] == [plain[i]["row_id"] for i in (0, 2, 3)]
    notes = [json.loads(r["provenance"]).get("note") for r in rows]
    assert notes == ["1 of 2 images of this caption dropped: flagged by the safety checker", None, None]


def test_a_prompt_the_text_encoder_cuts_is_recorded_on_its_rows(train_items):
    """diffusers cuts a prompt past 77 CLIP tokens with only a log line: the rows say what was read."""
    from augment.generators.diffusion import TextToImageGenerator

    long_caption = " ".join(["a red cube beside a small blue sphere"] * 12)  # 96 words
    item = {**train_items[0], "captions": [long_caption, train_items[0]["captions"][1]]}
    rows = TextToImageGenerator(tiny_settings(batch_size=4)).generate([item], 2, seed=7)
    provenance = [json.loads(r["provenance"]) for r in rows]
    cut, whole = provenance[:2], provenance[2:]
    assert [p["prompt"] for p in cut] == [long_caption] * 2
    assert all(p["prompt_tokens"] == 96 for p in cut)
    read = cut[0]["prompt_read"].split()
    assert len(read) == 75 and read == long_caption.split()[:75]
    assert cut[0]["note"] == "prompt cut to its first 75 of 96 tokens by the text encoder: the image follows prompt_read only"
    assert all("prompt_read" not in p and "note" not in p for p in whole)


def test_a_prompt_cut_inside_a_character_records_the_characters_read_whole():
    """CLIP's byte-level tokens split a Chinese character (3 bytes in UTF-8) in two or three: a cut between them
    ended prompt_read with U+FFFD, a character the prompt does not hold."""
    from augment.generators.diffusion import TextToImageGenerator

    generator = TextToImageGenerator(tiny_settings())
    prompt = "一只红色的猫坐在蓝色的桌子上" * 8
    read = generator.prompt_cut(prompt)["prompt_read"]
    assert "\ufffd" not in read and read and prompt.startswith(read)
    replaced = "\ufffd" + prompt  # one the caption holds itself is kept where the decoding gives it
    assert generator.prompt_cut(replaced)["prompt_read"].startswith("\ufffd")


def test_i2i_keeps_aspect_ratio_of_non_square_source():
    from PIL import Image

    from augment.generators.diffusion import ImageToImageGenerator, generation_size

    assert generation_size(80, 48, 64) == (104, 64)  # short side 64; 80 * 64 / 48 = 106.7 -> 104
    assert generation_size(48, 80, 512) == (512, 856)
    wide = {"image_id": "wide", "image": Image.new("RGB", (80, 48), (200, 30, 30)),
            "captions": ["a wide red rectangle"], "split": "train"}
    generator = ImageToImageGenerator(tiny_settings(strength=0.5, scheduler=I2I_SCHEDULER))
    (row,) = generator.generate([wide], 1, seed=0)
    provenance = json.loads(row["provenance"])
    assert provenance["generation_size"] == [104, 64] and provenance["source_size"] == [80, 48]
    assert row["image"].size == (80, 48)  # resized back to the source's size


@pytest.mark.parametrize("method", ["t2i-sd", "t-i2i-sd"])
def test_batched_equals_one_image_loop_within_one_level(method, train_items):
    """A batched call (2 captions x 2 images in one call) makes the images of a one-image-per-call
    loop with the same seeds: equal within 1/255 (float kernels round slightly by batch shape)."""
    import numpy as np

    from augment.generators.diffusion import GENERATOR_CLASSES

    generator = GENERATOR_CLASSES[method](tiny_settings(batch_size=4, captions_per_image=1, strength=0.5))
    items = train_items[:2]
    rows = generator.generate(items, 2, seed=7)
    assert [json.loads(r["provenance"])["batch"]["slot"] for r in rows] == [0, 1, 2, 3]  # one call of 4
    for row, item, k in zip(rows, [items[0], items[0], items[1], items[1]], [0, 1, 0, 1]):
        alone = generator.regenerate_row(item, 0, k, seed=7)  # no layout: a call of one image
        assert json.loads(alone["provenance"])["batch"] == {"prompts": 1, "images_per_prompt": 1, "slot": 0}
        difference = np.abs(np.asarray(row["image"], dtype=np.int16) - np.asarray(alone["image"], dtype=np.int16))
        assert difference.max() <= 1, (row["row_id"], int(difference.max()))
    # the seeds do the work: the two images of one caption differ far beyond a rounding level
    first, second = (np.asarray(r["image"], dtype=np.int16) for r in rows[:2])
    assert np.abs(first - second).max() > 10


def test_two_processes_equal_one_process(tmp_path, sample_dir):
    """torchrun with 2 CPU processes (gloo) writes the same pool as one process.

    (accelerate launch starts a single process on a CPU-only machine: generate refuses that.)
    Both runs use 1 intra-op thread: on the CPU the thread count changes float results too.
    """
    import torch

    common = ["generate", "--method", "t2i-sd", "--source", str(sample_dir), "--model", "tiny-sd",
              "--steps", STEPS, "--limit", "2", "--captions-per-image", "1", "--augmentations", "1",  # torchrun's parser takes --n
              "--shard-size", "1", "--seed", "5", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "augment.cli"]
    two = subprocess.run([*launch, *common, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[:2000] + " ... " + two.stderr[-1000:]  # the error line comes first
    assert "process 1 of 2 (gloo)" in two.stderr and "process 2 of 2 (gloo)" in two.stderr  # both processes ran
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert augment_main([*common, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert load_pool(tmp_path / "two").meta["num_shards"] == 2
    assert pool_images(tmp_path / "two") == pool_images(tmp_path / "one")


def test_two_processes_overwrite_a_pool_and_write_a_new_one_with_overwrite(tmp_path, sample_dir):
    """Each process decided alone whether --overwrite replaced a pool: a late one took the pool.json
    rank 0 had just written for an old pool, wrote its shards into the replacement, and rank 0 stopped
    with "2 of 4 shards written". Rank 0 decides now; the others follow what it created."""
    common = ["generate", "--method", "eda", "--source", str(sample_dir), "--limit", "4", "--augmentations", "1",
              "--shard-size", "1", "--seed", "5", "--no-progress", "--overwrite"]
    assert augment_main([*common, "--seed", "6", "--out", str(tmp_path / "old")]) == 0  # a pool to replace
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "augment.cli"]
    for out in ("old", "fresh"):
        run = subprocess.run([*launch, *common, "--out", str(tmp_path / out)], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
    assert augment_main([*common, "--out", str(tmp_path / "one")]) == 0
    captions = [load_pool(tmp_path / name).dataset["caption"] for name in ("old", "fresh", "one")]
    assert captions[0] == captions[1] == captions[2]
    assert not (tmp_path / "old" / ".replacement").exists()


# ----------------------------------------------------------------------------- diffusion, units


def test_t2i_call_plan_chunks_and_orders_rows():
    """n larger than the batch is cut into chunks; rows come back in (image, caption, k) order."""
    from augment.generators.diffusion import ImageJob, TextToImageGenerator

    generator = TextToImageGenerator(tiny_settings(batch_size=4), pipe=object())
    items = [{"image_id": f"i{j}", "captions": ["a", "b"], "split": "train"} for j in range(2)]
    jobs = generator.jobs(items, 5)
    assert len(jobs) == 20 and jobs[5] == ImageJob(items[0], 1, 0)
    calls = list(generator.plan_calls(jobs, 5))
    # each caption: a chunk of 4 images, then a tail of 1 (calls never mix chunk lengths)
    assert [(len(c.prompts), c.images_per_prompt) for c in calls] == [(1, 4), (1, 1), (1, 4), (1, 1), (1, 4), (1, 1), (1, 4), (1, 1)]
    small = list(generator.plan_calls(generator.jobs(items, 2), 2))
    assert [(len(c.prompts), c.images_per_prompt) for c in small] == [(2, 2), (2, 2)]
    assert [(t.item["image_id"], t.caption_index, t.k) for t in small[1].slots] == [("i1", 0, 0), ("i1", 0, 1), ("i1", 1, 0), ("i1", 1, 1)]


def test_bad_options_fail_with_one_line(tmp_path, sample_dir, capsys):
    from augment.generators.diffusion import load_pipeline

    with pytest.raises(MatPlusError, match="fp16 needs a GPU"):
        load_pipeline(tiny_settings(dtype="fp16"), "t2i")
    code = augment_main(["generate", "--method", "t2i-sd", "--source", str(sample_dir), "--out", str(tmp_path / "p"),
                         "--model", "tiny-sd", "--scheduler", "NoSuchScheduler", "--no-progress"])
    assert code == 2 and "compatible:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- img-aug


POLICY_ARGS = {
    "randaugment": ["--num-ops", "3", "--magnitude", "12"],
    "autoaugment": ["--autoaugment-policy", "cifar10"],
    "trivialaugment": [],
    "crop-flip": ["--crop-scale", "0.3", "0.6", "--flip-p", "1.0"],
    "color-jitter": ["--jitter", "0.8", "0.5", "0.5", "0.2"],
    "custom": ["--transforms", "RandomResizedCrop(size=(64, 64), scale=(0.5, 1.0)); GaussianBlur(kernel_size=3)"],
}


@pytest.mark.parametrize("policy", list(POLICY_ARGS))
def test_img_aug_policies_through_cli(tmp_path, sample_dir, train_items, policy):
    from augment.generators.imgaug import ImageAugmentGenerator

    out = generate(tmp_path, sample_dir, "img-aug", "pool", "--policy", policy, *POLICY_ARGS[policy],
                   "--n", "2", "--limit", "3", "--shard-size", "2")
    pool = load_pool(out)
    rows = pool.dataset
    assert len(rows) == 6 and set(rows["source_caption_index"]) == {-1} and set(rows["modality"]) == {"image"}
    assert pool.meta["params"]["policy"] == policy
    sources = {item["image_id"]: png_bytes(item["image"]) for item in train_items}
    changed = sum(png_bytes(image) != sources[image_id] for image, image_id in zip(rows["image"], rows["source_image_id"]))
    assert changed >= 1  # an op may by chance be the identity (or skipped), but not everywhere
    # any row alone, from its seed: byte-identical
    row = rows[5]
    params = pool.meta["params"]
    generator = ImageAugmentGenerator(policy, {k: v for k, v in params.items() if k != "policy"})
    again = generator.regenerate_row(item_by_id(train_items, row["source_image_id"]), 1, seed=3)
    assert again["row_id"] == row["row_id"]
    assert png_bytes(again["image"]) == pool_images(out)[row["row_id"]]


def test_img_aug_custom_spec_is_parsed_not_executed():
    from augment.generators.imgaug import parse_transforms

    assert parse_transforms("RandomHorizontalFlip(p=1.0); ColorJitter(brightness=0.4)") == [
        ["RandomHorizontalFlip", [], {"p": 1.0}], ["ColorJitter", [], {"brightness": 0.4}]]
    for bad, message in [("Foo(1)", "not a torchvision"), ("__import__('os')", "not a torchvision"),
                         ("ColorJitter(brightness=x)", "literals"), ("ColorJitter(nope=1)", "ColorJitter"),
                         ("", "no transform")]:
        with pytest.raises(MatPlusError, match=message):
            parse_transforms(bad)


@pytest.mark.parametrize("options, message", [
    (["--magnitude", "-1"], r"--magnitude -1: must lie in \[0, --num-magnitude-bins 31\)"),  # was: silently the last bin
    (["--magnitude", "5", "--num-magnitude-bins", "5"], r"--magnitude 5: must lie in \[0, --num-magnitude-bins 5\)"),
    (["--policy", "color-jitter", "--jitter", "-0.1", "0", "0", "0"], "brightness, contrast and saturation must not be negative"),
    (["--policy", "color-jitter", "--jitter", "0", "0", "0", "0.6"], r"hue must lie in \[0, 0.5\]"),
    (["--policy", "color-jitter", "--jitter", "0", "0", "-0.1", "0"], "saturation must not be negative"),
    (["--policy", "crop-flip", "--crop-scale", "0", "0.5"], r"--crop-scale: need 0 < MIN <= MAX, got 0.0 0.5"),
])
def test_img_aug_policy_values_are_checked_before_anything_runs(options, message):
    from augment.cli import build_parser
    from augment.generators.imgaug import policy_params_from_args

    args = build_parser().parse_args(["generate", "--method", "img-aug", "--source", "s", "--out", "o", *options])
    with pytest.raises(MatPlusError, match=message):
        policy_params_from_args(args.policy, args)
    args = build_parser().parse_args(["generate", "--method", "img-aug", "--source", "s", "--out", "o", "--magnitude", "30"])
    assert policy_params_from_args(args.policy, args)["magnitude"] == 30  # the last bin, asked for


def test_img_aug_crop_flip_keeps_a_non_square_images_size():
    """Guards crop-flip's output size (height, width) as torchvision reads it: given (width, height), a
    40 x 20 source came back 20 x 40 (the sample world's square images hid it)."""
    from PIL import Image

    from augment.generators.imgaug import ImageAugmentGenerator

    generator = ImageAugmentGenerator("crop-flip", {"crop_scale": [0.5, 1.0], "flip_p": 0.5})
    assert generator.augment(Image.new("RGB", (40, 20), (90, 30, 200)), seed=0).size == (40, 20)


@pytest.mark.parametrize("options, expected", [
    (["--policy", "randaugment", "--num-ops", "3", "--magnitude", "12", "--num-magnitude-bins", "20",
      "--interpolation", "bilinear"],
     {"num_ops": 3, "magnitude": 12, "num_magnitude_bins": 20, "interpolation": "bilinear"}),
    (["--policy", "autoaugment", "--autoaugment-policy", "svhn", "--interpolation", "bilinear"],
     {"policy": "svhn", "interpolation": "bilinear"}),
    (["--policy", "trivialaugment", "--num-magnitude-bins", "12", "--interpolation", "bilinear"],
     {"num_magnitude_bins": 12, "interpolation": "bilinear"}),
    (["--policy", "crop-flip", "--crop-scale", "0.3", "0.6", "--flip-p", "0.9"], {"scale": (0.3, 0.6), "p": 0.9}),
    (["--policy", "color-jitter", "--jitter", "0.8", "0.5", "0.3", "0.2"],
     {"brightness": (0.2, 1.8), "contrast": (0.5, 1.5), "saturation": (0.7, 1.3), "hue": (-0.2, 0.2)}),
], ids=["randaugment", "autoaugment", "trivialaugment", "crop-flip", "color-jitter"])
def test_img_aug_policies_build_their_transform_from_their_own_options(options, expected):
    """Guards each policy's options on its torchvision transform: the run and a row's regeneration build the
    transform from the same recorded parameters, so a parameter read from another option (RandAugment's
    magnitude from --num-ops), left out (TrivialAugment's bins, the interpolation, AutoAugment's policy, the crop
    scale, the flip probability) or swapped (brightness and contrast) passed every test."""
    from PIL import Image

    from augment.cli import build_parser
    from augment.generators.imgaug import build

    args = build_parser().parse_args(["generate", "--method", "img-aug", "--source", "s", "--out", "o", *options])
    transform = build("img-aug", args).transform_for(Image.new("RGB", (40, 20)))
    parts = transform.transforms if hasattr(transform, "transforms") else [transform]
    found = {name: getattr(part, name) for part in parts for name in expected if hasattr(part, name)}
    for name, value in found.items():  # enums by their recorded names; ranges rounded (1 - 0.8 = 0.19999...)
        found[name] = value.value if hasattr(value, "value") else tuple(round(v, 9) for v in value) \
            if isinstance(value, tuple) else value
    assert found == expected


def test_img_aug_custom_transforms_keep_every_argument():
    """Guards the custom spec's arguments and names: a container's positional arguments after its list were
    dropped silently (RandomApply([...], 0.3) ran at p 0.5), and any class of torchvision.transforms.v2 passed
    the name check."""
    from PIL import Image

    from augment.generators.imgaug import ImageAugmentGenerator, parse_transforms

    spec = "ColorJitter(0.8); RandomApply(['RandomHorizontalFlip(p=1.0)'], 0.3); RandomOrder(transforms=['GaussianBlur(3)'])"
    calls = parse_transforms(spec)
    assert calls[0] == ["ColorJitter", [0.8], {}]
    jitter, apply, order = ImageAugmentGenerator("custom", {"transforms": calls}).transform_for(Image.new("RGB", (8, 8))).transforms
    assert jitter.brightness == pytest.approx((0.2, 1.8)) and apply.p == 0.3
    assert apply.transforms[0].p == 1.0 and order.transforms[0].kernel_size == (3, 3)
    # a class of v2 that is no transform (an enum) is refused by name, not left to fail in the dry run
    with pytest.raises(MatPlusError, match="'AutoAugmentPolicy' is not a torchvision.transforms.v2 transform"):
        parse_transforms("AutoAugmentPolicy('imagenet')")


def test_img_aug_custom_spec_skips_empty_parts_and_reads_on():
    """Guards an empty part of the spec ("A;; B", a trailing ";"): skipped, not the spec's end (ending there
    dropped every transform after it, silently)."""
    from augment.generators.imgaug import parse_transforms

    assert [name for name, _args, _kwargs in parse_transforms("RandomHorizontalFlip(p=1.0);; ColorJitter(0.4);")] == [
        "RandomHorizontalFlip", "ColorJitter"]


def test_img_aug_images_are_rgb_whatever_the_spec_returns():
    """Guards the RGB conversion of each augmented image (pool images are RGB, as their sources): without it a
    custom Grayscale() gave a one-channel "L" image."""
    from PIL import Image

    from augment.generators.imgaug import ImageAugmentGenerator

    generator = ImageAugmentGenerator("custom", {"transforms": [["Grayscale", [], {}]]})
    assert generator.augment(Image.new("RGB", (8, 8), (200, 40, 40)), seed=0).mode == "RGB"


def test_img_aug_rows_of_one_image_have_their_own_seeds():
    """Guards the row seed's k: seeded with k = 0, every row of an image was the same image (the regeneration
    test, drawing row k alone from the same seed, passed)."""
    from PIL import Image

    from augment.generators.imgaug import ImageAugmentGenerator

    generator = ImageAugmentGenerator("crop-flip", {"crop_scale": [0.2, 0.5], "flip_p": 0.5})
    image = Image.linear_gradient("L").resize((32, 32)).convert("RGB")
    rows = generator.generate([{"image_id": "x", "image": image}], 3, seed=0)
    assert len({row["seed"] for row in rows}) == 3
    assert len({png_bytes(row["image"]) for row in rows}) == 3


def test_img_aug_leaves_global_rng_alone(train_items):
    import torch

    from augment.generators.imgaug import ImageAugmentGenerator

    generator = ImageAugmentGenerator("trivialaugment", {"num_magnitude_bins": 31, "interpolation": "nearest"})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generator.generate(train_items[:1], 2, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_sd15_shaped_has_sd15_sizes_and_clip_tokenizer():
    """bench's `--model sd15-shaped`: SD 1.5's published parameter counts (modules built on the
    meta device: no memory, no init) and the real CLIP tokenizer (ids equal open_clip's)."""
    import open_clip

    from augment.generators.diffusion import model_resolution
    from bench import real_shapes

    components = {"unet": real_shapes.sd15_unet("meta"), "vae": real_shapes.sd15_vae("meta"),
                  "text_encoder": real_shapes.sd15_text_encoder("meta"), "tokenizer": real_shapes.sd15_tokenizer()}
    # stable-diffusion-v1-5's unet/, vae/ and text_encoder/ (num_parameters() of the Hub weights)
    expected = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert {name: sum(p.numel() for p in components[name].parameters()) for name in expected} == expected
    # head counts change no count but do change speed: SD 1.5's UNet has 8 heads (of 40 channels at
    # the first level), CLIP ViT-L/14's text tower 12 (of 64)
    attention = components["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert (attention.heads, attention.inner_dim // attention.heads) == (8, 40)
    text_attention = next(module for name, module in components["text_encoder"].named_modules()
                          if name.endswith("encoder.layers.0.self_attn"))  # under text_model. before transformers 5
    assert (text_attention.num_heads, text_attention.head_dim) == (12, 64)
    pipe = real_shapes.sd_pipeline(components, "i2i")
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline" and model_resolution(pipe) == 512
    caption = "A red cube to the left of two small blue spheres, on grass."
    ids = pipe.tokenizer(caption).input_ids
    reference = open_clip.get_tokenizer("ViT-L-14")([caption])[0].tolist()  # zero-padded to 77
    assert len(ids) > 10 and ids == reference[:len(ids)] and not any(reference[len(ids):])
    assert pipe.tokenizer.model_max_length == 77


def test_the_shard_progress_of_sd_counts_generated_images(train_items):
    """The bar counts source images; SD's postfix counts the images it makes (n per caption used), and read
    'shard 1/2: 10/10 images' beside a bar of 2 source images: it says 'generated images' now."""
    from augment.generators.diffusion import TextToImageGenerator

    generator, reports = TextToImageGenerator(tiny_settings(captions_per_image=1, batch_size=4)), []
    generator.on_shard_progress = lambda *report: reports.append(report)
    # the calls' layout and counts only: no pipeline run (nor loaded)
    generator.call_pipeline = lambda call, seeds: ([None] * len(call.slots), None)
    generator._row = lambda *args, **kwargs: {}
    generator.generate(train_items[:3], 2, seed=7)
    assert reports == [(4, 6, "generated images"), (6, 6, "generated images")]


def test_generation_runs_where_deprecation_warnings_are_errors(train_items):
    """diffusers' Euler scheduler (SDXL's default) passes a torch tensor to np.array (NumPy 2 warns that its
    __array__ lacks the copy keyword): under PYTHONWARNINGS=error, which some CI setups use, every t2i-sd and
    t-i2i-sd run with it stopped at its first pipeline call. Other warnings still reach the user as errors."""
    import warnings

    from augment.generators.diffusion import ImageToImageGenerator, TextToImageGenerator

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        # Euler: SDXL's default scheduler, and any swapped in with --scheduler (tiny-sd's own is DDIM)
        for generator in (TextToImageGenerator(tiny_settings(batch_size=2, scheduler=I2I_SCHEDULER)),
                          ImageToImageGenerator(tiny_settings(batch_size=2, strength=0.5, scheduler=I2I_SCHEDULER))):
            rows = generator.generate([train_items[0]], 1, seed=3)
            assert len(rows) == len(train_items[0]["captions"])
