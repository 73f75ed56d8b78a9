"""Loading refuses, in one line, what used to load silently broken or crash with a traceback:
an ALBEF/TCL tokenizer without vocabulary, a saved folder without tokenizer files, and an
open_clip `--pretrained` file that needs pickle or is no checkpoint at all."""
from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from augment.errors import ModelLoadError
from models import load_model, save_model
from models.albef.checkpoint import official_state_dict

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class RunsCode:
    """Unpickling it would run a shell command: what a weights-only load must refuse."""

    def __reduce__(self):
        return (os.system, ("true",))


@pytest.fixture(scope="module")
def albef_checkpoint(tmp_path_factory):
    """tiny-albef as ALBEF writes checkpoints (.pth), with its config files."""
    tiny_albef = load_model("tiny-albef")
    folder = tmp_path_factory.mktemp("albef_pth")
    torch.save({"model": official_state_dict(tiny_albef)}, folder / "model.pth")
    cfg = tiny_albef.config
    (folder / "config_bert.json").write_text(json.dumps(cfg["bert"]))
    yaml_keys = ("image_res", "vision_width", "embed_dim", "temp", "queue_size", "patch_size", "vision_depth",
                 "vision_heads")
    (folder / "config.yaml").write_text("".join(f"{k}: {cfg[k]}\n" for k in yaml_keys))
    return folder


def _load_albef_checkpoint(folder, **options):
    return load_model(str(folder / "model.pth"), config=str(folder / "config.yaml"),
                      bert_config=str(folder / "config_bert.json"), **options)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_albef_default_tokenizer_not_cached_is_refused(albef_checkpoint):
    # the tests' Hub cache is empty and offline: bert-base-uncased used to load as 5 special tokens
    with pytest.raises(ModelLoadError, match="no tokenizer files for bert-base-uncased") as info:
        _load_albef_checkpoint(albef_checkpoint)
    assert "--albef-tokenizer FOLDER" in _one_line(info)


def test_albef_tokenizer_folder_without_vocabulary_is_refused(albef_checkpoint, tmp_path):
    with pytest.raises(ModelLoadError, match=f"no tokenizer files for folder {tmp_path}") as info:
        _load_albef_checkpoint(albef_checkpoint, tokenizer=str(tmp_path))
    assert "--albef-tokenizer FOLDER" in _one_line(info)


def test_albef_tokenizer_folder_with_vocabulary_still_loads(albef_checkpoint):
    from augment.tiny import tiny_dir

    model = _load_albef_checkpoint(albef_checkpoint, tokenizer=str(tiny_dir("tiny-albef")))
    assert len(model.tokenizer) > 5


@pytest.mark.parametrize("twin", ["tiny-albef", "tiny-blip", "tiny-hf-clip"])
def test_saved_folder_without_tokenizer_files_is_refused(twin, tmp_path):
    folder = tmp_path / twin
    save_model(load_model(twin), folder)
    load_model(str(folder))  # complete: loads
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=f"folder {folder} has no tokenizer files") as info:
        load_model(str(folder))
    _one_line(info)


@pytest.fixture(scope="module")
def bad_clip_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_clip")
    torch.save({"state_dict": RunsCode()}, folder / "runs_code.pth")
    with open(folder / "raw_pickle.bin", "wb") as stream:
        pickle.dump({"state_dict": RunsCode()}, stream)
    (folder / "notes.pth").write_text("hello")
    (folder / "empty.pth").write_bytes(b"")
    return folder


@pytest.mark.parametrize("file", ["runs_code.pth", "raw_pickle.bin"])
def test_open_clip_checkpoint_that_needs_pickle_is_refused(bad_clip_files, file):
    path = bad_clip_files / file
    with pytest.raises(ModelLoadError, match=f"refusing to load {path}: it is not a weights-only checkpoint "
                                             r"\(it needs pickle to run code") as info:
        load_model("ViT-B-32", pretrained=str(path))
    assert "weights_only=False" not in _one_line(info)


