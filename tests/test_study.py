"""The miniature study runs end to end, its report has every section, and a re-run resumes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import compare_table, find_evaluations
from analysis.config import CONFIG_DIR, load_study_config
from analysis.report import mean_std, spearman
from analysis.study import Study, run_specs
from augment.errors import MatPlusError
from augment.yaml_settings import load_settings_yaml


@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "mini"
    config = load_study_config("mini", {"out": str(out)})
    logged: list[str] = []
    report = Study(config, log=logged.append).run()
    yield config, out, report, logged
    shutil.rmtree(out.parent, ignore_errors=True)  # ~1.3 GB of checkpoints: free the disk for the rest of the suite


def test_the_log_names_the_world_before_the_pool_made_from_it(mini_study):
    """was: '[pool] human: i2t-human x2', then '[world] 160 scenes': the first pool's line came before the world it
    needed was built, so a study killed (or failing) while building its world ended its log on the pool's line."""
    logged = mini_study[3]
    assert logged[0].startswith("[world] "), logged[:3]
    assert min(i for i, line in enumerate(logged) if line.startswith("[pool] ")) > 0


def test_report_has_every_section(mini_study):
    config, out, report, _ = mini_study
    text = report.read_text()
    for heading in ("## Clean and robust R@1 per method and pool", "## Text attacks and meaning",
                    "## Pool properties and robustness", "## Robust R@1 against the number of augmentations per item",
                    "## Four ways of using more samples, at equal steps"):
        assert heading in text
    assert f"{config['eval']['pgd_steps']} PGD steps, attack protocol `project`." in text  # under which protocol the numbers were measured
    assert "Every evaluation ran on `cpu`." in text  # (no GPU in tests: `default_device()`)
    for png in ("properties_vs_robustness.png", "robust_vs_n_augmentations.png", "more_samples.png"):
        assert (out / png).stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    runs = {r["run"] for r in results["runs"]}
    assert {"pretrained", "mat", "mat+:scene", "mat+:shuffle", "mat+:human", "mat+:scene:n1",
            "mat+expand:scene", "mat:oracle"} <= runs
    assert len(results["runs"]) == len(runs) * len(config["seeds"])
    for pool in ("scene", "shuffle", "human"):
        props = results["pool_properties"][pool]
        assert all(props[k] is not None for k in ("alignment", "diversity", "gap"))
        assert f"| {pool} |" in text
    assert set(results["correlations"]) == {"alignment", "diversity", "gap"}
    # every text attack reports how many attacked captions the truth checker still calls true
    entry = results["runs"][0]["eval"]["attacks"]["bert-attack"]
    assert "meaning_preserved" in entry and "tr@1_meaning_preserved" in entry


def test_rerun_skips_finished_steps(mini_study):
    config, out, _, first_log = mini_study
    assert any(line.startswith("[train]") for line in first_log)
    logged: list[str] = []
    Study(config, log=logged.append).run()
    assert logged == []  # pools, scores, runs and evaluations all reused


def test_interrupted_evaluation_is_redone(mini_study):
    config, out, _, _ = mini_study
    marker = out / "evals" / "mat-s0" / ".done.json"
    marker.unlink()
    logged: list[str] = []
    Study(config, log=logged.append).run()
    assert logged == ["[eval] mat-s0"]


def test_compare_prints_finished_evaluations(mini_study):
    _, out, _, _ = mini_study
    evaluations = find_evaluations([str(out / "evals")])
    assert len(evaluations) >= 8
    table = compare_table(evaluations)
    assert table.splitlines()[0].startswith("| evaluation | clean TR@1/IR@1 | pgd TR@1/IR@1")
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "compare", str(out / "evals" / "mat-s0")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "| mat-s0 |" in result.stdout
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "compare", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no eval.json" in result.stderr


def test_run_specs_cover_every_section():
    config = load_study_config("default")
    names = {spec.name for spec in run_specs(config)}
    assert {"clean", "tecoa", "fare", "mat", "mat+:scene", "mat+:shuffle", "mat+expand:scene", "mat:oracle",
            "mat+:scene:n1", "mat+:scene:n2"} <= names


def test_a_settings_file_may_merge_an_anchored_mapping_and_override_its_keys():
    """A merge key (`<<: *base`) is no duplicate, and the keys written beside it override the merged ones, as in
    yaml.safe_load; found by a mutation audit: checking the merge key as a key of its own (every merge refused) passed
    every test (audit CJ)."""
    text = "base: &base {lr: 1, epochs: 2}\nrun:\n  <<: *base\n  lr: 3\nother:\n  <<: [*base]\n"
    assert load_settings_yaml(text) == {"base": {"lr": 1, "epochs": 2}, "run": {"lr": 3, "epochs": 2},
                                        "other": {"lr": 1, "epochs": 2}}


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(MatPlusError, match="no such file"):
        load_study_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(MatPlusError, match="unknown keys"):
        load_study_config(None, {"colour": "red"})
    with pytest.raises(MatPlusError, match="is not one of the pools"):
        load_study_config(None, {"n_aug_sweep": {"pool": "nope", "values": [1]}})
    for seeds in ([], [0, 0], ["a"], [-1], 3):
        with pytest.raises(MatPlusError, match="seeds must be a list of distinct non-negative whole numbers"):
            load_study_config(None, {"seeds": seeds})
    # a pool spec `augment generate` would refuse fails at load time, naming the pool, not after pretraining
    with pytest.raises(MatPlusError, match=r"^study config: pool 'eda': --method eda does not read --steps \("):
        load_study_config(None, {"pools": {"eda": {"method": "eda", "n": 2, "steps": 30}}})
    with pytest.raises(MatPlusError, match=r"^study config: pool 'eda': .*unrecognized arguments: --alpha 0.3$"):
        load_study_config(None, {"pools": {"eda": {"method": "eda", "alpha": 0.3}}})
    with pytest.raises(MatPlusError, match=r"^study config: pool 'x': unknown method 'nope'"):
        load_study_config(None, {"pools": {"x": {"method": "nope"}}})
    # a section left empty (`train: null`) or of the wrong type: one line, not a TypeError later
    for section in ("train", "eval", "world", "pretrain", "pools"):
        with pytest.raises(MatPlusError, match=f"^study config: {section} must be a mapping of settings, got None$"):
            load_study_config(None, {section: None})
    with pytest.raises(MatPlusError, match=r"^study config: pool 'scene' must be a mapping with a method, got None$"):
        load_study_config(None, {"pools": {"scene": None}})
    with pytest.raises(MatPlusError, match=r"eval.attacks must be a list of attack names, e.g. \[clean, pgd\], got 'pgd'"):
        load_study_config(None, {"eval": {"attacks": "pgd"}})
    # a key given twice: PyYAML kept the last one without a word
    twice = tmp_path / "twice.yaml"
    twice.write_text("seeds: [0]\neval: {limit: 4}\ntrain: {max_steps: 2}\neval: {limit: 8}\n")
    with pytest.raises(MatPlusError, match=r"malformed YAML: duplicate key 'eval' \(line 4\)"):
        load_study_config(str(twice))
    # every bundled study's pools pass, and a true value is a bare switch
    from analysis.config import CONFIG_DIR, generate_arguments

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        # a study reusing another's pretrained model loads once that model exists (a fresh clone has none)
        reused = load_settings_yaml(path.read_text()).get("pretrain", {}).get("checkpoint")
        if reused and not Path(reused).is_dir():
            with pytest.raises(MatPlusError, match=f"pretrain.checkpoint {reused} is not a checkpoint folder"):
                load_study_config(str(path))
        load_study_config(str(path), {"pretrain": {"checkpoint": None}})
    assert generate_arguments({"method": "t2i-sd", "safety_checker": True, "n": 2, "negative_prompt": False}) == [
        "--method", "t2i-sd", "--safety-checker", "--n", "2"]


