"""Guards found by audit CE's mutation audit of the train command line's argument wiring (train/cli.py,
train/config.py, train eval's commands, train/launch.py, and where the trainer reads the settings): each
test kills a plausible bug that every other test let through. The parser and the config builder are
called directly, the trainer's pieces on stubs of a few lines: no test trains or loads a model.
"""
from __future__ import annotations

import types

import pytest
import torch


def _config(*argv: str):
    """The resolved TrainConfig of a `train METHOD ...` command line (nothing is read or trained)."""
    from train.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args([*argv, "--train-data", "s.json", "--out", "run"]))


# ----------------------------------------------------------------------------- optimisation flags


def test_a_weight_decay_of_zero_is_accepted_and_reaches_the_config():
    """Guards `--wd`'s range: non-negative (README), so 0 (no decay, a common fine-tuning choice) is a setting."""
    assert _config("clean", "--wd", "0").wd == 0.0


def test_the_optimizer_and_its_schedule_read_wd_eps_lr_and_warmup():
    """Guards the way from the config to AdamW and the schedule: `--wd` decays the decayed group (not the other),
    `--eps` is AdamW's epsilon (not its own default, 1e-8), `--lr` its rate, `--warmup` the schedule's linear
    warm-up."""
    from train.trainer import Trainer

    decayed, not_decayed = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    model = types.SimpleNamespace(parameter_groups=lambda wd: [{"params": [not_decayed], "weight_decay": 0.0},
                                                                {"params": [decayed], "weight_decay": wd}])
    trainer = types.SimpleNamespace(
        cfg=_config("clean", "--wd", "0.3", "--eps", "1e-7", "--lr", "2e-4", "--warmup", "4"), schedule_steps=20,
        task=None, accelerator=types.SimpleNamespace(prepare=lambda forward, optimizer: (forward, optimizer)))
    Trainer._build_optimizer(trainer, model)
    groups = trainer.optimizer.param_groups
    assert [group["weight_decay"] for group in groups] == [0.0, 0.3]
    assert all(group["eps"] == 1e-7 for group in groups)
    # LambdaLR set the first step's rate: the peak lr times the warm-up's first factor, 1/4
    assert [group["lr"] for group in groups] == [pytest.approx(2e-4 / 4)] * 2


@pytest.mark.parametrize("given", [True, False])
def test_grad_checkpointing_reaches_the_model_only_when_asked(given):
    """Guards `--grad-checkpointing`: parsed into the config, and the model told to recompute its activations."""
    from train.trainer import Trainer

    calls = []
    model = types.SimpleNamespace(tower_parameters=lambda tower: [], set_grad_checkpointing=calls.append)
    config = _config("clean", *(["--grad-checkpointing"] if given else []))
    Trainer._set_trainable(types.SimpleNamespace(cfg=config), model)
    assert calls == ([True] if given else [])


# ----------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("name, value", [
    ("wd", 0.2), ("eps", 1e-8), ("warmup", 5), ("lr", 2e-5), ("precision", "amp_bf16"), ("grad_accum", 2),
    ("max_grad_norm", 1.0), ("batch_size", 8), ("seed", 1), ("pgd_steps", 3), ("clean_weight", 0.5),
])
def test_a_resume_with_another_setting_of_the_optimisation_or_attack_is_a_conflict(name, value):
    """Guards `--resume latest`'s comparison: a setting that changes the trained weights, changed on resuming,
    is named (not taken as one of the settings a resume may change, RESUMABLE_CHANGES)."""
    from train.config import resolve_config, resume_conflicts

    base = {"method": "tecoa", "model": "tiny-clip", "train_data": "s.json", "out": "run"}
    saved = resolve_config(base).to_dict()
    assert resume_conflicts(saved, resolve_config({**base, name: value})) == [name]


# ----------------------------------------------------------------------------- defaults and refusals


def test_a_bare_command_line_resolves_to_the_defaults_the_readme_states():
    """Guards the defaults the README's Training section names (open_clip_train's differ on purpose there):
    a default changed in TrainConfig alone would silently change every run that leaves the flag out."""
    config = _config("tecoa")
    assert (config.wd, config.warmup, config.eps, config.precision) == (0.1, 0, 1e-6, "fp32")
    assert (config.val_frequency, config.val_split, config.val_attack, config.val_limit) == (0, "val", "pgd", 50)
    assert (config.csv_img_key, config.csv_caption_key, config.csv_separator) == ("image", "caption", None)
    assert (config.attack_eps, config.pgd_steps, config.pgd_step_size) == (pytest.approx(2 / 255), 10,
                                                                           pytest.approx(0.5 / 255))
    assert (config.p_original, config.pool_mode, config.log_every, config.report_to) == (0.5, "sample", 1, "none")
    assert config.lock_text is True and config.lock_image is False and config.grad_checkpointing is False


