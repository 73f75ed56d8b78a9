"""Review fixes of `analysis compare` and `analysis study`: wrong-shaped input is one line (exit 2), and a
changed config on resume redoes what was made from the old one."""
from __future__ import annotations

import json
import re

import pytest

from analysis.cli import main as analysis_main
from tests.test_bad_inputs import fails


def _fails(capsys, argv, *expected) -> str:
    """`analysis ARGV` exits 2 with one error line holding every `expected`, and no traceback."""
    return fails(capsys, argv, *expected, main=analysis_main)


GOOD = {"task": "retrieval", "attacks": {"clean": {"tr@1": 50.0, "ir@1": 40.0, "rsum": 300.0}},
        "settings": {"attack_options": {}}, "attacker": {"name": "a"}, "victim": {"name": "a"}}


@pytest.mark.parametrize("change, named", [
    ({"attacks": {"clean": {"tr@1": 50.0, "ir@1": 40.0, "rsum": "x"}}}, "attacks.clean.rsum"),
    ({"attacker": "m"}, "'attacker'"),
    ({"victim": ["m"]}, "'victim'"),
    ({"settings": {"attack_options": "x"}}, "settings.attack_options"),
    ({"task": ["r"]}, "'task'"),
    ({"settings": {"attack_options": {"protocol": ["sga"]}}}, "settings.attack_options.protocol"),
    ({"settings": {"attack_options": {"attacked_embedding": 5}}}, "settings.attack_options.attacked_embedding"),
    ({"settings": {"attack_options": {}, "caption_preprocess": {"a": 1}}}, "settings.caption_preprocess"),
])
def test_compare_refuses_a_wrong_shaped_value_in_one_line(tmp_path, capsys, change, named):
    path = tmp_path / "run" / "eval.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**GOOD, **change}))
    _fails(capsys, ["compare", path.parent], str(path), "not an evaluation report", named)


def test_compare_still_reads_a_well_shaped_eval_json(tmp_path, capsys):
    path = tmp_path / "run" / "eval.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD))
    assert analysis_main(["compare", str(path.parent)]) == 0
    assert "| run | 50.0 / 40.0 | 300.0 |" in capsys.readouterr().out


def test_compare_out_that_cannot_be_written_names_the_file_asked_for(tmp_path, capsys):
    """`--out` in a folder that cannot hold it named the hidden temporary (`.table.md.tmp-PID`), not the file."""
    path = tmp_path / "run" / "eval.json"
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD))
    (tmp_path / "notes").write_text("a file, not a folder")
    line = _fails(capsys, ["compare", path.parent, "--out", tmp_path / "notes" / "table.md"],
                  str(tmp_path / "notes" / "table.md"))
    assert ".tmp-" not in line and not list(tmp_path.glob("**/.table.md.tmp-*"))


# --------------------------------------------------------------------------- B. config checks at load

