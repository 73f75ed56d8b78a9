"""Feature combinations through the `train` CLI that were accepted and silently not used (audit AP):
each is refused in one line, exit status 2, before anything is written."""
from __future__ import annotations

import json
import re

import pytest

from train.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_captioner_refuses_a_pretrained_tag(command, sample_world_dir, tmp_path, capsys):
    # a captioner loads a Hub id or a folder; --pretrained openai was accepted, never read, and recorded
    # as the run's (summary.json `pretrained: openai`) or the evaluation's model
    out = tmp_path / "out"
    if command == "train":
        argv = ["clean", "--model", "tiny-captioner", "--task", "captioning", "--pretrained", "openai",
                "--train-data", str(sample_world_dir), "--out", str(out), "--max-steps", "1", "--batch-size", "2",
                "--workers", "0", "--no-progress"]
    else:
        argv = ["eval", "tiny-captioner", "--task", "captioning", "--pretrained", "openai", "--source",
                str(sample_world_dir), "--attacks", "clean", "--limit", "2", "--out", str(out), "--workers", "0",
                "--no-progress"]
    assert main(argv) == 2
    assert _error_line(capsys) == ("error: captioner 'tiny-captioner' takes no pretrained tag (got 'openai'); "
                                   "name a Hub id or a folder")
    assert not (out / "summary.json").exists() and not (out / "eval.json").exists()


@pytest.mark.parametrize("method", ["mat", "mat+"])
@pytest.mark.parametrize("given, named", [
    ({"text_candidates": "wordnet"}, "--text-candidates is not read with --word-budget 0 (no word is changed)"),
    ({"top_k": 3}, "--top-k is not read with --word-budget 0 (no word is changed)"),
    ({"text_attack_filter": "truth"}, "--text-attack-filter is not read with --word-budget 0 (no word is changed)"),
    ({"inner_order": "alternate"}, "--inner-order is not read with --word-budget 0, --pgd-steps 0 or --attack-eps 0 "
                                   "(one attack only: nothing to order)"),
    ({"mlm": "tiny-mlm"}, "--mlm is not read with --text-candidates wordnet (WordNet synonyms, no masked LM) or "
                          "--word-budget 0, or by clean, tecoa and fare, and no --val-attack that reads one"),
])
def test_text_attack_options_without_a_word_budget_are_refused(method, given, named):
    # --word-budget 0: the task's text attack is None, so these were recorded in config.yaml and read by nothing
    from train.config import ConfigError, resolve_config

    pools = {"pools": ["p"]} if method == "mat+" else {}
    settings = {"method": method, "train_data": "s.json", "out": "o", **pools}
    resolve_config({**settings, **given})  # read with a word budget
    with pytest.raises(ConfigError, match="^" + re.escape(named)):
        resolve_config({**settings, "word_budget": 0, **given})


def test_no_masked_lm_is_derived_without_a_word_budget_and_the_saved_config_feeds_back(tmp_path):
    from train.config import ConfigError, read_yaml_config, resolve_config, save_config

    config = resolve_config({"method": "mat", "model": "tiny-clip", "train_data": "s.json", "out": "o", "word_budget": 0})
    assert config.mlm is None  # was tiny-mlm, in config.yaml's derived: section, for a masked LM nothing loads
    save_config(config, tmp_path)
    assert "tiny-mlm" not in (tmp_path / "config.yaml").read_text()
    resolve_config(read_yaml_config(tmp_path / "config.yaml"))
    # a validation attack that reads a masked LM still gets the model's default
    validated = resolve_config({"method": "tecoa", "model": "tiny-clip", "train_data": "s.json", "out": "o",
                                "val_frequency": 1, "val_attack": "sga"})
    assert validated.mlm == "tiny-mlm"
    # ... but not under --word-budget 0, which switches its text part off: the masked LM was loaded for nothing
    off = resolve_config({"method": "mat", "model": "tiny-clip", "train_data": "s.json", "out": "o", "word_budget": 0,
                          "val_frequency": 1, "val_attack": "sga"})
    assert off.mlm is None
    with pytest.raises(ConfigError, match="^--mlm is not read with"):
        resolve_config({"method": "mat", "model": "tiny-clip", "train_data": "s.json", "out": "o", "word_budget": 0,
                        "val_frequency": 1, "val_attack": "sga", "mlm": "tiny-mlm"})


