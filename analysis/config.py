"""The study's configuration: one YAML file, defaults below, every budget a fixed step count.

Budgets are steps, never wall-clock time: this machine's speed varies several-fold with load.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from augment.errors import MatPlusError
from augment.yaml_settings import load_settings_yaml
from train.attacks.settings import ATTACK_DEFAULTS

CONFIG_DIR = Path(__file__).parent / "configs"


def bundled_config_names() -> list[str]:
    """The study configs shipped in `analysis/configs`, by the name `--config` takes."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


DEFAULTS: dict[str, Any] = {
    "name": "study",
    # retrieval (CLIP, R@1), or another task's arm (analysis.task_arms): captioning, grounding
    "task": "retrieval",
    "out": "outputs/study",
    "model": "tiny-clip",
    "seeds": [0, 1, 2],
    # the sample world; 75% of it is the train split
    "world": {"n": 2000, "seed": 0},
    # adversarial fine-tuning sees only this many train scenes (adversarial training is data
    # hungry: this is where 1:N pools should matter most); pretraining sees every train scene
    "finetune_scenes": 300,
    # captions the fine-tuning source keeps per train image (None: all five). {per_image: 1}
    # gives 1:1 data as in web-scale caption sets; choice "rotate" makes image j keep captions
    # j, j+1, ... (mod 5), so the source mixes wordings across images; "first" keeps the first
    "finetune_captions": None,
    # clean pretraining from random weights: the world's "pretrained CLIP", on every train
    # scene (scenes: all) or only on those the fine-tuning set lacks (scenes: rest)
    "pretrain": {"steps": 500, "batch_size": 128, "lr": 1e-3, "seed": 0, "scenes": "all"},
    # adversarial fine-tuning, shared by every method: `train METHOD`'s settings by their names
    # (train.config.TrainConfig; any of them except those the study sets per run, STUDY_SETS);
    # each method gets the ones its sub-command offers (clean no attack, tecoa no text attack)
    "train": {
        "max_steps": 60, "batch_size": 64, "lr": 1e-4, "warmup": 10, "attack_eps": "2/255",
        "pgd_steps": 3, "text_candidates": "wordnet", "word_budget": 1, "p_original": 0.5,
        "mlm": None,  # masked LM of text_candidates mlm (None: the trainer's default; world-mlm: trained on the world)
    },
    # validation during fine-tuning (None: off): R@1 under `attack` on `split` every `every`
    # steps, written to RUN/validation.jsonl (learning curves); the best weights go to RUN/best/
    # and are evaluated on the test split beside the last ones
    "validation": None,
    # pools: name -> augment generate arguments (method, n, extra options)
    "pools": {
        "human": {"method": "i2t-human", "n": 4},
        "scene": {"method": "i2t-scene", "n": 4},
        "scene-partial": {"method": "i2t-scene", "n": 4, "caption_style": "partial"},
        "render": {"method": "t2i-render", "n": 1, "captions_per_image": 2},
        "eda": {"method": "eda", "n": 2},
        "shuffle": {"method": "shuffle", "n": 4},
    },
    # baselines on the original pairs, then mat+ once per pool
    "methods": ["clean", "tecoa", "fare", "mat", "mat+"],
    # robust R@1 against the number of augmentations per item (mat+ on this pool)
    "n_aug_sweep": {"pool": "scene", "values": [1, 2]},
    # the four ways of using more samples at equal steps, on this pool: original pairs only
    # (mat), pool rows as independent pairs (mat+ expand), pool sampled 1:N (mat+ sample), and
    # more original scenes (mat on finetune_scenes x oracle_factor scenes, the oracle)
    "more_samples": {"pool": "scene", "oracle_factor": 3},
    "eval": {
        "split": "test", "limit": 100, "captions_per_image": 2, "batch_size": 50,
        "attacks": ["clean", "pgd", "bert-attack", "sep", "co-attack", "sga"],
        # train eval's names and defaults (pgd_step_size None: attack_eps / 4)
        "attack_eps": "2/255", "pgd_steps": 10, "pgd_step_size": None, "mlm": "tiny-mlm",
        "top_k": ATTACK_DEFAULTS.top_k, "word_budget": ATTACK_DEFAULTS.budget,
    },
    # the runs the report's first table compares (pretrained and every mat+ run are always in it)
    "headline_runs": ["tecoa", "mat"],
    # "robust R@1" in the plots: the mean of TR@1 and IR@1 under this attack, counting only
    # attacked captions the truth checker still calls true ("meaning_preserved"; an attack that
    # makes a caption false is not a robustness failure), or every attacked caption ("all")
    "headline_attack": "sga",
    "headline_captions": "meaning_preserved",
    "scorer": None,  # None: the pretrained world model scores the pools
}