def _refused(tmp_path, text: str, *expected) -> str:
    """A study config file of `text` is refused at load in one line naming the file and every `expected`."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MatPlusError) as caught:
        load_study_config(str(path))
    message = str(caught.value)
    assert message.startswith(f"study config {path}: ") and "\n" not in message, message
    for part in expected:
        assert part in message, message
    return message


@pytest.mark.parametrize("text, expected", [
    ("eval: {batch_size: 0}", "eval.batch_size must be a whole number >= 1, got 0"),
    ("eval: {captions_per_image: 0}", "eval.captions_per_image must be null (every caption) or a whole number >= 1, got 0"),
    ("pretrain: {lr: -1}", "pretrain.lr must be a positive number, got -1"),
    ("pretrain: {lr: fast}", "pretrain.lr must be a positive number, got 'fast'"),
    ("methods: [mat+]\npools: {}", "methods has mat+ but pools is empty"),
    ("headline_runs: mat", "headline_runs must be a list of run names, e.g. [mat], got 'mat'"),
    ("train: {steps: 3}", "unknown train keys ['steps']"),  # an old check, now naming the file
    # a quoted 'false' was a true string: the study ran every evaluation with the reference bugs on
    ("eval: {protocol: sga, reference_bugs: 'false'}", "eval.reference_bugs must be true or false, got 'false'"),
    ("eval: {pgd_steps: 2.5}", "eval.pgd_steps must be a whole number, got 2.5"),
    ("eval: {protocol: foo}", "eval: unknown protocol 'foo'"),
])
def test_a_bad_study_config_is_refused_at_load_naming_its_file(tmp_path, text, expected):
    _refused(tmp_path, text, expected)


def test_an_unusable_pretrain_checkpoint_is_refused_at_load_naming_its_file(tmp_path):
    """It used to be found only when the study reached pretraining, after the world was built,
    and the line said "study config" without the file."""
    missing = tmp_path / "nowhere"
    _refused(tmp_path, f"pretrain: {{checkpoint: {missing}}}", f"pretrain.checkpoint {missing} is not a checkpoint folder")
    not_clip = tmp_path / "not-clip"
    not_clip.mkdir()
    _refused(tmp_path, f"pretrain: {{checkpoint: {not_clip}}}", "is not a CLIP checkpoint folder (no open_clip_config.json)")
    _refused(tmp_path, "pretrain: {checkpoint: [a]}", "pretrain.checkpoint must be a folder's path, got ['a']")
    (not_clip / "open_clip_config.json").write_text("{}")  # what a retrieval study reads: accepted
    from analysis.config import load_study_config

    path = tmp_path / "ok.yaml"
    path.write_text(f"pretrain: {{checkpoint: {not_clip}}}")
    assert load_study_config(str(path))["pretrain"]["checkpoint"] == str(not_clip)


def test_the_study_command_names_the_config_file_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("eval: {batch_size: 0}")
    line = _fails(capsys, ["study", "--config", path, "--out", tmp_path / "out"], f"study config {path}: eval.batch_size")
    assert not (tmp_path / "out").exists()  # before any work
    assert line


def test_good_values_still_load(tmp_path):
    from analysis.config import load_study_config

    path = tmp_path / "ok.yaml"
    path.write_text("pretrain: {lr: 1e-3}\neval: {captions_per_image: null}\nheadline_runs: [mat]\nmethods: [mat, mat+]")
    config = load_study_config(str(path))
    assert config["pretrain"]["lr"] == "1e-3" and config["headline_runs"] == ["mat"]


# --------------------------------------------------------------------------- C. a changed config on resume

TINY = ("{seeds: [0], world: {n: 80, seed: 0}, finetune_scenes: 20, pretrain: {steps: STEPS, batch_size: 8}, "
        "train: {max_steps: 1, batch_size: 4, pgd_steps: 1}, pools: {shuffle: {method: shuffle, n: 1}}, "
        "methods: [mat+], n_aug_sweep: null, more_samples: null, eval: {limit: 4, captions_per_image: 1, "
        "batch_size: 4, pgd_steps: 1, attacks: [clean]}, headline_attack: clean}")


def test_a_changed_pretraining_redoes_every_stage_made_from_it(tmp_path, capsys):
    """pretrain.steps 2 -> 4 into one --out: the pretrained model is retrained from scratch (not
    resumed at step 2), and the pool scores, the MAT+ run and every evaluation made from the old
    one are redone (they were kept: their cache keys were paths), each with a line saying why."""
    from analysis.config import load_study_config
    from analysis.study import DONE, Study, _settings_hash, made

    out = tmp_path / "out"

    def run(steps: int) -> list[str]:
        path = tmp_path / f"t{steps}.yaml"
        path.write_text(TINY.replace("STEPS", str(steps)))
        logged: list[str] = []
        Study(load_study_config(str(path), {"out": str(out)}), log=logged.append).run()
        return logged

    run(2)
    capsys.readouterr()
    logged = "\n".join(run(4))
    for line in ("[pretrain] pretrain: redone from scratch (made with other steps)",
                 "pretrain: its run was started from other settings or inputs: trained from scratch, not resumed",
                 "[score] pools/shuffle/scores: redone from scratch (made with other pretrained_fingerprint)",
                 "[eval] evals/pretrained-s0: redone from scratch",
                 "[train] runs/matplus-shuffle-s0: redone from scratch (made with other pretrained_fingerprint)",
                 "matplus-shuffle-s0: its run was started from other settings or inputs: trained from scratch",
                 "[eval] evals/matplus-shuffle-s0: redone from scratch"):
        assert line in logged, logged
    pretrained = made(out / "pretrain")
    parts = json.loads((out / "runs" / "matplus-shuffle-s0" / DONE).read_text())["parts"]
    assert parts["pretrained_fingerprint"] == _settings_hash(pretrained)
    assert "resuming from" not in capsys.readouterr().err  # the trainer's line of a resumed run: none was
    # the same config again: everything is cached, nothing redone
    again = run(4)
    assert not any("redone" in line or line.startswith(("[train]", "[eval]", "[score]", "[pretrain]")) for line in again), again


# --------------------------------------------------------------------------- D. a moved study folder

def test_a_moved_study_folder_reuses_every_stage_and_redoes_what_changed(tmp_path, monkeypatch, capsys):
    """`mv out/study1 /data/study1`, then the study into its new place: every stage is reused and the
    report is the same (the scores, runs and evaluations were redone: their cache keys held the
    absolute paths of the pretrained model, pools and fine-tuning set inside the folder). Keys
    written before they held relative paths still hold while the folder stays where it was made;
    a changed pool after the move still redoes what was made from it; a run killed after its last
    checkpoint resumes in a moved folder (the trainer refused its old paths, and it was trained
    again from scratch)."""
    import shutil

    from analysis.config import load_study_config
    from analysis.study import DONE, Study

    def run(out, pool_n: int = 1) -> list[str]:
        path = tmp_path / "study.yaml"
        path.write_text(TINY.replace("STEPS", "2").replace("shuffle, n: 1}", f"shuffle, n: {pool_n}}}"))
        logged: list[str] = []
        Study(load_study_config(str(path), {"out": str(out)}), log=logged.append).run()
        return logged

    def outputs(out) -> dict[str, bytes]:
        """The report and what it was made from: evaluations, the runs' summaries, every model's weights."""
        files = [p for pattern in ("report.md", "evals/*/eval.json", "runs/*/summary.json", "*/*/ckpt/*.safetensors",
                                   "pretrain/ckpt/*.safetensors") for p in sorted(out.glob(pattern))]
        return {str(p.relative_to(out)): p.read_bytes() for p in files}

    def moved_to(made: dict[str, bytes], old, new) -> dict[str, bytes]:
        """`made` as a moved study has it: its reused evaluations name the checkpoints at their new place."""
        return {name: data.replace(str(old).encode(), str(new).encode()) if name.startswith("evals/") else data
                for name, data in made.items()}

    first = tmp_path / "a" / "study1"
    with monkeypatch.context() as before:  # a study made before keys held paths relative to its folder
        before.setattr(Study, "portable", lambda self, settings, *keys: settings)
        run(first)
    assert run(first) == []  # still reused where the study was made (and its keys written anew)
    made = outputs(first)
    assert {"report.md", "evals/pretrained-s0/eval.json", "runs/matplus-shuffle-s0/summary.json",
            "runs/matplus-shuffle-s0/ckpt/open_clip_model.safetensors", "pretrain/ckpt/open_clip_model.safetensors"} <= set(made)
    results = json.loads((first / "results.json").read_text())["runs"]

    moved = tmp_path / "b" / "study1"
    shutil.move(first, moved)
    assert run(moved) == []  # pretrained model, pool, scores, run and evaluations all reused
    assert outputs(moved) == moved_to(made, first, moved)
    assert json.loads((moved / "results.json").read_text())["runs"] == json.loads(
        json.dumps(results).replace(str(first), str(moved)))

    # a real change after the move: the pool, and what was made from it, redone; the pretraining kept
    logged = "\n".join(run(moved, pool_n=2))
    for line in ("[pool] pools/shuffle: redone from scratch (made with other spec)",
                 "[score] pools/shuffle/scores: redone from scratch (made with other pool)",
                 "[train] runs/matplus-shuffle-s0: redone from scratch (made with other pool_fingerprints)",
                 "[eval] evals/matplus-shuffle-s0: redone from scratch"):
        assert line in logged, logged
    assert "[pretrain]" not in logged and "pretrained-s0" not in logged, logged

    # a run killed after its last checkpoint, before the study marked it done; then the folder moved
    run_folder = moved / "runs" / "matplus-shuffle-s0"
    (run_folder / DONE).unlink()
    made = outputs(moved)
    again = tmp_path / "c" / "study1"
    shutil.move(moved, again)
    capsys.readouterr()
    assert run(again, pool_n=2) == ["[train] mat+:shuffle seed 0"]  # resumed with nothing to train; its eval reused
    assert "finished all 1 steps already: nothing to train" in capsys.readouterr().err
    assert outputs(again) == moved_to(made, moved, again)


def test_a_moved_study_folder_names_its_checkpoints_where_they_are_now(tmp_path):
    """A study moved elsewhere reuses its evaluations (nothing is redone) and rewrites their eval.json
    and eval.md to name each checkpoint at its new place: they named the old one (the victim's and
    attacker's model names), which `analysis compare`, results.json and the report showed."""
    import shutil

    from analysis.config import load_study_config
    from analysis.study import Study

    config = tmp_path / "study.yaml"
    config.write_text(TINY.replace("STEPS", "1").replace("pools: {shuffle: {method: shuffle, n: 1}}", "pools: {}")
                      .replace("methods: [mat+]", "methods: [mat]").replace("n: 80", "n: 40")
                      .replace("finetune_scenes: 20", "finetune_scenes: 10"))

    def run(out) -> list[str]:
        logged: list[str] = []
        Study(load_study_config(str(config), {"out": str(out)}), log=logged.append).run()
        return logged

    first, moved = tmp_path / "a" / "study", tmp_path / "b" / "study"
    assert "[eval] mat-s0" in run(first)
    before = {name: json.loads((first / "evals" / name / "eval.json").read_text()) for name in ("pretrained-s0", "mat-s0")}
    assert before["mat-s0"]["victim"]["name"] == str(first / "runs" / "mat-s0" / "ckpt")
    shutil.move(first, moved)
    assert run(moved) == []  # every step reused, no evaluation redone
    for name, checkpoint in (("pretrained-s0", moved / "pretrain" / "ckpt"), ("mat-s0", moved / "runs" / "mat-s0" / "ckpt")):
        report = json.loads((moved / "evals" / name / "eval.json").read_text())
        assert report["victim"]["name"] == report["attacker"]["name"] == str(checkpoint)
        assert report["attacks"] == before[name]["attacks"]  # the same numbers: reused, not recomputed
        assert str(checkpoint) in (moved / "evals" / name / "eval.md").read_text()
    for path in (*moved.glob("evals/*/eval.*"), moved / "results.json"):
        assert str(first) not in path.read_text(), path


def test_a_reused_grounding_evaluation_names_its_checkpoint_and_source_where_they_are_now(tmp_path):
    """The grounding arm's report names its model and, in its settings, the checkpoint and the world
    it read: each path inside the old study folder is rewritten, the rest kept; a report that names
    its checkpoint already, or a checkpoint outside the study, is left as it is (not written)."""
    from analysis.study import renamed_checkpoint

    old, new = tmp_path / "a" / "study", tmp_path / "b" / "study"
    report = {"task": "grounding", "model": {"family": "albef", "name": str(old / "runs" / "mat-s0" / "ckpt")},
              "attacker": {"name": str(old / "runs" / "mat-s0" / "ckpt")}, "attacks": {"clean": {"accuracy": 50.0}},
              "settings": {"checkpoint": str(old / "runs" / "mat-s0" / "ckpt"), "source": str(old / "finetune"),
                           "mlm": "tiny-mlm", "command": "analysis study (grounding arm)"}}
    written = []
    renamed = renamed_checkpoint(report, new / "runs" / "mat-s0" / "ckpt", new, new / "evals" / "mat-s0",
                                 lambda r, folder: written.append((r, folder)))
    checkpoint = str(new / "runs" / "mat-s0" / "ckpt")
    assert renamed["model"]["name"] == renamed["attacker"]["name"] == renamed["settings"]["checkpoint"] == checkpoint
    assert renamed["settings"]["source"] == str(new / "finetune")
    assert renamed["settings"]["mlm"] == "tiny-mlm" and renamed["attacks"] == report["attacks"]
    assert written == [(renamed, new / "evals" / "mat-s0")]
    assert renamed_checkpoint(renamed, new / "runs" / "mat-s0" / "ckpt", new, tmp_path, written.append) is renamed
    elsewhere = tmp_path / "other-study" / "pretrain" / "ckpt"  # pretrain.checkpoint: another study's model
    assert renamed_checkpoint(report, elsewhere, new, tmp_path, written.append) is report and len(written) == 1


@pytest.mark.parametrize("made_in_place", [None, "fingerprint-with-absolute-paths"])
def test_a_run_without_its_started_record_is_trained_from_scratch(tmp_path, monkeypatch, made_in_place):
    """A run folder with outputs but no .started.json (killed before it was written, or by an older
    version) may hold weights of other inputs: never resumed, also where no in-place key is given
    (pretraining gives none; `None in (key, None)` resumed it)."""
    import train.config
    import train.trainer

    from analysis.study import train_resumable

    modes = []

    class Recorder:
        def __init__(self, config, callbacks=(), validator=None):
            modes.append({key: config.get(key) for key in ("resume", "overwrite")})

        def run(self):
            return {}

    monkeypatch.setattr(train.trainer, "Trainer", Recorder)
    monkeypatch.setattr(train.config, "resolve_config", lambda settings: settings)
    folder = tmp_path / "pretrain"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("{}\n")
    train_resumable(folder, {"method": "clean"}, made_from="fingerprint", made_in_place=made_in_place, log=lambda _: None)
    assert modes == [{"resume": None, "overwrite": True}]


# ----------------------------------------------------------------------------- a later review of the study


def _run_key(tmp_path, overrides: dict) -> str:
    """The cache key of the demo's MAT+ run (seed 0), its stages stubbed: nothing is built or trained."""
    import analysis.study as study_module
    from analysis.config import load_study_config

    config = load_study_config("demo", {**overrides, "out": str(tmp_path / "study")})
    study = study_module.Study(config, log=lambda *_: None)
    study.pool = lambda name: tmp_path / "study" / "pools" / name
    study.pretrain = lambda: tmp_path / "study" / "pretrain" / "ckpt"
    study.source_dir = lambda which: tmp_path / "study" / which
    seen = {}

    def cached(stage, folder, key, in_place=None):
        seen["key"] = study_module._settings_hash(key)
        return True

    study.cached = cached
    study.train(next(s for s in study_module.run_specs(config) if s.method == "mat+"), 0)
    return seen["key"]


def test_a_runs_key_holds_what_its_validation_reads_besides_the_validation_section(tmp_path):
    """was: the same key under another eval attack budget, masked LM or headline captions, so a cached
    run kept the best/ checkpoint and the curve its validation chose under the old settings."""
    keys = [_run_key(tmp_path, overrides) for overrides in (
        {}, {"eval": {"attack_eps": "4/255"}}, {"eval": {"mlm": "tiny-mlm"}}, {"headline_captions": "all"})]
    assert len(set(keys)) == len(keys)
    assert _run_key(tmp_path, {}) == keys[0]  # and the same settings keep it


def test_gains_pair_with_a_mat_run_trained_for_more_samples_only():
    from analysis.report import pool_gains

    def evaluation(value):
        return {"attacks": {"sga": {"tr@1": value, "ir@1": value}, "clean": {"tr@1": 50.0, "ir@1": 50.0}}}

    results = [{"run": "mat", "method": "mat", "pools": [], "seed": s, "group": "more_samples", "eval": evaluation(40 + s)}
               for s in (0, 1)]
    results += [{"run": "mat+:scene", "method": "mat+", "pools": ["scene"], "seed": s, "group": "main",
                 "eval": evaluation(45 + 2 * s)} for s in (0, 1)]
    gains = pool_gains(results, "sga", False)
    assert set(gains) == {"scene"} and gains["scene"][0] == pytest.approx(5.5)  # (5 + 6) / 2


def test_spearman_of_a_nan_property_has_no_p_value():
    from analysis.report import spearman

    assert spearman([0.1, float("nan"), 0.3, 0.4], [1, 2, 3, 4]) == {"rho": None, "p": None, "n": 4, "p_method": None}


def test_gains_equal_up_to_float_rounding_are_ties_for_spearman():
    """Paired gains +3.33 and -3.33 average to -2.2e-16: ranked below two exact zeros, they gave
    'alignment vs gain' rho -0.87 for gains that were all zero."""
    from analysis.report import mean_std, spearman

    gain = mean_std([10.0 - 6.666666666666667, 3.3333333333333335 - 6.666666666666667])[0]
    assert gain != 0.0  # the float noise itself
    assert spearman([0.1225, 0.1266, 0.1223], [0.0, gain, 0.0])["rho"] is None  # constant: no correlation
    assert spearman([0.1, 0.2, 0.3], [1.0, gain, 2.0])["rho"] == pytest.approx(0.5)  # a tie with nothing


@pytest.mark.parametrize("overrides, message", [
    ({"n_aug_sweep": "scene"}, "n_aug_sweep must be a mapping or null, got 'scene'"),
    ({"more_samples": ["scene"]}, "more_samples must be a mapping or null"),
    ({"out": None}, "out must be a non-empty string, got None"),
    ({"pretrain": {"seed": "x"}}, "pretrain.seed must be a non-negative whole number, got 'x'"),
    # a masked LM loaded only when the evaluation starts, after every run trained
    ({"eval": {"mlm": "tiny-mlmm"}}, "eval.mlm: unknown tiny model 'tiny-mlmm'"),
    ({"eval": {"mlm": "tiny-clip"}}, "eval.mlm: 'tiny-clip' is a"),
    ({"eval": {"mlm": "/nowhere/mlm"}}, "eval.mlm: cannot load masked LM '/nowhere/mlm': folder /nowhere/mlm does not exist"),
    ({"train": {"mlm": "/nowhere/mlm"}}, "train.mlm: cannot load"),
])
def test_config_values_of_the_wrong_type_are_one_line_at_load(overrides, message):
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match=re.escape(message)):
        load_study_config("default", overrides)