@pytest.mark.parametrize("protocol", [2, 4])
def test_tensors_pickled_by_python_are_named_so_in_one_line(tmp_path, protocol):
    """Tensors written by pickle.dump, not torch.save: the refusal named torch's own loader
    (torch.storage._load_from_bytes) as what the file holds, and protocol 4 (also torch.save's
    pickle_protocol=4, tensors only) added torch's two-line warning and "objects other than tensors"."""
    from models.albef.checkpoint import read_checkpoint

    path = tmp_path / "plain.pth"
    with open(path, "wb") as stream:
        pickle.dump({"model": {"w": torch.zeros(2)}}, stream, protocol=protocol)
    for load in (lambda: load_model("ViT-B-32", pretrained=str(path)), lambda: read_checkpoint(path)):
        expected = "written by Python's pickle, not torch.save" if protocol == 2 else "pickled with protocol 4 or later"
        with warnings.catch_warnings(record=True) as caught, \
                pytest.raises(ModelLoadError, match=f"refusing to load {path}: .*{expected}") as info:
            warnings.simplefilter("always")
            load()
        assert "_load_from_bytes" not in _one_line(info)
        assert not [w for w in caught if "pickle protocol" in str(w.message)]


@pytest.mark.parametrize("file", ["notes.pth", "empty.pth"])
def test_open_clip_file_that_is_no_checkpoint_is_named_so(bad_clip_files, file):
    path = bad_clip_files / file
    with pytest.raises(ModelLoadError, match=f"{path}: not a PyTorch checkpoint") as info:
        load_model("ViT-B-32", pretrained=str(path))
    _one_line(info)