@pytest.mark.parametrize("argv, message", [
    # a schedule of negative length trained on silently
    (["clean", "--warmup", "-1"], "--warmup must be non-negative"),
    # AdamW's epsilon at the PGD-budget-sized bound; README: "a value of 1e-3 or more is refused in one line
    # naming --attack-eps"
    (["clean", "--eps", "1e-3"], "--eps 0.001 is AdamW's epsilon"),
    # a text attack of no substitute per word changed no word, recorded as run
    (["mat", "--top-k", "0"], "--top-k must be at least 1"),
    # validated never, silently, as 0 does
    (["clean", "--val-frequency", "-1"], "--val-frequency must be non-negative"),
    # read by the captioner only: a retrieval run recorded a prompt nothing read
    (["clean", "--prompt", "a picture of"], "--prompt applies to --task captioning, not retrieval"),
    # weights of no pool to draw from: every step's views undefined
    (["mat+", "--pools", "p", "q", "--pool-weights", "0", "0"], "--pool-weights must be non-negative and not all zero"),
    # --max-steps 0 read as "not given" (`max_steps or epochs * ...`): a whole epoch trained, silently
    (["clean", "--max-steps", "0"], "--max-steps must be at least 1"),
    (["clean", "--schedule-steps", "0"], "--schedule-steps must be at least 1"),
    (["clean", "--log-every-n-steps", "0"], "--log-every-n-steps must be at least 1"),
    (["clean", "--save-every", "-1"], "--save-every must be non-negative"),
    (["clean", "--workers", "-1"], "--workers must be non-negative"),
    (["mat", "--lock-image", "--lock-text"], "--lock-image and --lock-text together leave nothing to train"),
])
def test_a_setting_out_of_its_range_or_of_no_use_is_refused(argv, message):
    """Guards the one-line refusals (audit CE: each passed every test with its check dropped or loosened by one)
    of settings that would otherwise train something other than asked."""
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="^" + message):
        _config(*argv)


def test_an_adamw_epsilon_just_below_the_bound_is_accepted():
    """The other side of `--eps`'s bound: 9e-4 is AdamW's epsilon, not refused as a PGD budget."""
    assert _config("clean", "--eps", "9e-4").eps == pytest.approx(9e-4)


def test_no_masked_lm_is_derived_for_a_text_attack_of_wordnet_synonyms():
    """Guards the derived `--mlm`: WordNet's substitutes read no masked LM, so none is derived and recorded in
    config.yaml's `derived:` section as if one had run (the masked LM's default follows from the model's)."""
    assert _config("mat", "--text-candidates", "wordnet").mlm is None
    assert _config("mat").mlm == "tiny-mlm"


# ----------------------------------------------------------------------------- train eval


def test_train_eval_hands_each_attack_option_to_its_own_setting():
    """Guards `attack_options_from_arguments`: every flag reaches the attack setting of its own meaning (the
    retrieval and grounding evaluations are compared with each other elsewhere, which a swap inside the one
    builder they share passes)."""
    from train.cli import build_parser
    from train.commands_eval import attack_options_from_arguments

    args = build_parser().parse_args([
        "eval", "tiny-clip", "--source", "s.json", "--out", "o", "--attack-eps", "4/255", "--pgd-steps", "3",
        "--pgd-step-size", "1/255", "--text-candidates", "mlm", "--top-k", "4", "--word-budget", "2",
        "--max-length", "20", "--text-guide", "text", "--sga-scales", "0.5,1.5", "--co-alpha", "2",
        "--text-batch", "64"])
    assert attack_options_from_arguments(args) == {
        "eps": pytest.approx(4 / 255), "steps": 3, "step_size": pytest.approx(1 / 255), "candidates": "mlm",
        "mlm": "tiny-mlm", "top_k": 4, "budget": 2, "max_length": 20, "guide": "text", "scales": (0.5, 1.5),
        "alpha": 2.0, "text_batch": 64, "protocol": "project", "reference_bugs": False}


class _Reached(Exception):
    """The evaluation was called: its arguments are captured and nothing is evaluated."""


def _evaluation_call(monkeypatch, module, name: str, argv: list[str]) -> dict:
    """The keyword arguments `train eval ARGV` calls `module.name` (the evaluation) with. The model is a
    stand-in (a fusion model's ITM head, no prompt): what is checked is the command line's way to the
    evaluation, not a model."""
    import models
    from train.cli import main

    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: types.SimpleNamespace(
        has_itm=True, name="stand-in", family="albef", prompt=None))

    reached: dict = {}

    def capture(*args, **kwargs):
        reached.update(kwargs)
        raise _Reached

    monkeypatch.setattr(module, name, capture)
    with pytest.raises(_Reached):
        main(["eval", *argv, "--no-progress"])
    return reached


