"""train --resume of a checkpoint an earlier mat-plus trained otherwise (`train.checkpoint.TRAINING_FORMAT`).

A MAT/MAT+ run begun under 22f3ee6 (2026-12-05) and resumed after 2026-12-06 trained its inner word attack the
new way (words of other scripts, accents, curly apostrophes, zero-width joiners: cfb07db, 408f6e5, 84f1dd6), an
ALBEF/BLIP run begun before 87c9042 its inner attacks without dropout: one run's weights trained two ways, exit 0
(audit BL). Each checkpoint's state.json now records its training format; one of another format, or of none,
is refused in one line, except where no change reaches the training."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from torch import nn

from train.checkpoint import FORMAT_KEY, TRAINED_OTHERWISE, TRAINING_FORMAT, _unchanged_since_format_0
from train.run_folder import LOCK_FILE

FAST = dict(batch_size=8, lr=1e-4, pgd_steps=1, progress=False, log_every=1, workers=0)


def _run(tmp_path, name, world, **settings):
    from train.trainer import train_run

    config = {"train_data": str(world), "out": str(tmp_path / name), "max_steps": 2, **FAST, **settings}
    return train_run(config)


def _written_as(run, value) -> None:
    """RUN/ckpt's state.json as a checkpoint of training format `value` wrote it (None: before the key)."""
    path = run / "ckpt" / "train_state" / "state.json"
    state = json.loads(path.read_text())
    state.pop(FORMAT_KEY)
    path.write_text(json.dumps(state if value is None else {**state, FORMAT_KEY: value}))


def _files(run):
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}


def test_a_word_attack_run_of_an_earlier_format_is_refused_in_one_line(tmp_path, sample_world_dir, capsys):
    """mat's word attack changed on 2026-12-06; a checkpoint without the key (or of an older or a newer number) is
    refused: one error line naming both ways on, exit 2, nothing in RUN written. Its weights still load (train eval,
    --model RUN/ckpt), a finished run of it (nothing to train) is found finished, and this format resumes."""
    from models import load_model
    from train.cli import main

    run = tmp_path / "run"
    argv = ["mat", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--batch-size", "4", "--workers", "0",
            "--no-progress", "--pgd-steps", "1"]
    assert main([*argv, "--max-steps", "1", "--out", str(run)]) == 0
    assert json.loads((run / "ckpt" / "train_state" / "state.json").read_text())[FORMAT_KEY] == TRAINING_FORMAT
    for value, said in ((None, TRAINED_OTHERWISE), (0, TRAINED_OTHERWISE), (TRAINING_FORMAT + 1, "a newer mat-plus")):
        copy = tmp_path / f"copy-{value}"
        shutil.copytree(run, copy)
        _written_as(copy, value)
        files = _files(copy)
        capsys.readouterr()
        assert main([*argv, "--max-steps", "2", "--out", str(copy), "--resume", "latest"]) == 2, value
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert said in lines[0] and "--overwrite" in lines[0] and f"--model {copy / 'ckpt'} and another --out" in lines[0]
        if value != TRAINING_FORMAT + 1:
            assert "word attack" in lines[0], lines[0]
        assert _files(copy) == files  # nothing written
        load_model(str(copy / "ckpt"), device="cpu")  # the weights still load
        assert main([*argv, "--max-steps", "1", "--out", str(copy), "--resume", "latest"]) == 0  # finished: nothing trained
    _written_as(run, TRAINING_FORMAT)
    assert main([*argv, "--max-steps", "2", "--out", str(run), "--resume", "latest"]) == 0


@pytest.mark.parametrize("settings", [dict(method="clean"), dict(method="tecoa"), dict(method="mat", word_budget=0)],
                         ids=["clean", "tecoa", "mat-word-budget-0"])
def test_an_earlier_format_resumes_where_no_change_reached_its_training(tmp_path, sample_world_dir, settings):
    """A CLIP without dropout or batch norm trained without a word search computes its steps as it did: resumed."""
    _run(tmp_path, "run", sample_world_dir, max_steps=1, schedule_steps=2, **settings)
    _written_as(tmp_path / "run", None)
    summary = _run(tmp_path, "run", sample_world_dir, max_steps=2, schedule_steps=2, resume="latest", **settings)
    assert summary["steps"] == 2
    state = json.loads((tmp_path / "run" / "ckpt" / "train_state" / "state.json").read_text())
    assert state[FORMAT_KEY] == TRAINING_FORMAT  # its next checkpoint is of this format


class _Model(nn.Module):
    def __init__(self, family="open_clip", itc_loss="softmax", *layers):
        super().__init__()
        self.family, self.itc_loss, self.layers = family, itc_loss, nn.Sequential(nn.Linear(2, 2), *layers)


def _config(method="clean", word_budget=1, pgd_steps=1, attack_eps=1 / 255):
    return SimpleNamespace(method=method, word_budget=word_budget, pgd_steps=pgd_steps, attack_eps=attack_eps)