def test_word_budget_zero_refusal_through_the_cli_writes_nothing(sample_world_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["mat", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--out", str(out),
                 "--word-budget", "0", "--text-attack-filter", "truth", "--max-steps", "1", "--batch-size", "2",
                 "--workers", "0", "--no-progress"])
    assert code == 2
    assert _error_line(capsys) == ("error: --text-attack-filter is not read with --word-budget 0 (no word is changed): "
                                   "leave it out")
    assert not out.exists()


@pytest.mark.parametrize("method", ["tecoa", "fare", "mat"])
@pytest.mark.parametrize("off", [{"pgd_steps": 0}, {"attack_eps": 0}])
@pytest.mark.parametrize("given, flag", [({"pgd_step_size": 0.01}, "--pgd-step-size"), ({"random_start": False}, "--no-random-start")])
def test_pgd_options_without_pgd_are_refused(method, off, given, flag):
    # PGD of 0 steps or of budget 0 returns the clean images: the step and the start were recorded, never read
    from train.config import ConfigError, resolve_config

    settings = {"method": method, "train_data": "s.json", "out": "o"}
    resolve_config({**settings, **given})  # read by a PGD that runs
    resolve_config({**settings, **off})  # the defaults (a saved config.yaml's) pass
    with pytest.raises(ConfigError, match="^" + re.escape(f"{flag} is not read with --pgd-steps 0 or --attack-eps 0 "
                                                          "(PGD leaves the images clean): leave it out")):
        resolve_config({**settings, **off, **given})


@pytest.mark.parametrize("off", [{"pgd_steps": 0}, {"attack_eps": 0}])
def test_inner_order_without_pgd_is_refused(off):
    # the text attack alone: image-text attacks the words of the clean image, as text-image does
    from train.config import ConfigError, resolve_config

    settings = {"method": "mat", "train_data": "s.json", "out": "o", "inner_order": "image-text"}
    with pytest.raises(ConfigError, match="^--inner-order is not read with --word-budget 0, --pgd-steps 0 or --attack-eps 0"):
        resolve_config({**settings, **off})


@pytest.mark.parametrize("task", ["retrieval", "captioning"])
def test_truth_filter_on_a_source_without_scenes_is_refused(task, sample_world_dir, tmp_path, capsys):
    # the world's truth checker answers None without a scene, which the filter rejects: on such a source every
    # substitution was dropped (0 of 16 captions changed in 2 steps) and MAT trained without its text attack,
    # config.yaml saying text_attack_filter: truth
    import json

    data = json.loads((sample_world_dir / "dataset_sample.json").read_text())
    for image in data["images"]:
        image.pop("scene", None)
    plain = tmp_path / "dataset_plain.json"
    plain.write_text(json.dumps(data))
    out = tmp_path / "run"
    model = "tiny-captioner" if task == "captioning" else "tiny-clip"
    argv = ["mat", "--model", model, "--task", task, "--image-root", str(sample_world_dir / "images"), "--out", str(out),
            "--text-attack-filter", "truth", "--max-steps", "1", "--batch-size", "2", "--pgd-steps", "1", "--workers", "0",
            "--no-progress"]
    assert main([*argv, "--train-data", str(plain)]) == 2
    assert _error_line(capsys) == (
        f"error: --text-attack-filter truth judges substitutions against the sample world's scenes, and --train-data "
        f"{plain} has rows without one (each of their substitutions would be rejected: MAT without its text attack "
        "there): leave it out, or register a filter for this data (train/text_filter.py)")
    assert not out.exists()
    # the world itself: its rows carry their scenes
    assert main([*argv, "--train-data", str(sample_world_dir)]) == 0


