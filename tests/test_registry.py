"""The model registry and the tiny offline models: build, save, reload, run; clear failures."""
from __future__ import annotations

import inspect
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from augment import registry, tiny
from models import open_clip_family
from augment.errors import ModelLoadError


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny-model cache of this test session (a temporary folder, never ~/.cache)."""
    if not os.environ.get("MATPLUS_TINY_DIR"):
        os.environ["MATPLUS_TINY_DIR"] = str(tmp_path_factory.mktemp("tiny"))
    return tiny.tiny_cache_root()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline, with an empty Hub cache: no real model can be found, whatever this machine holds."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


def _image(colour=(200, 30, 30), size=(80, 60)):
    from PIL import Image

    return Image.new("RGB", size, colour)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _safetensors_files(folder: Path) -> dict[str, dict]:
    from safetensors.torch import load_file

    return {str(p.relative_to(folder)): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


# ---------------------------------------------------------------------------------------------
# Determinism: the same name always gives the same files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", tiny.TINY_NAMES)
def test_tiny_build_is_deterministic(name, tmp_path, tiny_root):
    # a fresh build and the cached copy the loaders use (built independently) hold the same weights
    fresh = tiny.save_tiny(tmp_path, [name])[name]
    cached = tiny.tiny_dir(name)
    files_fresh, files_cached = _safetensors_files(fresh), _safetensors_files(cached)
    assert files_fresh and files_fresh.keys() == files_cached.keys()
    for key in files_fresh:
        assert _same_state(files_fresh[key], files_cached[key]), key
    assert tiny.read_manifest(fresh)["fingerprint"] == tiny.tiny_fingerprint(name)


# ---------------------------------------------------------------------------------------------
# tiny-clip
# ---------------------------------------------------------------------------------------------


def test_tiny_clip_bundle_and_forward(tiny_root):
    bundle = open_clip_family.load("tiny-clip")
    model = bundle.model
    assert type(model).__name__ == "CLIP"
    assert bundle.image_size == 64 and bundle.context_length == 32
    assert bundle.mean == tiny.OPENAI_MEAN and bundle.std == tiny.OPENAI_STD
    n_params = sum(p.numel() for p in model.parameters())
    assert 6_500_000 < n_params < 8_000_000
    assert not model.training

    pixels = bundle.preprocess_eval(_image())
    assert pixels.shape == (3, 64, 64) and 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert bundle.preprocess_train(_image()).shape == (3, 64, 64)
    tokens = bundle.tokenizer(["a red circle", "a small blue square left of a star"])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    with torch.no_grad():
        image_emb = bundle.encode_image(pixels[None])
        text_emb = model.encode_text(tokens)
        direct = model.encode_image(bundle.normalize(pixels[None]), normalize=True)
    assert image_emb.shape == (1, 128) and text_emb.shape == (2, 128)
    assert torch.allclose(image_emb, direct)
    expected = (pixels[0] - bundle.mean[0]) / bundle.std[0]
    assert torch.allclose(bundle.normalize(pixels)[0], expected)


def test_tiny_clip_open_clip_names_and_local_dir(tiny_root, tmp_path):
    import open_clip

    bundle = open_clip_family.load("tiny-clip")
    tiny.register_open_clip_configs()
    assert "tiny-clip" in open_clip.list_models()
    assert open_clip.get_tokenizer("tiny-clip").context_length == 32
    assert open_clip.create_model("tiny-clip", pretrained=None).visual.image_size == (64, 64)

    # open_clip itself loads the cached folder, and a re-saved copy, with identical weights
    cached = tiny.tiny_dir("tiny-clip")
    from_cache = open_clip.create_model(f"local-dir:{cached}")
    assert _same_state(from_cache.state_dict(), bundle.model.state_dict())

    out = open_clip_family.save_clip_local_dir(bundle.model, tmp_path / "ckpt", bundle.model_cfg)
    assert (out / "open_clip_config.json").is_file() and (out / "open_clip_model.safetensors").is_file()
    reloaded = open_clip.create_model(f"local-dir:{out}")
    assert _same_state(reloaded.state_dict(), bundle.model.state_dict())
    assert open_clip.get_tokenizer(f"local-dir:{out}").context_length == 32

    # the registry accepts both spellings of a folder
    for name in (str(out), f"local-dir:{out}"):
        again = open_clip_family.load(name)
        assert _same_state(again.model.state_dict(), bundle.model.state_dict())
        assert again.image_size == 64 and again.mean == bundle.mean


def test_save_clip_local_dir_keeps_quick_gelu(tmp_path, tiny_root):
    import open_clip

    tiny.register_open_clip_configs()
    model = open_clip.create_model("tiny-clip", pretrained=None, force_quick_gelu=True)
    # config given by name: quick_gelu is read off the model itself
    out = open_clip_family.save_clip_local_dir(model, tmp_path / "qg", "tiny-clip")
    reloaded = open_clip.create_model(f"local-dir:{out}")
    assert open_clip.get_model_config(f"local-dir:{out}")["quick_gelu"] is True
    assert _same_state(reloaded.state_dict(), model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(reloaded.eval().encode_image(x), model.eval().encode_image(x))


# ---------------------------------------------------------------------------------------------
# tiny-sd
# ---------------------------------------------------------------------------------------------


def test_tiny_sd_text_to_image_and_image_to_image(tiny_root):
    pipe = registry.load_sd_pipeline("tiny-sd", kind="t2i")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    # tiny by construction (its speed is bench's business, not a unit test's)
    assert sum(p.numel() for p in pipe.unet.parameters()) < 5_000_000
    result = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    image = result.images[0]
    assert image.size == (64, 64) and image.mode == "RGB"

    # the same seed gives the same image from a second load of the folder
    again = registry.load_sd_pipeline(str(tiny.tiny_dir("tiny-sd")))
    image_again = again("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(image_again))

    img2img = registry.load_sd_pipeline("tiny-sd", kind="i2i")
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    edited = img2img("a blue square", image=_image(size=(64, 64)), strength=0.6, num_inference_steps=2).images[0]
    assert edited.size == (64, 64)


def test_tiny_sd_tokenizer_matches_open_clip(tiny_root):
    import open_clip

    pipe = registry.load_sd_pipeline("tiny-sd")
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    texts = ["a small red circle", "Two large hexagons, left of the star!", "über café 42"]
    ours = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    theirs = open_clip.tokenize(texts, context_length=77)
    for mine, reference in zip(ours, theirs):
        n = int((reference != 0).sum())  # open_clip pads with 0, transformers with <|endoftext|>
        assert mine[:n].tolist() == reference[:n].tolist()


# ---------------------------------------------------------------------------------------------
# tiny-captioner, tiny-paraphraser, tiny-mlm and their word-level tokenizer
# ---------------------------------------------------------------------------------------------


def test_word_vocabulary_is_stable_and_covers_the_sample_world(tiny_root):
    vocabulary = tiny.word_vocabulary()
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocabulary == tiny.word_vocabulary() and len(set(vocabulary)) == len(vocabulary)
    world = tiny.sample_world_words()
    assert set(tiny._split_words(world)) <= set(vocabulary)
    _, tokenizer = registry.load_mlm("tiny-mlm")
    assert tokenizer.convert_tokens_to_ids(vocabulary) == list(range(len(vocabulary)))
    saved = (tiny.tiny_dir("tiny-mlm") / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert saved == vocabulary


def test_tiny_captioner_generates_text(tiny_root):
    model, processor = registry.load_captioner("tiny-captioner")
    assert type(model).__name__ == "BlipForConditionalGeneration"
    assert type(processor).__name__ == "BlipProcessor"
    inputs = processor(images=[_image(), _image((10, 10, 200))], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=5, min_new_tokens=2)
        ids_again = registry.load_captioner(str(tiny.tiny_dir("tiny-captioner")))[0].generate(
            **inputs, max_new_tokens=5, min_new_tokens=2
        )
    assert torch.equal(ids, ids_again)
    captions = processor.batch_decode(ids, skip_special_tokens=True)
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    # with a text prompt, as BLIP's conditional captioning does
    prompted = processor(images=[_image()], text=["a picture of"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompted, max_new_tokens=3)
    assert processor.decode(out[0], skip_special_tokens=True).startswith("a picture of")


def test_tiny_paraphraser_generates(tiny_root):
    model, tokenizer, kind = registry.load_paraphraser("tiny-paraphraser")
    assert kind == "seq2seq" and type(model).__name__ == "T5ForConditionalGeneration"
    batch = tokenizer(["a small red circle left of a square", "a star"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, num_beams=2, num_return_sequences=2)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    reloaded, _, _ = registry.load_paraphraser(str(tiny.tiny_dir("tiny-paraphraser")))
    assert _same_state(reloaded.state_dict(), model.state_dict())


def test_tiny_mlm_logits_over_vocabulary(tiny_root):
    model, tokenizer = registry.load_mlm("tiny-mlm")
    assert type(model).__name__ == "BertForMaskedLM"
    batch = tokenizer([f"a small {tokenizer.mask_token} circle"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert tokenizer.mask_token_id in batch["input_ids"][0].tolist()
    reloaded, _ = registry.load_mlm(f"local-dir:{tiny.tiny_dir('tiny-mlm')}")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, logits)


@pytest.mark.parametrize("name, architecture", [("tiny-captioner", "BlipForConditionalGeneration"),
                                                ("tiny-paraphraser", "T5ForConditionalGeneration"),
                                                ("tiny-mlm", "BertForMaskedLM")])
def test_a_word_level_twins_weights_are_its_configs_under_its_own_seed(name, architecture, tiny_root):
    """Guards a mutation (audit CK): tiny-captioner initialised under another twin's seed passed every test
    (a fresh build and the cached one agree with each other, and tiny.json records the name's seed
    whatever the builder used): the twin is its saved config's model drawn with its own name's seed."""
    import transformers

    from augment.seeds import cpu_torch_seeded

    folder = tiny.tiny_dir(name)
    model_class = getattr(transformers, architecture)
    config = transformers.AutoConfig.from_pretrained(str(folder))
    with cpu_torch_seeded(tiny.read_manifest(folder)["seed"]):
        drawn = model_class(config)
    assert tiny.read_manifest(folder)["seed"] == zlib.crc32(name.encode())
    assert _same_state(model_class.from_pretrained(str(folder)).state_dict(), drawn.state_dict())


# ---------------------------------------------------------------------------------------------
# The cache, the command, and failures
# ---------------------------------------------------------------------------------------------


def test_tiny_cache_builds_once_and_rebuilds_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("MATPLUS_TINY_DIR", str(tmp_path / "cache"))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(tiny.tiny_dir("tiny-mlm"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folder = tmp_path / "cache" / "tiny-mlm"
    assert results == [folder, folder] and tiny.is_current(folder, "tiny-mlm")
    manifest = folder / tiny.MANIFEST_NAME
    stamp = manifest.stat().st_mtime_ns
    assert tiny.tiny_dir("tiny-mlm") == folder and manifest.stat().st_mtime_ns == stamp

    manifest.write_text('{"fingerprint": "stale"}')
    assert tiny.tiny_dir("tiny-mlm") == folder and tiny.is_current(folder, "tiny-mlm")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == ["tiny-mlm"]


@pytest.mark.parametrize("name, probe", [("tiny-captioner", "CAPTIONER_VISION_CONFIG"),
                                         ("tiny-captioner", "CAPTIONER_TEXT_CONFIG"),
                                         ("tiny-paraphraser", "PARAPHRASER_CONFIG"), ("tiny-mlm", "MLM_CONFIG"),
                                         ("tiny-captioner", "sample_world_words"), ("tiny-mlm", "_seed_for")])
def test_a_change_to_any_part_of_a_twins_recipe_changes_its_fingerprint(name, probe, monkeypatch):
    """Guards mutations (audit CK) that passed every test: the captioner's text config, the word vocabulary
    (the sample world's words) or the seed left out of the fingerprint: a twin whose recipe changed kept
    its stale folder (tiny_dir rebuilds only a folder whose fingerprint differs)."""
    before = tiny.tiny_fingerprint(name)
    if probe == "sample_world_words":
        words = tiny.sample_world_words()
        monkeypatch.setattr(tiny, "sample_world_words", lambda: [*words, "zeppelin"])
    elif probe == "_seed_for":
        monkeypatch.setattr(tiny, "_seed_for", lambda twin: 1234)
    else:
        monkeypatch.setitem(getattr(tiny, probe), "layer_norm_eps", 1e-3)  # one setting more
    tiny.tiny_fingerprint.cache_clear()
    try:
        assert tiny.tiny_fingerprint(name) != before
    finally:
        monkeypatch.undo()
        tiny.tiny_fingerprint.cache_clear()
    assert tiny.tiny_fingerprint(name) == before


def test_a_manifest_of_the_twin_with_another_fingerprint_is_stale(tmp_path):
    """Guards a mutation (audit CK): is_current comparing the manifest's name instead of its fingerprint passed
    every test, whose stale manifests held a fingerprint alone: a twin built from an older recipe was kept."""
    folder = tmp_path / "tiny-mlm"
    folder.mkdir()
    tiny._write_manifest(folder, "tiny-mlm")
    assert tiny.is_current(folder, "tiny-mlm")
    manifest = json.loads((folder / tiny.MANIFEST_NAME).read_text())
    (folder / tiny.MANIFEST_NAME).write_text(json.dumps({**manifest, "fingerprint": "0" * 16}))
    assert not tiny.is_current(folder, "tiny-mlm")


def test_a_folder_built_while_waiting_for_the_lock_is_not_built_again(tmp_path, monkeypatch):
    """Guards a mutation (audit CK): cached_build without its second check under the lock passed every test: a
    process that waited while another built the folder built it again and swapped it under the other's feet."""
    monkeypatch.setenv("MATPLUS_TINY_DIR", str(tmp_path))
    answers = iter([False, True])  # stale when first looked at, built by another process once the lock is ours
    builds = []
    assert tiny.cached_build("probe", lambda folder: next(answers), builds.append) == tmp_path / "probe"
    assert builds == []


def test_a_rank_of_a_process_group_builds_the_tiny_cache_in_a_process_without_one(tmp_path, monkeypatch):
    """transformers writes a model's files only on rank 0 while a process group is up: built by
    rank 1 of a torchrun launch, tiny-sd was a manifest over empty folders that no rank could load.
    With a group up the build runs in a fresh interpreter (this process's builders are not called)."""
    monkeypatch.setenv("MATPLUS_TINY_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny, "_process_group_started", lambda: True)

    def not_here(*args, **kwargs):
        raise AssertionError("built in the process that holds the process group")

    monkeypatch.setattr(tiny, "_build_into", not_here)
    folder = tiny.tiny_dir("tiny-mlm")
    assert tiny.is_current(folder, "tiny-mlm")
    assert (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))

    monkeypatch.setattr(tiny, "_build_in_fresh_process", lambda name, tmp: (_ for _ in ()).throw(OSError("no room")))
    (folder / tiny.MANIFEST_NAME).write_text('{"fingerprint": "stale"}')
    with pytest.raises(ModelLoadError, match="cannot build tiny model 'tiny-mlm'.*no room"):
        tiny.tiny_dir("tiny-mlm")


def test_save_tiny_command(tmp_path, capsys):
    from augment.cli import main

    assert main(["save-tiny", str(tmp_path / "out"), "--names", "tiny-mlm,tiny-paraphraser"]) == 0
    printed = capsys.readouterr().out
    assert "tiny-mlm:" in printed and str(tmp_path / "out" / "tiny-paraphraser") in printed
    assert (tmp_path / "out" / "tiny-mlm" / "config.json").is_file()
    assert main(["save-tiny", str(tmp_path / "out"), "--names", "tiny-nope"]) == 2


@pytest.mark.parametrize(
    "load",
    [
        lambda: open_clip_family.load(*registry.DEFAULT_MODELS["clip"]),
        lambda: open_clip_family.load("ViT-B-32", "laion2b_s34b_b79k"),
        lambda: open_clip_family.load("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        lambda: registry.load_captioner(registry.DEFAULT_MODELS["captioner"]),
        lambda: registry.load_captioner("blip"),
        lambda: registry.load_paraphraser(registry.DEFAULT_MODELS["paraphraser"]),
        lambda: registry.load_mlm(registry.DEFAULT_MODELS["mlm"]),
        lambda: registry.load_sd_pipeline(registry.DEFAULT_MODELS["sd"]),
        lambda: registry.load_sd_pipeline("sdxl", kind="i2i"),
    ],
)
def test_real_names_fail_fast_offline(load, offline, network_attempts):
    with pytest.raises(ModelLoadError) as info:
        load()
    assert network_attempts == []  # fails at once: no connection tried, so no timeout or retry to wait for
    message = str(info.value)
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message


@pytest.mark.parametrize(
    "load, fragment",
    [
        (lambda: open_clip_family.load("not-an-architecture"), "unknown CLIP model"),
        (lambda: open_clip_family.load("ViT-B-16", "no-such-tag"), "neither a pretrained tag"),
        (lambda: open_clip_family.load("tiny-mlm"), "not an open_clip model"),
        (lambda: registry.load_mlm("tiny-nope"), "unknown tiny model"),
        (lambda: registry.load_mlm("tiny-sd"), "not a masked LM"),
        (lambda: registry.load_captioner("/no/such/folder"), "does not exist"),
        (lambda: registry.load_paraphraser("bad..id"), "not a tiny model, an alias"),
        (lambda: registry.load_sd_pipeline("tiny-sd", kind="video"), "unknown pipeline kind"),
        (lambda: registry.load_mlm("blip"), None),  # an alias of another role: offline, not cached
    ],
)
def test_unknown_names_fail_clearly(load, fragment, offline, tiny_root):
    with pytest.raises(ModelLoadError) as info:
        load()
    assert "\n" not in str(info.value)
    if fragment:
        assert fragment in str(info.value)


def test_folder_without_model_files_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        registry.load_mlm(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="has no open_clip_config.json"):
        open_clip_family.load(str(tmp_path / "empty"))


def test_trust_remote_code_is_never_enabled(monkeypatch, tiny_root):
    for loader in (registry.load_sd_pipeline, registry.load_captioner, registry.load_paraphraser, registry.load_mlm):
        assert inspect.signature(loader).parameters["trust_remote_code"].default is False

    import transformers

    seen: list[object] = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForMaskedLM):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    registry.load_mlm("tiny-mlm")
    assert seen == [False, False]


def test_defaults_and_aliases_are_consistent():
    assert set(registry.DEFAULT_MODELS) == set(registry.ROLES)
    arch, tag = registry.DEFAULT_MODELS["clip"]
    from open_clip.pretrained import get_pretrained_cfg

    assert get_pretrained_cfg(arch, tag)
    assert registry.ALIASES["blip"] == registry.DEFAULT_MODELS["captioner"]
    assert registry.as_torch_dtype("bf16") == torch.bfloat16 and registry.as_torch_dtype(None) == torch.float32


def test_sd_pipeline_with_its_own_code_is_refused_before_diffusers_runs(tiny_root, tmp_path, monkeypatch):
    """diffusers before 0.38 ran a folder's component code whatever trust_remote_code said: the
    registry refuses such a model_index.json itself, before diffusers is called."""
    import shutil

    import diffusers

    folder = tmp_path / "own-code-sd"
    shutil.copytree(tiny.tiny_dir("tiny-sd"), folder)
    marker = tmp_path / "ran"
    (folder / "scheduler" / "my_scheduler.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from diffusers import DDIMScheduler as MyScheduler\n", encoding="utf-8")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["scheduler"] = ["my_scheduler", "MyScheduler"]
    index_path.write_text(json.dumps(index), encoding="utf-8")

    called = []
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: called.append(a)))
    with pytest.raises(ModelLoadError, match=r"ships its own code for scheduler \(my_scheduler\.MyScheduler\)"):
        registry.load_sd_pipeline(str(folder))
    assert called == [] and not marker.exists()

    # the safety checker's library is a diffusers pipeline module, not the model's own code
    assert registry.custom_components({"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
                                       "unet": ["diffusers", "UNet2DConditionModel"],
                                       "feature_extractor": [None, None],
                                       "_class_name": "StableDiffusionPipeline"}) == {}
    assert registry.custom_components({"_class_name": ["pipeline", "MyPipeline"]}) == {"the pipeline": "pipeline.MyPipeline"}