def test_statistics_helpers():
    assert mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2])["rho"] is None
    # six pools, rho 0.83: scipy's t approximation says p 0.042, every one of the 720 pairings 0.058
    exact = spearman([0.713, 0.757, 0.782, 0.746, 0.345, -0.009], [36.1, 35.8, 37.2, 36.8, 30.8, 21.7])
    assert exact["rho"] == pytest.approx(0.8286, abs=1e-4) and exact["p_method"] == "exact permutation"
    assert exact["p"] == pytest.approx(42 / 720)
    assert spearman(list(range(12)), [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10])["p_method"] == "t approximation"


# ----------------------------------------------------------------------------- regime features


def test_keep_captions_first_and_rotating():
    from analysis.study import keep_captions

    sentences = [{"raw": f"c{i}", "sentid": i} for i in range(5)]
    assert [s["raw"] for s in keep_captions(sentences, 3, {"per_image": 1, "choice": "first"})] == ["c0"]
    assert [s["raw"] for s in keep_captions(sentences, 3, {"per_image": 1})] == ["c3"]
    assert [s["raw"] for s in keep_captions(sentences, 4, {"per_image": 2})] == ["c4", "c0"]
    assert len(keep_captions(sentences, 0, {"per_image": 9})) == 5


def test_train_and_eval_sections_speak_the_commands_names():
    """`train:` takes `train METHOD`'s settings by their names, `eval:` train eval's: an old or
    unknown key, one the study sets itself, or a value the trainer refuses stops the study at load."""
    def refused(overrides, *parts):
        with pytest.raises(MatPlusError) as caught:
            load_study_config("mini", overrides)
        message = str(caught.value)
        assert message.startswith(f"study config {CONFIG_DIR / 'mini.yaml'}: ") and "\n" not in message
        for part in parts:
            assert part in message, message

    refused({"train": {"steps": 5, "warmup_steps": 2, "text_attack": "mlm"}}, "unknown train keys",
            "train.steps is now train.max_steps", "train.text_attack is now train.text_candidates",
            "train.warmup_steps is now train.warmup")
    refused({"train": {"weight_decay": 0.1, "bogus": 1}}, "['bogus', 'weight_decay']", "train.weight_decay is now train.wd")
    refused({"train": {"eps": "2/255"}}, "train.eps 2/255 is AdamW's epsilon", "train.attack_eps")
    refused({"train": {"seed": 3}}, "train.seed is set by the study")
    refused({"train": {"pools": ["p"], "method": "mat"}}, "train.method, train.pools are set by the study")
    refused({"train": {"max_steps": None}}, "train.max_steps must be a whole number of steps")
    refused({"train": {"pgd_steps": -1}}, "mini.yaml: train (", "): --pgd-steps must be non-negative")
    refused({"train": {"text_candidates": "glove"}}, "train (mat): unknown --text-candidates 'glove'")
    refused({"eval": {"eps": "4/255"}}, "unknown eval keys ['eps']", "eval.eps is now eval.attack_eps")
    with pytest.raises(MatPlusError, match=r"unknown eval keys \['colour'\]"):  # another task's arm checks too
        load_study_config("grounding", {"eval": {"colour": 1}})
    # any trainer setting passes through, to the methods whose sub-command offers it
    from analysis.config import method_train_settings

    config = load_study_config("mini", {"train": {"wd": 0.05, "clean_weight": 0.5, "top_k": 3}})
    assert method_train_settings(config["train"], "clean")["wd"] == 0.05
    assert "clean_weight" not in method_train_settings(config["train"], "clean")
    assert method_train_settings(config["train"], "tecoa")["clean_weight"] == 0.5
    assert "top_k" not in method_train_settings(config["train"], "tecoa")
    assert method_train_settings(config["train"], "mat")["top_k"] == 3
    # a pool setting reaches the pooled runs only (the trainer refuses it without pools)
    from analysis.config import run_train_settings

    config = load_study_config("mini", {"train": {"allow_pool_mismatch": True}})
    mat = run_train_settings(method_train_settings(config["train"], "mat"), pooled=False)
    assert "allow_pool_mismatch" not in mat and "p_original" not in mat
    assert run_train_settings(method_train_settings(config["train"], "mat+"), pooled=True)["allow_pool_mismatch"] is True