def test_train_eval_re_ranks_a_fusion_models_top_128_by_default(sample_world_dir, tmp_path, monkeypatch):
    """Guards `--rerank-k`'s default, the Flickr30k protocol's k (README, the option's help): ITM re-ranks
    the top 128 of each query's ITC ranking."""
    import train.evaluate

    call = _evaluation_call(monkeypatch, train.evaluate, "evaluate", [
        "tiny-albef", "--source", str(sample_world_dir), "--limit", "2", "--attacks", "clean",
        "--out", str(tmp_path / "o")])
    assert call["rerank_k"] == 128


def test_train_eval_captioning_hands_its_generation_flags_to_their_own_settings(sample_world_dir, tmp_path,
                                                                                  monkeypatch):
    """Guards captioning's generation settings: --gen-max-length and --gen-min-length each reach their own
    bound (swapped, every caption was generated under other bounds and nothing refused it), --num-beams the
    beam width, --target pgd-targeted's target."""
    import train.evaluate_captioning

    call = _evaluation_call(monkeypatch, train.evaluate_captioning, "evaluate_captioning", [
        "tiny-captioner", "--task", "captioning", "--source", str(sample_world_dir), "--limit", "2",
        "--attacks", "clean,pgd-targeted", "--num-beams", "2", "--gen-max-length", "12", "--gen-min-length", "3",
        "--target", "a red circle", "--out", str(tmp_path / "c")])
    assert call["generation"] == {"num_beams": 2, "max_length": 12, "min_length": 3}
    assert call["attack_options"]["target"] == "a red circle"


# ----------------------------------------------------------------------------- launch


_TWO_PROCESSES = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}


def test_a_local_rank_one_past_the_visible_gpus_is_refused():
    """Guards the GPU count bound: LOCAL_RANK 2 with 2 GPUs (cuda:0 and cuda:1) has no GPU of its own."""
    from train.launch import LaunchError, check_launch_environment

    with pytest.raises(LaunchError, match=r"LOCAL_RANK 2 but only 2 GPU\(s\) visible"):
        check_launch_environment(cpu=False, env={**_TWO_PROCESSES, "WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "2"},
                                 cuda_devices=2)
    assert check_launch_environment(cpu=False, env={**_TWO_PROCESSES, "RANK": "1", "LOCAL_RANK": "1"},
                                    cuda_devices=2).backend == "nccl"


def test_a_rank_equal_to_the_world_size_is_refused():
    """Guards the rank bound: ranks are 0 .. WORLD_SIZE - 1; RANK 2 of 2 would wait for a group that never forms."""
    from train.launch import LaunchError, check_launch_environment

    with pytest.raises(LaunchError, match="inconsistent launch environment: RANK=2, WORLD_SIZE=2"):
        check_launch_environment(cpu=True, env={**_TWO_PROCESSES, "RANK": "2", "LOCAL_RANK": "0"})


# ----------------------------------------------------------------------------- more ranges and refusals


def test_p_original_takes_both_ends_of_its_range():
    """Guards `--p-original`'s closed range [0, 1]: 1 keeps every original pair (the pools' control)."""
    for value in ("0", "1"):
        assert _config("mat+", "--pools", "p", "--p-original", value).p_original == float(value)


def test_train_eval_refuses_a_pgd_of_no_step_before_loading(tmp_path, capsys):
    """Guards `train eval --pgd-steps 0`: refused as out of range, also for a multimodal attack, which would
    otherwise run without its image part under its own name."""
    from train.cli import main

    code = main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--attacks", "sep", "--pgd-steps", "0"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --pgd-steps must be at least 1"


def test_train_eval_captioning_attacks_with_the_pgd_step_given(sample_world_dir, tmp_path, monkeypatch):
    """Guards the PGD step of captioning's (and the project protocol's grounding's) attacks: the step given, not
    the default eps/4 (the grounding case is compared with retrieval elsewhere at a step equal to eps/4)."""
    import train.evaluate_captioning

    call = _evaluation_call(monkeypatch, train.evaluate_captioning, "evaluate_captioning", [
        "tiny-captioner", "--task", "captioning", "--source", str(sample_world_dir), "--limit", "2", "--attacks", "pgd",
        "--attack-eps", "4/255", "--pgd-step-size", "2/255", "--out", str(tmp_path / "c")])
    assert (call["attack_options"]["eps"], call["attack_options"]["step_size"]) == (pytest.approx(4 / 255),
                                                                                     pytest.approx(2 / 255))


@pytest.mark.parametrize("given, workers", [("0", 0), ("3", 3)])
def test_train_eval_decodes_in_the_main_process_with_workers_0(given, workers):
    """Guards `train eval --workers 0` (README: 0 decodes in the main process), which is not "unset"."""
    from train.cli import build_parser
    from train.commands_eval import _workers

    args = build_parser().parse_args(["eval", "tiny-clip", "--source", "s.json", "--out", "o", "--workers", given])
    assert _workers(args) == workers