def test_regimes_refuses_a_study_of_another_task_in_one_line(tmp_path):
    from analysis.report import regimes_table
    from augment.errors import MatPlusError

    (tmp_path / "results.json").write_text(json.dumps({"config": {"name": "capt", "task": "captioning"}, "runs": []}))
    with pytest.raises(MatPlusError, match="a captioning study has no retrieval R@1 table"):
        regimes_table([tmp_path])


@pytest.mark.parametrize("task, evaluation, message", [
    ("captioning", {"attacks": ["bogus"]}, "eval.attacks: unknown captioning attacks ['bogus']"),
    ("captioning", {"batch_size": 0}, "eval.batch_size must be a whole number >= 1, got 0"),
    ("captioning", {"split": "nope"}, "eval.split 'nope' is not a split"),
    ("grounding", {"attack_eps": "abc"}, "eval.attack_eps: cannot read 'abc' as a number"),
    ("grounding", {"limit": 0}, "eval.limit must be null (every image) or a whole number >= 1, got 0"),
])
def test_another_tasks_eval_values_are_checked_at_load(task, evaluation, message):
    """were accepted, and refused by the evaluation only after the world, the pools and every run."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match=re.escape(message)):
        load_study_config(None, {"task": task, "eval": evaluation})
    load_study_config(None, {"task": task, "eval": {"limit": None}})  # null: every image


def test_validating_on_the_evaluated_split_is_refused():
    """The report's best-on-validation checkpoint would be chosen on the test images it reports."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match="validation.split 'test' is eval.split"):
        load_study_config("demo", {"validation": {"split": "test"}})
    load_study_config("demo", {"validation": {"split": "train"}})