def test_retrieval_eval_takes_train_evals_attack_settings():
    """eval: {top_k, word_budget, pgd_step_size} reach the attacks (they were not offered: a study could not
    evaluate at another word budget); their defaults are train eval's."""
    from analysis.config import eval_attack_options
    from train.attacks.settings import ATTACK_DEFAULTS, AttackSettings

    default = eval_attack_options(load_study_config("mini")["eval"])
    assert (default["top_k"], default["budget"], default["step_size"]) == (ATTACK_DEFAULTS.top_k, ATTACK_DEFAULTS.budget, None)
    options = eval_attack_options(load_study_config("mini", {"eval": {"top_k": 3, "word_budget": 2, "pgd_step_size": "1/255"}})["eval"])
    settings = AttackSettings.from_options(**{k: v for k, v in options.items() if k != "mlm"})
    assert (settings.top_k, settings.budget, settings.step_size) == (3, 2, pytest.approx(1 / 255))
    with pytest.raises(MatPlusError, match="mini.yaml: eval.word_budget must be at least 0, got -1$"):
        load_study_config("mini", {"eval": {"word_budget": -1}})
    # a NaN step (NaN fails `<= 0`) made PGD's every attacked image NaN (audit CM)
    with pytest.raises(MatPlusError, match="mini.yaml: eval.pgd_step_size must be positive and finite, got nan$"):
        load_study_config("mini", {"eval": {"pgd_step_size": "nan"}})
    # a budget of 0 leaves bert-attack nothing to do: its rows repeated clean's under its name
    with pytest.raises(MatPlusError, match="eval.attacks bert-attack would change nothing with eval.word_budget 0"):
        load_study_config("mini", {"eval": {"word_budget": 0}})
    zero = {"word_budget": 0, "attacks": ["clean", "pgd", "sep"]}
    assert eval_attack_options(load_study_config("mini", {"eval": zero, "headline_attack": "sep"})["eval"])["budget"] == 0
    with pytest.raises(MatPlusError, match="validation.attack bert-attack would change nothing with eval.word_budget 0"):
        load_study_config("mini", {"eval": zero, "headline_attack": "sep", "validation": {"every": 5, "attack": "bert-attack"}})


def test_train_val_segment_cjk_is_refused_as_unread_not_as_set_by_the_study():
    """The study's validation is retrieval's and never sets --val-segment-cjk (captioning's CIDEr), yet
    train.val_segment_cjk was refused as "set by the study for each run": it is refused as unread."""
    with pytest.raises(MatPlusError, match=r"train \(mat\): --val-segment-cjk is not read without --val-frequency or "
                                           r"outside --task captioning"):
        load_study_config("mini", {"train": {"val_segment_cjk": "chars"}})


def test_values_that_used_to_fail_after_training_are_refused_at_load():
    """A wrong attack, split, method or headline name surfaced at the first evaluation or validation,
    or in the report, after pretraining and training; now one line when the config is read."""
    for overrides, message in (
        ({"methods": ["tecoa", "matt"]}, "unknown methods ['matt']"),
        ({"eval": {"attacks": ["clean", "pgdd"]}}, "eval.attacks: unknown attacks ['pgdd']"),
        ({"eval": {"split": "tset"}}, "eval.split 'tset' is not a split of the sample world"),
        ({"eval": {"limit": 0}}, "eval.limit must be null (every image) or a whole number >= 1"),
        ({"validation": {"every": 2, "attack": "sgaa"}}, "validation.attack: unknown attacks ['sgaa']"),
        ({"validation": {"every": 2, "split": "dev"}}, "validation.split 'dev' is not a split"),
        ({"headline_attack": "sga"}, "headline_attack 'sga' is not among eval.attacks"),
        ({"headline_captions": "some"}, "headline_captions must be one of meaning_preserved, all"),
        ({"headline_runs": ["matt"]}, "headline_runs ['matt'] are not runs of this study"),
        ({"finetune_scenes": 0}, "finetune_scenes must be a whole number >= 1"),
        ({"validation": {"every": 2, "limit": 0}}, "validation.limit must be a whole number >= 1, got 0"),
        ({"pretrain": {"steps": 0}}, "pretrain.steps must be a whole number >= 1"),
        ({"more_samples": {"pool": "scene", "oracle_factor": 0}}, "more_samples.oracle_factor must be a whole number"),
        ({"n_aug_sweep": {"pool": "scene", "values": [0, 2]}}, "n_aug_sweep.values must be a list of whole numbers >= 1"),
    ):
        with pytest.raises(MatPlusError) as caught:
            load_study_config("mini", overrides)
        assert str(caught.value).startswith(f"study config {CONFIG_DIR / 'mini.yaml'}: ") and message in str(caught.value), (overrides, caught.value)
    # the default headline runs keep the study's own; named ones may be any run, e.g. the oracle
    assert load_study_config("mini")["headline_runs"] == ["mat"]
    assert load_study_config("mini", {"headline_runs": ["mat:oracle"]})["headline_runs"] == ["mat:oracle"]


def test_new_config_keys_are_checked():
    with pytest.raises(MatPlusError, match="finetune_captions"):
        load_study_config("mini", {"finetune_captions": {"per_image": 0}})
    with pytest.raises(MatPlusError, match="pretrain.scenes"):
        load_study_config("mini", {"pretrain": {"scenes": "some"}})
    with pytest.raises(MatPlusError, match="validation"):
        load_study_config("mini", {"validation": {"every": 0}})
    # a key a section does not read is refused, not silently left at its default
    for section, typo in (("validation", {"every": 2, "atack": "pgd"}), ("pretrain", {"step": 9}), ("world", {"size": 9}),
                          ("n_aug_sweep", {"pool": "scene", "value": [1]}), ("finetune_captions", {"per_image": 1, "pick": "first"})):
        with pytest.raises(MatPlusError, match=rf"^study config \S*mini.yaml: unknown {section} keys \['{sorted(set(typo) - {'every', 'pool', 'per_image'})[0]}'\]"):
            load_study_config("mini", {section: typo})


