"""Loading refuses, in one line, what used to load silently broken or crash with a traceback:
an ALBEF/TCL tokenizer without vocabulary, a saved folder without tokenizer files, and an
open_clip `--pretrained` file that needs pickle or is no checkpoint at all."""
from __future__ import annotations

import json
import os
import pickle

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