def test_pretrain_checkpoint_null_keeps_the_pretrained_models_key(tmp_path):
    """`pretrain: {checkpoint: null}` (pretrain here) changed the key, so the model and all made from it were redone."""
    import analysis.study as study_module
    from analysis.config import load_study_config

    keys = []
    for overrides in ({}, {"pretrain": {"checkpoint": None}}):
        study = study_module.Study(load_study_config("demo", {**overrides, "out": str(tmp_path / "s")}), log=lambda *_: None)
        study.world = lambda: tmp_path / "s" / "world"
        study.subset = lambda *args, **kwargs: tmp_path / "s" / "subset"
        study.cached = lambda stage, folder, key, in_place=None: keys.append(study_module._settings_hash(key)) or True
        study.pretrain()
    assert len(keys) == 2 and keys[0] == keys[1]


def test_the_pool_and_correlation_tables_say_the_gains_own_n():
    from analysis.report import correlation_table, pool_table

    properties = {"scene": {"alignment": 0.3, "diversity": 2.0, "gap": 1.0}}
    table = pool_table(properties, {"scene": (45.0, 1.0, 3)}, {"scene": (5.0, 1.0, 2)})
    assert table.splitlines()[-1].endswith("| +5.0 ± 1.0 (n 2) | 3 |")
    same = pool_table(properties, {"scene": (45.0, 1.0, 3)}, {"scene": (5.0, 1.0, 3)})
    assert same.splitlines()[-1].endswith("| +5.0 ± 1.0 | 3 |")
    rows = correlation_table({"alignment": {"rho": 0.5, "p": 0.3, "n": 5}}, {"alignment": {"rho": 0.4, "p": 0.5, "n": 4}})
    assert rows.splitlines()[-1].endswith("| 5 / 4 (gain) |")


def test_the_report_names_a_reused_pretrained_model_instead_of_this_configs_pretraining():
    from analysis.report import _pretrained_words

    assert "pretrained for 250 steps on the train scenes outside" in _pretrained_words({"steps": 250, "scenes": "rest"})
    reused = _pretrained_words({"steps": 250, "scenes": "rest", "checkpoint": "outputs/regime-1to1-truth/pretrain/ckpt"})
    assert "`outputs/regime-1to1-truth/pretrain/ckpt` (another study's" in reused and "250" not in reused


def test_pool_options_the_study_sets_itself_are_refused_and_every_line_names_the_file(tmp_path, capsys):
    """`pools: {scene: {source: /etc, out: elsewhere}}` was overridden without a word, and `split: test`
    failed as a leak after pretraining and several runs; `eval.attack_eps: abc` did not name the file."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    for spec, named in (({"method": "eda", "source": "/etc", "out": "x"}, "out, source are"),
                        ({"method": "i2t-scene", "n": 2, "split": "test"}, "split is")):
        with pytest.raises(MatPlusError, match=f"^study config: pool 'p': {named} set by the study"):
            load_study_config(None, {"pools": {"p": spec}, "methods": ["mat", "mat+"]})
    path = tmp_path / "eps.yaml"
    path.write_text("eval: {attack_eps: abc}")
    _fails(capsys, ["study", "--config", path, "--out", tmp_path / "out"],
           f"study config {path}: eval.attack_eps: cannot read 'abc' as a number")


@pytest.mark.parametrize("overrides, message", [
    ({"world": {"n": 120}, "finetune_scenes": 5000}, "finetune_scenes 5000 is more than the 90 train scenes of a world "
                                                    "of 120"),
    ({"world": {"n": 120}, "finetune_scenes": 40, "more_samples": {"pool": "scene", "oracle_factor": 3}},
     "more_samples' oracle trains on finetune_scenes x oracle_factor = 120 scenes, more than the world's 90"),
    ({"world": {"n": 40}, "finetune_scenes": 30, "pretrain": {"scenes": "rest"}, "more_samples": None},
     "pretrain.scenes rest pretrains on the train scenes not fine-tuned on, and finetune_scenes 30 takes all 30"),
    ({"world": {"n": 400}, "finetune_scenes": 30, "pools": {"scene": {"method": "i2t-scene", "n": 2}},
      "n_aug_sweep": {"pool": "scene", "values": [1, 5]}, "more_samples": None},
     "n_aug_sweep.values [5] exceed pool 'scene''s n 2"),
])
def test_scene_and_augmentation_counts_the_world_cannot_give_are_refused_at_load(overrides, message):
    """The study trained on the 90 scenes there were and its report said 5000; a sweep point above the
    pool's n trained the whole pool again as "5" beside "all (2)"; `scenes: rest` with none left failed
    after the world and pools were built, blaming the source."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match=re.escape(message)):
        load_study_config(None, overrides)


@pytest.mark.parametrize("key", ["model", "scorer"])
def test_a_model_or_scorer_no_family_accepts_is_named_at_load(key, tmp_path, capsys):
    """`scorer: nope-model` failed after the world and a pool were built, naming neither key nor file."""
    path = tmp_path / "bad.yaml"
    path.write_text(f"{key}: nope-model")
    _fails(capsys, ["study", "--config", path, "--out", tmp_path / "out"],
           f"study config {path}: {key}: unknown CLIP model 'nope-model'")
    assert not (tmp_path / "out").exists()


def test_the_study_refuses_an_out_folder_that_holds_something_else(tmp_path, capsys):
    """`--out RUN` (a training run, a pool, a source folder) got world/, pools/, pretrain/ among its files."""
    other = tmp_path / "run"
    other.mkdir()
    (other / "config.yaml").write_text("method: clean\n")
    path = tmp_path / "ok.yaml"
    path.write_text(TINY.replace("STEPS", "1"))
    _fails(capsys, ["study", "--config", path, "--out", other], f"{other}: holds other files and no study")
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml"]


def test_a_second_study_on_one_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    """Both generated (with --overwrite) the same pools before the second stopped at the training lock."""
    from augment.atomic import sole_writer

    path = tmp_path / "ok.yaml"
    path.write_text(TINY.replace("STEPS", "1"))
    out = tmp_path / "study"
    with sole_writer(out, ".study.lock", "held by the first"):
        _fails(capsys, ["study", "--config", path, "--out", out], f"{out}: another analysis study is writing here")
        assert [p.name for p in out.iterdir()] == [".study.lock"]  # nothing of the second