def _write_empty_report(report, folder, *table):
    """A stand-in for `train.eval_report.write_report` (and an arm's): the eval.json the study reads back."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text("{}")


def test_eval_protocol_is_checked_and_reaches_the_studys_evaluation(tmp_path, monkeypatch, sample_world_dir):
    import models
    import train.eval_report
    import train.evaluate

    for bad, message in [({"protocol": "albef"}, "mini.yaml: eval: unknown protocol 'albef'; expected one of project, sga, co-attack"),
                         ({"protocl": "sga"}, "unknown eval keys \\['protocl'\\]"),
                         ({"reference_bugs": True}, "mini.yaml: eval.reference_bugs needs a reference protocol \\(sga or co-attack\\)"),
                         ({"protocol": "sga", "attack_protocol": "co-attack"}, "disagree"),
                         # as train eval: settings none of eval.attacks reads under the protocol
                         ({"protocol": "co-attack", "reference_bugs": True, "attacks": ["clean", "pgd"]},
                          r"eval.reference_bugs is read by none of eval.attacks \['clean', 'pgd'\] under protocol co-attack"),
                         ({"protocol": "co-attack", "pgd_step_size": "1/255", "attacks": ["clean", "pgd", "bert-attack"]},
                          r"eval.pgd_step_size is read by none of eval.attacks .* \(read by sga\)")]:
        with pytest.raises(MatPlusError, match=message):
            load_study_config("mini", {"eval": bad})
    config = load_study_config("mini", {"out": str(tmp_path), "eval": {"protocol": "co-attack", "reference_bugs": True}})
    study, seen = Study(config, log=lambda line: None), {}

    def evaluate(victim, source, **kwargs):
        seen.update(kwargs["attack_options"])
        return {"attacks": {}, "settings": {}}

    monkeypatch.setattr(study, "source_dir", lambda which: sample_world_dir)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: "victim")
    monkeypatch.setattr(train.evaluate, "evaluate", evaluate)
    monkeypatch.setattr(train.eval_report, "write_report", _write_empty_report)
    checkpoint = tmp_path / "run" / "ckpt"
    checkpoint.mkdir(parents=True)
    study.evaluate("run", checkpoint, seed=0)
    assert seen["protocol"] == "co-attack" and seen["reference_bugs"] is True
    from analysis.report import _protocol_words  # the report's header says so

    assert _protocol_words(config["eval"]) == "attack protocol `co-attack` with the reference code's bugs"


def test_the_studys_evaluations_run_where_it_trained(tmp_path, monkeypatch, sample_world_dir):
    """The final evaluations load each checkpoint on the trainer's device: cuda when torch sees a GPU,
    the CPU under `train: {cpu: true}`. They loaded every checkpoint on the CPU (load_model's default),
    so a study on a GPU machine trained there and attacked on the host. A fake default device stands
    for the GPU (load_model is replaced: nothing is loaded)."""
    import types

    import augment.devices
    import models
    import train.eval_report
    import train.evaluate

    monkeypatch.setattr(augment.devices, "default_device", lambda: "cuda:7")
    devices = []

    def load_model(*args, **kwargs):
        devices.append(kwargs.get("device", "cpu"))
        return "victim"

    monkeypatch.setattr(models, "load_model", load_model)
    monkeypatch.setattr(train.evaluate, "evaluate", lambda victim, source, **kwargs: {"attacks": {}, "settings": {}})
    monkeypatch.setattr(train.eval_report, "write_report", _write_empty_report)
    checkpoint = tmp_path / "run" / "ckpt"
    checkpoint.mkdir(parents=True)
    for train_settings, expected in (({}, "cuda:7"), ({"cpu": True}, "cpu")):
        config = load_study_config("mini", {"out": str(tmp_path / f"study-{expected}"), "train": train_settings})
        study = Study(config, log=lambda line: None)
        monkeypatch.setattr(study, "source_dir", lambda which: sample_world_dir)
        study.evaluate("run", checkpoint, seed=0)
        assert devices[-1] == expected
        # a task arm's evaluation is given the same device
        arm_devices = []

        def evaluate_checkpoint(checkpoint, source_dir, e, seed, folder, device="cpu"):
            arm_devices.append(device)
            _write_empty_report({}, Path(folder))

        study.arm = types.SimpleNamespace(evaluate_checkpoint=evaluate_checkpoint, write_report=_write_empty_report)
        study.evaluate("arm-run", checkpoint, seed=0)
        assert arm_devices == [expected]


def test_each_study_setting_reaches_the_training_and_evaluation_that_read_it(tmp_path, monkeypatch, sample_world_dir):
    """Guards mutations (audit CH) of what the study hands the trainer and the evaluation that passed every test:
    pretrain.seed and pretrain.lr left out (the trainer's defaults trained instead), the pretraining warmup's floor
    of 1 step dropped, a run's seed or its pool mode left out, the more-samples oracle trained on the fine-tuning
    scenes, and eval's split, limit, captions_per_image and pgd_steps not passed to the evaluation. The trainer and the
    evaluation are stood in for: what they are given is recorded."""
    import models
    import train.eval_report
    import train.evaluate
    from analysis import study as study_module
    from analysis.study import RunSpec

    config = load_study_config("mini", {"out": str(tmp_path / "study"),
                                        "pretrain": {"steps": 10, "lr": 0.002, "seed": 4},
                                        "eval": {"split": "val", "limit": 5, "captions_per_image": 2}})
    study, trained, evaluated = Study(config, log=lambda line: None), [], {}
    monkeypatch.setattr(study_module, "train_resumable",
                        lambda folder, settings, *args, **kwargs: trained.append(settings))
    monkeypatch.setattr(study, "world", lambda: sample_world_dir)
    monkeypatch.setattr(study, "source_dir", lambda which: tmp_path / which)
    monkeypatch.setattr(study, "pool", lambda name: tmp_path / "pools" / name)
    study.pretrain()
    assert {key: trained[0][key] for key in ("max_steps", "batch_size", "lr", "warmup", "seed")} == {
        "max_steps": 10, "batch_size": 16, "lr": 0.002, "warmup": 1, "seed": 4}
    study.train(RunSpec("mat+expand:scene", "mat+", ["scene"], pool_mode="expand", source="oracle"), seed=7)
    run = trained[1]
    assert (run["seed"], run["pool_mode"], run["pools"]) == (7, "expand", [str(tmp_path / "pools" / "scene")])
    assert run["train_data"] == str(tmp_path / "oracle") and (run["max_steps"], run["batch_size"]) == (2, 8)

    def evaluate(victim, source, **kwargs):
        evaluated.update(kwargs)
        return {"attacks": {}, "settings": {}}

    monkeypatch.setattr(study, "source_dir", lambda which: sample_world_dir)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: "victim")
    monkeypatch.setattr(train.evaluate, "evaluate", evaluate)
    monkeypatch.setattr(train.eval_report, "write_report", _write_empty_report)
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    study.evaluate("run", tmp_path / "run" / "ckpt", seed=3)
    assert {key: evaluated[key] for key in ("split", "limit", "captions_per_image", "batch_size", "seed")} == {
        "split": "val", "limit": 5, "captions_per_image": 2, "batch_size": 8, "seed": 3}
    assert evaluated["attack_options"]["steps"] == 1  # eval.pgd_steps


def test_each_validation_setting_reaches_the_runs_validator(tmp_path, monkeypatch, sample_world_dir):
    """Guards mutations (audit CH) that passed every test: validation.batch_size and validation.split read from
    eval's batch size and a fixed "val" instead (the section's values were accepted, then not used)."""
    import train.validation

    config = load_study_config("mini", {"out": str(tmp_path / "study"), "validation": {
        "every": 5, "attack": "pgd", "split": "train", "limit": 3, "captions_per_image": 1, "batch_size": 4}})
    study, made = Study(config, log=lambda line: None), []
    monkeypatch.setattr(study, "source_dir", lambda which: sample_world_dir)
    monkeypatch.setattr(train.validation, "Validator", lambda folder, source, settings, **kwargs: made.append(settings))
    study.validator(tmp_path / "run", seed=2)
    [settings] = made
    assert (settings.every, settings.attack, settings.split, settings.limit, settings.captions_per_image,
            settings.batch_size, settings.seed) == (5, "pgd", "train", 3, 1, 4, 2)


def test_pretraining_on_the_rest_leaves_out_every_fine_tuned_scene(tmp_path, monkeypatch, sample_world_dir):
    """Guards a mutation (audit CH): the subset's skip taken as `seen < skip` passed every test; `pretrain.scenes:
    rest` then pretrained on the last fine-tuning scene too."""
    config = load_study_config("mini", {"out": str(tmp_path / "study")})
    study = Study(config, log=lambda line: None)
    monkeypatch.setattr(study, "world", lambda: sample_world_dir)
    world = json.loads((sample_world_dir / "dataset_sample.json").read_text())["images"]
    train_ids = [entry["imgid"] for entry in world if entry["split"] == "train"]
    folder = study.subset("pretrain-rest", None, skip=40)
    kept = json.loads((folder / "dataset_sample.json").read_text())["images"]
    assert [entry["imgid"] for entry in kept if entry["split"] == "train"] == train_ids[40:]
    assert len(kept) == len(world) - 40  # every val and test scene kept


def test_a_run_whose_best_step_is_not_its_last_evaluates_its_best_weights(tmp_path, monkeypatch):
    """Guards two mutations (audit CH) that passed every fast test: the best checkpoint's evaluation taken from the
    last step's whatever the best step, or the last weights evaluated under the best's name; eval_best then repeated
    eval for a run whose best weights were earlier. The stages are stood in for: what is evaluated and what reaches
    the report is recorded."""
    import analysis.report

    config = load_study_config("mini", {"out": str(tmp_path / "study"), "validation": {"every": 1}})
    study, evaluated, reported = Study(config, log=lambda line: None), [], []
    runs = tmp_path / "runs"

    def train(spec, seed):
        run = runs / spec.folder_name(seed)
        (run / "best").mkdir(parents=True, exist_ok=True)
        best_step = 1 if spec.name == "mat" else config["train"]["max_steps"]
        (run / "best" / "validation.json").write_text(json.dumps({"step": best_step}))
        (run / "validation.jsonl").write_text("")
        return run / "ckpt"

    monkeypatch.setattr(study, "score", lambda name: {})
    monkeypatch.setattr(study, "pretrain", lambda: tmp_path / "pretrain" / "ckpt")
    monkeypatch.setattr(study, "train", train)
    monkeypatch.setattr(study, "evaluate",
                        lambda name, checkpoint, seed: evaluated.append((name, checkpoint)) or {"name": name})
    monkeypatch.setattr(analysis.report, "write_report", lambda out, config, scores, results: reported.extend(results))
    study._run()
    entries = {(entry["run"], entry["seed"]): entry for entry in reported if entry["run"] in ("mat", "mat+:scene")}
    assert entries["mat", 0]["best_step"] == 1 and entries["mat", 0]["eval_best"] == {"name": "mat-s0-best"}
    assert entries["mat+:scene", 0]["eval_best"] is entries["mat+:scene", 0]["eval"]  # its last step is its best
    names = dict(evaluated)
    assert names["mat-s0-best"] == runs / "mat-s0" / "best" and "matplus-scene-s0-best" not in names


def test_a_task_arm_written_before_the_device_argument_still_evaluates(tmp_path, monkeypatch, sample_world_dir):
    """Was: the study passed `device=` to every arm's evaluate_checkpoint, so an arm written to the older
    signature (checkpoint, source_dir, eval_settings, seed, folder) stopped the study with a TypeError
    after all its runs had trained. It is called as before, and the log says it was given no device."""
    import types

    called, lines = [], []

    def evaluate_checkpoint(checkpoint, source_dir, e, seed, folder):
        called.append(folder)
        _write_empty_report({}, Path(folder))

    checkpoint = tmp_path / "run" / "ckpt"
    checkpoint.mkdir(parents=True)
    study = Study(load_study_config("mini", {"out": str(tmp_path / "study")}), log=lines.append)
    monkeypatch.setattr(study, "source_dir", lambda which: sample_world_dir)
    study.arm = types.SimpleNamespace(evaluate_checkpoint=evaluate_checkpoint, write_report=_write_empty_report)
    study.evaluate("arm-run", checkpoint, seed=0)
    assert len(called) == 1 and any("takes no device" in line for line in lines)


@pytest.fixture(scope="module")
def one_caption_study(tmp_path_factory):
    """1:1 fine-tuning data, pretraining on the other scenes, validation every step, world-mlm attacks."""
    import augment.world_mlm as world_mlm

    saved = dict(world_mlm.TRAINING), dict(world_mlm.TRAIN_WORLD)
    world_mlm.TRAINING.update(steps=20, batch_size=16)  # a small recipe: another fingerprint, built in seconds
    world_mlm.TRAIN_WORLD.update(n=80)
    out = tmp_path_factory.mktemp("study") / "one-caption"
    config = load_study_config("mini", {
        "out": str(out), "seeds": [0, 1], "finetune_captions": {"per_image": 1}, "pretrain": {"scenes": "rest"},
        "train": {"text_candidates": "mlm", "mlm": "world-mlm"}, "eval": {"mlm": "world-mlm"},
        "validation": {"every": 1, "attack": "pgd", "limit": 8, "captions_per_image": 1, "batch_size": 8},
        "pools": {"scene": {"method": "i2t-scene", "n": 2}}, "methods": ["tecoa", "mat", "mat+"],
        "n_aug_sweep": None, "more_samples": None,
    })
    try:
        report = Study(config, log=lambda line: None).run()
    finally:
        world_mlm.TRAINING.clear(), world_mlm.TRAINING.update(saved[0])
        world_mlm.TRAIN_WORLD.clear(), world_mlm.TRAIN_WORLD.update(saved[1])
    yield config, out, report
    shutil.rmtree(out.parent, ignore_errors=True)  # ~0.7 GB of checkpoints


def test_one_caption_source_and_pretraining_on_the_other_scenes(one_caption_study):
    config, out, _ = one_caption_study
    finetune = json.loads((out / "finetune" / "dataset_sample.json").read_text())["images"]
    train = [e for e in finetune if e["split"] == "train"]
    assert len(train) == config["finetune_scenes"] and all(len(e["sentences"]) == 1 for e in train)
    assert len({e["sentences"][0]["sentid"] % 5 for e in train}) == 5  # rotating: every wording occurs
    assert all(len(e["sentences"]) == 5 for e in finetune if e["split"] != "train")
    rest = json.loads((out / "pretrain-rest" / "dataset_sample.json").read_text())["images"]
    rest_train = {e["imgid"] for e in rest if e["split"] == "train"}
    assert rest_train and not rest_train & {e["imgid"] for e in train}
    # the pool is built from the 1:1 source, and MAT's text attack used world-mlm
    saved = (out / "runs" / "mat-s0" / "config.yaml").read_text()
    assert "mlm: world-mlm" in saved and "text_candidates: mlm" in saved


def test_learning_curves_best_checkpoint_and_headline(one_caption_study):
    config, out, report = one_caption_study
    results = json.loads((out / "results.json").read_text())
    steps = config["train"]["max_steps"]
    for run in results["runs"]:
        if run["run"] == "pretrained":
            continue
        assert [line["step"] for line in run["curve"]] == list(range(steps + 1))
        best = max(run["curve"], key=lambda line: line["robust"])
        assert run["best_step"] == best["step"]
        assert run["eval_best"]["attacks"]["clean"]["tr@1"] is not None
        folder = run["run"].replace("+", "plus").replace(":", "-") + f"-s{run['seed']}"
        assert (out / "runs" / folder / "best" / "open_clip_model.safetensors").exists()
    text = report.read_text()
    assert text.index("## The comparison that matters") < text.index("## Clean and robust R@1 per method and pool")
    for run in ("| pretrained |", "| tecoa |", "| mat |", "| mat+:scene |"):
        assert run in text.split("## Clean and robust")[0]
    assert "mat+:scene - mat:" in text and (out / "learning_curves.png").stat().st_size > 1000
    assert {v["checkpoint"] for v in results["verdicts"]} == {"last", "best-on-val"}


def test_validation_does_not_change_training(tmp_path, sample_world_dir):
    """A run validated every step trains to the same weights as one without validation."""
    import torch
    from safetensors.torch import load_file

    from analysis.study import train_resumable
    from augment.world.truth import check_caption_of_row
    from augment.sources import load_source
    from train.validation import ValidationSettings, Validator

    settings = dict(method="mat", model="tiny-clip", train_data=str(sample_world_dir), max_steps=3, batch_size=8,
                    pgd_steps=1, text_candidates="wordnet", seed=3, warmup=1)
    train_resumable(tmp_path / "plain", settings)
    source, _ = load_source(str(sample_world_dir))
    validator = Validator(tmp_path / "validated", source, ValidationSettings(every=1, attack="pgd", limit=6, batch_size=6,
                          captions_per_image=1, attack_options={"steps": 1}), caption_checker=check_caption_of_row)
    train_resumable(tmp_path / "validated", settings, validator)
    plain = load_file(str(tmp_path / "plain" / "ckpt" / "open_clip_model.safetensors"))
    validated = load_file(str(tmp_path / "validated" / "ckpt" / "open_clip_model.safetensors"))
    assert all(torch.equal(plain[k], validated[k]) for k in plain)
    lines = validator.records()
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    best = json.loads((tmp_path / "validated" / "best" / "validation.json").read_text())
    assert best["robust"] == max(line["robust"] for line in lines)
    # validating a step again replaces its line (a resumed run redoes what it had not saved)
    validator.validate(3)
    assert [line["step"] for line in validator.records()] == [0, 1, 2, 3]


def test_regimes_table_of_finished_studies(one_caption_study, tmp_path):
    _, out, _ = one_caption_study
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "regimes", str(out), "--out", str(tmp_path / "r.md")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| mini | mat+:scene |" in result.stdout and "mini: mat+:scene - mat:" in result.stdout
    assert (tmp_path / "r.md").read_text().startswith("| regime | model |")
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "regimes", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no results.json" in result.stderr


def test_demo_prints_the_comparison_section(one_caption_study):
    from analysis.demo import comparison

    _, _, report = one_caption_study
    shown = comparison(report.read_text())
    assert shown.startswith("| model | clean R@1 | **robust R@1** |") and "| mat+:scene |" in shown
    assert "## " not in shown and "![" not in shown


def test_demo_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    from analysis.demo import main

    bad = tmp_path / "old.yaml"
    bad.write_text("train: {steps: 40}\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: study config {bad}: unknown train keys ['steps']") and "\n" not in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- other tasks (analysis.task_arms)


def test_captioning_study_runs_end_to_end_with_its_table(tmp_path):
    """A tiny `task: captioning` study: world, pretrained captioner, the methods, the arm's evaluation, the table."""
    out = tmp_path / "captioning"
    config = load_study_config(None, {
        "name": "tiny-captioning", "task": "captioning", "out": str(out), "seeds": [0], "world": {"n": 80, "seed": 0},
        "finetune_scenes": 20, "pretrain": {"steps": 4, "batch_size": 8}, "train": {"max_steps": 1, "batch_size": 4, "pgd_steps": 1},
        "pools": {"eda": {"method": "eda", "n": 2}}, "methods": ["tecoa", "mat+"],
        "eval": {"limit": 4, "batch_size": 4, "pgd_steps": 1, "attacks": ["clean", "pgd"], "meteor": False},
    })
    assert config["model"] == "tiny-captioner" and config["eval"]["target"] == "a black triangle"
    assert config["n_aug_sweep"] is None and config["headline_attack"] is None
    logged: list[str] = []
    report = Study(config, log=logged.append).run()
    text = report.read_text()
    assert "## Clean and robust CIDEr per method and pool" in text and "(task captioning)" in text
    assert "| run | clean CIDEr | **robust CIDEr** (pgd) | clean true (%) | robust true (%) |" in text
    for run in ("pretrained", "tecoa", "mat+:eda"):
        assert f"| {run} |" in text
    assert "R@1" not in text and not (out / "pools" / "eda" / "scores.json").exists()  # no retrieval scoring
    results = json.loads((out / "results.json").read_text())
    pgd = results["runs"][-1]["eval"]["attacks"]["pgd"]
    assert results["summary"]["mat+:eda"]["robust"][0] == pytest.approx(pgd["cider"])
    trained = (out / "runs" / "matplus-eda-s0" / "config.yaml").read_text()
    assert "task: captioning" in trained and "tiny-captioner" in (out / "pretrain" / "config.yaml").read_text()
    assert (out / "evals" / "tecoa-s0" / "captions.jsonl").exists()
    logged.clear()
    Study(config, log=logged.append).run()
    assert logged == []  # every step reused


def test_task_configs_refuse_what_the_task_lacks(tmp_path):
    assert load_study_config("mini")["task"] == "retrieval"
    with pytest.raises(MatPlusError, match=r"n_aug_sweep applies to task retrieval only, not captioning"):
        load_study_config(None, {"task": "captioning", "n_aug_sweep": {"pool": "scene", "values": [1]}})
    with pytest.raises(MatPlusError, match=r"validation, headline_attack apply to task retrieval only"):
        load_study_config(None, {"task": "captioning", "validation": {"every": 2}, "headline_attack": "sga"})
    with pytest.raises(MatPlusError, match=r"method\(s\) fare not available for task captioning"):
        load_study_config(None, {"task": "captioning", "methods": ["mat", "fare"]})
    with pytest.raises(MatPlusError, match=r"task 'ranking' has no arm"):
        load_study_config(None, {"task": "ranking"})
    config = load_study_config(None, {"task": "captioning", "n_aug_sweep": None, "eval": {"attack_eps": "8/255"}})
    assert config["methods"] == ["clean", "tecoa", "mat", "mat+"] and config["eval"]["attack_eps"] == "8/255"
    assert config["eval"]["attacks"] == ["clean", "pgd", "pgd-targeted"]  # the arm's eval defaults, not retrieval's
    bundled = load_study_config("captioning")
    assert bundled["task"] == "captioning" and bundled["eval"]["attack_eps"] == bundled["train"]["attack_eps"] == "8/255"
    assert bundled["methods"] == ["clean", "tecoa", "mat", "mat+"] and len(bundled["seeds"]) == 3
    # through the command: one line, exit status 2, nothing written
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(f"task: captioning\nout: {tmp_path / 'out'}\nmore_samples: {{pool: scene}}\n")
    result = subprocess.run([sys.executable, "-m", "analysis.cli", "study", "--config", str(config_file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "more_samples applies to task retrieval only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_missing_task_arm_is_one_line(monkeypatch):
    from analysis import task_arms

    monkeypatch.setitem(task_arms.TASK_ARMS, "grounding", "analysis.no_such_grounding_arm")
    with pytest.raises(MatPlusError, match=r"task 'grounding' needs the module analysis.no_such_grounding_arm"):
        load_study_config(None, {"task": "grounding"})


def test_compare_tables_each_task_with_its_metric(tmp_path):
    """`analysis compare` reads captioning and grounding evaluations too: one table per task."""
    from augment.errors import MatPlusError

    retrieval = {"attacks": {"clean": {"tr@1": 80.0, "ir@1": 70.0, "rsum": 400.0}, "pgd": {"tr@1": 10.0, "ir@1": 12.5}}}
    captioning = {"task": "captioning", "attacks": {"clean": {"cider": 91.25}, "pgd": {"cider": 40.5}}}
    grounding = {"task": "grounding", "attacks": {"clean": {"accuracy": 62.0}, "sga": {"accuracy": 31.0}}}
    table = compare_table([("r", retrieval), ("c", captioning), ("g", grounding)])
    blocks = table.split("\n\n")
    assert len(blocks) == 3
    assert "| r | 80.0 / 70.0 | 10.0 / 12.5 | 400.0 |" in blocks[0]
    assert "clean CIDEr" in blocks[1] and "| c | 91.2 | 40.5 |" in blocks[1]
    assert "sga accuracy" in blocks[2] and "| g | 62.0 | 31.0 |" in blocks[2]
    with pytest.raises(MatPlusError, match="task 'vqa'"):
        compare_table([("v", {"task": "vqa", "attacks": {}})])
    # evaluations under a reference protocol say so in a column of their own
    sga = {**retrieval, "settings": {"attack_options": {"protocol": "sga", "reference_bugs": True}}}
    fused = {**retrieval, "settings": {"attack_options": {"protocol": "co-attack", "attacked_embedding": "multimodal"}}}
    lines = compare_table([("r", retrieval), ("s", sga), ("f", fused)]).splitlines()
    assert lines[0].startswith("| evaluation | protocol | clean TR@1/IR@1 |")
    assert lines[2:] == ["| r | project | 80.0 / 70.0 | 10.0 / 12.5 | 400.0 |", "| s | sga+bugs | 80.0 / 70.0 | 10.0 / 12.5 | 400.0 |",
                         "| f | co-attack/multimodal | 80.0 / 70.0 | 10.0 / 12.5 | 400.0 |"]


def test_pool_gains_are_paired_by_seed_and_correlated():
    from analysis.report import correlation_table, pool_gains, pool_table

    def entry(run, method, pools, seed, tr, ir):
        return {"run": run, "method": method, "pools": pools, "seed": seed, "group": "main",
                "eval": {"attacks": {"sga": {"tr@1": 0.0, "ir@1": 0.0, "tr@1_meaning_preserved": tr, "ir@1_meaning_preserved": ir}}}}

    results = [entry("mat", "mat", [], 0, 20, 20), entry("mat", "mat", [], 1, 30, 30),
               entry("mat+:a", "mat+", ["a"], 0, 22, 22), entry("mat+:a", "mat+", ["a"], 1, 34, 34),
               entry("mat+:b", "mat+", ["b"], 0, 10, 10)]
    gains = pool_gains(results, "sga", meaning_preserved=True)
    assert gains["a"][:2] == (3.0, pytest.approx(1.414, abs=1e-3)) and gains["a"][2] == 2
    assert gains["b"] == (-10.0, 0.0, 1)
    assert pool_gains(results, "sga", meaning_preserved=False)["a"] == (0.0, 0.0, 2)  # every attacked caption counted
    props = {"alignment": 0.7, "diversity": 1.5, "gap": 0.01}
    table = pool_table({"a": props, "b": props}, {"a": (28.0, 1.0, 2), "b": (10.0, 0.0, 1)}, gains)
    assert "| +3.0 ± 1.4 | 2 |" in table and "| -10.0 | 1 |" in table
    table = correlation_table({"alignment": {"rho": 0.5, "p": 0.2, "n": 9}}, {"alignment": {"rho": -0.1, "p": 0.8, "n": 9}})
    assert "| alignment | 0.50 | 0.200 | -0.10 | 0.800 | 9 |" in table


@pytest.mark.parametrize("scenes, said", [(None, "steps on every train scene."),
                                          ("rest", "steps on the train scenes outside the fine-tuning set.")])
def test_task_report_says_which_scenes_the_model_was_pretrained_on(tmp_path, scenes, said):
    from analysis.report import write_task_report

    config = load_study_config("grounding", {"out": str(tmp_path)})
    if scenes:
        config["pretrain"]["scenes"] = scenes
    results = [{"run": "mat-s0", "headline": {"metric": "accuracy", "attack": "sga", "clean": 50.0, "robust": 30.0}}]
    assert said in write_task_report(tmp_path, config, results).read_text()


def test_report_names_the_runs_of_each_device_when_evaluations_ran_on_several():
    """A study resumed on another machine keeps the evaluations it finished (their cache keys on what was
    evaluated, not where): the report says so, naming the runs on each device, rather than table numbers of
    different kernels side by side silently; one device is named in passing, reports without one say nothing."""
    from analysis.report import evaluation_devices_words

    def result(run, seed, device):
        return {"run": run, "seed": seed, "eval": {"settings": {"device": device} if device else {}}}

    mixed = evaluation_devices_words([result("mat", 0, "cpu"), result("mat+:scene", 0, "cuda"), result("mat", 1, "cuda")])
    assert mixed[1].startswith("**The evaluations ran on different devices** (cpu: mat seed 0; cuda: mat+:scene seed 0, "
                               "mat seed 1)") and "`evals/`" in mixed[1]
    assert evaluation_devices_words([result("mat", 0, "cuda"), result("mat", 1, "cuda")]) == [
        "", "Every evaluation ran on `cuda`."]
    # an evaluation kept from before devices were recorded may have run anywhere: not "every ... on cuda"
    # (it said so, a resumed study's old CPU evaluations beside its new GPU ones passing unremarked)
    kept = evaluation_devices_words([result("mat", 0, "cuda"), result("mat", 1, None)])
    assert kept[1].startswith("**Not every evaluation records where it ran** (cuda: mat seed 0; no device recorded "
                              "(evaluated before 2026-12-06): mat seed 1)")
    assert evaluation_devices_words([result("mat", 0, "cpu"), result("mat", 1, "cuda"), result("mat", 2, None)])[1] \
        .startswith("**The evaluations ran on different devices** (cpu: mat seed 0; cuda: mat seed 1; no device recorded")
    assert evaluation_devices_words([result("mat", 0, None)]) == []
    # the best checkpoint's evaluation (`eval_best`, another step's) ran where it ran; the last step's, when
    # the best, is the same evaluation, named once
    best = result("mat", 0, "cuda")
    best["eval_best"] = {"settings": {"device": "cpu"}}
    assert "(cpu: mat seed 0 (best checkpoint); cuda: mat seed 0)" in evaluation_devices_words([best])[1]
    best["eval_best"] = best["eval"]
    assert evaluation_devices_words([best]) == ["", "Every evaluation ran on `cuda`."]


def test_a_run_the_study_evaluates_is_held_against_a_resume_by_hand(tmp_path, monkeypatch, sample_world_dir):
    """`analysis study` evaluating OUT/runs/X while a `train ... --resume --out OUT/runs/X` by hand extended it:
    the study held no lock of the run, so it evaluated whichever checkpoint the other's saves had left, and the
    resume by hand went on beside the study. The study holds the trainer's lock (RUN/.train.lock) while it
    evaluates one of its runs: either side is refused in one line."""
    import models
    import train.eval_report
    import train.evaluate
    from augment.errors import MatPlusError
    from train.run_folder import lock_run_folder

    config = load_study_config("mini", {"out": str(tmp_path / "study")})
    study, refusals = Study(config, log=lambda line: None), []
    run = tmp_path / "study" / "runs" / "mat-s0"
    (run / "ckpt").mkdir(parents=True)

    def evaluate(victim, source, **kwargs):  # a resume by hand, started while the study evaluates
        with pytest.raises(MatPlusError, match="another train is writing here") as refused:
            lock_run_folder(run, True, 1)
        refusals.append(str(refused.value))
        return {"attacks": {}, "settings": {}}

    monkeypatch.setattr(study, "source_dir", lambda which: sample_world_dir)
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: "victim")
    monkeypatch.setattr(train.evaluate, "evaluate", evaluate)
    monkeypatch.setattr(train.eval_report, "write_report", _write_empty_report)
    with lock_run_folder(run, True, 1):  # the resume by hand, running when the study comes to evaluate
        with pytest.raises(MatPlusError, match="another train is writing here"):
            study.evaluate("mat-s0", run / "ckpt", seed=0)
    study.evaluate("mat-s0", run / "ckpt", seed=0)
    assert len(refusals) == 1 and "analysis study" in refusals[0]