# the sections every study reads (n_aug_sweep and more_samples: null turns them off)
REQUIRED_SECTIONS = ("world", "pretrain", "train", "pools", "eval")


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "pools":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_study_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    """DEFAULTS < the YAML file < overrides; unknown top-level keys are refused."""
    layer: dict = {}
    if path is not None:
        candidate = Path(path)
        if not candidate.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
            candidate = CONFIG_DIR / f"{path}.yaml"
        if not candidate.exists():
            raise MatPlusError(f"study config {path}: no such file (bundled: {', '.join(bundled_config_names())})")
        if candidate.is_dir():
            raise MatPlusError(f"study config {path}: is a folder, not a YAML file")
        try:
            layer = load_settings_yaml(candidate.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise MatPlusError(f"study config {candidate}: not UTF-8 text; save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise MatPlusError(f"study config {candidate}: malformed YAML: {str(exc).splitlines()[0]}") from None
        if layer is None:  # an empty file (a failed write, one not filled in yet) ran the whole default study
            raise MatPlusError(f"study config {candidate}: holds no settings (empty, or comments only); leave "
                               "--config out to run the default study")
        if not isinstance(layer, dict):
            raise MatPlusError(f"study config {candidate}: expected a mapping of settings, got {type(layer).__name__}")
    config = _merge(DEFAULTS, layer)
    config = _merge(config, overrides or {})
    try:
        return _checked(config, layer, overrides)
    except MatPlusError as exc:
        # every check below says "study config: ..."; a config read from a file names that file (one place)
        message = str(exc)
        if path is None:
            raise
        # a check's own line ("eval.attack_eps: cannot read 'abc' as a number") names the file too
        raise MatPlusError(f"study config {candidate}: {message.removeprefix('study config: ')}") from None


def _checked(config: dict, layer: dict, overrides: dict | None) -> dict:
    """`config` checked whole before any work: its first problem as one line "study config: ..."."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise MatPlusError(f"study config: unknown keys {unknown}")
    for key in REQUIRED_SECTIONS:  # `train: null` replaced a whole section (a traceback later)
        if not isinstance(config[key], dict):
            raise MatPlusError(f"study config: {key} must be a mapping of settings, got {config[key]!r}")
    for name, spec in config["pools"].items():
        if not isinstance(spec, dict):
            raise MatPlusError(f"study config: pool {name!r} must be a mapping with a method, got {spec!r}")
        if "method" not in spec:
            raise MatPlusError(f"study config: pool {name!r} has no method")
    _check_methods(config["methods"])
    given = _merge(layer, overrides or {})
    if config["task"] != "retrieval":
        config = _task_config(config, given)
    _check_shapes(config)
    if "mat+" in config["methods"] and not config["pools"]:
        # mat+ runs once per pool: with none the study trained no mat+ run and still exited 0
        raise MatPlusError("study config: methods has mat+ but pools is empty (mat+ runs once per pool): "
                           "add a pool or leave mat+ out")
    if config["task"] == "retrieval":
        _check_retrieval_eval(config["eval"])
        _check_retrieval_headline(config, given)
    _check_train(config)
    from train.config import MAX_SEED

    seeds = config.get("seeds")
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise MatPlusError(f"study config: seeds must be a list of distinct non-negative whole numbers, got {seeds!r}")
    if any(s > MAX_SEED for s in seeds):  # refused by the trainer only once the world and the pools were built
        raise MatPlusError(f"study config: seeds must be at most 2**64 - 1 (torch's largest seed), got {max(seeds)}")
    for name, spec in config["pools"].items():
        _check_pool_spec(name, spec)
    _check_sections(config)
    captions = config.get("finetune_captions")
    if captions is not None and (not isinstance(captions, dict) or int(captions.get("per_image", 0)) < 1
                                 or captions.get("choice", "rotate") not in ("rotate", "first")):
        raise MatPlusError("study config: finetune_captions must be null or {per_image: K >= 1, choice: rotate|first}")
    if config["pretrain"].get("scenes", "all") not in ("all", "rest"):
        raise MatPlusError("study config: pretrain.scenes must be 'all' or 'rest'")
    validation = config.get("validation")
    if validation is not None and (not isinstance(validation, dict) or int(validation.get("every", 0)) < 1):
        raise MatPlusError("study config: validation must be null or a mapping with every: K >= 1")
    scenes = config.get("finetune_scenes")
    if not _is_count(scenes):
        raise MatPlusError(f"study config: finetune_scenes must be a whole number >= 1, got {scenes!r}")
    for section in ("n_aug_sweep", "more_samples"):
        pool = (config.get(section) or {}).get("pool")
        if pool and pool not in config["pools"]:
            raise MatPlusError(f"study config: {section}.pool {pool!r} is not one of the pools {sorted(config['pools'])}")
    _check_scene_counts(config)
    for key in ("model", "scorer"):  # loaded only when pretraining / scoring starts, after the world and a pool
        if config.get(key) is not None:
            _check_model_name(key, config[key])
    return config


def _check_model_name(key: str, name) -> None:
    """A model name no family accepts, named with its key now (it failed when its stage began, naming
    neither the key nor the file)."""
    from augment.errors import ModelLoadError
    from models import family_of

    if not isinstance(name, str) or not name.strip():
        raise MatPlusError(f"study config: {key} must be a model name, got {name!r}")
    try:
        if family_of(name) == "open_clip":  # open_clip's names: checked as its loader resolves them
            from models.open_clip_family import resolve_name

            resolve_name(name)
    except ModelLoadError as exc:
        raise MatPlusError(f"study config: {key}: {exc}") from None


def oracle_factor(config: dict) -> int:
    """How many times finetune_scenes the more-samples oracle trains on: the section's value, DEFAULTS'
    when it is null or left out (study, report and the scene check read it here; a null one was a
    TypeError when the oracle's subset was built)."""
    value = (config.get("more_samples") or {}).get("oracle_factor")
    return int(DEFAULTS["more_samples"]["oracle_factor"] if value is None else value)


def _check_scene_counts(config: dict) -> None:
    """Scene counts the world cannot give: the study trained on the train scenes there were, exited 0,
    and its report named the count asked for ("fine-tuning on 5000 train scenes" of a 120-scene world);
    `pretrain.scenes: rest` with none left failed after the world and the pools were built."""
    from augment.world.writer import split_sizes

    train = split_sizes(int(config["world"]["n"]))["train"]  # the study's worlds: write_sample's split
    scenes, n = config["finetune_scenes"], config["world"]["n"]
    if scenes > train:
        raise MatPlusError(f"study config: finetune_scenes {scenes} is more than the {train} train scenes of a world of "
                           f"{n} (world.n; 75% are train scenes): lower it or raise world.n")
    more = config.get("more_samples") or {}
    factor = oracle_factor(config)
    if more.get("pool") and scenes * factor > train:
        raise MatPlusError(f"study config: more_samples' oracle trains on finetune_scenes x oracle_factor = "
                           f"{scenes * factor} scenes, more than the world's {train} train scenes: lower them or "
                           "raise world.n")
    if config["pretrain"].get("scenes", "all") == "rest" and scenes >= train and not config["pretrain"].get("checkpoint"):
        raise MatPlusError(f"study config: pretrain.scenes rest pretrains on the train scenes not fine-tuned on, and "
                           f"finetune_scenes {scenes} takes all {train}: lower it or raise world.n")
    sweep = config.get("n_aug_sweep") or {}
    spec = config["pools"].get(sweep.get("pool")) if sweep.get("pool") else None
    if isinstance(spec, dict) and isinstance(spec.get("n"), int):
        above = [v for v in sweep.get("values") or () if isinstance(v, int) and v > spec["n"]]
        if above:  # select --max-per-item above the pool's n keeps the whole pool: the "all" point again
            raise MatPlusError(f"study config: n_aug_sweep.values {above} exceed pool {sweep['pool']!r}'s n "
                               f"{spec['n']} (augmentations per item it holds): the whole pool is the sweep's "
                               "'all' point already")


# what the study reads of each small section (a typo, `validation: {atack: pgd}`, would silently run
# the default); train, eval and pools are checked against what the trainer, evaluation and generator read
SECTION_KEYS = {
    "world": ("n", "seed"),
    "pretrain": ("steps", "batch_size", "lr", "seed", "scenes", "checkpoint"),
    "finetune_captions": ("per_image", "choice"),
    "validation": ("every", "attack", "split", "limit", "captions_per_image", "batch_size"),
    "n_aug_sweep": ("pool", "values"),
    "more_samples": ("pool", "oracle_factor"),
}


# values that are counts (whole numbers >= 1): a 0 failed only when its step came, e.g. the
# sweep's pool subsets or the first validation, after pretraining
COUNTS = {
    "world": ("n",), "pretrain": ("steps", "batch_size"), "finetune_captions": ("per_image",),
    "validation": ("every", "limit", "captions_per_image", "batch_size"), "more_samples": ("oracle_factor",),
}
# the counts a null means something for (every image, every caption, the default factor); another count's
# null was a TypeError: at load (world.n, finetune_captions.per_image, validation.every) or once pretraining began
NULLABLE_COUNTS = {("validation", "limit"), ("validation", "captions_per_image"), ("more_samples", "oracle_factor")}


def _check_shapes(config: dict) -> None:
    """The top-level values every later check reads: strings where paths and names go, mappings
    (or null) for the small sections."""
    for field in ("name", "out"):  # a null `out` failed as a TypeError when the study began
        if not isinstance(config.get(field), str) or not config[field].strip():
            raise MatPlusError(f"study config: {field} must be a non-empty string, got {config.get(field)!r}")
    for section in SECTION_KEYS:
        value = config.get(section)
        if value is not None and not isinstance(value, dict):  # `n_aug_sweep: scene` was an AttributeError
            raise MatPlusError(f"study config: {section} must be a mapping or null, got {value!r}")


def _check_sections(config: dict) -> None:
    """Each small section: no key it does not read, counts that are counts, the sweep's values."""
    for section, known in SECTION_KEYS.items():
        value = config.get(section)
        if not isinstance(value, dict):
            continue
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise MatPlusError(f"study config: unknown {section} keys {unknown} (known: {', '.join(known)})")
        for key in COUNTS.get(section, ()):
            if key in value and (value[key] is not None or (section, key) not in NULLABLE_COUNTS) and not _is_count(value[key]):
                raise MatPlusError(f"study config: {section}.{key} must be a whole number >= 1, got {value[key]!r}")
    for section in ("world", "pretrain"):  # a seed of another type failed only when its stage began
        seed = config[section].get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise MatPlusError(f"study config: {section}.seed must be a non-negative whole number, got {seed!r}")
    problem = pretrain_checkpoint_problem(config)
    if problem:  # found at load, the message names the file; the study found it only when pretraining began
        raise MatPlusError(f"study config: {problem}")
    lr = config["pretrain"].get("lr")
    if not _is_positive_number(lr):
        # the pretrainer refused it only after the world and every pool were built
        raise MatPlusError(f"study config: pretrain.lr must be a positive number, got {lr!r}")
    sweep = config.get("n_aug_sweep")
    if isinstance(sweep, dict) and sweep.get("pool"):
        values = sweep.get("values")
        if not isinstance(values, list) or not values or not all(_is_count(v) for v in values):
            raise MatPlusError(f"study config: n_aug_sweep.values must be a list of whole numbers >= 1 "
                               f"(augmentations per item), got {values!r}")


def pretrain_checkpoint_problem(config: dict) -> str | None:
    """Why `pretrain.checkpoint` (another study's pretrained model, used instead of pretraining)
    cannot be used, or None (also when it is not set): a retrieval study reads an open_clip
    checkpoint folder (its `open_clip_config.json`), another task's arm any checkpoint folder."""
    checkpoint = config["pretrain"].get("checkpoint")
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str) or not checkpoint:
        return f"pretrain.checkpoint must be a folder's path, got {checkpoint!r}"
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        return (f"pretrain.checkpoint {checkpoint} is not a checkpoint folder (run the study that pretrains it "
                f"first, or leave the key out to pretrain here)")
    if config.get("task", "retrieval") == "retrieval" and not (folder / "open_clip_config.json").exists():
        return f"pretrain.checkpoint {checkpoint} is not a CLIP checkpoint folder (no open_clip_config.json)"
    return None


def generate_arguments(spec: dict) -> list[str]:
    """The `augment generate` options of a pool spec: its method, then each key as an option (a
    true value as a bare switch, a false one left out)."""
    argv = ["--method", str(spec["method"])]
    for key, value in spec.items():
        if key == "method" or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


# augment generate's options the study gives every pool itself (analysis.study.Study.pool)
STUDY_GENERATE_KEYS = ("source", "out", "image_root", "split", "source_split", "overwrite", "progress", "no_progress")


def _check_pool_spec(name: str, spec: dict) -> None:
    """Before anything runs: a pool spec `augment generate` would refuse (an unknown or unread
    option, an unknown method) is one line naming the pool, not a failure after pretraining."""
    import contextlib
    import io

    from augment.cli import build_parser
    from augment.commands.generate import options_given
    from augment.generators import check_options_read

    # the study sets these itself (the fine-tuning world, the study's pools folder): given here they were
    # silently overridden, and a `split: test` pool failed as a leak only after pretraining and several runs
    owned = sorted(key for key in spec if key in STUDY_GENERATE_KEYS)
    if owned:
        raise MatPlusError(f"study config: pool {name!r}: {', '.join(owned)} {'is' if len(owned) == 1 else 'are'} set "
                           "by the study (its fine-tuning world's train split, its pools folder): leave "
                           f"{'it' if len(owned) == 1 else 'them'} out")
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):  # argparse prints its usage; its last line is the error
            args = build_parser().parse_args(["generate", *generate_arguments(spec), "--source", "-", "--out", "-"])
        check_options_read(args.method, args, options_given(args))
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        raise MatPlusError(f"study config: pool {name!r}: {lines[-1] if lines else 'bad options'}") from None
    except MatPlusError as exc:
        raise MatPlusError(f"study config: pool {name!r}: {exc}") from None


# what the retrieval study's evaluation reads (train eval's options of the same meaning): a key it
# does not read (a typo of `protocol`) would silently evaluate under the defaults after hours of training
RETRIEVAL_EVAL_KEYS = (*DEFAULTS["eval"], "protocol", "attack_protocol", "reference_bugs")


def eval_pgd_step_size(evaluation: dict) -> float | None:
    """eval.pgd_step_size as a number; None when unset (the attacks then step by attack_eps / 4)."""
    from train.config import parse_fraction

    step = evaluation.get("pgd_step_size")
    return None if step is None else parse_fraction(step, "eval.pgd_step_size")


def eval_attack_options(evaluation: dict) -> dict:
    """The attack options the retrieval study's evaluation passes to `train.evaluate.evaluate`."""
    from train.config import parse_fraction

    return {"eps": parse_fraction(evaluation["attack_eps"], "eval.attack_eps"), "steps": evaluation["pgd_steps"],
            "step_size": eval_pgd_step_size(evaluation),
            "top_k": evaluation.get("top_k", ATTACK_DEFAULTS.top_k), "budget": evaluation.get("word_budget", ATTACK_DEFAULTS.budget),
            "mlm": evaluation["mlm"],
            **{key: evaluation[key] for key in ("protocol", "attack_protocol", "reference_bugs") if key in evaluation}}


def _in_eval_keys(message: str) -> str:
    """`AttackSettings`' message ("steps must be ...; top_k ...") with each clause that starts with a
    setting's name naming its eval key (train eval's flag in underscores: `eval.pgd_steps`); a first
    clause that names none ("unknown protocol ...") gets the section."""
    import dataclasses

    from train.attacks.settings import OPTION_FLAGS, AttackSettings, renamed_clauses

    keys = {field.name: "eval." + (OPTION_FLAGS[field.name][2:].replace("-", "_") if field.name in OPTION_FLAGS
                                   else field.name) for field in dataclasses.fields(AttackSettings)}
    renamed = renamed_clauses(message, keys)
    return renamed if renamed.startswith("eval.") else "eval: " + renamed


def _is_positive_number(value) -> bool:
    """A number > 0; YAML 1.1 reads `1e-3` as the string '1e-3', which the trainer parses as a number too."""
    if isinstance(value, bool):
        return False
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _is_count(value) -> bool:
    """A whole number >= 1 (YAML's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# the sample world's splits (augment.world.writer)
WORLD_SPLITS = ("train", "val", "test")
HEADLINE_CAPTIONS = ("meaning_preserved", "all")


def _check_methods(methods) -> None:
    from train.config import METHODS

    if not isinstance(methods, list) or not methods:
        raise MatPlusError(f"study config: methods must be a list of training methods, got {methods!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MatPlusError(f"study config: unknown methods {unknown} (choose from {', '.join(METHODS)})")


def _check_split(name: str, split) -> None:
    if split not in WORLD_SPLITS:
        raise MatPlusError(f"study config: {name} {split!r} is not a split of the sample world ({', '.join(WORLD_SPLITS)})")


def _check_attack_names(name: str, attacks, known: tuple[str, ...] | None = None, task: str = "") -> None:
    """`attacks` a list of names of `known` (default: retrieval's attacks; `task` names another's)."""
    from train.attacks import ATTACK_NAMES

    known = known or ATTACK_NAMES
    if not isinstance(attacks, list) or not all(isinstance(a, str) for a in attacks):
        # `attacks: pgd` was read letter by letter ("unknown attacks ['p', 'g', 'd']")
        raise MatPlusError(f"study config: {name} must be a list of attack names, e.g. [clean, pgd], got {attacks!r}")
    unknown = [a for a in attacks if a not in known]
    if unknown:
        raise MatPlusError(f"study config: {name}: unknown {task + ' ' if task else ''}attacks {unknown} "
                           f"(choose from {', '.join(known)})")


def _check_retrieval_headline(config: dict, given: dict) -> None:
    """What the report headlines, and the validation attack, are checked against what is evaluated:
    a wrong name used to surface only in the report or at the first validation, after training."""
    attacks = config["eval"]["attacks"]
    if config["headline_attack"] not in attacks:
        raise MatPlusError(f"study config: headline_attack {config['headline_attack']!r} is not among eval.attacks {attacks}")
    if config["headline_captions"] not in HEADLINE_CAPTIONS:
        raise MatPlusError(f"study config: headline_captions must be one of {', '.join(HEADLINE_CAPTIONS)}, "
                           f"got {config['headline_captions']!r}")
    validation = config.get("validation")
    if isinstance(validation, dict):
        validated = validation.get("attack", config["headline_attack"])
        _check_attack_names("validation.attack", [validated])
        if validated != config["headline_attack"]:  # the headline attack is one of eval.attacks, checked there
            _check_attacks_change_something({**config["eval"], "attacks": [validated]}, "retrieval", "validation.attack")
        _check_split("validation.split", validation.get("split", "val"))
        if validation.get("split", "val") == config["eval"]["split"]:  # the report calls it best-on-validation
            raise MatPlusError(f"study config: validation.split {config['eval']['split']!r} is eval.split: the best "
                               "checkpoint would be chosen on the images it is then evaluated on; validate on another split")
    # the default [tecoa, mat] keeps the methods the study runs; a run named in the config must exist
    from analysis.study import run_specs

    runs = {spec.name for spec in run_specs(config)}
    if "headline_runs" in given:
        if not isinstance(config["headline_runs"], list) or not all(isinstance(r, str) for r in config["headline_runs"]):
            # `headline_runs: mat` was read letter by letter
            raise MatPlusError(f"study config: headline_runs must be a list of run names, e.g. [mat], "
                               f"got {config['headline_runs']!r}")
        unknown = [r for r in config["headline_runs"] if r not in runs]
        if unknown:
            raise MatPlusError(f"study config: headline_runs {unknown} are not runs of this study ({', '.join(sorted(runs))})")
    else:
        config["headline_runs"] = [r for r in config["headline_runs"] if r in runs]


def _check_gallery(evaluation: dict) -> None:
    """What every task's evaluation reads of its gallery: the split, `limit`, `batch_size`, `captions_per_image`."""
    _check_split("eval.split", evaluation["split"])
    limit = evaluation.get("limit")
    if limit is not None and not _is_count(limit):
        raise MatPlusError(f"study config: eval.limit must be null (every image) or a whole number >= 1, got {limit!r}")
    # a 0 here was a division by zero in the evaluation, after every run had trained
    if not _is_count(evaluation["batch_size"]):
        raise MatPlusError(f"study config: eval.batch_size must be a whole number >= 1, got {evaluation['batch_size']!r}")
    captions = evaluation.get("captions_per_image")
    if captions is not None and not _is_count(captions):
        raise MatPlusError(f"study config: eval.captions_per_image must be null (every caption) or a whole number >= 1, "
                           f"got {captions!r}")


def _check_retrieval_eval(evaluation: dict) -> None:
    """Unknown eval keys, unknown attacks, a split the world lacks, and the attack options
    `AttackSettings` refuses, before any training."""
    from train.attacks.settings import AttackSettings

    _refuse_unknown_eval(evaluation, RETRIEVAL_EVAL_KEYS)
    _check_attack_names("eval.attacks", evaluation["attacks"])
    _check_gallery(evaluation)
    _check_mlm("eval.mlm", evaluation["mlm"])
    steps = evaluation.get("pgd_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps < 1:  # as train eval and the other tasks'
        # arms (a 0-step PGD was reported as robust R@1); AttackSettings allows 0 for training's inner attack
        # and names a value of another type
        raise MatPlusError(f"study config: eval.pgd_steps must be a whole number >= 1, got {steps!r}")
    _check_attacks_change_something(evaluation, "retrieval")
    options = eval_attack_options(evaluation)
    options.pop("mlm")  # a model name, loaded by the evaluation, not an attack setting
    try:
        settings = AttackSettings.from_options(**options)
    except ValueError as exc:
        raise MatPlusError(f"study config: {_in_eval_keys(str(exc))}") from None
    # as train eval: under a reference protocol the Co-Attack code's schedule sets its own step, and the
    # reference bugs live in some attacks only; a setting none of eval.attacks reads is refused
    from train.commands_eval import attack_option_readers

    readers = attack_option_readers("retrieval", settings.protocol, settings.candidates)
    for key in ("pgd_step_size", "reference_bugs"):
        if evaluation.get(key) and not set(readers.get(key, ())) & set(evaluation["attacks"]):
            raise MatPlusError(f"study config: eval.{key} is read by none of eval.attacks {evaluation['attacks']} "
                               f"under protocol {settings.protocol} (read by {', '.join(readers[key])}): leave it out")


# keys only the retrieval study reads: another task refuses them unless empty
RETRIEVAL_ONLY = ("validation", "n_aug_sweep", "more_samples", "headline_attack", "headline_captions")


def _task_config(config: dict, given: dict) -> dict:
    """A study of another task: its arm's model, methods and `eval` defaults under what the config gives."""
    from analysis.task_arms import load_arm

    task = config["task"]
    arm = load_arm(task)
    asked = [key for key in RETRIEVAL_ONLY if given.get(key) not in (None, "", {}, [])]
    if asked:
        raise MatPlusError(f"study config: {', '.join(asked)} {'applies' if len(asked) == 1 else 'apply'} "
                           f"to task retrieval only, not {task}")
    config = {**config, **{key: None for key in RETRIEVAL_ONLY}}
    config["model"] = given.get("model") or arm.MODEL
    config["methods"] = list(given.get("methods") or arm.METHODS)
    refused = [m for m in config["methods"] if m not in arm.METHODS]
    if refused:
        raise MatPlusError(f"study config: method(s) {', '.join(refused)} not available for task {task} "
                           f"(choose from {', '.join(arm.METHODS)})")
    config["headline_runs"] = [r for r in config["headline_runs"] if r in config["methods"]]
    config["eval"] = _merge(arm.DEFAULT_EVAL, given.get("eval") or {})
    _refuse_unknown_eval(config["eval"], tuple(arm.DEFAULT_EVAL))
    _check_task_eval(task, config["eval"])
    return config


def _check_attacks_change_something(evaluation: dict, task: str, key: str = "eval.attacks") -> None:
    """eval.attacks (or the validation attack, `key`) of which eval.word_budget 0 switches off every part
    (bert-attack, synonym; captioning's prompt): each reported clean's numbers under its name, as `train eval` now
    refuses (the budgets' other zeros are refused as values: eval.attack_eps, eval.pgd_steps)."""
    from train.validation import every_part_off

    budget = evaluation.get("word_budget")
    inert = [name for name in evaluation.get("attacks") or () if every_part_off(name, task, None, None, budget)]
    if inert:
        one = len(inert) == 1
        raise MatPlusError(f"study config: {key} {', '.join(inert)} would change nothing with eval.word_budget 0 "
                           f"(clean's numbers under {'its' if one else 'their'} name{'' if one else 's'}): leave "
                           f"{'it' if one else 'them'} out or raise eval.word_budget")


def _check_task_eval(task: str, evaluation: dict) -> None:
    """Another task's eval values that its evaluation would refuse only after every run had trained:
    attack names, the split, counts and the attack budget."""
    from analysis.task_arms import load_arm
    from train.config import ConfigError, parse_fraction

    names = load_arm(task).attack_names()  # each arm's own: a new arm's task was a KeyError here
    _check_attack_names("eval.attacks", evaluation.get("attacks"), names, task)
    _check_attacks_change_something(evaluation, task)
    _check_gallery(evaluation)
    _check_mlm("eval.mlm", evaluation.get("mlm"))
    # the PGD budget, where the arm's evaluation has one (a new arm's may not: a KeyError here)
    if "pgd_steps" in evaluation and not _is_count(evaluation["pgd_steps"]):
        raise MatPlusError(f"study config: eval.pgd_steps must be a whole number >= 1, got {evaluation['pgd_steps']!r}")
    if "attack_eps" in evaluation:
        try:
            eps = parse_fraction(evaluation["attack_eps"], "eval.attack_eps")
        except (ConfigError, ValueError, TypeError) as exc:
            raise MatPlusError(f"study config: {exc}") from None
        if not eps > 0:
            raise MatPlusError(f"study config: eval.attack_eps must be positive, got {evaluation['attack_eps']!r}")


def _check_mlm(where: str, name) -> None:
    """A masked LM the attacks would load only when the evaluation (or an attacked step) starts:
    an unknown or missing one is named now. None and "default" leave the choice to the victim."""
    from augment.errors import ModelLoadError
    from augment.registry import check_loadable

    if name is None or name == "default":
        return
    try:
        check_loadable(name, "mlm")
    except ModelLoadError as exc:
        raise MatPlusError(f"study config: {where}: {exc}") from None


# the study's old eval key -> train eval's name (refused with this hint, never aliased)
RENAMED_EVAL = {"eps": "attack_eps"}


def _refuse_unknown_eval(evaluation: dict, known: tuple) -> None:
    """An eval key the evaluation does not read (a typo, an old name) would silently evaluate under
    the defaults after hours of training: one line naming it."""
    unknown = sorted(set(evaluation) - set(known))
    if unknown:
        renamed = [f"eval.{k} is now eval.{RENAMED_EVAL[k]}" for k in unknown if k in RENAMED_EVAL]
        hint = f"; {'; '.join(renamed)}" if renamed else ""
        raise MatPlusError(f"study config: unknown eval keys {unknown} (known: {', '.join(known)}{hint})")


# trainer settings the study sets for each run itself (from `model`, `seeds`, `pools`, its folders,
# `validation:`): a value in `train:` would be overwritten or fight the study's own
STUDY_SETS = ("method", "task", "model", "pretrained", "train_data", "pools", "pool_mode", "pool_weights", "seed",
              "out", "resume", "overwrite", "progress", "val_frequency", "val_data", "val_split", "val_attack",
              "val_limit")
# the study's own old train key -> the trainer's name (with the trainer's renames, train.config.RENAMED:
# warmup_steps, text_attack, ...; refused with this hint, never aliased)
RENAMED_TRAIN = {"steps": "max_steps"}


def method_train_settings(train: dict, method: str) -> dict:
    """The `train:` settings `train METHOD` offers (clean takes no attack options, tecoa and fare no
    text attack's); the others belong to other methods."""
    from train.cli import method_settings
    from train.config import MULTIMODAL_METHODS

    offered = method_settings(method)
    if method not in MULTIMODAL_METHODS:  # offered to clean/tecoa/fare for --val-attack only; the study
        offered = offered - {"mlm"}       # validates with eval's masked LM (Study.validator)
    return {key: value for key, value in train.items() if key in offered}


def _check_train(config: dict) -> None:
    """`train:` holds trainer settings by the trainer's names; each method's settings are checked
    by the trainer's own rules now, not after pretraining."""
    from train.config import ADAM_EPS_MAX, FIELD_NAMES, RENAMED, ConfigError, resolve_config

    train = config["train"]
    owned = sorted(set(train) & set(STUDY_SETS))
    if owned:
        raise MatPlusError(f"study config: train.{', train.'.join(owned)} {'is' if len(owned) == 1 else 'are'} "
                           f"set by the study for each run (model, seeds, pools, validation:): leave "
                           f"{'it' if len(owned) == 1 else 'them'} out")
    unknown = sorted(set(train) - set(FIELD_NAMES))
    if unknown:
        names = {**RENAMED, **RENAMED_TRAIN}
        renamed = [f"train.{k} is now train.{names[k]}" for k in unknown if k in names]
        hint = f" ({'; '.join(renamed)})" if renamed else ""
        raise MatPlusError(f"study config: unknown train keys {unknown}{hint}; train: takes `train METHOD`'s "
                           "settings by their names")
    eps = train.get("eps")
    if eps is not None and (isinstance(eps, str) and "/" in eps or isinstance(eps, (int, float)) and eps >= ADAM_EPS_MAX):
        raise MatPlusError(f"study config: train.eps {eps} is AdamW's epsilon (the trainer's --eps); "
                           "the PGD budget is train.attack_eps")
    _check_mlm("train.mlm", train.get("mlm"))
    steps = train.get("max_steps")
    if not _is_count(steps):
        raise MatPlusError(f"study config: train.max_steps must be a whole number of steps >= 1 (budgets are steps), "
                           f"got {steps!r}")
    for method in config["methods"]:
        placeholders = {"method": method, "model": config["model"], "train_data": "study", "out": "study",
                        "pools": ["pool"] if method == "mat+" else []}
        if config["task"] != "retrieval":
            placeholders["task"] = config["task"]
        try:
            resolve_config(run_train_settings(method_train_settings(train, method), pooled=method == "mat+"), placeholders)
        except ConfigError as exc:
            raise MatPlusError(f"study config: train ({method}): {exc}") from None


def run_train_settings(settings: dict, pooled: bool, pool_mode: str = "sample") -> dict:
    """A method's `train:` settings less the ones its run leaves unread (the trainer would refuse them):
    the pool settings need pools, p_original sampled ones."""
    settings = dict(settings)
    if not pooled:
        settings.pop("allow_pool_mismatch", None)
    if not pooled or pool_mode == "expand":
        settings.pop("p_original", None)
    if settings.get("mlm") is None:  # the trainer's default masked LM
        settings.pop("mlm", None)
    return settings