def test_cli_prints_the_pickle_refusal_as_one_error_line(bad_clip_files, karpathy_dir, tmp_path, capsys):
    from train.cli import main

    path = bad_clip_files / "runs_code.pth"
    code = main(["eval", "ViT-B-32", "--pretrained", str(path), "--task", "retrieval",
                 "--source", str(karpathy_dir), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "weights_only=False" not in err
    assert f"error: refusing to load {path}" in err


# -- checkpoints that do not hold the model their config describes -----------------------------


def _twin_folder(twin: str, folder):
    """A copy of a transformers twin's folder, as a user's own checkpoint (not recognised as the twin)."""
    import shutil

    from augment.tiny import tiny_dir

    shutil.copytree(tiny_dir(twin), folder)
    (folder / "tiny.json").unlink(missing_ok=True)
    return folder


def _edit_weights(folder, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    save_file(edit(state), str(folder / "model.safetensors"), metadata={"format": "pt"})


def _drop_head(state):
    return {k: v for k, v in state.items() if not k.startswith(("itm_head.", "text_projection.", "text_decoder.cls."))}


def _extra_layer(state):
    return {**state, "text_model.encoder.layers.9.mlp.fc1.weight": torch.zeros(2, 2),
            "text_encoder.encoder.layer.9.output.dense.weight": torch.zeros(2, 2)}


def _reshape_one(state):
    key = next(k for k in sorted(state) if state[k].dim() == 2 and "embed" not in k)  # a linear layer's
    return {**state, key: torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])}


@pytest.mark.parametrize("twin, kind", [("tiny-blip", "retrieval"), ("tiny-hf-clip", "retrieval"),
                                        ("tiny-captioner", "captioning")])
@pytest.mark.parametrize("edit, words", [
    (_drop_head, "of the model missing: "), (_extra_layer, "the model has no place for: "),
    (_reshape_one, "of another shape: "),
])
def test_transformers_checkpoint_that_does_not_fit_its_config_is_refused(twin, kind, edit, words, tmp_path):
    """transformers initialises a missing weight at random and leaves an unused one out, logging a
    table: the model ran, was evaluated and trained with random heads, exit 0."""
    folder = _twin_folder(twin, tmp_path / twin)
    load_model(str(folder), kind=kind)  # the copy itself loads
    _edit_weights(folder, edit)
    with pytest.raises(ModelLoadError, match=f"'{folder}': its weights do not fit the model its config.json "
                                             f"describes \\(\\d+ weights? {words}") as info:
        load_model(str(folder), kind=kind)
    _one_line(info)


def test_masked_lm_keeps_its_pretraining_heads_but_not_missing_weights(tmp_path):
    """A Hub MLM keeps weights the masked-LM class leaves out (bert-base-uncased's next-sentence
    head): accepted; weights it lacks are refused as for every model."""
    from augment.registry import load_mlm

    folder = _twin_folder("tiny-mlm", tmp_path / "mlm")
    _edit_weights(folder, lambda state: {**state, "cls.seq_relationship.weight": torch.zeros(2, 4)})
    load_mlm(str(folder))
    _edit_weights(folder, lambda state: {k: v for k, v in state.items() if ".layer.0." not in k})
    with pytest.raises(ModelLoadError, match="masked LM .*of the model missing: bert.encoder.layer.0.") as info:
        load_mlm(str(folder))
    _one_line(info)


@pytest.mark.parametrize("twin, kind", [("tiny-blip", "retrieval"), ("tiny-captioner", "captioning")])
def test_transformers_weights_that_need_pickle_are_refused_in_one_line(twin, kind, tmp_path):
    """A Hub snapshot's pytorch_model.bin that torch.load(weights_only=True) refuses: a traceback of
    torch's advice (weights_only=False) before; one line now, and no code runs."""
    from safetensors.torch import load_file

    folder = _twin_folder(twin, tmp_path / twin)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class TouchesMarker:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({**state, "extra": TouchesMarker()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=f"refusing to load .*'{folder}': it is not a weights-only checkpoint "
                                             r"\(it needs pickle to run code: it holds posix.system\)") as info:
        load_model(str(folder), kind=kind)
    assert "weights_only=False" not in _one_line(info) and not marker.exists()


def test_open_clip_weights_that_do_not_fit_are_named(tmp_path):
    """torch's strict load_state_dict lists the keys on the lines after its first; the one line said
    only 'Error(s) in loading state_dict for CLIP:'."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "clip"
    save_model(load_model("tiny-clip"), folder)
    weights = folder / "open_clip_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if k != "positional_embedding"}, str(weights))
    with pytest.raises(ModelLoadError, match="its weights do not fit the architecture \\(1 weight of the model "
                                             "missing: positional_embedding\\)") as info:
        load_model(str(folder))
    _one_line(info)
    save_file({**state, "text_projection": torch.zeros(3, 3), "spare": torch.zeros(1)}, str(weights))
    with pytest.raises(ModelLoadError, match=r"1 weight the model has no place for: spare; 1 weight of another "
                                             r"shape: text_projection is \[3, 3\] in the checkpoint, \[") as info:
        load_model(str(folder))
    _one_line(info)
    weights.unlink()  # the folder's weights as a pickle (the Hub layout's open_clip_pytorch_model.bin)
    torch.save({"state_dict": RunsCode()}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=f"refusing to load CLIP '{folder}': it is not a weights-only") as info:
        load_model(str(folder))
    assert "weights_only=False" not in _one_line(info)


def test_saving_a_captioner_shows_no_progress_bar_and_reloads(tmp_path, capfd):
    """Its checkpoints printed transformers' "Writing model shards" bar at every save, even under
    --no-progress (BLIP's and transformers CLIP's saves were quiet already)."""
    model = load_model("tiny-captioner", kind="captioning")
    capfd.readouterr()
    save_model(model, tmp_path / "captioner")
    assert "Writing model shards" not in capfd.readouterr().err
    assert not [p for p in (tmp_path / "captioner").iterdir() if p.name.startswith(".save-")]
    load_model(str(tmp_path / "captioner"), kind="captioning")


def test_an_older_clip_checkpoint_with_saved_position_ids_still_loads(tmp_path):
    """openai/clip-* snapshots saved `position_ids` buffers: an index, not a weight the model lacks a place for."""
    folder = _twin_folder("tiny-hf-clip", tmp_path / "clip")
    _edit_weights(folder, lambda state: {**state, "text_model.embeddings.position_ids": torch.arange(16)[None]})
    assert load_model(str(folder)).family == "hf_clip"


@pytest.mark.parametrize("twin", ["tiny-clip", "tiny-blip", "tiny-albef"])
def test_a_folder_whose_name_starts_with_tiny_is_a_folder(twin, tmp_path, monkeypatch):
    """`train eval tiny-lab/run1/ckpt` was refused as an unknown tiny twin (`./tiny-lab/...` loaded),
    and a real model saved there was attacked with the random tiny-mlm (the default masked LM was
    chosen by the path's spelling, not by what the folder holds)."""
    from augment.tiny import is_tiny_name
    from models.base import MODEL_INFO_NAME
    from train.config import default_mlm

    monkeypatch.chdir(tmp_path)
    save_model(load_model(twin), tmp_path / "tiny-lab" / "run1")
    loaded = load_model("tiny-lab/run1")
    assert loaded.family == load_model(twin).family
    assert default_mlm("tiny-lab/run1") == "tiny-mlm"  # the folder says it was trained from a twin
    info_path = tmp_path / "tiny-lab" / "run1" / MODEL_INFO_NAME
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "tiny_twin": None}))  # as a real model's folder records
    assert default_mlm("tiny-lab/run1") == "bert-base-uncased"
    assert is_tiny_name(twin) and is_tiny_name("tiny-clp") and not is_tiny_name("tiny-lab/run1")
    with pytest.raises(ModelLoadError, match="unknown tiny model 'tiny-clp'"):
        load_model("tiny-clp")