def test_a_retrieval_study_refuses_a_pgd_of_no_steps():
    """`eval.pgd_steps: 0` ran the whole study and reported robust R@1 under a PGD that took no step
    (train eval and the other tasks' studies refuse it)."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match="eval.pgd_steps must be a whole number >= 1, got 0"):
        load_study_config(None, {"eval": {"pgd_steps": 0}})


def test_a_null_oracle_factor_means_the_default(tmp_path):
    """`more_samples: {pool: scene, oracle_factor: null}` passed the checks and the oracle's subset
    was a TypeError (None x scenes) after pretraining; study, report and check now read one default."""
    from analysis.config import DEFAULTS, load_study_config, oracle_factor
    from analysis.study import Study

    config = load_study_config(None, {"out": str(tmp_path / "out"),
                                      "more_samples": {"pool": "scene", "oracle_factor": None}})
    default = DEFAULTS["more_samples"]["oracle_factor"]
    assert oracle_factor(config) == default
    asked = []
    study = Study(config, log=lambda line: None)
    study.subset = lambda name, scenes, captions=None: asked.append((name, scenes))
    study.source_dir("oracle")
    assert asked == [("oracle", config["finetune_scenes"] * default)]


@pytest.mark.parametrize("text, named", [
    ('{"config": {"name": "x"}, "headline": [', "damaged (corrupt JSON at line 1 column 40: Expecting value"),
    ("[]", "damaged (a JSON object expected, got list)"),
    ("{}", "not a study's results (an object with a 'config' object)"),
    ('{"config": {"name": "x"}, "headline": [{"run": "mat", "clean": ["abc", 1, 2]}]}',
     "headline mat.clean must be [mean, spread, n]"),
    # a mean without its spread or n, a verdict that is not one: TypeError / KeyError tracebacks until audit AZ
    ('{"config": {"name": "x"}, "headline": [{"run": "mat", "robust": [18.75, null, null]}]}',
     "headline mat.robust must be [mean, spread, n], got [18.75, None, None]"),
    ('{"config": {"name": "x"}, "headline": [{"run": "mat", "robust": [18.75, null, 2]}]}',
     "headline mat.robust must be [mean, spread, n]"),
    ('{"config": {"name": "x"}, "headline": [], "verdicts": ["mat+ better"]}', "each verdict must be an object"),
    ('{"config": {"name": "x"}, "headline": [], "verdicts": [{"run": "mat+:scene", "baseline": "mat", "n": 1}]}',
     "each verdict must be an object with run, baseline, checkpoint, difference, spread, n"),
    ('{"config": {"name": "x"}, "headline": [], "verdicts": [{"run": "mat+:scene", "baseline": "mat", "checkpoint": '
     '"last", "difference": "x", "spread": 0.0, "n": 1, "beyond_twice_spread": false}]}', "each verdict must be"),
    # a paired entry of the wrong shape: a KeyError or TypeError traceback until a review
    ('{"config": {"name": "x"}, "headline": [], "verdicts": [{"run": "mat+:scene", "baseline": "mat", "checkpoint": '
     '"last", "difference": 1.0, "spread": 0.5, "n": 3, "beyond_twice_spread": false, "paired": {"n": 3}}]}',
     "verdict mat+:scene's paired entry must hold numbers mean, sd and higher"),
    ('{"config": {"name": "x"}, "headline": [], "verdicts": [{"run": "mat+:scene", "baseline": "mat", "checkpoint": '
     '"last", "difference": 1.0, "spread": 0.5, "n": 3, "beyond_twice_spread": false, "paired": {"n": 3, "mean": 1, '
     '"sd": 1, "higher": 2, "ci95": [0.1], "p": 0.2}}]}', "paired entry must hold ci95 as [low, high] and a number p"),
    ('{"config": {"name": "x"}, "headline": [], "verdicts": [{"run": "mat+:scene", "baseline": "mat", "checkpoint": '
     '"last", "difference": 1.0, "spread": 0.5, "n": 3, "beyond_twice_spread": false, "paired": [3]}]}',
     "paired entry must be an object with a number n"),
])
def test_regimes_names_a_damaged_or_foreign_results_json(tmp_path, capsys, text, named):
    """`analysis regimes` read results.json unchecked: a KeyError, TypeError or JSONDecodeError traceback."""
    (tmp_path / "results.json").write_text(text)
    _fails(capsys, ["regimes", tmp_path], str(tmp_path / "results.json"), named)


def test_a_damaged_file_of_a_study_folder_is_one_line_naming_it(tmp_path):
    """A truncated eval.json, .done.json or pool scores.json stopped a re-run study with a traceback."""
    from analysis.study import read_study_record
    from augment.errors import MatPlusError

    path = tmp_path / ".done.json"
    path.write_text('{"settings": "ab')
    with pytest.raises(MatPlusError, match=f"^{re.escape(str(path))}: damaged .*delete it to redo the step"):
        read_study_record(path)


@pytest.mark.parametrize("text, problem", [("[]", "a JSON object expected, got list"),
                                           ('"done"', "a JSON object expected, got str"),
                                           ("null", "a JSON object expected, got null")])
def test_a_study_record_that_is_not_an_object_is_one_line_naming_it(tmp_path, text, problem):
    """A .done.json, .started.json or eval.json of the study folder that is JSON but not an object (a hand
    edit, a foreign file) was an AttributeError traceback ('list' object has no attribute 'get'), a record
    without its key a KeyError, an eval.json of the wrong shape a KeyError or TypeError (audit AZ)."""
    from analysis.config import load_study_config
    from analysis.study import DONE, STARTED, Study, train_resumable
    from augment.errors import MatPlusError

    study = Study(load_study_config(None, {"out": str(tmp_path / "out")}), log=lambda line: None)
    folder = tmp_path / "out" / "evals" / "mat-s0"
    folder.mkdir(parents=True)
    (folder / DONE).write_text(text)
    damaged = f"^{re.escape(str(folder / DONE))}: damaged \\({problem}\\); delete it to redo the step"
    with pytest.raises(MatPlusError, match=damaged):
        study.cached("eval", folder, {"steps": 4})
    run = tmp_path / "out" / "runs" / "mat-s0"
    run.mkdir(parents=True)
    (run / STARTED).write_text(text)
    with pytest.raises(MatPlusError, match=f"^{re.escape(str(run / STARTED))}: damaged \\({problem}\\)"):
        train_resumable(run, {"method": "mat"}, made_from="abc")
    from analysis.study import read_study_record

    (folder / DONE).write_text(json.dumps({"parts": {}}))
    with pytest.raises(MatPlusError, match=f"^{re.escape(str(folder / DONE))}: damaged \\(no 'settings'\\)"):
        read_study_record(folder / DONE, "settings")


@pytest.mark.parametrize("report, problem", [([], "a JSON object expected, got list"),
                                             ({"attacks": "x"}, "an object whose 'attacks' map"),
                                             ({"attacks": {"pgd": {"tr@1": "x"}}}, "attacks.pgd.tr@1 must be a number")])
def test_a_study_eval_json_of_the_wrong_shape_is_one_line_naming_it(tmp_path, report, problem):
    from analysis.config import load_study_config
    from analysis.study import Study
    from augment.errors import MatPlusError

    study = Study(load_study_config(None, {"out": str(tmp_path / "out")}), log=lambda line: None)
    study.cached = lambda *args, **kwargs: True  # the evaluation is recorded done: its eval.json is read back
    folder = tmp_path / "out" / "evals" / "mat-s0"
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(report))
    with pytest.raises(MatPlusError, match=f"^{re.escape(str(folder / 'eval.json'))}: damaged \\({re.escape(problem)}"):
        study.evaluate("mat-s0", tmp_path / "out" / "runs" / "mat-s0" / "ckpt", 0)


def test_a_deleted_eval_json_or_scores_json_redoes_its_step(tmp_path, monkeypatch):
    """A damaged eval.json or scores.json says "delete it to redo the step that wrote it", but the step's
    .done.json still held: the next run stopped with "[Errno 2] No such file or directory" (audit AZ)."""
    import analysis.study as study_module
    import augment.sources
    import models
    import train.eval_report
    import train.evaluate
    from analysis.config import load_study_config
    from analysis.study import DONE, Study, mark_done

    study = Study(load_study_config(None, {"out": str(tmp_path / "out"), "scorer": "tiny-clip"}), log=lambda line: None)
    study.cached = lambda *args, **kwargs: True  # every step recorded done
    study.source_dir = lambda name: tmp_path / "world"
    report = {"attacks": {"clean": {"tr@1": 50.0, "ir@1": 40.0}}, "settings": {}, "victim": {"name": "m"}}
    calls = []
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(augment.sources, "load_source", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(train.evaluate, "evaluate", lambda *args, **kwargs: calls.append("eval") or dict(report))
    monkeypatch.setattr(train.eval_report, "write_report",
                        lambda report, folder, markdown: folder.mkdir(parents=True, exist_ok=True)
                        or (folder / "eval.json").write_text(json.dumps(report)))
    assert study.evaluate("mat-s0", tmp_path / "out" / "runs" / "mat-s0" / "ckpt", 0)["attacks"] == report["attacks"]
    assert calls == ["eval"] and (tmp_path / "out" / "evals" / "mat-s0" / "eval.json").is_file()

    pool = tmp_path / "out" / "pools" / "scene"
    mark_done(pool, {"method": "i2t-scene"})
    study.pool = lambda name: pool
    monkeypatch.setattr(study_module, "run_augment",
                        lambda argv: calls.append(argv[0]) or (pool / "scores.json").write_text('{"scorers": {}}'))
    assert study.score("scene") == {"scorers": {}} and calls == ["eval", "score"]
    assert (pool / DONE).is_file()


def test_a_stage_an_earlier_version_recorded_says_so_when_redone(tmp_path):
    """A study continued by a newer mat-plus redid its stages "made with other settings or inputs",
    for an unchanged config: the earlier version's markers hold no per-setting parts."""
    from analysis.config import load_study_config
    from analysis.study import DONE, Study

    logged: list[str] = []
    study = Study(load_study_config(None, {"out": str(tmp_path / "out")}), log=logged.append)
    folder = tmp_path / "out" / "evals" / "mat-s0"
    folder.mkdir(parents=True)
    (folder / DONE).write_text(json.dumps({"settings": "an earlier hash"}))
    assert not study.cached("eval", folder, {"steps": 4})
    assert logged == ["[eval] evals/mat-s0: redone from scratch (recorded by an earlier mat-plus, which hashed its "
                      "settings otherwise)"]