@pytest.mark.parametrize("config, model, changed", [
    (_config("mat"), _Model(), "word attack"),
    (_config("mat+"), _Model(), "word attack"),
    (_config("mat", word_budget=0), _Model(), None),
    (_config("fare", word_budget=5), _Model(), None),  # the word budget of a method without a word attack
    (_config("clean"), _Model("albef"), "ALBEF's inner attacks"),
    (_config("clean"), _Model("blip"), "BLIP's inner attacks"),
    (_config("clean"), _Model("captioner"), "captioner"),
    (_config("clean"), _Model("open_clip", "sigmoid"), "SigLIP"),
    (_config("clean"), _Model("open_clip", "softmax", nn.Dropout(0.1)), None),  # no inner attack
    (_config("tecoa"), _Model("open_clip", "softmax", nn.Dropout(0.1)), "training mode"),
    (_config("tecoa"), _Model("hf_clip", "softmax", nn.Dropout(0.0)), None),
    (_config("fare"), _Model("open_clip", "softmax", nn.BatchNorm1d(2)), "training mode"),
    (_config("tecoa"), _Model("open_clip", "softmax", nn.MultiheadAttention(2, 1, dropout=0.1)), "training mode"),
    (_config("tecoa", pgd_steps=0), _Model("open_clip", "softmax", nn.Dropout(0.1)), None),
    (_config("mat", word_budget=0, attack_eps=0), _Model("open_clip", "softmax", nn.BatchNorm1d(2)), None),
])
def test_what_of_a_training_changed_since_format_0(config, model, changed):
    found = _unchanged_since_format_0(config, model)
    assert (found is None) if changed is None else (changed in found), found


@pytest.mark.parametrize("validation, changed", [
    ({"attack": "bert-attack"}, "validation attack bert-attack"),
    ({"attack": "synonym"}, "validation attack synonym"),
    ({"attack": "sep", "parts_off": {"image": "--pgd-steps 0"}}, "validation attack sep"),
    ({"attack": "prompt-pgd"}, "validation attack prompt-pgd"),
    ({"attack": "sep", "parts_off": {"text": "--word-budget 0"}}, None),  # its text part is off
    ({"attack": "pgd"}, None),
    (None, None),  # not validated
])
def test_a_validation_that_searches_words_changed_since_format_0(validation, changed):
    """The weights train alike, but the validation curve kept and RUN/best would mix both ways of searching words
    (--val-frequency's validation, or a given validator's: the study's)."""
    found = _unchanged_since_format_0(_config("clean"), _Model(), validation)
    assert (found is None) if changed is None else (changed in found), found


def test_a_validated_run_of_an_earlier_format_is_refused(tmp_path, sample_world_dir):
    """A clean CLIP run validated by a word attack (--val-frequency, --val-attack bert-attack): refused."""
    from train.config import ConfigError

    settings = dict(method="clean", val_frequency=1, val_limit=4, val_attack="bert-attack", schedule_steps=2)
    _run(tmp_path, "run", sample_world_dir, max_steps=1, **settings)
    _written_as(tmp_path / "run", None)
    with pytest.raises(ConfigError, match="validation attack bert-attack split words"):
        _run(tmp_path, "run", sample_world_dir, max_steps=2, resume="latest", **settings)


def test_a_study_run_of_an_earlier_format_is_trained_again_not_stopped(tmp_path, sample_world_dir):
    """The study resumes a killed run of the same settings (`analysis.study.train_resumable`): a checkpoint an
    earlier mat-plus trained otherwise is refused, with --overwrite as the way on, which the study's user has no
    way to give: the run is trained again from scratch, as for a pool made again, one log line saying so."""
    from analysis.study import train_resumable

    settings = {"train_data": str(sample_world_dir), **FAST, "method": "mat", "schedule_steps": 2}
    logs = []
    train_resumable(tmp_path / "run", {**settings, "max_steps": 1}, made_from="fingerprint", log=logs.append)
    _written_as(tmp_path / "run", None)
    summary = train_resumable(tmp_path / "run", {**settings, "max_steps": 2}, made_from="fingerprint", log=logs.append)
    assert summary["steps"] == 2
    assert [line for line in logs if "trained otherwise" in line and "from scratch" in line], logs
    state = json.loads((tmp_path / "run" / "ckpt" / "train_state" / "state.json").read_text())
    assert state[FORMAT_KEY] == TRAINING_FORMAT


def test_a_model_with_drop_path_computes_otherwise_in_training_mode():
    """was: a timm DropPath (stochastic depth: open_clip's ConvNeXt and ViTamin towers, `timm_drop_path` 0.1) is no
    dropout module and names its rate `drop_prob`, so a format-0 tecoa/fare/mat checkpoint of such a CLIP, whose inner
    attack ran in training mode with its drop path before 2026-12-03, was taken as unchanged and resumed: one run's
    weights trained two ways, exit 0."""
    layers = pytest.importorskip("timm.layers")
    assert "training mode" in (_unchanged_since_format_0(_config("tecoa"), _Model("open_clip", "softmax",
                                                                                    layers.DropPath(0.1))) or "")
    assert _unchanged_since_format_0(_config("tecoa"), _Model("open_clip", "softmax", layers.DropPath(0.0))) is None