@pytest.mark.parametrize("method, val_attack", [("tecoa", "clean"), ("mat", "bert-attack")])
def test_validation_of_a_run_with_no_pgd_budget_runs(method, val_attack, sample_world_dir, tmp_path, capsys):
    # --attack-eps 0 derived a PGD step of 0, which AttackSettings refuses: the first validation stopped the run with a
    # ValueError traceback (step_size must be positive), RUN already written, whatever --val-attack was
    import json

    out = tmp_path / "run"
    code = main([method, "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--out", str(out), "--attack-eps", "0",
                 "--val-frequency", "1", "--val-attack", val_attack, "--val-limit", "2", "--max-steps", "1",
                 "--batch-size", "2", "--workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err[-500:]
    assert json.loads((out / "summary.json").read_text())["validation"]["last"]["attack"] == val_attack


@pytest.mark.parametrize("task, method, off, val_attack, given", [
    ("retrieval", "mat", {"pgd_steps": 0}, "pgd", "--pgd-steps 0"),
    ("retrieval", "tecoa", {"attack_eps": 0}, "pgd", "--attack-eps 0"),
    ("retrieval", "mat", {"word_budget": 0}, "bert-attack", "--word-budget 0"),
    ("retrieval", "mat", {"word_budget": 0}, "synonym", "--word-budget 0"),
    ("retrieval", "mat", {"word_budget": 0, "pgd_steps": 0}, "sga", "--pgd-steps 0 and --word-budget 0"),
    ("grounding", "mat", {"pgd_steps": 0}, "pgd", "--pgd-steps 0"),
    ("captioning", "tecoa", {"pgd_steps": 0}, "pgd-targeted", "--pgd-steps 0"),
    ("captioning", "mat", {"word_budget": 0}, "prompt", "--word-budget 0"),
])
def test_a_validation_attack_the_budgets_switch_off_is_refused(task, method, off, val_attack, given):
    # validated with the training's budgets: PGD of 0 steps, no word: each line recorded the clean score as the
    # attack's robust one (robust == clean in summary.json), and RUN/best was chosen by it
    from train.config import ConfigError, resolve_config

    settings = {"method": method, "task": task, "train_data": "s.json", "out": "o", "val_frequency": 1, "val_attack": val_attack}
    resolve_config(settings)
    with pytest.raises(ConfigError, match="^" + re.escape(f"--val-attack {val_attack} with {given} changes nothing")):
        resolve_config({**settings, **off})


@pytest.mark.parametrize("off, val_attack", [({"pgd_steps": 0}, "clean"), ({"pgd_steps": 0}, "bert-attack"),
                                             ({"word_budget": 0}, "pgd"), ({"pgd_steps": 0}, "sga")])
def test_a_validation_attack_with_a_part_left_on_is_accepted(off, val_attack):
    from train.config import resolve_config

    resolve_config({"method": "mat", "train_data": "s.json", "out": "o", "val_frequency": 1, "val_attack": val_attack, **off})


@pytest.mark.parametrize("flag", ["--momentum-distillation", "--no-momentum-distillation"])
def test_momentum_distillation_on_a_family_without_momentum_encoders_is_refused(flag, sample_world_dir, tmp_path, capsys):
    # --no-momentum-distillation was accepted for CLIP, recorded in config.yaml (momentum_distillation: false) and
    # read by nothing: only ALBEF and TCL have momentum encoders
    out = tmp_path / "run"
    code = main(["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--out", str(out), flag,
                 "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--no-progress"])
    assert code == 2
    assert _error_line(capsys) == (f"error: {flag}: open_clip models have no momentum encoders (ALBEF and TCL have): "
                                   "leave it out")
    assert not out.exists()


def test_a_run_saved_with_no_momentum_distillation_on_clip_still_resumes(sample_world_dir, tmp_path, capsys):
    # a run of before the refusal above recorded momentum_distillation: false: resumed with the flag it was refused,
    # without it its settings differed, so it could not be resumed at all
    import yaml

    out = tmp_path / "run"
    common = ["clean", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--out", str(out),
              "--batch-size", "2", "--workers", "0", "--no-progress"]
    assert main([*common, "--max-steps", "1", "--save-every", "1"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, "momentum_distillation": False}))  # as then written
    assert main([*common, "--max-steps", "2", "--resume", "latest", "--no-momentum-distillation"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_config_yaml_records_the_derived_momentum_distillation(sample_world_dir, tmp_path, capsys):
    # ALBEF's momentum distillation left to its default (on for clean, off for the adversarial methods) was recorded as
    # momentum_distillation: null, with no derived: entry, while the checkpoint's matplus_model.json said
    # itc_loss momentum-distilled
    import yaml

    common = ["--train-data", str(sample_world_dir), "--batch-size", "2", "--workers", "0", "--no-progress"]
    for method, distilled in (("clean", True), ("tecoa", False)):
        out = tmp_path / method
        assert main([method, "--model", "tiny-albef", "--out", str(out), "--max-steps", "1", "--save-every", "1", *common]) == 0
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["momentum_distillation"] is None  # fed back with --config, it is derived again
        assert saved["derived"]["momentum_distillation"] is distilled
        info = json.loads((out / "ckpt" / "matplus_model.json").read_text())
        assert info["itc_loss"] == ("momentum-distilled" if distilled else "softmax")
    # the run resumes (the setting compared is the one given, null), and its config fed back runs
    assert main(["clean", "--model", "tiny-albef", "--out", str(tmp_path / "clean"), "--max-steps", "2",
                 "--resume", "latest", *common]) == 0
    assert main(["clean", "--config", str(tmp_path / "clean" / "config.yaml"), "--out", str(tmp_path / "again")]) == 0
    # a family without momentum encoders derives nothing of it
    assert main(["clean", "--model", "tiny-clip", "--out", str(tmp_path / "clip"), "--max-steps", "1", *common]) == 0
    assert "momentum_distillation" not in yaml.safe_load((tmp_path / "clip" / "config.yaml").read_text()).get("derived", {})


def test_config_yaml_records_that_tf32_ran_as_fp32_on_a_cpu(sample_world_dir, tmp_path):
    # --precision tf32 on a CPU (no TF32 products there) was recorded as tf32 alone, though the run was plain fp32;
    # train eval's report records fp32 there. The setting stays as asked (fed back on a GPU it is TF32 again)
    import yaml

    common = ["--model", "tiny-clip", "--train-data", str(sample_world_dir), "--batch-size", "2", "--workers", "0",
              "--no-progress", "--cpu"]
    out = tmp_path / "tf32"
    assert main(["clean", "--out", str(out), "--precision", "tf32", "--max-steps", "1", "--save-every", "1", *common]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["precision"] == "tf32" and saved["derived"]["precision"] == "fp32"
    assert main(["clean", "--out", str(out), "--precision", "tf32", "--max-steps", "2", "--resume", "latest", *common]) == 0
    assert main(["clean", "--out", str(tmp_path / "fp32"), "--max-steps", "1", *common]) == 0
    assert "precision" not in yaml.safe_load((tmp_path / "fp32" / "config.yaml").read_text()).get("derived", {})


@pytest.mark.parametrize("task, attacks, readers", [
    ("retrieval", "clean", "pgd, sep, co-attack, sga"),
    ("retrieval", "clean,bert-attack,synonym", "pgd, sep, co-attack, sga"),
    ("grounding", "clean", "pgd, sep, co-attack, sga"),
    ("captioning", "clean", "pgd, pgd-targeted, prompt-pgd"),
])
def test_eval_refuses_a_seed_no_chosen_attack_draws_with(task, attacks, readers, tmp_path, capsys):
    # the seed seeds PGD's random start and SGA's noise: `--attacks clean --seed 3` was accepted and eval.json said
    # seed 3 for an evaluation that drew nothing
    model = "tiny-captioner" if task == "captioning" else "tiny-clip"
    argv = ["eval", model, "--task", task, "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
            "--attacks", attacks]
    assert main([*argv, "--seed", "3"]) == 2
    assert _error_line(capsys) == (f"error: --attacks {attacks} does not read --seed ({readers}): leave it out "
                                   "(or add an attack that reads it)")
    assert main([*argv, "--seed", "0"]) == 2  # the default: past the check, to the missing source
    assert "missing" in _error_line(capsys)
    image_attack = readers.split(",")[0]
    assert main([*argv[:-1], f"{attacks},{image_attack}", "--seed", "3"]) == 2
    assert "missing" in _error_line(capsys)


def test_a_validation_attack_run_without_one_of_its_parts_says_so(sample_world_dir, tmp_path, capsys):
    # sep with --word-budget 0 runs as its PGD alone: its lines in validation.jsonl, summary.json and on stderr
    # said "sep" alone, as a whole multimodal attack
    out = tmp_path / "run"
    assert main(["mat", "--model", "tiny-clip", "--train-data", str(sample_world_dir), "--out", str(out), "--word-budget", "0",
                 "--val-frequency", "1", "--val-attack", "sep", "--val-limit", "2", "--max-steps", "1", "--batch-size", "2",
                 "--workers", "0", "--no-progress"]) == 0
    lines = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [line["settings"]["parts_off"] for line in lines] == [{"text": "--word-budget 0"}] * 2
    assert all(line["attack"] == "sep" for line in lines)  # the name stays, for readers of earlier lines
    err = capsys.readouterr().err
    assert "(sep without its text part (--word-budget 0), best so far)" in err
    assert json.loads((out / "summary.json").read_text())["validation"]["last"]["settings"]["parts_off"] == {
        "text": "--word-budget 0"}


def test_a_validator_of_budget_zero_loads_no_masked_lm(tmp_path, monkeypatch):
    # the study validates with eval's attack options: eval.word_budget 0 loaded eval.mlm for a text part that never ran
    import augment.registry
    from train.validation import ValidationSettings, Validator

    def no_loading(*args, **kwargs):
        raise AssertionError("a masked LM was loaded")

    monkeypatch.setattr(augment.registry, "load_mlm", no_loading)
    options = {"eps": 2 / 255, "steps": 1, "budget": 0, "mlm": "no-such-mlm"}
    settings = ValidationSettings(every=1, attack="sep", attack_options=options)
    assert Validator(tmp_path, None, settings)._options["mlm"] == "no-such-mlm"  # a name, never loaded
    with pytest.raises(AssertionError, match="a masked LM was loaded"):
        Validator(tmp_path, None, ValidationSettings(every=1, attack="sep", attack_options={**options, "budget": 1}))


@pytest.mark.parametrize("task, attack, options, off", [
    ("retrieval", "sga", {"steps": 0}, {"image": "--pgd-steps 0"}),
    ("retrieval", "co-attack", {"eps": 0.0}, {"image": "--attack-eps 0"}),
    ("retrieval", "sep", {"budget": 0}, {"text": "--word-budget 0"}),
    ("captioning", "prompt-pgd", {"budget": 0}, {"prompt": "--word-budget 0"}),  # eval.md's word; "text" before
    ("retrieval", "sep", {}, {}),  # whole: no parts_off key, the lines read as before
    ("retrieval", "pgd", {"budget": 0}, {}),  # a unimodal attack's other part is no part of it
    ("retrieval", "clean", {"steps": 0}, {}),
])
def test_parts_switched_off_names_each_part_and_its_flag(task, attack, options, off):
    from train.validation import ValidationSettings, parts_switched_off

    settings = ValidationSettings(every=1, task=task, attack=attack, split="val", limit=2, captions="all",
                                  captions_per_image=None, attack_options={"eps": 2 / 255, "steps": 10, "budget": 1, **options})
    assert parts_switched_off(settings) == off


def test_a_run_validated_before_the_prompt_part_was_so_named_resumes(tmp_path):
    """validation.jsonl named prompt-pgd's switched-off part "text" where eval.md says "prompt"; lines written
    before the rename read as the same settings on resume, and another part switched off is still refused."""
    from train.config import ConfigError
    from train.validation import VALIDATION_FILE, check_resume

    def line(attack, off):
        return json.dumps({"step": 0, "attack": attack, "settings": {"attack": attack, "parts_off": off}}) + "\n"

    (tmp_path / VALIDATION_FILE).write_text(line("prompt-pgd", {"text": "--word-budget 0"}))
    check_resume(tmp_path, {"attack": "prompt-pgd", "parts_off": {"prompt": "--word-budget 0"}}, 1)
    with pytest.raises(ConfigError, match="--pgd-steps / --attack-eps / --word-budget"):
        check_resume(tmp_path, {"attack": "prompt-pgd", "parts_off": {"image": "--pgd-steps 0"}}, 1)
    (tmp_path / VALIDATION_FILE).write_text(line("sep", {"text": "--word-budget 0"}))
    check_resume(tmp_path, {"attack": "sep", "parts_off": {"text": "--word-budget 0"}}, 1)


def test_a_line_written_before_the_prompt_part_was_so_named_reads_prompt_in_the_summary(tmp_path):
    """A run resumed past lines that named prompt-pgd's switched-off part "text" (before 2026-12-06): its summary
    line on stderr and summary.json's last/best lines said "without its text part" beside the new lines' "prompt"
    (check_resume alone read the old spelling); sep's text part stays text."""
    from train.validation import VALIDATION_FILE, ValidationSettings, Validator, attack_as_run

    old = {"step": 0, "attack": "prompt-pgd", "robust": 5.0,
           "settings": {"attack": "prompt-pgd", "parts_off": {"text": "--word-budget 0"}}}
    assert attack_as_run(old) == "prompt-pgd without its prompt part (--word-budget 0)"
    sep = {**old, "attack": "sep", "settings": {"attack": "sep", "parts_off": {"text": "--word-budget 0"}}}
    assert attack_as_run(sep) == "sep without its text part (--word-budget 0)"
    (tmp_path / VALIDATION_FILE).write_text(json.dumps(old) + "\n")
    validator = Validator(tmp_path, None, ValidationSettings(every=1, task="captioning", attack="prompt-pgd",
                                                             attack_options={"eps": 2 / 255, "steps": 1, "budget": 0}))
    summary = validator.summary()
    assert summary["best"]["settings"]["parts_off"] == {"prompt": "--word-budget 0"}
    assert summary["last"]["settings"]["parts_off"] == {"prompt": "--word-budget 0"}


@pytest.mark.parametrize("task, attacks, candidates, mlm", [
    ("retrieval", "clean,pgd", "mlm", None),
    ("retrieval", "clean,synonym", "wordnet", None),
    ("retrieval", "clean,bert-attack", "mlm", "tiny-mlm"),
    ("captioning", "clean,pgd", "mlm", None),
])
def test_eval_json_names_a_masked_lm_only_where_an_attack_read_one(task, attacks, candidates, mlm, sample_world_dir,
                                                                   tmp_path, wordnet_ready):
    # settings.attack_options recorded the model's default masked LM (captioning: "default") for evaluations none of
    # whose attacks reads one: WordNet's substitutes, or no text attack at all
    out = tmp_path / "eval"
    model = "tiny-captioner" if task == "captioning" else "tiny-clip"
    candidates_flag = ["--text-candidates", candidates] if candidates != "mlm" else []
    assert main(["eval", model, "--task", task, "--source", str(sample_world_dir), "--attacks", attacks, *candidates_flag,
                 "--limit", "2", "--out", str(out), "--workers", "0", "--no-progress",
                 *(["--pgd-steps", "1"] if "pgd" in attacks else [])]) == 0
    options = json.loads((out / "eval.json").read_text())["settings"]["attack_options"]
    assert options.get("mlm") == mlm


@pytest.mark.parametrize("settings, recorded", [
    ({"method": "mat", "word_budget": 0}, {"mlm": "tiny-mlm", "text_candidates": "wordnet", "top_k": 5}),
    ({"method": "tecoa", "pgd_steps": 0}, {"pgd_step_size": 0.01, "random_start": False}),
    ({"method": "mat", "attack_eps": 0.0}, {"pgd_step_size": 0.01, "inner_order": "image-text"}),
])
def test_a_run_recorded_with_a_setting_now_refused_as_unread_still_resumes(settings, recorded):
    """A run started before these settings were refused as unread recorded them (mat --word-budget 0 its derived
    masked LM too): resuming compared them with the values now, and they differed ('--resume latest: settings
    differ: mlm'), while giving them again is refused; the killed run could not be resumed at all. A setting that
    nothing reads changes nothing of the result: resume_conflicts leaves it out."""
    from train.config import UNREAD_WHEN, resolve_config, resume_conflicts

    config = resolve_config({"model": "tiny-clip", "train_data": "data.json", "out": "run", **settings})
    assert all(UNREAD_WHEN[name][0](config) for name in recorded)
    assert resume_conflicts(dict(config.to_dict(), **recorded), config) == []
    # a setting the run reads still differs
    assert resume_conflicts(dict(config.to_dict(), lr=config.lr * 2), config) == ["lr"]


@pytest.mark.parametrize("model, task, flags, said", [
    ("tiny-clip", "retrieval", ["--attacks", "clean,bert-attack", "--word-budget", "0"],
     "--attacks has bert-attack (with --word-budget 0), which would change nothing (its row would repeat clean's): "
     "leave it out or raise the budget"),
    ("tiny-clip", "retrieval", ["--attacks", "pgd,sep,synonym", "--attack-eps", "0", "--word-budget", "0"],
     "--attacks has pgd (with --attack-eps 0), sep (with --attack-eps 0 and --word-budget 0), synonym (with "
     "--word-budget 0), which would change nothing (their rows would repeat clean's): leave them out or raise the budget"),
    ("tiny-clip", "retrieval", ["--word-budget", "0"],
     "the default attacks include bert-attack (with --word-budget 0), which would change nothing (its row would repeat "
     "clean's): leave it out with --attacks or raise the budget"),
    ("tiny-albef", "grounding", ["--attacks", "bert-attack", "--word-budget", "0"], "--attacks has bert-attack (with"),
    ("tiny-captioner", "captioning", ["--attacks", "pgd-targeted", "--attack-eps", "0"], "--attacks has pgd-targeted (with"),
    ("tiny-clip", "retrieval", ["--attacks", "sep", "--word-budget", "0", "--mlm", "tiny-mlm", "--top-k", "3"],
     "--mlm, --top-k are not read with --word-budget 0 (no word is changed): leave them out"),
])
def test_eval_refuses_an_attack_its_budgets_switch_off(model, task, flags, said, tmp_path, capsys):
    # `train eval --attacks bert-attack --word-budget 0` (or pgd with --attack-eps 0) wrote a row under the attack's
    # name that was clean's; in-training validation already refused such an attack
    out = tmp_path / "eval"
    assert main(["eval", model, "--task", task, "--source", str(tmp_path / "missing"), "--out", str(out), *flags]) == 2
    assert _error_line(capsys).startswith("error: " + said)
    assert not out.exists()


@pytest.mark.parametrize("flags, said", [
    (["--attacks", "sep", "--attack-eps", "0", "--pgd-steps", "3"],
     "--pgd-steps is not read with --attack-eps 0 (no pixel is changed): leave it out"),
    (["--attacks", "clean,co-attack", "--attack-eps", "0", "--pgd-steps", "3", "--pgd-step-size", "1/255"],
     "--pgd-steps, --pgd-step-size are not read with --attack-eps 0 (no pixel is changed): leave them out"),
])
def test_eval_refuses_the_image_options_with_attack_eps_zero(flags, said, tmp_path, capsys):
    # the text options with --word-budget 0 were refused, the image ones with --attack-eps 0 accepted and recorded in
    # eval.md for an image part that never ran (`sep` (its image part off: eps 0): image (eps 0/255, steps 3, ...))
    out = tmp_path / "eval"
    assert main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(out), *flags]) == 2
    assert _error_line(capsys) == "error: " + said
    assert not out.exists()
