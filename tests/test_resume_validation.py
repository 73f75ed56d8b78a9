"""Resuming runs with in-training validation: the study's final validation, damaged or partial
files, the best checkpoint, validation settings, a folder without a checkpoint, the loggers and
the CUDA RNG state. Tiny CLIP, a few steps of small batches on the sample world."""
from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from augment.errors import MatPlusError

FAST = dict(batch_size=8, lr=1e-4, pgd_steps=1, progress=False, log_every=1, workers=0)


def _run(tmp_path, name, world, **settings):
    from train.trainer import train_run

    config = {"train_data": str(world), "out": str(tmp_path / name), "max_steps": 2, **FAST, **settings}
    records = []
    summary = train_run(config, callbacks=[records.append])
    return summary, records


def _files(folder: Path) -> dict:
    """Every file's bytes and mtime but RUN/.train.lock's: the run's lock, not an output (taking it may
    truncate it, as filelock 4.1, Python 3.10's newest, does)."""
    from train.run_folder import LOCK_FILE

    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE}


# ----------------------------------------------------------------------------- H1: the study's last validation


def test_a_study_run_killed_during_its_final_validation_validates_again_from_its_checkpoint(tmp_path, sample_world_dir):
    """was: every re-run of the study failed with AttributeError: 'Trainer' object has no attribute 'model'."""
    from analysis.study import train_resumable
    from augment.sources import load_source
    from train.validation import ValidationSettings, Validator

    source, _ = load_source(str(sample_world_dir))
    folder = tmp_path / "run"
    settings = dict(method="clean", model="tiny-clip", train_data=str(sample_world_dir), max_steps=2, batch_size=8,
                    workers=0, seed=1)

    def validator():
        return Validator(folder, source, ValidationSettings(every=1, attack="clean", limit=4, batch_size=4,
                                                            captions_per_image=1, captions="all"))

    class Killed(Exception):
        pass

    first = validator()
    validate = first.validate

    def dying(step, model=None):
        if step == 2:
            raise Killed
        return validate(step) if model is None else validate(step, model)

    first.validate = dying
    with pytest.raises(Killed):
        train_resumable(folder, settings, first)
    assert [line["step"] for line in first.records()] == [0, 1]
    again = validator()
    train_resumable(folder, settings, again)
    lines = again.records()
    assert [line["step"] for line in lines] == [0, 1, 2]
    best = json.loads((folder / "best" / "validation.json").read_text())
    assert best == max(lines, key=lambda line: (line["robust"], -line["step"]))
    # the last line is the checkpoint's weights: the same score as validating them directly
    from models import load_model
    from train.evaluate import evaluate

    report = evaluate(load_model(str(folder / "ckpt")), source, split="val", attacks=["clean"], batch_size=4,
                      captions_per_image=1, limit=4, seed=0, progress=False)
    clean = report["attacks"]["clean"]
    assert lines[-1]["clean"] == pytest.approx((clean["tr@1"] + clean["ir@1"]) / 2)


# ----------------------------------------------------------------------------- H2: a checkpoint without its weights