def test_a_new_task_arm_names_its_own_attacks(monkeypatch):
    """An arm registered in analysis.task_arms hit a KeyError where the study config checked eval.attacks
    against a literal {captioning, grounding} table; each arm says its attack names now."""
    import sys
    import types

    import analysis.captioning_arm as captioning_arm
    import analysis.task_arms as task_arms
    from analysis.config import _check_task_eval
    from augment.errors import MatPlusError

    arm = types.ModuleType("my_arm")
    for name in task_arms.ARM_NAMES:
        setattr(arm, name, getattr(captioning_arm, name))
    arm.attack_names = lambda: ("clean", "mine")
    monkeypatch.setitem(sys.modules, "my_arm", arm)
    monkeypatch.setitem(task_arms.TASK_ARMS, "matching", "my_arm")
    evaluation = {key: value for key, value in captioning_arm.DEFAULT_EVAL.items()
                  if key not in ("pgd_steps", "attack_eps")}  # an arm without a PGD budget
    _check_task_eval("matching", {**evaluation, "attacks": ["clean", "mine"]})
    with pytest.raises(MatPlusError, match=r"unknown matching attacks \['pgd'\] \(choose from clean, mine\)"):
        _check_task_eval("matching", {**evaluation, "attacks": ["clean", "pgd"]})


def test_a_runs_key_leaves_out_where_its_metrics_are_also_logged(tmp_path):
    """was: adding `report_to: tensorboard` (or a `wandb_project_name`) to a finished study's train:
    retrained every run from scratch ("redone from scratch (made with other report_to)") and evaluated
    them all again: the loggers change nothing a run makes, and the trainer resumes across them."""
    plain = _run_key(tmp_path, {})
    logged = _run_key(tmp_path, {"train": {"report_to": "tensorboard,wandb", "wandb_project_name": "p"}})
    assert logged == plain
    # nor do its loader workers (bit-identical weights) or how often it keeps a checkpoint
    assert _run_key(tmp_path, {"train": {"workers": 3, "save_every": 7}}) == plain
    assert _run_key(tmp_path, {"train": {"lr": 5e-5}}) != plain  # a train: setting that changes the run does


def _robust_results(values: dict[str, list[float]]) -> list[dict]:
    """Hand-made study results: run -> robust R@1 (SGA, meaning-preserved) of seeds 0, 1, 2, ..."""
    results = []
    for run, per_seed in values.items():
        method, pools = (run, []) if ":" not in run else ("mat+", [run.split(":", 1)[1]])
        for seed, value in enumerate(per_seed):
            results.append({"run": run, "method": method, "pools": pools, "seed": seed, "group": "main",
                            "eval": {"attacks": {"clean": {"tr@1": 60.0, "ir@1": 60.0},
                                                 "sga": {"tr@1": 0.0, "ir@1": 0.0, "tr@1_meaning_preserved": value,
                                                         "ir@1_meaning_preserved": value}}}})
    return results


def test_verdict_gives_the_seed_paired_difference_beside_the_unpaired_rule(tmp_path):
    """MAT and MAT+ of one seed share the pretrained weights, the item order, crops and attack starts
    and the test images: paired runs. The verdict compared unpaired means against twice the larger
    seed spread only, which said "no difference" when MAT+ gained in every seed (a: +1.0, +1.2, +0.8
    over seeds spread by 10 points) and "better" for a gain whose paired 95% interval holds 0
    (b: +4.2, +2.5, +0.8, the pool sweep's eda-0.3 case, +2.5 ± 1.7)."""
    from scipy import stats

    from analysis.report import _comparison, summarise_runs

    mat = [30.0, 40.0, 50.0]
    mat_b = [24.3, 25.0, 26.0]
    results = _robust_results({"mat": mat, "mat+:a": [30.0 + 1.0, 40.0 + 1.2, 50.0 + 0.8]})
    results_b = _robust_results({"mat": mat_b, "mat+:b": [24.3 + 4.2, 25.0 + 2.5, 26.0 + 0.8]})
    config = {"name": "t", "seeds": [0, 1, 2], "validation": None, "headline_runs": ["mat"]}
    for rows, run, diffs, inside in ((results, "mat+:a", [1.0, 1.2, 0.8], "excludes 0"),
                                     (results_b, "mat+:b", [4.2, 2.5, 0.8], "includes 0")):
        summary = summarise_runs(rows, ["clean", "sga"], "sga", True)
        comparison = _comparison(tmp_path, config, rows, summary, summary, ["clean", "sga"], "sga", True)
        (v,) = comparison.verdicts
        paired = v["paired"]
        test = stats.ttest_1samp(diffs, 0.0)
        half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / 3 ** 0.5
        assert paired["differences"] == pytest.approx(diffs) and paired["n"] == 3 and paired["higher"] == 3
        assert paired["mean"] == pytest.approx(sum(diffs) / 3) and paired["sd"] == pytest.approx(stats.tstd(diffs))
        assert paired["ci95"] == pytest.approx([sum(diffs) / 3 - half, sum(diffs) / 3 + half])
        assert paired["p"] == pytest.approx(test.pvalue)
        line = "\n".join(comparison.lines)
        assert f"paired by seed: {sum(diffs) / 3:+.1f} ± {stats.tstd(diffs):.1f}, higher in 3 of 3 seeds" in line
        assert inside in line and "twice the larger seed spread" in line  # the old rule's words stay
        said = "no difference shown: within" if run == "mat+:a" else "mat+:b better: beyond"
        assert said in line and v["beyond_twice_spread"] is (run == "mat+:b")  # what the old rule said


def test_one_seed_verdict_has_no_paired_statistic():
    from analysis.report import verdict_lines

    line, = verdict_lines([{"run": "mat+:a", "baseline": "mat", "difference": 1.0, "spread": 0.0, "n": 1,
                            "beyond_twice_spread": False, "checkpoint": "last",
                            "paired": {"n": 1, "mean": 1.0, "sd": 0.0, "differences": [1.0], "higher": 1, "lower": 0,
                                       "ci95": None, "p": None, "seeds": [0]}}])
    assert line.endswith("one seed: no seed spread to judge it against (run more seeds)")


def test_paired_difference_of_equal_gains_in_float_noise_has_no_interval():
    """Every seed +1.0 (one of them 0.9999999999999964 in floats) has no spread: no t test of a spread of 1e-15."""
    from analysis.report import paired_difference

    rows = _robust_results({"mat": [18.5, 30.0, 40.0], "mat+:a": [19.5, 31.0, 41.0]})
    rows[3]["eval"]["attacks"]["sga"]["tr@1_meaning_preserved"] = 19.499999999999996
    paired = paired_difference(rows, "mat+:a", "sga", True)
    assert paired["differences"] == [1.0, 1.0, 1.0] and paired["sd"] == 0.0 and paired["ci95"] is None and paired["p"] is None