def test_generator_registry_names_a_missing_module_and_a_method_served_twice(monkeypatch):
    """A mistyped GENERATOR_MODULES entry was skipped (its `t2t-upper` fell to the paraphraser prefix),
    and of two modules serving one method the first won, without a word."""
    import augment.generators as generators
    from augment.errors import MatPlusError

    monkeypatch.setattr(generators, "GENERATOR_MODULES", [*generators.GENERATOR_MODULES, "uppper"])
    with pytest.raises(MatPlusError, match="generator module 'uppper' listed in .* does not exist"):
        generators.module_for("eda")
    monkeypatch.setattr(generators, "GENERATOR_MODULES", ["eda", "human", "eda"])
    with pytest.raises(MatPlusError, match="method 'eda' is served by two generator modules"):
        generators.module_for("eda")
    monkeypatch.undo()
    with pytest.raises(MatPlusError, match="unknown method 'edaa' \\(did you mean 'eda'\\?\\)"):
        generators.module_for("edaa")


def test_a_generator_module_missing_a_dependency_is_not_said_not_to_exist(monkeypatch, tmp_path):
    """A listed module that exists but imports a package that is not installed raises that package's
    ModuleNotFoundError, not "does not exist (no augment/generators/NAME.py)"; found by a mutation audit:
    reporting every ModuleNotFoundError as the module's own absence passed every test (audit CJ)."""
    import augment.generators as generators

    (tmp_path / "needs_dependency.py").write_text("import mat_plus_absent_dependency\n")
    monkeypatch.setattr(generators, "__path__", [*generators.__path__, str(tmp_path)])
    monkeypatch.setattr(generators, "GENERATOR_MODULES", [*generators.GENERATOR_MODULES, "needs_dependency"])
    with pytest.raises(ModuleNotFoundError) as raised:
        generators.module_for("eda")
    assert raised.value.name == "mat_plus_absent_dependency"


def test_a_family_entry_naming_no_module_is_named(monkeypatch):
    """`FAMILIES["toy"] = "models.toyy"` broke every model's loading with a bare ModuleNotFoundError."""
    import models
    from augment.errors import ModelLoadError

    monkeypatch.setitem(models.FAMILIES, "toy", "models.toyy")
    with pytest.raises(ModelLoadError, match="model family 'toy': its module 'models.toyy' .* does not exist"):
        models.family_of("ViT-B-32")


def test_a_weights_file_that_cannot_be_read_is_not_called_missing(tmp_path, monkeypatch):
    """safetensors reports a chmod 000 file as "No such file or directory": the line said so of a file
    that is there."""
    import os

    from augment.registry import _message_for

    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"x")
    error = FileNotFoundError(f"No such file or directory: {weights}")
    assert "FileNotFoundError" in _message_for(error, "clip", "run/ckpt")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(weights) else real_access(p, mode))
    assert _message_for(error, "clip", "run/ckpt").endswith(f"cannot read {weights} (permission denied)")