def test_a_checkpoint_missing_its_weights_file_is_one_line_naming_it(tmp_path, sample_world_dir, capsys):
    """was: open_clip initialised the model randomly and the run trained on from there, exit 0."""
    import shutil

    from train.cli import main

    argv = ["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--batch-size", "4", "--workers", "0",
            "--no-progress", "--max-steps", "2"]
    assert main([*argv, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    (copy / "ckpt" / "open_clip_model.safetensors").unlink()
    files = _files(copy)
    capsys.readouterr()
    assert main([*argv, "--out", str(copy), "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "open_clip_model.safetensors is missing" in err[0], err
    assert _files(copy) == files
    # a checkpoint saved before the list was kept: no weights file at all is refused too
    state = json.loads((tmp_path / "run" / "ckpt" / "train_state" / "state.json").read_text())
    assert "open_clip_model.safetensors" in state.pop("model_files")
    (copy / "ckpt" / "train_state" / "state.json").write_text(json.dumps(state))
    assert main([*argv, "--out", str(copy), "--resume", "latest"]) == 2
    assert "no weights file (*.safetensors)" in capsys.readouterr().err


def test_an_optimizer_state_of_other_parameter_groups_is_one_line(tmp_path, sample_world_dir, capsys):
    """A run begun before position embeddings left the weight-decayed group (2026-12-02): --resume
    latest was torch's traceback (exit 1); now one line saying it cannot be resumed and how to go on."""
    import shutil

    import torch

    from train.cli import main

    argv = ["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--batch-size", "4", "--workers", "0",
            "--no-progress"]
    assert main([*argv, "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    path = copy / "ckpt" / "train_state" / "optimizer.pt"
    state = torch.load(path, weights_only=True)
    groups = state["param_groups"]
    groups[0]["params"].append(groups[1]["params"].pop(0))  # one parameter in the other group, as before
    torch.save(state, path)
    files = _files(copy)
    capsys.readouterr()
    assert main([*argv, "--max-steps", "2", "--out", str(copy), "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its optimizer state has other parameter groups" in err[0] and "--model" in err[0], err
    assert _files(copy) == files


# ----------------------------------------------------------------------------- M3, L8: the best checkpoint


class _Snapshot:
    def __init__(self, step):
        self.step = step

    def save(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "weights.txt").write_text(str(self.step))


def _scripted_validator(monkeypatch, run_dir, scores):
    """A Validator over a stand-in trainer whose "weights" are their step, scored from `scores`."""
    import augment.sources
    import train.evaluate
    from train.validation import ValidationSettings, Validator

    monkeypatch.setattr(augment.sources, "source_fingerprint", lambda source: "stub")
    monkeypatch.setattr(train.evaluate, "evaluate", lambda model, source, **kw: {
        "attacks": {"clean": {"tr@1": scores[model.step], "ir@1": scores[model.step]}}})
    model = types.SimpleNamespace(step=0)
    model.frozen_copy = lambda: _Snapshot(model.step)
    trainer = types.SimpleNamespace(cfg=types.SimpleNamespace(grad_accum=1), model=model)
    return Validator(run_dir, None, ValidationSettings(every=2, attack="clean", captions="all")).attach(trainer)


def _train(validator, start, steps):
    for step in range(start, steps):
        validator.trainer.model.step = step
        validator(types.SimpleNamespace(step=step, micro_step=step))
    validator.trainer.model.step = steps
    validator.validate(steps)


def test_best_weights_survive_continuing_a_finished_run_and_a_kill_while_saving_them(tmp_path, monkeypatch):
    """was: continuing a run whose last (off-grid) step was its best deleted RUN/best, never saved it
    again, and summary.json named the missing folder and an older step."""
    run = tmp_path / "run"
    scores = {0: 10, 2: 12, 4: 11, 6: 11, 7: 15, 8: 11, 9: 11}
    _train(_scripted_validator(monkeypatch, run, scores), 0, 7)
    assert (run / "best" / "weights.txt").read_text() == "7"
    validator = _scripted_validator(monkeypatch, run, scores)
    _train(validator, 7, 9)  # --max-steps 9: resumes at step 7, the checkpoint's weights
    assert [(line["step"], line["robust"]) for line in validator.records()] == [
        (0, 10), (2, 12), (4, 11), (6, 11), (7, 15), (8, 11), (9, 11)]
    summary = validator.summary()
    assert summary["best"]["step"] == 7 and (Path(summary["best_weights"]) / "weights.txt").read_text() == "7"

    # killed between the two renames of a best save: the previous best comes back, nothing partial stays
    (run / "best").rename(run / ".best-old")
    (run / ".best-partial").mkdir()
    validator = _scripted_validator(monkeypatch, run, {**scores, 9: 11})
    validator.trainer.model.step = 9
    validator.validate(9)
    assert (run / "best" / "weights.txt").read_text() == "7"
    assert not (run / ".best-old").exists() and not (run / ".best-partial").exists()
    # a resumed run redoing the best's own step replaces it (same weights), never leaves none
    validator = _scripted_validator(monkeypatch, run, {**scores, 7: 14})
    _train(validator, 6, 7)
    assert json.loads((run / "best" / "validation.json").read_text())["robust"] == 14
    assert validator.summary()["best"]["step"] == 7


def test_a_step_of_several_micro_steps_is_validated_once(tmp_path, monkeypatch):
    """Guards the callback's micro-step rule (audit BY): under --grad-accum 2 a validated step is evaluated at its
    first micro step only (its second one sees the same weights: minutes of attacked evaluation again)."""
    validator = _scripted_validator(monkeypatch, tmp_path / "run", {0: 10, 2: 12})
    validator.trainer.cfg.grad_accum = 2
    model, evaluated = validator.trainer.model, []
    model.frozen_copy = lambda: evaluated.append(model.step) or _Snapshot(model.step)
    for step in range(3):
        model.step = step
        for micro_step in (2 * step, 2 * step + 1):  # counted over the whole run
            validator(types.SimpleNamespace(step=step, micro_step=micro_step))
    assert evaluated == [0, 2]


def test_a_resume_on_a_step_whose_line_ties_the_best_is_not_validated_again(tmp_path, monkeypatch):
    """Guards `_settled`'s tie (audit BY): a kept line of the resumed step that only ties an earlier best is
    settled (RUN/best keeps the earlier weights either way): not minutes of attacked evaluation again."""
    run, scores = tmp_path / "run", {0: 10, 2: 12, 4: 12}
    _train(_scripted_validator(monkeypatch, run, scores), 0, 4)
    validator = _scripted_validator(monkeypatch, run, scores)  # resumed at step 4, the checkpoint's
    model, evaluated = validator.trainer.model, []
    model.frozen_copy = lambda: evaluated.append(model.step) or _Snapshot(model.step)
    model.step = 4
    validator(types.SimpleNamespace(step=4, micro_step=4))
    assert evaluated == [] and (run / "best" / "weights.txt").read_text() == "2"


def test_partial_best_copies_are_removed_on_resume_and_by_overwrite(tmp_path, sample_world_dir):
    from train.run_folder import RUN_OUTPUTS

    common = dict(method="clean", seed=1, schedule_steps=2)
    _run(tmp_path, "run", sample_world_dir, max_steps=1, save_every=1, **common)
    (tmp_path / "run" / ".best-partial").mkdir()
    (tmp_path / "run" / ".best-partial" / "open_clip_model.safetensors").write_bytes(b"half")
    _run(tmp_path, "run", sample_world_dir, resume="latest", **common)
    assert not (tmp_path / "run" / ".best-partial").exists()
    (tmp_path / "run" / ".best-partial").mkdir()
    _run(tmp_path, "run", sample_world_dir, overwrite=True, **common)
    assert not (tmp_path / "run" / ".best-partial").exists()
    assert ".best-partial" in RUN_OUTPUTS and ".best-old" in RUN_OUTPUTS


def test_a_runs_best_checkpoint_is_one_of_its_outputs(tmp_path):
    """Guards BW's un-run M17 (audit BX): RUN_OUTPUTS without `best` passed every test; a folder holding only a
    run's best/ was then written into without --overwrite, and --overwrite kept the earlier run's best/ beside the
    new run's outputs."""
    from train.config import ConfigError
    from train.run_folder import check_run_folder, clear_run_outputs

    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / "open_clip_model.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume latest to continue it or --overwrite"):
        check_run_folder(tmp_path / "run", types.SimpleNamespace(resume=None, overwrite=False))
    clear_run_outputs(tmp_path / "run")
    assert not (tmp_path / "run" / "best").exists()


# ----------------------------------------------------------------------------- M4: validation settings on resume


def test_resuming_with_other_validation_settings_is_refused_naming_the_flags(tmp_path, sample_world_dir):
    """was: pgd robust R@1 of the first steps and clean R@1 of the resumed ones ranked in one curve."""
    from train.config import ConfigError

    common = dict(method="clean", seed=1, val_frequency=1, val_limit=4, val_attack="clean", schedule_steps=3)
    _run(tmp_path, "run", sample_world_dir, max_steps=1, **common)  # killed after step 1, checkpoint at 1
    files = _files(tmp_path / "run")
    for changed, flags in ((dict(val_limit=3), "['--val-limit']"),
                           (dict(val_attack="pgd", val_split="test"), "['--val-attack', '--val-split']")):
        with pytest.raises(ConfigError, match=r"^--resume: validation settings differ from the run in .*"
                                              + flags.replace("[", r"\[").replace("]", r"\]")):
            _run(tmp_path, "run", sample_world_dir, max_steps=3, resume="latest", **{**common, **changed})
    # without --val-frequency the run would quietly stop validating (was: accepted, its curve and best/ frozen)
    without = {k: v for k, v in common.items() if not k.startswith("val_")}
    with pytest.raises(ConfigError, match=r"^--resume: the run in .* was validated \(its validation.jsonl, up to "
                                          r"step 1\) but this resume has no --val-frequency"):
        _run(tmp_path, "run", sample_world_dir, max_steps=3, resume="latest", **without)
    assert _files(tmp_path / "run") == files
    summary, _ = _run(tmp_path, "run", sample_world_dir, max_steps=3, resume="latest", **common)  # the same: resumes
    # (one epoch is more than 3 steps: step 0, then the last step of each run; step 1's line is the checkpoint's weights)
    assert [line["step"] for line in map(json.loads, (tmp_path / "run" / "validation.jsonl").read_text().splitlines())] \
        == [0, 1, 3]
    assert summary["validation"]["best"] == json.loads((tmp_path / "run" / "best" / "validation.json").read_text())


# ----------------------------------------------------------------------------- M5: --resume latest without a checkpoint


def test_resume_latest_without_a_checkpoint_replaces_only_a_run_of_the_same_settings(tmp_path, sample_world_dir, caplog):
    """was: a run of other settings in --out was silently replaced (metrics, curve and best/ deleted)."""
    import shutil

    from train.config import ConfigError

    common = dict(method="clean", seed=1, max_steps=1)
    _run(tmp_path, "run", sample_world_dir, **common)
    shutil.rmtree(tmp_path / "run" / "ckpt")  # killed before its first checkpoint (--save-every 0)
    files = _files(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^--resume latest: settings differ from the run in .*no checkpoint.*"
                                          r"\['lr'\]; pass --overwrite"):
        _run(tmp_path, "run", sample_world_dir, resume="latest", **{**common, "lr": 5e-3})
    assert _files(tmp_path / "run") == files
    with caplog.at_level("WARNING", logger="train.trainer"):
        summary, records = _run(tmp_path, "run", sample_world_dir, resume="latest", **common)
    assert "has no checkpoint yet; starting from step 0" in caplog.text
    assert [r.step for r in records] == [0] and summary["resumed_from_step"] is None


# ----------------------------------------------------------------------------- L6: a half-written last line


def test_an_incomplete_last_line_of_the_logs_is_dropped_on_resume(tmp_path, sample_world_dir):
    """was: json.decoder.JSONDecodeError traceback (exit 1) on --resume latest."""
    from train.validation import read_curve

    common = dict(method="clean", seed=1, val_frequency=1, val_limit=4, val_attack="clean", schedule_steps=2)
    _run(tmp_path, "run", sample_world_dir, max_steps=1, **common)
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2, "lo')
    with open(run / "validation.jsonl", "a") as handle:
        handle.write('{"attack": "clean", "clea')
    assert [line["step"] for line in read_curve(run)] == [0, 1]
    _run(tmp_path, "run", sample_world_dir, resume="latest", **common)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [json.loads(line)["step"] for line in (run / "validation.jsonl").read_text().splitlines()] == [0, 1, 2]
    # a damaged line before the last is no kill's leftover: one line naming the file
    from train.jsonl import read_jsonl

    (run / "validation.jsonl").write_text('{"step": 0, "rob\n{"step": 1}\n')
    with pytest.raises(MatPlusError, match=r"validation.jsonl: line 1 is not JSON"):
        read_jsonl(run / "validation.jsonl")
    # a damaged last line written whole (its line break after it) is no kill's leftover either: it was dropped
    # as if cut short, and the resume rewrote the file without it
    (run / "validation.jsonl").write_text('{"step": 0}\n{"step": 1, "rob}\n')
    with pytest.raises(MatPlusError, match=r"validation.jsonl: line 2 is not JSON"):
        read_jsonl(run / "validation.jsonl")
    (run / "validation.jsonl").write_text('{"step": 0}\n{"step": 1, "rob')
    assert [r["step"] for r in read_jsonl(run / "validation.jsonl")] == [0]


# ----------------------------------------------------------------------------- L7: TensorBoard and W&B on resume


def test_loggers_continue_the_same_curve_and_run_on_resume(tmp_path, sample_world_dir, monkeypatch):
    """was: TensorBoard got the steps after the checkpoint twice (no purge_step), and W&B started a
    new run on every resume (resume="allow" without an id)."""
    writers, inits = [], []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.purge_step, self.scalars = purge_step, []
            writers.append(self)

        def add_scalar(self, name, value, step):
            self.scalars.append((name, step))

        def close(self):
            pass

    wandb_run = types.SimpleNamespace(log=lambda scalars, step: None, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: inits.append(kw) or wandb_run))
    common = dict(method="clean", seed=1, schedule_steps=3, report_to="tensorboard,wandb")
    _run(tmp_path, "run", sample_world_dir, max_steps=1, **common)
    _run(tmp_path, "run", sample_world_dir, max_steps=3, resume="latest", **common)
    assert writers[0].purge_step is None and writers[1].purge_step == 1
    assert {step for _, step in writers[1].scalars} == {1, 2, 3} and ("loss", 1) in writers[1].scalars
    run_id = (tmp_path / "run" / "wandb_run_id.txt").read_text().strip()
    assert [kw["id"] for kw in inits] == [run_id, run_id] and all(kw["resume"] == "allow" for kw in inits)
    assert "key" not in (tmp_path / "run" / "wandb_run_id.txt").read_text().lower()
    _run(tmp_path, "run", sample_world_dir, max_steps=1, overwrite=True, **common)  # started over: a new W&B run
    assert inits[-1]["id"] != run_id


# ----------------------------------------------------------------------------- A2: CUDA RNG states


def test_cuda_rng_state_restores_on_fewer_visible_gpus(monkeypatch):
    """was: IndexError in set_rng_state_all when the checkpoint was saved with more GPUs visible."""
    import torch.cuda.random

    from train import checkpoint

    restored = []

    def set_rng_state(state, device="cuda"):
        index = device if isinstance(device, int) else 0
        if index >= 1:  # one GPU visible now
            raise IndexError("tuple index out of range")
        restored.append((index, int(state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: [torch.tensor([i], dtype=torch.uint8) for i in range(8)])
    for module in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(module, "set_rng_state", set_rng_state)
    saved = checkpoint._rng_state()
    # a checkpoint of the former layout (every GPU visible then: 8) restores the one visible now
    checkpoint._set_rng_state({**saved, "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(8)]})
    assert restored == [(0, 0)]
    restored.clear()
    assert torch.equal(saved["cuda"], torch.tensor([7], dtype=torch.uint8))  # now this process's device only
    checkpoint._set_rng_state(saved)
    assert restored == [(0, 7)]
    # the CPU generators still come back exactly
    torch.manual_seed(3)
    state = checkpoint._rng_state()
    expected = torch.rand(3)
    torch.rand(5)
    checkpoint._set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def test_a_stale_best_is_not_the_rival_of_a_redone_step(tmp_path):
    """A killed run's RUN/best from a step its resume redoes (step 4, 95.0; the curve kept steps 0 and 2)
    no longer stands: the redone step is ranked against the kept lines (90.0 at step 0), so 60.0 is
    not "best", the stale weights are removed and the summary reports the curve's best without weights."""
    import json

    from train.validation import Validator, ValidationSettings

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    lines = [{"step": 0, "robust": 90.0, "clean": 90.0, "attack": "clean"},
             {"step": 2, "robust": 80.0, "clean": 80.0, "attack": "clean"}]
    (run / "validation.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "best" / "validation.json").write_text(json.dumps({"step": 4, "robust": 95.0, "clean": 95.0, "attack": "clean"}))
    validator = Validator(run, None, ValidationSettings(every=2, attack="clean"))
    redone = {"step": 4, "robust": 60.0, "clean": 60.0, "attack": "clean"}
    assert not validator._is_best(redone)
    assert not (run / "best").exists()
    summary = validator.summary()
    assert summary["best"]["step"] == 0 and summary["best_weights"] is None
    assert validator._is_best({"step": 6, "robust": 91.0, "clean": 91.0, "attack": "clean"})  # beats the kept 90.0


def test_a_resume_on_a_validation_step_keeps_its_line_without_validating_again(tmp_path, monkeypatch):
    """The checkpoint's step had its line in validation.jsonl; the resume dropped and recomputed it
    (minutes of attacked evaluation on real models, for the same number). Validated again only when
    RUN/best does not agree with the line: its copy cut by a kill."""
    import train.evaluate

    for best_step in (2, 6):  # the kept line not the best, and the best
        run = tmp_path / f"run{best_step}"
        scores = {0: 10, 2: 12, 4: 11, 6: 15 if best_step == 6 else 11, 7: 9, 8: 9}
        _train(_scripted_validator(monkeypatch, run, scores), 0, 6)  # validates 0, 2, 4 and (the last) 6
        assert json.loads((run / "best" / "validation.json").read_text())["step"] == best_step
        validator = _scripted_validator(monkeypatch, run, scores)
        measured = []
        evaluate = train.evaluate.evaluate
        monkeypatch.setattr(train.evaluate, "evaluate", lambda model, source, **kw: (
            measured.append(model.step), evaluate(model, source, **kw))[1])
        _train(validator, 6, 8)  # --max-steps 8 from the checkpoint of step 6
        assert measured == [8]
        assert [line["step"] for line in validator.records()] == [0, 2, 4, 6, 8]
        assert validator.summary()["best"]["step"] == best_step
    # killed after the best line was written, before its weights were copied: validated again
    shutil.rmtree(run / "best")
    validator = _scripted_validator(monkeypatch, run, scores)
    measured.clear()
    monkeypatch.setattr(train.evaluate, "evaluate", lambda model, source, **kw: (
        measured.append(model.step), {"attacks": {"clean": {"tr@1": scores[model.step], "ir@1": scores[model.step]}}})[1])
    _train(validator, 6, 8)
    assert measured == [6, 8] and (run / "best" / "weights.txt").read_text() == "6"


def test_a_resume_with_no_step_left_keeps_the_last_steps_line_without_validating_again(tmp_path, sample_world_dir,
                                                                                       monkeypatch):
    """A run killed after its final checkpoint, before summary.json, resumes with no step to train: its
    validation after the last step was measured again (minutes of attacked evaluation on real models, for
    the same number), while a resume on any other validation step keeps that step's line."""
    import train.evaluate

    common = dict(method="clean", seed=1, max_steps=2, val_frequency=1, val_attack="clean", val_limit=4)
    _run(tmp_path, "run", sample_world_dir, **common)
    run = tmp_path / "run"
    lines = (run / "validation.jsonl").read_text()
    (run / "summary.json").unlink()  # the kill
    measured = []
    evaluate = train.evaluate.evaluate
    monkeypatch.setattr(train.evaluate, "evaluate", lambda *a, **kw: measured.append(1) or evaluate(*a, **kw))
    summary, _ = _run(tmp_path, "run", sample_world_dir, resume="latest", **common)
    assert measured == [] and (run / "validation.jsonl").read_text() == lines
    assert summary["validation"]["last"]["step"] == 2 and (run / "summary.json").is_file()


def test_a_captioning_line_from_before_val_segment_cjk_was_measured_unsegmented(tmp_path):
    """A captioning run validated before --val-segment-cjk existed wrote lines without `segment_cjk`: their CIDEr
    was unsegmented. A resume under --val-segment-cjk chars was accepted (a missing key was not compared), ranking
    segmented and unsegmented CIDEr in one curve and one best/."""
    from train.config import ConfigError
    from train.validation import VALIDATION_FILE, check_resume

    line = {"step": 1, "metric": "CIDEr", "attack": "pgd", "robust": 1.0, "clean": 2.0,
            "settings": {"split": "val", "data": None, "limit": 50, "captions": "all", "captions_per_image": None}}
    (tmp_path / VALIDATION_FILE).write_text(json.dumps(line) + "\n")
    current = {**line["settings"], "attack": "pgd", "segment_cjk": "none"}
    check_resume(tmp_path, current, 1)  # unsegmented then and now: resumes
    with pytest.raises(ConfigError, match=r"^--resume: validation settings differ .*\['--val-segment-cjk'\]"):
        check_resume(tmp_path, {**current, "segment_cjk": "chars"}, 1)
    retrieval = {**line, "metric": "R@1"}  # retrieval's lines and settings hold no segmentation: unchanged
    (tmp_path / VALIDATION_FILE).write_text(json.dumps(retrieval) + "\n")
    check_resume(tmp_path, {**line["settings"], "attack": "pgd"}, 1)


def test_a_segmented_captioning_line_from_before_the_fullwidth_fold_is_not_ranked_with_folded_ones(tmp_path, monkeypatch):
    """Since b238406 --val-segment-cjk folds fullwidth forms (３, ，, ！) before cutting, which moves CIDEr (BLEU-4 49 -> 100
    on COCO-CN-style references); a run validated under --val-segment-cjk chars before it recorded the same settings,
    so its resume was accepted and ranked unfolded and folded CIDEr in one curve and one best/."""
    import augment.sources
    from train.caption_metrics import CJK_FORMS
    from train.config import ConfigError
    from train.validation import VALIDATION_FILE, ValidationSettings, check_resume, settings_record

    monkeypatch.setattr(augment.sources, "source_fingerprint", lambda source: "fp")
    current = settings_record(ValidationSettings(task="captioning", attack="pgd", segment_cjk="chars"), object())
    assert current["cjk_forms"] == CJK_FORMS
    assert "cjk_forms" not in settings_record(ValidationSettings(task="captioning", attack="pgd"), object())
    line = {"step": 1, "metric": "CIDEr", "attack": "pgd", "robust": 1.0, "clean": 2.0,
            "settings": {key: value for key, value in current.items() if key not in ("attack", "cjk_forms")}}
    (tmp_path / VALIDATION_FILE).write_text(json.dumps(line) + "\n")  # chars, cut unfolded
    with pytest.raises(ConfigError, match=r"differ .*\[\"--val-segment-cjk's folding of fullwidth forms"):
        check_resume(tmp_path, current, 1)
    line["settings"]["cjk_forms"] = CJK_FORMS  # written since: resumes
    (tmp_path / VALIDATION_FILE).write_text(json.dumps(line) + "\n")
    check_resume(tmp_path, current, 1)
    unsegmented = {**line, "settings": {**line["settings"], "segment_cjk": "none"}}
    del unsegmented["settings"]["cjk_forms"]
    (tmp_path / VALIDATION_FILE).write_text(json.dumps(unsegmented) + "\n")  # nothing folded then or now
    none_now = {key: value for key, value in current.items() if key != "cjk_forms"} | {"segment_cjk": "none"}
    check_resume(tmp_path, none_now, 1)


def test_another_runs_checkpoint_resumed_with_overwrite_replaces_the_run_in_out(tmp_path):
    """`--resume OTHER/ckpt --overwrite` into a folder holding a run: that run is to be replaced (the refusal
    without --overwrite says to pass it), so the check returns the checkpoint instead of refusing again."""
    from train import checkpoint as ckpt
    from train.config import ConfigError
    from train.run_folder import check_run_folder

    other = tmp_path / "other" / "ckpt"
    (other / ckpt.STATE_DIR).mkdir(parents=True)
    (other / ckpt.STATE_DIR / ckpt.STATE_FILE).write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds another run; pass --overwrite"):
        check_run_folder(out, types.SimpleNamespace(resume=str(other), overwrite=False))
    assert check_run_folder(out, types.SimpleNamespace(resume=str(other), overwrite=True)) == other


def test_resume_latest_into_outputs_without_a_config_yaml_or_checkpoint_is_refused(tmp_path):
    """Guards BW's un-run M18: with its "config.yaml missing" conflict dropped, `--resume latest` into a folder of
    another run's outputs (no checkpoint, no config.yaml to compare) started from step 0 over them, unnoticed."""
    from train.config import ConfigError
    from train.run_folder import check_run_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"has no checkpoint to resume: \['config.yaml missing'\]; pass --overwrite"):
        check_run_folder(out, types.SimpleNamespace(resume="latest", overwrite=False))


@pytest.mark.parametrize("output", ["summary.json", "tensorboard", "validation.jsonl", "config.yaml", "metrics.jsonl",
                                    "wandb", "wandb_run_id.txt"])
def test_each_file_a_run_writes_makes_its_folder_a_run_and_overwrite_clears_it(tmp_path, output):
    """Guards mutations (audit CH): summary.json, tensorboard/ or validation.jsonl left out of RUN_OUTPUTS passed
    every test; a folder holding it was then written into without --overwrite, and --overwrite kept it beside the
    new run's outputs (a finished run's summary, another run's curve)."""
    from train.config import ConfigError
    from train.run_folder import check_run_folder, clear_run_outputs

    run = tmp_path / "run"
    run.mkdir()
    if "." in output:  # a file
        (run / output).write_text("{}\n")
    else:
        (run / output).mkdir()
    (run / "notes.txt").write_text("the user's")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume latest to continue it or --overwrite"):
        check_run_folder(run, types.SimpleNamespace(resume=None, overwrite=False))
    clear_run_outputs(run)
    assert sorted(path.name for path in run.iterdir()) == ["notes.txt"]


def test_another_runs_checkpoint_is_resumed_against_that_runs_settings_wherever_its_path_leads(tmp_path):
    """Guards mutations (audit CH) that passed every test: the settings of `--resume OTHER/ckpt` compared with
    --out's saved config (none in a new folder: another run's checkpoint resumed under other settings unnoticed)
    instead of OTHER's, and the same-run check comparing the paths as written (RUN/../RUN/ckpt, a link: refused as
    another run's checkpoint)."""
    from train import checkpoint as ckpt
    from train.config import ConfigError, resolve_config, save_config
    from train.run_folder import check_run_folder

    def config(run, **settings):
        return resolve_config({"method": "clean", "train_data": str(tmp_path / "data"), "out": str(run), **settings})

    other = tmp_path / "other"
    (other / "ckpt" / ckpt.STATE_DIR).mkdir(parents=True)
    (other / "ckpt" / ckpt.STATE_DIR / ckpt.STATE_FILE).write_text("{}")
    save_config(config(other), other)
    with pytest.raises(ConfigError, match=rf"^--resume: settings differ from the run in {other}: \['lr'\]"):
        check_run_folder(tmp_path / "new", config(tmp_path / "new", resume=str(other / "ckpt"), lr=0.5))
    spelled = tmp_path / "elsewhere" / ".." / "other" / "ckpt"
    (tmp_path / "elsewhere").mkdir()
    assert check_run_folder(other, config(other, resume=str(spelled))) == spelled