def _build_default_mlm_attack(task: str, model, route: str = "eval"):
    """One attack that draws substitutes from the masked LM meant by "default", built as `train eval`
    does (route "eval") or by the task's attack builder called from Python with its default `mlm`."""
    from train.eval_common import build_attacks

    if route == "python":
        if task == "captioning":
            from train.attacks.captioning import substitute_source

            return substitute_source(model)
        if task == "grounding":
            from train.attacks.grounding import build_grounding_attack

            return build_grounding_attack("bert-attack", model)
        from train.attacks import build_attack

        return build_attack("bert-attack", model)
    if task == "captioning":
        from train.evaluate_captioning import build_caption_attacks

        return build_caption_attacks(["prompt"], model, {})
    if task == "grounding":
        from train.attacks.grounding import build_grounding_attack

        return build_attacks(["bert-attack"], model, {}, build=build_grounding_attack)
    return build_attacks(["bert-attack"], model, {})


@pytest.mark.parametrize("route", ["eval", "python"])
@pytest.mark.parametrize("twin, task", [("tiny-clip", "retrieval"), ("tiny-captioner", "captioning"),
                                        ("tiny-albef", "grounding")])
def test_every_task_means_one_masked_lm_by_default(twin, task, route, monkeypatch):
    """The default masked LM was chosen three ways (by the name, by a captioner's tokenizer, by
    `tiny_twin` in grounding's training attack) and retrieval's Python `evaluate` took bert-base-uncased
    for a tiny twin (not cached offline): one rule now, `default_mlm_of(model)`, for every task, also
    when an attack builder is called from Python (retrieval's and grounding's loaded bert-base-uncased)."""
    import augment.registry as registry
    from train.config import default_mlm, default_mlm_of

    asked = []
    real_load = registry.load_mlm
    monkeypatch.setattr(registry, "load_mlm", lambda name, **kw: asked.append(name) or real_load("tiny-mlm", **kw))
    model = load_model(twin, **({"prompt": "a picture of"} if task == "captioning" else {}))
    _build_default_mlm_attack(task, model, route)
    assert asked == ["tiny-mlm"] == [default_mlm_of(model)] == [default_mlm(twin)]
    model.tiny_twin = None  # as a real model loads
    asked.clear()
    _build_default_mlm_attack(task, model, route)
    assert asked == ["bert-base-uncased"] == [default_mlm_of(model)]