def test_verdicts_of_several_pools_say_how_many_comparisons_and_holm_adjust(tmp_path):
    """Eight pools compared with MAT are eight tests: the verdicts judged each on its own and the
    report never said how many there were, inviting a reader to pick the one that crossed."""
    from scipy import stats

    from analysis.report import _comparison, holm, summarise_runs

    gains = {"a": [4.2, 2.5, 0.8], "b": [1.0, 1.2, 0.8], "c": [-1.0, 0.5, 0.2]}
    mat = [24.3, 25.0, 26.0]
    rows = _robust_results({"mat": mat, **{f"mat+:{k}": [m + g for m, g in zip(mat, v)] for k, v in gains.items()}})
    summary = summarise_runs(rows, ["clean", "sga"], "sga", True)
    config = {"name": "t", "seeds": [0, 1, 2], "validation": None, "headline_runs": ["mat"]}
    comparison = _comparison(tmp_path, config, rows, summary, summary, ["clean", "sga"], "sga", True)
    p = {k: stats.ttest_1samp(v, 0.0).pvalue for k, v in gains.items()}
    ordered = sorted(p.values())  # Holm by hand: 3 x smallest, then max(previous, 2 x next), then max(previous, largest)
    by_hand = [min(1, 3 * ordered[0])]
    by_hand += [max(by_hand[0], min(1, 2 * ordered[1]))]
    by_hand += [max(by_hand[1], min(1, ordered[2]))]
    assert sorted(holm(list(p.values()))) == pytest.approx(by_hand)
    for v in comparison.verdicts:
        pool = v["run"].split(":")[1]
        assert v["paired"]["comparisons"] == 3
        assert v["paired"]["p_holm"] == pytest.approx(by_hand[ordered.index(p[pool])])
    text = "\n".join(comparison.lines)
    assert text.count("Holm over the 3 MAT+ runs: ") == 3 and "3 MAT+ runs are each compared with MAT" in text
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_counts_a_comparison_without_a_p(tmp_path):
    """A pool whose gain is the same in every seed has no t test (no spread): it was left out of Holm's family,
    so two pools compared read as one comparison, unadjusted; it now counts, as p = 1."""
    from scipy import stats

    from analysis.report import _comparison, summarise_runs

    mat = [24.3, 25.0, 26.0]
    gains = {"a": [4.2, 2.5, 0.8], "same": [1.0, 1.0, 1.0]}
    rows = _robust_results({"mat": mat, **{f"mat+:{k}": [m + g for m, g in zip(mat, v)] for k, v in gains.items()}})
    summary = summarise_runs(rows, ["clean", "sga"], "sga", True)
    config = {"name": "t", "seeds": [0, 1, 2], "validation": None, "headline_runs": ["mat"]}
    comparison = _comparison(tmp_path, config, rows, summary, summary, ["clean", "sga"], "sga", True)
    paired = {v["run"].split(":")[1]: v["paired"] for v in comparison.verdicts}
    assert paired["same"]["p"] is None and "p_holm" not in paired["same"] and paired["same"]["comparisons"] == 2
    p = stats.ttest_1samp(gains["a"], 0.0).pvalue
    assert paired["a"]["comparisons"] == 2 and paired["a"]["p_holm"] == pytest.approx(min(1.0, 2 * p))
    assert "Holm over the 2 MAT+ runs: " in "\n".join(comparison.lines)


def test_pool_table_says_when_pools_diversity_and_gap_come_from_different_embeddings(tmp_path):
    """A re-rendered-image pool's diversity and gap are image-embedding numbers, a caption pool's
    text-embedding ones: the pool table put them in one column and the Spearman ranked them together,
    without a word (the pool sweep's `render`: diversity 1.07, gap 0.003, beside text pools)."""
    import json

    from analysis.report import _pool_analysis, _tables, pool_properties, summarise_runs

    def scores(kind, vendi, frechet):
        return {"scorers": {"s": {"alignment": {"all": {"mean": 0.7}}, "diversity": {kind: {"vendi": {"mean": vendi}, "items": 3}},
                                  "gap": {kind: {"frechet": {"value": frechet}}}}}, "latest": "s"}

    pools = {"scene": scores("text", 1.5, 0.01), "render": scores("image", 1.07, 0.003), "eda": scores("text", 1.4, 0.02)}
    rows = _robust_results({"mat": [25.0, 26.0], "mat+:scene": [27.0, 28.0], "mat+:render": [24.0, 25.0],
                            "mat+:eda": [26.0, 26.5]})
    summary = summarise_runs(rows, ["clean", "sga"], "sga", True)
    analysis = _pool_analysis(tmp_path, pools, rows, summary, "sga", True)
    assert analysis.content == {"scene": "text", "render": "image", "eda": "text"}
    assert analysis.properties["render"] == pool_properties(pools["render"])  # the numbers themselves are unchanged
    text = "\n".join(_tables(summary, ["clean", "sga"], analysis))
    assert "(image: render; text: scene, eda)" in text and "not on one scale" in text
    json.dumps(analysis.content)  # results.json keeps it
    same = _pool_analysis(tmp_path, {"scene": pools["scene"], "eda": pools["eda"]}, rows, summary, "sga", True)
    assert "not on one scale" not in "\n".join(_tables(summary, ["clean", "sga"], same))  # one embedding: no note


def test_report_says_when_a_best_on_validation_checkpoint_is_the_starting_model(tmp_path):
    """Validation scores step 0, the pretrained weights, and a later step must beat it: where none
    did, the "best val ckpt" columns of MAT showed the pretrained model's numbers under MAT's name."""
    from analysis.report import _comparison, summarise_runs

    rows = _robust_results({"mat": [25.0, 26.0], "mat+:scene": [27.0, 28.0]})
    for row, step in zip(rows, (0, 20, 40, 20)):  # mat seed 0 never beat its start on validation
        row["best_step"], row["eval_best"] = step, row["eval"]
    config = {"name": "t", "seeds": [0, 1], "validation": None, "headline_runs": ["mat"]}
    summary = summarise_runs(rows, ["clean", "sga"], "sga", True)
    text = "\n".join(_comparison(tmp_path, config, rows, summary, summary, ["clean", "sga"], "sga", True).lines)
    assert "best-on-validation checkpoint at step 0, the starting model before any fine-tuning: mat seed 0 (" in text
    for row in rows:
        row["best_step"] = 20
    text = "\n".join(_comparison(tmp_path, config, rows, summary, summary, ["clean", "sga"], "sga", True).lines)
    assert "step 0" not in text


@pytest.mark.parametrize("xs, ys", [
    ([0.1, 0.2, 0.2, 0.3, 0.4], [3.0, 1.0, 1.0, 2.0, 5.0]),  # ties in both
    ([0.7, 0.75, 0.78, 0.74, 0.34, -0.01], [36.0, 36.0, 37.2, 36.8, 30.8, 21.7]),
    ([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]),  # n = 3: no p below 1/3
    ([0.3, 0.1, 0.2, 0.2], [2.0, 2.0, 1.0, 1.0]),
])
def test_spearman_exact_p_with_ties_equals_every_pairing_counted_by_scipy(xs, ys):
    """Guards the exact p-value (audit BA): the share of all n! pairings whose |rho| (scipy's, midranks
    for ties) is at least the observed one. The pairings counted by hand are scipy's permutation test's
    (one-sided p equal); its two-sided p doubles the smaller one-sided one instead, which differs where
    ties make the null distribution lopsided (the first case: 0.567 against 0.55)."""
    import itertools

    import numpy as np
    from scipy import stats

    from analysis.report import spearman

    observed = stats.spearmanr(xs, ys).statistic
    rhos = [stats.spearmanr(xs, list(order)).statistic for order in itertools.permutations(ys)]
    by_hand = sum(abs(r) >= abs(observed) - 1e-9 for r in rhos) / len(rhos)
    result = spearman(xs, ys)
    assert result["rho"] == pytest.approx(observed) and result["p"] == pytest.approx(by_hand)
    assert result["p_method"] == "exact permutation"
    scipy_greater = stats.permutation_test((ys,), lambda y: stats.spearmanr(xs, y).statistic, vectorized=False,
                                           permutation_type="pairings", n_resamples=np.inf, alternative="greater").pvalue
    assert scipy_greater == pytest.approx(sum(r >= observed - 1e-9 for r in rhos) / len(rhos))


