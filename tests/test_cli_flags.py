"""Every augment, analysis and train parser refuses abbreviated flags (`--no-plo` is not `--no-plot`)."""
from __future__ import annotations

import argparse
import re

import pytest

from analysis.cli import build_parser as analysis_parser
from augment.cli import build_parser as augment_parser
from train.cli import build_parser as train_parser


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from all_parsers(child)


@pytest.mark.parametrize("build", [augment_parser, analysis_parser, train_parser])
def test_no_parser_accepts_abbreviations(build):
    parsers = list(all_parsers(build()))
    assert len(parsers) > 2
    allowing = [p.prog for p in parsers if p.allow_abbrev]
    assert allowing == []


def test_abbreviated_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        augment_parser().parse_args(["score", "pool", "--no-plo"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-plo" in capsys.readouterr().err
    assert augment_parser().parse_args(["score", "pool", "--no-plot"]).no_plot


def test_abbreviated_trainer_flag_is_refused(capsys):
    # open_clip's --warmup exists; "--warm" must not silently mean it
    with pytest.raises(SystemExit) as exc:
        train_parser().parse_args(["clean", "--train-data", "d", "--warm", "10"])
    assert exc.value.code == 2 and "unrecognized arguments: --warm" in capsys.readouterr().err
    assert train_parser().parse_args(["clean", "--train-data", "d", "--warmup", "10"]).warmup == 10


@pytest.mark.parametrize("argv, prog", [(["train", "mat", "--warm", "10"], "train mat"),
                                        (["train", "eval", "tiny-clip", "--source", "s", "--out", "o", "--warm"], "train eval"),
                                        (["analysis", "study", "--warm"], "analysis study")])
def test_an_unknown_flag_shows_its_commands_usage(argv, prog, capsys):
    """Not the top-level `usage: train [-h] COMMAND ...`, which says nothing of the command's flags."""
    from augment.cli import main as augment_main
    from train.cli import main as train_main
    from analysis.cli import main as analysis_main

    main = {"train": train_main, "analysis": analysis_main, "augment": augment_main}[argv[0]]
    with pytest.raises(SystemExit) as exc:
        main(argv[1:])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"usage: {prog} ") and f"{prog}: error: unrecognized arguments: --warm" in err


def _eval_parser() -> argparse.ArgumentParser:
    return next(p for p in all_parsers(train_parser()) if p.prog.endswith(" eval"))


def test_every_eval_option_is_shared_or_belongs_to_named_tasks():
    """A new `train eval` option must say which tasks read it (or it could be silently ignored by the others)."""
    from train.commands_eval import SHARED_OPTIONS, TASK_OPTIONS

    dests = {a.dest for a in _eval_parser()._actions if a.dest != "help"}
    classified = set(SHARED_OPTIONS).union(*TASK_OPTIONS.values())
    assert dests == classified
    assert not SHARED_OPTIONS & set().union(*TASK_OPTIONS.values())


@pytest.mark.parametrize("task, extra, named", [
    ("captioning", ["--protocol", "sga"], "--protocol (retrieval and grounding)"),
    ("captioning", ["--albef-config", "a.yaml", "--rerank-k", "0"], "--albef-config (retrieval and grounding), --rerank-k (retrieval)"),
    ("grounding", ["--save-adv", "adv"], "--save-adv (retrieval and captioning)"),
    ("retrieval", ["--prompt", "a picture of"], "--prompt (captioning)"),
    ("retrieval", ["--no-meteor"], "--meteor (captioning)"),
])
def test_eval_refuses_an_option_its_task_does_not_read(task, extra, named, tmp_path, capsys):
    from train.cli import main

    code = main(["eval", "tiny-clip", "--task", task, "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 *extra])
    assert code == 2
    them = "them" if "), --" in named else "it"  # one option is "it" (it said "them" for one too)
    assert capsys.readouterr().err.strip() == f"error: --task {task} does not read {named}: leave {them} out"


@pytest.mark.parametrize("task, extra, named", [
    ("retrieval", ["--attacks", "clean", "--attack-eps", "8/255", "--pgd-steps", "3"],
     "--attacks clean does not read --attack-eps (pgd, sep, co-attack, sga), --pgd-steps (pgd, sep, co-attack, sga): leave them out"),
    ("retrieval", ["--attacks", "pgd", "--mlm", "bert-base-uncased"], "--attacks pgd does not read --mlm (bert-attack, sep, co-attack, sga)"),
    ("retrieval", ["--attacks", "synonym", "--mlm", "bert-base-uncased"], "--attacks synonym does not read --mlm ("),
    ("retrieval", ["--attacks", "pgd,bert-attack", "--sga-scales", "0.5,1.5"], "--attacks pgd,bert-attack does not read --sga-scales (sga)"),
    ("retrieval", ["--attacks", "sga", "--co-alpha", "2"], "does not read --co-alpha (co-attack): leave it out (or add an attack"),
    ("retrieval", ["--attacks", "clean", "--save-adv", "adv"], "--attacks clean does not read --save-adv (pgd, bert-attack,"),
    ("grounding", ["--attacks", "clean,pgd", "--top-k", "3"], "--attacks clean,pgd does not read --top-k (bert-attack, synonym,"),
    ("captioning", ["--attacks", "clean,pgd", "--target", "a dog"], "--attacks clean,pgd does not read --target (pgd-targeted)"),
    ("captioning", ["--attacks", "pgd", "--word-budget", "2"], "--attacks pgd does not read --word-budget (prompt, prompt-pgd)"),
    # the Co-Attack code's schedule sets its own step; --reference-bugs only where an attack has one
    ("retrieval", ["--protocol", "co-attack", "--attacks", "clean,pgd,co-attack", "--pgd-step-size", "1/255"],
     "--attacks clean,pgd,co-attack under --protocol co-attack does not read --pgd-step-size (sga): leave it out"),
    ("retrieval", ["--protocol", "sga", "--attacks", "co-attack", "--pgd-step-size", "1/255"],
     "does not read --pgd-step-size (pgd, sep, sga)"),
    ("retrieval", ["--protocol", "co-attack", "--attacks", "clean,pgd", "--reference-bugs"],
     "--attacks clean,pgd under --protocol co-attack does not read --reference-bugs (bert-attack, sep, co-attack, sga)"),
    ("retrieval", ["--protocol", "sga", "--attacks", "synonym", "--text-candidates", "wordnet", "--reference-bugs"],
     "does not read --reference-bugs (pgd, sep, sga)"),
    ("grounding", ["--attacks", "clean", "--grounding-objective", "heat"],  # was accepted, reported as "objective heat"
     "--attacks clean does not read --grounding-objective (pgd, bert-attack, synonym, sep, co-attack, sga)"),
])
def test_eval_refuses_an_option_no_chosen_attack_reads(task, extra, named, tmp_path, capsys):
    """As the trainer refuses a setting its other settings leave unread: `--attacks clean --attack-eps
    8/255` used to run and record a budget nothing used. Before the data or a model is read."""
    from train.cli import main

    code = main(["eval", "tiny-clip", "--task", task, "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and named in err and "\n" not in err


def test_eval_attack_list_names_what_is_wrong(tmp_path, capsys):
    """A misspelt or empty --attacks is one line naming the task's attacks (not argparse's usage
    block), before the source or any model is read."""
    from train.cli import main

    def refusal(*extra: str) -> str:
        code = main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "usage:" not in err
        return err

    assert refusal("--attacks", " , ").startswith("error: --attacks: no attack named (choose, comma-separated, from clean, pgd,")
    err = refusal("--attacks", "pgd,fgsm")
    assert err.startswith("error: --attacks: unknown attack 'fgsm' (choose from clean, pgd,")
    # each task's attacks under its name: the captioning-only ones are not offered for retrieval
    assert "prompt" not in err and "sga" in err
    err = refusal("--task", "captioning", "--attacks", "pgd,sga")
    assert err.startswith("error: --attacks: unknown attack 'sga' (choose from ") and "prompt-pgd" in err
    assert _eval_parser().parse_args(["tiny-clip", "--source", "x", "--out", "y", "--attacks", "pgd, clean,pgd"]).attacks == [
        "pgd", "clean"]  # each attack once, in the order given


def test_eval_takes_an_option_one_chosen_attack_reads(tmp_path, capsys):
    from train.cli import main
    from train.commands_eval import ATTACK_OPTIONS

    # past the check, to the missing source: every option here is read by pgd or bert-attack
    assert main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--attacks", "pgd,bert-attack", "--pgd-steps", "2", "--mlm", "tiny-mlm", "--top-k", "3"]) == 2
    assert "missing" in capsys.readouterr().err
    for protocol, extra in (("sga", ["--attacks", "pgd", "--pgd-step-size", "1/255", "--reference-bugs"]),
                            ("co-attack", ["--attacks", "sga", "--pgd-step-size", "1/255", "--reference-bugs"])):
        assert main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     "--protocol", protocol, *extra]) == 2
        assert "missing" in capsys.readouterr().err, protocol
    # the table names real options and attacks
    dests = {a.dest for a in _eval_parser()._actions}
    from train.attacks import ATTACK_NAMES
    from train.attacks.captioning import CAPTION_ATTACK_NAMES

    for task, table in ATTACK_OPTIONS.items():
        names = CAPTION_ATTACK_NAMES if task == "captioning" else ATTACK_NAMES
        assert set(table) <= dests and all(set(readers) <= set(names) for readers in table.values()), task


@pytest.mark.parametrize("task", ["retrieval", "captioning", "grounding"])
def test_eval_refuses_a_masked_lm_with_wordnet_candidates(task, tmp_path, capsys):
    from train.cli import main

    code = main(["eval", "tiny-clip", "--task", task, "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--text-candidates", "wordnet", "--mlm", "bert-base-uncased"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --mlm is not read with --text-candidates wordnet (WordNet synonyms, no masked LM): leave it out")


@pytest.mark.parametrize("extra, message", [
    (["--task", "captioning", "--gen-min-length", "30"], "--gen-min-length 30 must lie in [0, --gen-max-length 20]"),
    (["--task", "retrieval", "--co-alpha", "-1"], "Co-Attack's alpha must not be negative, got -1.0"),
    # the flag's name, not the attack option's (eps, max_length)
    (["--task", "retrieval", "--attack-eps", "2"], "--attack-eps must lie in [0, 1], got 2.0"),
    (["--task", "retrieval", "--max-length", "2"], "--max-length must be at least 3, got 2"),
    (["--task", "retrieval", "--workers", "-1", "--restart"], "--workers must be non-negative"),
    # was blamed on the model ("cannot load CLIP model 'tiny-clip': RuntimeError: Expected one of cpu, ...")
    (["--task", "retrieval", "--seed", "-1"], "--seed must be non-negative, got -1"),
    # past torch's seed range: an Overflow traceback until audit AZ
    (["--task", "retrieval", "--seed", str(10**30)], f"--seed must be at most 2**64 - 1 (torch's largest seed), got {10**30}"),
    (["--task", "retrieval", "--device", "nosuch"], "--device nosuch: not a torch device (cpu, cuda, cuda:1, mps, ...)"),
    (["--task", "retrieval", "--attacker-pretrained", "openai"],
     "--attacker-pretrained is read only with --attacker-model: leave it out or add --attacker-model ARCH"),
])
def test_eval_refuses_out_of_range_settings_before_loading(extra, message, tmp_path, capsys):
    from train.cli import main

    code = main(["eval", "tiny-captioner" if "captioning" in extra else "tiny-clip", "--source",
                 str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_eval_refuses_a_rerank_k_a_model_without_itm_would_ignore(tmp_path, capsys, sample_world_dir):
    from train.cli import main

    for k in ("64", "128"):  # 128, the default k of ITM models, was let through and ignored
        code = main(["eval", "tiny-clip", "--rerank-k", k, "--source", str(sample_world_dir), "--limit", "2",
                     "--out", str(tmp_path / "o")])
        assert code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: --rerank-k {k}: re-ranking needs an ITM head, which tiny-clip has none of (BLIP, ALBEF and TCL do): "
            "leave it out")


def test_a_resume_refusal_names_attack_options_by_their_flags_and_a_damaged_tag_says_restart(tmp_path):
    from augment.errors import MatPlusError
    from train.eval_store import BatchStore

    folder = tmp_path / "progress"
    BatchStore(folder, {"options": {"eps": 2 / 255, "budget": 1, "seed": 0}, "limit": 4})
    (folder / "pgd").mkdir()
    (folder / "pgd" / "batch-00000.pt").write_bytes(b"kept")
    with pytest.raises(MatPlusError, match=re.escape("(differ: limit (--limit), options.budget (--word-budget), "
                                                     "options.eps (--attack-eps)): run that evaluation's command")):
        BatchStore(folder, {"options": {"eps": 4 / 255, "budget": 2, "seed": 0}, "limit": 8})
    # top-level settings name their flags too; the attacks' copy of --seed is not said twice
    with pytest.raises(MatPlusError, match=re.escape("(differ: caption_preprocess (--caption-preprocess), limit (--limit), "
                                                     "precision (--precision), seed (--seed)): run")):
        BatchStore(folder, {"options": {"eps": 2 / 255, "budget": 1, "seed": 1}, "limit": 8, "seed": 1,
                            "precision": "amp_bf16", "caption_preprocess": "pre_caption"})
    (folder / "settings.json").write_text("{")
    with pytest.raises(MatPlusError, match=r"settings.json is missing or damaged, so no evaluation can resume them: "
                                           r"discard them \(train eval --restart\)$"):
        BatchStore(folder, {"options": {"eps": 2 / 255, "budget": 1, "seed": 0}, "limit": 4})
    assert (folder / "pgd" / "batch-00000.pt").read_bytes() == b"kept"


def test_eval_accepts_a_task_option_left_at_its_default(tmp_path, capsys, sample_world_dir):
    from train.cli import main

    # --protocol at its default value is not "set": the run goes on to read the data and load the model
    code = main(["eval", "tiny-clip", "--task", "captioning", "--protocol", "project", "--source",
                 str(sample_world_dir), "--out", str(tmp_path / "o")])
    # ... and a retrieval model is refused by its kind before its loader sees captioning's options
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: 'tiny-clip' is a retrieval model (open_clip), not a captioning model"


def _generate_parser() -> argparse.ArgumentParser:
    return next(p for p in all_parsers(augment_parser()) if p.prog.endswith(" generate"))


def _method_variants():
    """(method, extra options) covering every generator and every setting that changes what it reads."""
    from augment.generators import available_modules
    from augment.generators.imgaug import POLICIES

    for module in available_modules():
        for method in getattr(module, "METHODS", []):
            policies = POLICIES if method == "img-aug" else (None,)
            for policy in policies:
                yield method, ["--policy", policy] if policy else []
        for prefix in getattr(module, "PREFIXES", []):
            yield prefix + "tiny-model", []


def test_every_generate_option_is_common_or_read_by_some_method():
    """A new `augment generate` option must be common or read by a method (or it could be silently ignored)."""
    from augment.commands.generate import COMMON_OPTIONS
    from augment.generators import check_options_read, method_options, module_for

    parser = _generate_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == COMMON_OPTIONS | method_options()
    assert not COMMON_OPTIONS & method_options()
    read = set()
    for method, extra in _method_variants():
        args = parser.parse_args(["--method", method, "--source", "s", "--out", "o", *extra])
        options = set(module_for(method).options_read(method, args))
        assert options <= method_options(), method
        check_options_read(method, args, options)  # what a method reads is never refused
        read |= options
    assert read == method_options()


@pytest.mark.parametrize("extra, line", [
    (["--method", "eda", "--steps", "30", "--guidance-scale", "3"],
     "--method eda does not read --guidance-scale, --steps (options of other methods or settings"),
    (["--method", "eda", "--model", "bert"], "--method eda does not read --model (an option of other methods"),
    (["--method", "eda", "--eda-ops", "rs,rd", "--alpha-sr", "0.2"], "--method eda --eda-ops rs,rd does not read --alpha-sr ("),
    (["--method", "img-aug", "--policy", "crop-flip", "--magnitude", "3"],
     "--method img-aug --policy crop-flip does not read --magnitude ("),
    (["--method", "t2i-sd", "--strength", "0.5"], "--method t2i-sd does not read --strength ("),
    (["--method", "t-i2i-sd", "--height", "64"], "--method t-i2i-sd does not read --height ("),
    # diffusers skips classifier-free guidance at a scale of 1 or below: the negative prompt was recorded, never read
    (["--method", "t2i-sd", "--guidance-scale", "1", "--negative-prompt", "blurry"],
     "--method t2i-sd --guidance-scale 1 (no classifier-free guidance) does not read --negative-prompt ("),
    (["--method", "i2t-scene", "--captions-per-image", "2"], "--method i2t-scene does not read --captions-per-image ("),
    (["--method", "i2t-tiny-blip", "--prompt-template", "{caption}"], "--method i2t-tiny-blip does not read --prompt-template ("),
    # named by its first spelling (`train`'s --top-k is substitutes per word); the old --top-k is still read
    (["--method", "eda", "--top-k", "5"], "--method eda does not read --sampling-top-k ("),
    (["--method", "eda", "--sampling-top-k", "5"], "--method eda does not read --sampling-top-k ("),
])
def test_generate_refuses_an_option_its_method_does_not_read(extra, line, tmp_path, capsys):
    from augment.cli import main

    out = tmp_path / "pool"
    assert main(["generate", "--source", str(tmp_path / "missing"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + line) and err.endswith("nothing was written"), err
    assert "\n" not in err and not out.exists()


def test_generate_accepts_method_options_it_reads_or_left_at_their_default():
    from augment.commands.generate import options_given
    from augment.generators import check_options_read

    parser = _generate_parser()
    base = ["--source", "s", "--out", "o"]
    # the diffusion default (--steps 50) and the model default (--dtype fp32), spelled out, are not "given"
    args = parser.parse_args([*base, "--method", "eda", "--steps", "50", "--dtype", "fp32", "--alpha-sr", "0.3"])
    assert options_given(args) == {"alpha_sr"}
    check_options_read("eda", args, options_given(args))
    args = parser.parse_args([*base, "--method", "t2i-render", "--captions-per-image", "2", "--device", "cuda"])
    assert options_given(args) == {"captions_per_image"}
    check_options_read("t2i-render", args, options_given(args))


@pytest.mark.parametrize("argv, message", [
    (["generate", "--method", "eda", "--n", "0"], "argument --n/--augmentations: 0: must be at least 1"),
    (["generate", "--method", "eda", "--limit", "-3"], "argument --limit: -3: must be at least 1"),
    (["generate", "--method", "eda", "--shard-size", "0"], "argument --shard-size: 0: must be at least 1"),
    (["generate", "--method", "t2t-tiny-paraphraser", "--batch-size", "0"], "argument --batch-size: 0: must be at least 1"),
    (["score", "pool", "--batch-size", "0"], "argument --batch-size: 0: must be at least 1"),
    (["score", "pool", "--chunk-rows", "0"], "argument --chunk-rows: 0: must be at least 1"),
    (["score", "pool", "--chunk-bytes", "0"], "argument --chunk-bytes: 0: must be at least 1 byte"),
    (["score", "pool", "--chunk-bytes", "lots"], "argument --chunk-bytes: 'lots' is not a size (e.g. 1073741824, 512M"),
    (["score", "pool", "--gap-bootstrap", "-1"], "argument --gap-bootstrap: -1: must not be negative"),
    (["score", "pool", "--bootstrap", "-5"], "argument --bootstrap: -5: must not be negative"),
    (["score", "pool", "--gap-samples", "1"], "argument --gap-samples: 1: must be at least 2"),
    (["score", "pool", "--confidence", "2"], "argument --confidence: 2: must lie strictly between 0 and 1"),
    (["make-sample", "dir", "--expressions", "-1"], "argument --expressions: -1: must not be negative"),
    (["generate", "--method", "t2t-tiny-paraphraser", "--top-k", "-1"], "argument --sampling-top-k/--top-k: -1: must not be negative"),
    # negative seeds were taken here while score, train, train eval and the study refuse them
    (["generate", "--method", "eda", "--seed", "-1"], "argument --seed: -1: must not be negative"),
    (["make-sample", "dir", "--seed", "-5"], "argument --seed: -5: must not be negative"),
])
def test_out_of_range_numbers_are_refused_by_the_parser(argv, message, tmp_path, capsys):
    """Each was a traceback (ZeroDivisionError, ValueError) or a silently empty or interval-less result."""
    if argv[0] == "generate":
        argv = [*argv, "--source", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        augment_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("seeds, message", [
    ("a,b", "argument --seeds: 'a' is not a whole number"),  # was: a ValueError traceback
    ("1,1", "argument --seeds: 1,1: a seed is repeated"),
    (",", "argument --seeds: ',': no seed given"),
    ("-1", "argument --seeds: -1: must not be negative"),
])
def test_study_seeds_are_checked_by_the_parser(seeds, message, capsys):
    with pytest.raises(SystemExit) as exc:
        analysis_parser().parse_args(["study", "--seeds", seeds])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert analysis_parser().parse_args(["study", "--seeds", "2, 0"]).seeds == [2, 0]


def test_study_help_names_every_bundled_config(capsys):
    from analysis.config import CONFIG_DIR

    with pytest.raises(SystemExit):
        analysis_parser().parse_args(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    names = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    assert len(names) > 3 and "bundled config name: " + ", ".join(names) in text.replace("- ", "-")


def test_eval_help_default_attacks_are_the_evaluation_defaults():
    """`train eval`'s spelt-out default (kept free of the torch import) must not drift from the evaluation's."""
    from train import commands_eval, evaluate

    assert commands_eval.DEFAULT_ATTACKS.split(",") == list(evaluate.DEFAULT_ATTACKS)
    # the help names it as grounding's default too, and spells out captioning's
    from train.evaluate_captioning import DEFAULT_CAPTION_ATTACKS
    from train.evaluate_grounding import DEFAULT_GROUNDING_ATTACKS

    assert commands_eval.DEFAULT_ATTACKS.split(",") == list(DEFAULT_GROUNDING_ATTACKS)
    parser = train_parser()
    eval_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    help_text = " ".join(next(a for a in eval_parser._actions if a.dest == "attacks").help.split())
    assert f"retrieval and grounding default: {commands_eval.DEFAULT_ATTACKS};" in help_text
    assert f"captioning default: {','.join(DEFAULT_CAPTION_ATTACKS)}," in help_text


def test_the_selectable_text_guides_are_guides_the_attack_knows():
    from train.attacks import settings, text

    assert set(settings.SELECTABLE_GUIDES) == set(text.GUIDES) - {"text-kl"}


@pytest.mark.parametrize("method", ["clean", "tecoa", "fare"])
def test_methods_without_a_text_attack_take_the_masked_lm_of_their_validation_attack(method):
    """`train clean --val-attack bert-attack` read the default masked LM (bert-base-uncased on a real
    model: offline, no validation at all) and `--mlm` was offered to mat and mat+ only."""
    from train.cli import build_parser, config_from_args
    from train.config import ConfigError

    base = [method, "--model", "tiny-clip", "--train-data", "world", "--out", "run", "--mlm", "world-mlm"]
    config = config_from_args(build_parser().parse_args([*base, "--val-frequency", "1", "--val-attack", "sga"]))
    assert config.mlm == "world-mlm"
    with pytest.raises(ConfigError, match="--mlm is not read .* by clean, tecoa and fare, and no --val-attack that "
                                          "reads one: leave it out"):
        config_from_args(build_parser().parse_args([*base, "--val-frequency", "1", "--val-attack", "pgd"]))


def test_the_study_passes_its_train_masked_lm_to_mat_runs_only():
    """The study validates with eval's masked LM; clean's --mlm is for --val-attack alone."""
    from analysis.config import method_train_settings

    train = {"mlm": "world-mlm", "lr": 1e-4}
    assert method_train_settings(train, "clean") == {"lr": 1e-4}
    assert method_train_settings(train, "mat") == train


@pytest.mark.parametrize("scales", ["0.5,nan", "inf"])
def test_eval_refuses_sga_scales_that_are_no_finite_size(scales, tmp_path, capsys):
    """They passed the parser and ended in a traceback after the clean pass (no image has a size of nan)."""
    from train.cli import main

    with pytest.raises(SystemExit) as info:
        main(["eval", "tiny-clip", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
              "--sga-scales", scales])
    assert info.value.code == 2
    assert f"argument --sga-scales: '{scales}': scales must be positive finite numbers" in capsys.readouterr().err


def test_a_task_validation_does_not_know_is_refused_before_training(monkeypatch):
    """A task registered in tasks.TASKS trained, and --val-frequency ran retrieval's evaluation of it,
    then died with a KeyError after the run folder was written; a mistyped task gets the closest name."""
    import tasks
    from train.config import ConfigError, resolve_config

    monkeypatch.setitem(tasks.TASKS, "matching", "tasks.retrieval:RetrievalTask")
    base = {"method": "clean", "model": "tiny-clip", "train_data": "world", "out": "run", "task": "matching"}
    assert resolve_config(base).task == "matching"
    with pytest.raises(ConfigError, match="--val-frequency: in-training validation knows the tasks .*not 'matching'"):
        resolve_config({**base, "val_frequency": 1})
    with pytest.raises(ConfigError, match="unknown --task 'retrieva' \\(did you mean 'retrieval'\\?\\)"):
        resolve_config({**base, "task": "retrieva"})


def test_the_grounding_tasks_text_attack_takes_a_twins_masked_lm_from_python():
    """From Python (no CLI filling config.mlm), the grounding MAT text attack of tiny-albef loaded
    bert-base-uncased (not cached offline); the captioning task's took tiny-mlm."""
    from models import load_model
    from tasks import build_task
    from train.config import TrainConfig

    attack = build_task("grounding").text_attack(load_model("tiny-albef"), TrainConfig(task="grounding", model="tiny-albef"))
    assert attack.params()["mlm"] == "tiny-mlm"


def test_the_trainers_task_metavar_names_the_tasks_eval_offers():
    """`train METHOD --task` is checked by the config (one line), so its usage shows the tasks through a
    spelt-out metavar (no torch import for `train --help`): it must not drift from the tasks there are."""
    from tasks import TASKS

    subparsers = next(a for a in train_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    shown = next(a for a in subparsers["mat"]._actions if a.dest == "task").metavar
    assert set(shown.strip("{}").split(",")) == set(TASKS)
    assert set(next(a for a in subparsers["eval"]._actions if a.dest == "task").choices) == set(TASKS)


@pytest.mark.parametrize("argv", [["generate", "--method", "eda", "--source", "s", "--out", "o"], ["score", "pool"],
                                  ["inspect", "--source", "s"]])
def test_augment_spells_progress_both_ways_as_train_does(argv):
    """augment took `--no-progress` only, train `--progress/--no-progress`: both forms now, the last one wins."""
    from augment.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(argv).no_progress is False
    assert parser.parse_args([*argv, "--no-progress"]).no_progress is True
    assert parser.parse_args([*argv, "--no-progress", "--progress"]).no_progress is False


@pytest.mark.parametrize("text, size", [("1073741824", 2 ** 30), ("512M", 512 * 2 ** 20), ("2GiB", 2 * 2 ** 30),
                                        ("1.5g", 3 * 2 ** 29), ("64kb", 64 * 1024), (" 3 ", 3)])
def test_byte_size_reads_whole_numbers_and_binary_units(text, size):
    from augment.arguments import byte_size

    assert byte_size(text) == size