@pytest.mark.parametrize("twin, kind", [("tiny-captioner", "captioning"), ("tiny-blip", "retrieval")])
def test_loading_a_blip_twin_writes_nothing_on_stderr(twin, kind):
    """transformers 5.0-5.3 warned at every BLIP processor load that its slow image processor now loads as a
    fast one ("may produce slightly different outputs"), a second line under the CLI's one-line refusals; the
    families read only its settings (audit AX). A new process: the warning is transformers' warning_once."""
    import subprocess
    import sys

    load_model(twin, kind=kind)  # built into this session's tiny folder first (the child only loads it)
    code = f"from models import load_model; load_model({twin!r}, kind={kind!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_open_clip_with_a_hugging_face_tokenizer_saves_it(tmp_path, monkeypatch):
    # an open_clip config naming a Hugging Face tokenizer (every SigLIP / SigLIP2, CLIPA, roberta, mt5,
    # nllb config: `hf_tokenizer_name`) loads it from a saved local-dir folder itself; save_native wrote no
    # tokenizer, so a trained SigLIP's RUN/ckpt failed to load anywhere ("Couldn't instantiate the backend
    # tokenizer"), the saving machine included
    import open_clip.factory

    from augment import tiny

    source = tmp_path / "hf_tokenizer"  # where the config's tokenizer came from: not on the loading machine
    source.mkdir()
    word_tokenizer = tiny.build_word_tokenizer(source)
    word_tokenizer.save_pretrained(str(source))
    cfg = tiny.open_clip_config(tiny.TINY_SIGLIP)
    cfg["text_cfg"] = {**cfg["text_cfg"], "hf_tokenizer_name": str(source), "vocab_size": len(word_tokenizer),
                       "tokenizer_kwargs": {"clean": "canonicalize"}, "no_causal_mask": True,
                       "pool_type": "last", "proj_bias": True}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "test-hf-tokenizer-siglip", cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("test-hf-tokenizer-siglip")  # random weights (a warning)
    captions = ["a red cube.", "Über café naïve 東京", " ".join(["a blue sphere left of a cube"] * 10)]
    folder = save_model(model, tmp_path / "ckpt")
    for name in TOKENIZER_FILES:
        assert (folder / name).is_file()
    for child in source.iterdir():
        child.unlink()
    source.rmdir()
    loaded = load_model(str(folder))
    assert torch.equal(loaded.tokenize(captions).input_ids, model.tokenize(captions).input_ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(captions), model.encode_text(captions), atol=1e-6, rtol=0)
    assert open_clip.get_tokenizer(f"local-dir:{folder}")(captions).equal(model.tokenize(captions).input_ids)


def _hf_text_tower_clip(tmp_path, monkeypatch):
    """A saved open_clip model whose text tower is a Hugging Face model (text_cfg.hf_model_name, as
    roberta-ViT-B-32, xlm-roberta-*, mt5-*, nllb-clip-*): built from tiny-mlm's folder."""
    import shutil

    import open_clip.factory

    from augment import tiny

    source = tmp_path / "text_model"
    shutil.copytree(tiny.tiny_dir(tiny.TINY_MLM), source)
    cfg = tiny.open_clip_config(tiny.TINY_CLIP)
    cfg["text_cfg"] = {"hf_model_name": str(source), "hf_tokenizer_name": str(source), "hf_pooler_type": "mean_pooler",
                       "hf_proj_type": "linear", "context_length": 32}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "test-hf-text-tower", cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("test-hf-text-tower")
    return save_model(model, tmp_path / "ckpt"), source