def test_a_verdict_within_the_spread_says_no_difference_is_shown_not_that_there_is_none():
    """"no difference: within twice the larger seed spread" claimed equivalence from three seeds that
    could not resolve one, beside a paired interval that excluded 0 (+1.0 in every seed)."""
    from analysis.report import verdict_lines

    line, = verdict_lines([{"run": "mat+:a", "baseline": "mat", "difference": 1.0, "spread": 8.2, "n": 3,
                            "beyond_twice_spread": False, "checkpoint": "last"}])
    assert "no difference shown: within twice the larger seed spread (2 x 8.2, n = 3 seeds)" in line


@pytest.mark.parametrize("text", ["", "# my study, to be filled in\n", "\n\n"])
def test_an_empty_study_config_file_is_refused_not_read_as_the_default_study(tmp_path, capsys, text):
    """`analysis study --config FILE` of an empty file (a failed write, one not filled in yet) read as no
    settings: the whole default study started (thousands of images, hours) into outputs/ (audit AZ)."""
    config = tmp_path / "my.yaml"
    config.write_text(text)
    _fails(capsys, ["study", "--config", config, "--out", tmp_path / "out"], f"study config {config}: holds no settings")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, named", [
    ({"world": {"n": None}}, "world.n"), ({"pretrain": {"steps": None}}, "pretrain.steps"),
    ({"pretrain": {"batch_size": None}}, "pretrain.batch_size"),
    ({"finetune_captions": {"per_image": None}}, "finetune_captions.per_image"),
    ({"validation": {"every": None}}, "validation.every"), ({"validation": {"every": 2, "batch_size": None}}, "validation.batch_size"),
])
def test_a_null_count_with_no_meaning_is_one_line(override, named):
    """A count left null passed the check (null was let through for every count): world.n, per_image and
    validation.every were a TypeError traceback at load, pretrain.steps one once pretraining began (audit AZ).
    The nulls that mean something (validation.limit: every image, oracle_factor: the default) still load."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match=f"^study config: {re.escape(named)} must be a whole number >= 1, got None$"):
        load_study_config(None, override)
    load_study_config(None, {"validation": {"every": 2, "limit": None, "captions_per_image": None},
                             "more_samples": {"pool": "scene", "oracle_factor": None}})


def test_a_seed_past_torchs_range_is_refused_at_load():
    """A study seed of 10**30 loaded and stopped the first training (after the world and the pools) in the
    trainer's check; train METHOD and train eval with such a --seed were an Overflow traceback (audit AZ)."""
    from analysis.config import load_study_config
    from augment.errors import MatPlusError

    with pytest.raises(MatPlusError, match=re.escape("seeds must be at most 2**64 - 1 (torch's largest seed), got 10000")):
        load_study_config(None, {"seeds": [0, 10**30]})
    load_study_config(None, {"seeds": [0, 2**64 - 1]})


def _study_evaluating_stubs(tmp_path, monkeypatch):
    """(a Study of OUT tmp_path/out whose evaluations load nothing and write a stub eval.json, the list each
    evaluation appends "eval" to, the study's log lines)."""
    import augment.sources
    import models
    import train.eval_report
    import train.evaluate
    from analysis.config import load_study_config
    from analysis.study import Study

    logged: list[str] = []
    study = Study(load_study_config(None, {"out": str(tmp_path / "out")}), log=logged.append)
    study.source_dir = lambda name: tmp_path / "world"
    calls = []
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: None)
    monkeypatch.setattr(augment.sources, "load_source", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(train.evaluate, "evaluate", lambda *args, **kwargs: calls.append("eval") or {
        "attacks": {"clean": {"tr@1": 50.0, "ir@1": 40.0}}, "settings": {}, "victim": {"name": "m"}})
    monkeypatch.setattr(train.eval_report, "write_report",
                        lambda report, folder, markdown: folder.mkdir(parents=True, exist_ok=True)
                        or (folder / "eval.json").write_text(json.dumps(report)))
    return study, calls, logged


def test_a_run_extended_after_its_evaluation_is_evaluated_again_and_an_older_marker_holds(tmp_path, monkeypatch):
    """The evaluation's key hashes settings, not weights: a run extended by hand (`train ... --resume
    --max-steps N`) after the study marked it done kept its evaluation of the old step. Now the marker records
    the checkpoint's step; another step is evaluated again; a marker without one (an earlier mat-plus's) holds."""
    from analysis.study import DONE

    study, calls, logged = _study_evaluating_stubs(tmp_path, monkeypatch)
    checkpoint = tmp_path / "out" / "runs" / "mat-s0" / "ckpt"
    (checkpoint / "train_state").mkdir(parents=True)

    def at_step(step):
        (checkpoint / "train_state" / "state.json").write_text(json.dumps({"step": step}))

    at_step(100)
    study.evaluate("mat-s0", checkpoint, 0)
    marker = tmp_path / "out" / "evals" / "mat-s0" / DONE
    assert calls == ["eval"] and json.loads(marker.read_text())["checkpoint_step"] == 100
    study.evaluate("mat-s0", checkpoint, 0)
    assert calls == ["eval"]  # the same weights: cached
    at_step(150)  # extended by hand
    study.evaluate("mat-s0", checkpoint, 0)
    assert calls == ["eval", "eval"] and json.loads(marker.read_text())["checkpoint_step"] == 150
    assert logged[-2:] == ["[eval] evals/mat-s0: redone (its checkpoint is at step 150 now, evaluated at step 100)",
                           "[eval] mat-s0"]
    record = json.loads(marker.read_text())
    del record["checkpoint_step"]  # as an earlier mat-plus wrote it
    marker.write_text(json.dumps(record))
    at_step(200)
    study.evaluate("mat-s0", checkpoint, 0)
    assert calls == ["eval", "eval"]  # today's behaviour kept: not evaluated again


def test_a_runs_best_folder_replaced_by_an_extension_is_evaluated_again(tmp_path, monkeypatch):
    """RUN/best holds no train_state/ (its step is in best/validation.json): the step read for the study's
    `-best` evaluation was None before and after a run extended by hand found a better step, so the old best's
    evaluation stood beside the report's new best_step; `train eval RUN/best` recorded no checkpoint_step."""
    from analysis.study import DONE
    from train.eval_common import load_evaluated

    study, calls, logged = _study_evaluating_stubs(tmp_path, monkeypatch)
    best = tmp_path / "out" / "runs" / "mat-s0" / "best"
    best.mkdir(parents=True)

    def best_at(step):  # as the validator writes it: its line, the step among its keys
        (best / "validation.json").write_text(json.dumps({"step": step, "robust": 1.0, "clean": 2.0}) + "\n")

    best_at(100)
    assert load_evaluated(str(best), lambda: "model") == ("model", 100)  # train eval's settings.checkpoint_step
    study.evaluate("mat-s0-best", best, 0)
    marker = tmp_path / "out" / "evals" / "mat-s0-best" / DONE
    assert calls == ["eval"] and json.loads(marker.read_text())["checkpoint_step"] == 100
    study.evaluate("mat-s0-best", best, 0)
    assert calls == ["eval"]  # the same best: cached
    best_at(150)  # the extension found a better step
    study.evaluate("mat-s0-best", best, 0)
    assert calls == ["eval", "eval"] and json.loads(marker.read_text())["checkpoint_step"] == 150
    assert logged[-2] == "[eval] evals/mat-s0-best: redone (its checkpoint is at step 150 now, evaluated at step 100)"