def _set_text_model(folder, name):
    path = folder / "open_clip_config.json"
    config = json.loads(path.read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = name
    path.write_text(json.dumps(config))


def test_saved_clip_whose_text_tower_is_not_here_names_it(tmp_path, monkeypatch):
    # open_clip builds a Hugging Face text tower from its config.json, which it reads from the Hub (or the
    # folder it was built from), not from the saved folder: on a machine without it the load failed with
    # "not in the local cache ...; run once online or pass a local folder", of the folder that was passed,
    # or with huggingface_hub's "Repo id must be in the form 'repo_name'" for a folder that is not there
    from models.open_clip_family import OPEN_CLIP_TEXT_CONFIG_NAME

    folder, source = _hf_text_tower_clip(tmp_path, monkeypatch)
    (folder / OPEN_CLIP_TEXT_CONFIG_NAME).unlink()  # as saved before audit BG, or by open_clip itself
    assert load_model(str(folder)).encode_text(["a red cube"]).shape == (1, 128)  # its source here: loads
    _set_text_model(folder, "test-org/text-model-not-cached")  # a Hub id, as roberta-ViT-B-32's "roberta-base"
    with pytest.raises(ModelLoadError, match="text tower is the Hugging Face model 'test-org/text-model-not-cached'"
                       ) as info:
        load_model(str(folder))
    assert "not in the local cache" in _one_line(info) and "open_clip_config.json" in _one_line(info)
    _set_text_model(folder, str(source))
    import shutil

    shutil.rmtree(source)
    with pytest.raises(ModelLoadError, match=f"text tower is the Hugging Face model in {source}, a folder that "
                                             "does not exist here") as info:
        load_model(str(folder))
    _one_line(info)


def test_saved_clip_with_a_hugging_face_text_tower_loads_without_it(tmp_path, monkeypatch):
    # the folder holds the text tower's transformers config (open_clip_text_config.json), which the tower
    # is built from: the folder loaded only where that model's config.json was (the Hub, a warm cache, or
    # the folder it was built from)
    import shutil

    folder, source = _hf_text_tower_clip(tmp_path, monkeypatch)
    model = load_model(str(folder))
    shutil.rmtree(source)
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "ckpt")
    shutil.rmtree(folder)
    loaded = load_model(str(copy))
    captions = ["a red cube.", "Über café naïve 東京", " ".join(["a blue sphere left of a cube"] * 10)]
    pixels = torch.rand(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.tokenize(captions).input_ids, model.tokenize(captions).input_ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(captions), model.encode_text(captions), atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-6, rtol=0)
    assert json.loads((copy / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["hf_model_name"] == \
        str(source)  # the folder keeps the name it was built from; saved again, it is the same
    assert load_model(str(save_model(loaded, tmp_path / "again"))).encode_text(captions).equal(
        loaded.encode_text(captions))


@pytest.mark.parametrize("twin", ["tiny-clip", "tiny-albef"])
def test_a_save_tiny_folder_is_its_twin(tmp_path, twin):
    # `augment save-tiny DIR` writes each twin with its manifest (tiny.json) and, but for tiny-albef, no
    # matplus_model.json (tiny-albef's records tiny_twin null): `--model DIR/tiny-clip` loaded as no twin, so
    # a text attack's default masked LM was bert-base-uncased, which an offline machine has not got, where
    # `--model tiny-clip` takes tiny-mlm; a run trained from it recorded no twin either
    from augment.tiny import save_tiny
    from train.config import default_mlm, default_mlm_of

    folder = save_tiny(tmp_path / "twins", [twin])[twin]
    model = load_model(str(folder))
    assert model.tiny_twin == twin and default_mlm_of(model) == "tiny-mlm"
    assert default_mlm(str(folder)) == "tiny-mlm"
    assert load_model(str(save_model(model, tmp_path / "ckpt"))).tiny_twin == twin


@pytest.mark.parametrize("manifest", ["[1]", '"tiny-clip"', "null"])
def test_a_model_folder_whose_tiny_json_is_no_object_is_no_twin(tmp_path, manifest):
    # 6342d0c reads any model folder's tiny.json to tell a save-tiny twin: one holding a list, a string or null
    # (a hand edit, another tool's file of that name) stopped load_model and train's default masked LM with an
    # AttributeError traceback ("'list' object has no attribute 'get'"), where a damaged one was no twin
    import shutil

    from augment import tiny
    from train.config import default_mlm

    folder = tmp_path / "clip"
    shutil.copytree(tiny.tiny_dir("tiny-clip"), folder)
    (folder / "tiny.json").write_text(manifest)
    assert tiny.read_manifest(folder) is None and not tiny.is_current(folder, "tiny-clip")
    assert load_model(str(folder)).tiny_twin is None
    assert default_mlm(str(folder)) != "tiny-mlm"
