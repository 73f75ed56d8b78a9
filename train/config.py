"""Training configuration: defaults < YAML file (`--config`) < command line, resolved once.

`TrainConfig` lists every setting with its default. `resolve_config` merges the three layers,
checks values, and fills the settings whose default depends on others (`DERIVED_SETTINGS`:
`pgd_step_size`, `lock_text`, `mlm`, `workers`, `pool_weights`). The `config.yaml` written into RUN
says exactly what ran and can be fed back with `--config` to repeat it: a derived setting is written
as null (its value in the file's `derived:` section), so fed back with other settings it is derived
again from them (a new `--attack-eps` gets its own PGD step, a new `--model` its own masked LM),
while one the user gave keeps its value.

YAML keys are the option names with `_` or `-` (`batch_size` or `batch-size`); `attack_eps` and
the PGD step size also accept fractions such as "2/255". `--grad-clip-norm` and `--log-every-n-steps`
(open_clip_train's names) are the settings `max_grad_norm` and `log_every` (the keys config.yaml
keeps, so older runs still resume); a YAML file may spell them either way.

Names follow open_clip_train where a setting means the same thing there (`--train-data`, `--wd`,
`--warmup`, `--eps` = AdamW's epsilon, `--precision amp|amp_bf16|fp32|tf32`, `--workers`,
`--report-to`, `--lock-image`/`--lock-text`, `--grad-checkpointing`, `--val-frequency`,
`--resume latest`); a key of the old spelling is refused with one line naming the new one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from augment.atomic import atomic_write_text
from augment.errors import MatPlusError, first_line
from models.half_precision import HALF_WEIGHTS, PRECISIONS as MIXED_PRECISIONS
from train.attacks.settings import ATTACK_DEFAULTS, TEXT_CANDIDATES, pgd_step_size

METHODS = ("clean", "tecoa", "fare", "mat", "mat+")
ADVERSARIAL_METHODS = ("tecoa", "fare", "mat", "mat+")
MULTIMODAL_METHODS = ("mat", "mat+")
INNER_ORDERS = ("text-image", "image-text", "alternate")
POOL_MODES = ("sample", "expand")
# open_clip_train's --precision names; the trainer runs mixed precision through accelerate
# (weights in fp32, autocast): the "pure"/half-weight ones are refused in one line
PRECISIONS = MIXED_PRECISIONS + HALF_WEIGHTS
# tf32: fp32 under accelerate, the trainer allowing TF32 products on a GPU (Trainer.matmul_precision)
ACCELERATE_PRECISION = {"amp": "fp16", "amp_fp16": "fp16", "amp_bf16": "bf16", "amp_bfloat16": "bf16", "fp32": "no",
                        "tf32": "no"}
# one name per precision that runs alike, so a resume under the other spelling is the same setting
CANONICAL_PRECISION = {"amp_fp16": "amp", "amp_bfloat16": "amp_bf16"}
REPORT_TO = ("tensorboard", "wandb", "all", "none")
# old keys of this trainer -> their open_clip_train spelling (refused with this hint, never aliased)
RENAMED = {
    "source": "train_data", "weight_decay": "wd", "warmup_steps": "warmup", "freeze_text": "lock_text",
    "tensorboard": "report_to", "wandb": "report_to", "wandb_project": "wandb_project_name",
    "mlm_top_k": "top_k",  # it also limits WordNet's synonyms; train eval's name
    "text_attack": "text_candidates",  # train eval's name; "text attack" is the attack itself
}
# the renames that kept the meaning and the type: a run's own saved config.yaml written before them
# is read under the new names (load_saved_config), so a run of an older version still resumes
SAME_MEANING_RENAMES = ("source", "weight_decay", "warmup_steps", "freeze_text", "wandb_project", "mlm_top_k",
                        "text_attack")
# Adam's epsilon above this is a PGD budget given under open_clip's name, not an optimizer setting
ADAM_EPS_MAX = 1e-3

CONFIG_FILE = "config.yaml"
MAX_SEED = 2**64 - 1  # torch.manual_seed's largest: a larger --seed was "ValueError: Overflow when unpacking long long"
# config.yaml's section of the values its null (derived) settings had in the run; not a setting
DERIVED_SECTION = "derived"
# settings whose None means "from the other settings" (`_fill_derived`)
DERIVED_SETTINGS = ("pgd_step_size", "lock_text", "mlm", "workers", "pool_weights")
# what the trainer's set-up derives from the loaded model and the device (`run_derived`): ALBEF's momentum
# distillation left null (on for clean, where the family has momentum encoders: `Trainer._build_task_and_model`),
# and the precision that ran where it is not the one asked (tf32 off a CUDA device is fp32: `Trainer.setup`).
# config.yaml's `derived:` section records the value; a resume compares the setting as given (the method, model
# and precision it follows from are compared too; the device may change), so load_saved_config does not read it back
RUN_DERIVED = ("momentum_distillation", "precision")
# settings whose option is open_clip_train's name, not the setting's (the old option stays an alias)
OPTION_NAMES = {"max_grad_norm": "--grad-clip-norm", "log_every": "--log-every-n-steps"}
# YAML keys of those option names -> the setting (config.yaml keeps the setting's name)
YAML_ALIASES = {"grad_clip_norm": "max_grad_norm", "log_every_n_steps": "log_every"}
# masked LM of the text attack for the tiny CLIP (real models get the registry's default)
TINY_MLM = "tiny-mlm"


class ConfigError(MatPlusError):
    """A training setting is missing, unknown or out of range."""


@dataclass
class TrainConfig:
    """Every training setting. Field names are the command-line options with `_` for `-`."""

    method: str = "clean"
    task: str = "retrieval"  # tasks.TASKS: retrieval, captioning, grounding
    # model: any name models.load_model accepts (open_clip architecture + pretrained tag, Hub id,
    # local folder, tiny twin)
    model: str = "tiny-clip"
    pretrained: str | None = None
    # ALBEF/TCL checkpoints of another size: ALBEF's YAML (image_res, vision sizes) and BERT config
    # JSON (fusion_layer), and the tokenizer (default bert-base-uncased)
    albef_config: str | None = None
    albef_bert_config: str | None = None
    albef_tokenizer: str | None = None
    # ALBEF's momentum distillation (momentum encoders + queue); None: on for clean, off otherwise
    momentum_distillation: bool | None = None
    # captioning: the text the decoder starts from, left out of the loss (BLIP's COCO setting "a picture of");
    # None: the model's own (a folder training saved keeps its prompt)
    prompt: str | None = None
    # grounding on the sample world: counterfactual (edited-scene) ITM pairs (tasks/grounding.py)
    counterfactual_pairs: bool = True
    # data (open_clip_train's --train-data: any source augment reads; CSV/TSV columns as open_clip names them)
    train_data: str | None = None
    image_root: str | None = None
    train_split: str = "train"
    csv_img_key: str = "image"
    csv_caption_key: str = "caption"
    csv_separator: str | None = None  # None: "," for .csv, tab for .tsv
    # how the source is read, as every command that reads one takes it (augment.commands.common)
    source_split: str | None = None  # split for sources that name none (CSV/TSV, ALBEF files)
    allow_outside_root: bool = False  # image paths leading out of the image root (open_clip TSVs: absolute paths)
    validate: bool = False  # decode every image before training
    skip_bad: bool = False  # leave bad records out (decodes every image first); report: skip_report
    skip_report: str | None = None  # default: beside --out (RUN.skipped.json)
    workers: int | None = None  # DataLoader worker processes per training process; None: from the CPU count
    pools: list[str] = field(default_factory=list)
    pool_weights: list[float] | None = None  # one per pool; None: equal weights
    p_original: float = 0.5  # chance that an item's view in a step is its original pair
    pool_mode: str = "sample"
    allow_pool_mismatch: bool = False  # pools from another source fingerprint: warn, not refuse
    out: str | None = None
    # optimisation
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs
    schedule_steps: int | None = None  # length of the cosine schedule; None: the run's length
    batch_size: int = 64  # per process
    lr: float = 1e-5
    wd: float = 0.1  # AdamW weight decay
    eps: float = 1e-6  # AdamW epsilon (open_clip's --eps); the PGD budget is attack_eps
    warmup: int = 0  # linear warm-up steps
    grad_accum: int = 1
    max_grad_norm: float | None = None
    precision: str = "fp32"
    seed: int = 0
    cpu: bool = False  # force the CPU even when a GPU is present
    grad_checkpointing: bool = False  # recompute activations in the backward pass (models' set_grad_checkpointing)
    # which towers train; lock_text None: the method's default (TeCoA and FARE lock the text tower)
    lock_image: bool = False
    lock_text: bool | None = None
    # attacks
    # attack defaults are shared with `train eval` and the study (train.attacks.settings)
    attack_eps: float = ATTACK_DEFAULTS.eps
    pgd_steps: int = ATTACK_DEFAULTS.steps
    pgd_step_size: float | None = ATTACK_DEFAULTS.step_size  # None: eps / 4
    random_start: bool = ATTACK_DEFAULTS.random_start
    clean_weight: float = 0.0
    inner_order: str = "text-image"
    text_candidates: str = "mlm"  # substitutes from a masked LM (BERT-Attack) or WordNet
    mlm: str | None = None  # None: tiny-mlm for tiny twins, else the registry's default masked LM
    top_k: int = ATTACK_DEFAULTS.top_k  # substitutes per word, from the masked LM or WordNet
    word_budget: int = ATTACK_DEFAULTS.budget
    # keep only inner text substitutions this caption filter accepts (train.text_filter; "truth":
    # the sample world's checker); None: every substitution
    text_attack_filter: str | None = None
    # checkpoints and logging
    save_every: int = 0  # 0: only at the end
    log_every: int = 1
    resume: str | None = None  # "latest" (the checkpoint in `out`) or a checkpoint folder
    overwrite: bool = False
    progress: bool = True
    report_to: str = "none"  # tensorboard, wandb, all, none (comma-separated list allowed)
    wandb_project_name: str = "mat-plus"
    # in-training validation (train.validation.Validator): every val_frequency epochs, the task's robust score
    # (R@1, CIDEr, grounding accuracy) under val_attack on val_split of val_data (default: the train data's source)
    val_frequency: int = 0  # 0: no validation
    val_data: str | None = None
    val_image_root: str | None = None  # image folder of --val-data (--image-root is the train data's)
    val_split: str = "val"
    val_attack: str = "pgd"
    val_limit: int | None = 50
    # captioning validation's CIDEr: how Chinese/Japanese text is cut first (train.caption_metrics.segment_cjk)
    val_segment_cjk: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULTS = TrainConfig()
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
# settings that may change when a killed run is resumed (how long, how often, how loud)
RESUMABLE_CHANGES = frozenset({
    "epochs", "max_steps", "schedule_steps", "save_every", "log_every", "resume", "overwrite", "out",
    "progress", "report_to", "wandb_project_name", "cpu", "workers", "grad_checkpointing",
    "val_frequency", "val_data", "val_image_root", "val_split", "val_attack", "val_limit", "validate", "allow_outside_root", "skip_report",
    "val_segment_cjk",
})

# settings that change nothing a run makes (its weights, metrics.jsonl, validation): where its metrics
# also go, its progress bar, the processes decoding its data (bit-identical weights, tests/test_trainer.py)
# and how often a checkpoint is kept; the study leaves them out of a run's cache key
OUTPUT_NEUTRAL_SETTINGS = frozenset({"report_to", "wandb_project_name", "progress", "workers", "save_every"})


def option_name(name: str) -> str:
    """The command-line option of setting `name` (`max_grad_norm`: --grad-clip-norm)."""
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def _unknown_settings(names, where: str) -> None:
    """Refuse unknown keys in one line; a key of the old spelling names its new one."""
    unknown = sorted(set(names) - set(FIELD_NAMES))
    if not unknown:
        return
    renamed = [f"{k} is now {RENAMED[k]}" for k in unknown if k in RENAMED]
    hint = f" ({'; '.join(renamed)})" if renamed else ""
    raise ConfigError(f"{where}unknown settings {unknown}{hint}")


def parse_fraction(value: Any, name: str = "value") -> float:
    """A float from 0.0078, "0.0078" or "2/255"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{name}: cannot read {value!r} as a number (e.g. 0.0078 or 2/255)") from None


def _read_settings_file(path: Path) -> dict[str, Any]:
    """A YAML mapping of settings, keys spelt with '_' ('-' accepted); not yet checked."""
    import yaml

    from augment.yaml_settings import load_settings_yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} is a folder, not a YAML file" if path.is_dir()
                          else f"config file {path} does not exist")
    try:
        data = load_settings_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    settings = {str(k).replace("-", "_"): v for k, v in data.items()}
    for alias, name in YAML_ALIASES.items():  # open_clip_train's option names, as the help shows them
        if alias in settings:
            if name in settings:
                raise ConfigError(f"{path}: {alias} and {name} are one setting ({option_name(name)}): keep one")
            settings[name] = settings.pop(alias)
    return settings


def _derived_section(settings: dict[str, Any], path: Path) -> dict[str, Any]:
    """Pop config.yaml's `derived:` section (what its null settings were derived as in the run)."""
    derived = settings.pop(DERIVED_SECTION, None) or {}
    if not isinstance(derived, dict):
        raise ConfigError(f"{path}: {DERIVED_SECTION}: expected a mapping of settings, got {type(derived).__name__}")
    return derived


def read_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Settings from a YAML mapping; keys may use '-' or '_'; unknown keys are refused. A run's
    config.yaml: its derived settings are null there, so they are derived again (its `derived:`
    section, the values they had in that run, is not read)."""
    settings = _read_settings_file(Path(path))
    _derived_section(settings, Path(path))
    _unknown_settings(settings, f"{path}: ")
    return settings


def _is_tiny_twin(model: str) -> bool:
    """A tiny twin itself, a folder holding one (`augment save-tiny DIR`'s) or a model trained from one (e.g. a
    run's ckpt)."""
    from augment.tiny import is_tiny_name
    from models.base import bare_name, recorded_tiny_twin

    model = bare_name(model)  # `transformers:tiny-hf-clip`, `transformers:RUN/ckpt` too
    if is_tiny_name(model):
        return True
    try:
        return bool(recorded_tiny_twin(Path(model).expanduser()))
    except (OSError, ValueError):
        return False


def default_mlm(model: str) -> str:
    """The text attack's masked LM for a model named on the command line: tiny-mlm for tiny twins
    (offline), else the registry's. `default_mlm_of` answers the same for a loaded model."""
    return _default_mlm(tiny=_is_tiny_twin(model))


def default_mlm_of(model) -> str:
    """The text attack's masked LM for a loaded model of any task: tiny-mlm when it is, or was trained
    from, a tiny twin (`load_model` records which in `model.tiny_twin`), else the registry's."""
    return _default_mlm(tiny=bool(getattr(model, "tiny_twin", None)))


def _default_mlm(tiny: bool) -> str:
    if tiny:
        return TINY_MLM
    from augment.registry import DEFAULT_MODELS

    return DEFAULT_MODELS["mlm"]


def _splits_overlap(first: str, second: str) -> bool:
    """Whether two split arguments share rows (`all` shares every row; `train+restval` and `restval` do)."""
    from augment.errors import SourceError
    from augment.sources import split_names

    if "all" in (first, second):
        return True
    try:
        return bool(set(split_names(first)) & set(split_names(second)))
    except SourceError:  # an unknown name: the source's read says so in its own line
        return first == second


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _coerce(settings: dict[str, Any]) -> dict[str, Any]:
    """Types from YAML/CLI values (numbers as strings, fractions, single pools)."""
    out = dict(settings)
    if isinstance(out.get("eps"), str) and "/" in out["eps"]:
        raise ConfigError(f"--eps {out['eps']}: --eps is AdamW's epsilon (as in open_clip); the PGD budget is --attack-eps")
    if isinstance(out.get("resume"), bool):  # config.yaml of a run: resume false
        out["resume"] = "latest" if out["resume"] else None
    for name in ("attack_eps", "pgd_step_size", "eps"):
        if out.get(name) is not None:
            out[name] = parse_fraction(out[name], name)
    if "pools" in out:
        out["pools"] = [str(p) for p in _as_list(out["pools"])]
    if out.get("pool_weights") is not None:
        out["pool_weights"] = [parse_fraction(w, "pool_weights") for w in _as_list(out["pool_weights"])]
    for name in ("lr", "wd", "p_original", "clean_weight", "max_grad_norm"):
        if out.get(name) is not None:
            out[name] = parse_fraction(out[name], name)
    return out


def resolve_config(*layers: dict[str, Any]) -> TrainConfig:
    """Merge setting layers (later wins) over the defaults, check them, fill derived defaults."""
    merged: dict[str, Any] = {}
    for layer in layers:
        _unknown_settings(layer, "")
        merged.update(layer)
    config = TrainConfig(**_checked_types(_coerce(merged)))
    _validate(config)
    _use_canonical_spellings(config)
    # which settings were derived here (not given): save_config writes them as null, so that
    # fed back with --config they are derived again from the settings then
    config.derived_settings = _fill_derived(config)
    return config


_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a text"}


def _checked_types(settings: dict[str, Any]) -> dict[str, Any]:
    """Each setting of the type its `TrainConfig` field declares (a YAML config can hold anything:
    `max_steps: 2.5`, `seed: null`, `lock_text: maybe`), whole floats as ints; else one line.
    By hand, not pydantic: not a dependency, and its multi-line reports are not the one line named
    by the option that every bad input gets here."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out = dict(settings)
    for name, value in settings.items():
        kinds = [part.strip() for part in declared.get(name, "").split("|")]
        base = next((k for k in kinds if k != "None"), "")
        if base not in _TYPE_WORDS or (value is None and "None" in kinds):
            continue  # lists and the like: `_coerce` made them
        if base == "int" and isinstance(value, float) and value.is_integer():
            out[name] = value = int(value)
        fits = {"int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "bool": isinstance(value, bool), "str": isinstance(value, str)}[base]
        if not fits:
            raise ConfigError(f"{name}: expected {_TYPE_WORDS[base]}{' or null' if 'None' in kinds else ''}, "
                              f"got {value!r}")
        if base == "float":
            out[name] = float(value)
    return out


def _is_table_file(source: str | None) -> bool:
    from augment.source_formats import is_table_file  # here: `train --help` imports no more than it needs

    return is_table_file(source)


# settings that other settings make unread: name -> (unread?, why). A value other than the
# default there would be silently ignored, so it is refused; the method-specific ones (attack
# options for clean, text-attack options for tecoa) are kept off the command line by the
# method's parser instead, and a saved RUN/config.yaml (fed back with --config) holds only
# defaults or read values here
UNREAD_WHEN: dict[str, tuple[Callable[[TrainConfig], bool], str]] = {
    "p_original": (lambda c: not c.pools or c.pool_mode == "expand", "without --pools or with --pool-mode expand"),
    "pool_mode": (lambda c: not c.pools, "without --pools"),
    # expand takes every view once; equal weights (what a saved config.yaml holds) change nothing
    "pool_weights": (lambda c: c.pool_mode == "expand" and c.pool_weights is not None and len(set(c.pool_weights)) > 1,
                     "with --pool-mode expand (every view of every pool is taken once)"),
    "allow_pool_mismatch": (lambda c: not c.pools, "without --pools"),
    # clean, tecoa and fare attack text only when validating (an MLM --val-attack)
    "mlm": (lambda c: (not _trains_on_substitutions(c) or c.text_candidates != "mlm") and not validation_reads_mlm(c),
            "with --text-candidates wordnet (WordNet synonyms, no masked LM) or --word-budget 0, or by clean, tecoa and "
            "fare, and no --val-attack that reads one"),
    # mat and mat+ with --word-budget 0 change no word (the task's text attack is None): the substitutes' source, their
    # number and their filter were recorded in config.yaml and read by nothing
    **{name: (lambda c: c.method in MULTIMODAL_METHODS and c.word_budget == 0, "with --word-budget 0 (no word is changed)")
       for name in ("text_candidates", "top_k", "text_attack_filter")},
    "inner_order": (lambda c: c.method in MULTIMODAL_METHODS and (c.word_budget == 0 or c.pgd_steps == 0 or c.attack_eps == 0),
                    "with --word-budget 0, --pgd-steps 0 or --attack-eps 0 (one attack only: nothing to order)"),
    # PGD of no step or no budget returns the clean images (train.attacks.pgd_linf, Method._pgd), in training and
    # in validation alike: its step and its random start were recorded and read by nothing
    **{name: (lambda c: c.pgd_steps == 0 or c.attack_eps == 0, "with --pgd-steps 0 or --attack-eps 0 (PGD leaves the images clean)")
       for name in ("pgd_step_size", "random_start")},
    "lock_text": (lambda c: c.method == "fare" and c.lock_text is False, "by fare (its loss never reaches the text tower)"),
    **{name: (lambda c: c.val_frequency == 0, "without --val-frequency")
       for name in ("val_data", "val_split", "val_attack", "val_limit")},
    "val_segment_cjk": (lambda c: c.val_frequency == 0 or c.task != "captioning",
                        "without --val-frequency or outside --task captioning (CIDEr's text)"),
    # without --val-data the train data is validated on, whose images --image-root finds
    "val_image_root": (lambda c: c.val_frequency == 0 or c.val_data is None, "without --val-frequency and --val-data"),
    "wandb_project_name": (lambda c: "wandb" not in report_targets(c), "without --report-to wandb"),
    "skip_report": (lambda c: not c.skip_bad, "without --skip-bad"),
    **{name: (lambda c: not (_is_table_file(c.train_data) or _is_table_file(c.val_data)),
              "for a source that is not a .csv/.tsv file")
       for name in ("csv_img_key", "csv_caption_key", "csv_separator")},
}


def _trains_on_substitutions(c: TrainConfig) -> bool:
    """Whether the training step itself attacks the captions: mat and mat+ with a word budget."""
    return c.method in MULTIMODAL_METHODS and c.word_budget > 0


def validation_reads_mlm(c: TrainConfig) -> bool:
    """Whether in-training validation attacks with a masked LM's substitutes (`--val-attack
    bert-attack|sep|co-attack|sga`, captioning's prompt attacks): `--mlm` names it, whatever
    `--text-candidates` the training's own attack takes."""
    from train.attacks.captioning import PROMPT_ATTACKS
    from train.eval_common import MLM_ATTACKS

    # --word-budget 0 switches their text part off (a text-only attack is refused): no masked LM is read
    return bool(c.val_frequency) and c.val_attack in (*MLM_ATTACKS, *PROMPT_ATTACKS) and c.word_budget > 0


def _check_read(c: TrainConfig) -> None:
    """Refuse, in one line, settings given a value that the other settings leave unread."""
    unread = [(name, why) for name, (is_unread, why) in UNREAD_WHEN.items()
              if getattr(c, name) != getattr(_DEFAULTS, name) and is_unread(c)]
    if unread:
        def flag(name: str) -> str:  # as the user typed it: --no-lock-text sets False
            return "--no-" + name.replace("_", "-") if getattr(c, name) is False else option_name(name)

        named = "; ".join(f"{flag(name)} is not read {why}" for name, why in unread)
        raise ConfigError(f"{named}: leave {'them' if len(unread) > 1 else 'it'} out")


def _validate(c: TrainConfig) -> None:
    _check(c.method in METHODS, f"unknown method {c.method!r}; expected one of {list(METHODS)}")
    from augment.errors import did_you_mean
    from tasks import TASKS
    from train.validation import METRICS as VALIDATED_TASKS

    _check(c.task in TASKS, f"unknown --task {c.task!r}{did_you_mean(c.task, TASKS)}; expected one of {', '.join(TASKS)}")
    # a task registered in tasks.TASKS trains; validating it ran retrieval's evaluation, then a KeyError
    _check(not c.val_frequency or c.task in VALIDATED_TASKS,
           f"--val-frequency: in-training validation knows the tasks {', '.join(VALIDATED_TASKS)}, not {c.task!r} "
           "(train.validation.METRICS): leave it out, or add the task there (README: Adding a task)")
    _check(bool(c.train_data), "no --train-data given (a dataset to train on)")
    _check(bool(c.out), "no --out given (the run folder)")
    _check(bool(c.model), "no --model given")
    if c.method == "mat+":
        _check(bool(c.pools), "mat+ needs --pools (MAT without pools is `train mat`)")
    if c.pool_weights is not None:
        _check(len(c.pool_weights) == len(c.pools),
               f"--pool-weights has {len(c.pool_weights)} values for {len(c.pools)} pools")
        _check(all(0 <= w < math.inf for w in c.pool_weights) and sum(c.pool_weights) > 0,
               "--pool-weights must be non-negative and not all zero")
    _check(0.0 <= c.p_original <= 1.0, f"--p-original must lie in [0, 1], got {c.p_original}")
    _check(c.pool_mode in POOL_MODES, f"unknown --pool-mode {c.pool_mode!r}; expected one of {list(POOL_MODES)}")
    _check(c.inner_order in INNER_ORDERS, f"unknown --inner-order {c.inner_order!r}; expected one of {list(INNER_ORDERS)}")
    _check(c.text_candidates in TEXT_CANDIDATES,
           f"unknown --text-candidates {c.text_candidates!r}; expected one of {list(TEXT_CANDIDATES)}")
    _check(c.precision in PRECISIONS, f"unknown --precision {c.precision!r}; expected one of {list(PRECISIONS)}")
    _check(c.precision in ACCELERATE_PRECISION,
           f"--precision {c.precision}: half-precision weights are not supported by this trainer "
           f"(mixed precision only): use one of {list(ACCELERATE_PRECISION)}")
    _check(c.eps > 0 and c.eps < ADAM_EPS_MAX,
           f"--eps {c.eps:g} is AdamW's epsilon (as in open_clip), expected a small positive number such as 1e-6; "
           "the PGD budget is --attack-eps")
    reports = [r.strip() for r in str(c.report_to).split(",") if r.strip()]
    _check(all(r in REPORT_TO for r in reports),  # "" (open_clip_train's default) = none
           f"unknown --report-to {c.report_to!r}; expected one of {list(REPORT_TO)} or a comma-separated list")
    alone = [r for r in ("none", "all") if r in reports]
    # `none,tensorboard` logged to TensorBoard, `all,none` everywhere: a contradiction, taken silently
    _check(not alone or len(set(reports)) == 1,
           f"--report-to {c.report_to!r}: {alone[0] if alone else ''} stands alone (not in a list with other targets)")
    _check(c.workers is None or c.workers >= 0, "--workers must be non-negative")
    from augment.source_formats import table_options_problem  # not at the top: `train --help` imports no more than it needs

    problem = table_options_problem(c.csv_img_key, c.csv_caption_key, c.csv_separator)
    _check(problem is None, problem or "")
    _check(c.val_frequency >= 0, "--val-frequency must be non-negative")
    _check(c.val_limit is None or c.val_limit >= 1, "--val-limit must be at least 1")
    from train.caption_metrics import CJK_SEGMENTATIONS

    _check(c.val_segment_cjk in CJK_SEGMENTATIONS,
           f"--val-segment-cjk must be one of {', '.join(CJK_SEGMENTATIONS)}, got {c.val_segment_cjk!r}")
    # captioning selects by CIDEr, which is 0 for any caption of a lone image (its IDF is over the evaluated images)
    _check(not (c.val_frequency and c.task == "captioning" and c.val_limit == 1),
           "--val-limit 1: captioning validation selects by CIDEr, which is 0 for any caption of a single image "
           "(its n-gram weights come from the evaluated images' references); use --val-limit 2 or more")
    if c.val_frequency:
        from train.attacks import ATTACK_NAMES
        from train.attacks.captioning import CAPTION_ATTACK_NAMES

        names = CAPTION_ATTACK_NAMES if c.task == "captioning" else ATTACK_NAMES  # grounding's: retrieval's names
        _check(c.val_attack in names, f"unknown --val-attack {c.val_attack!r} for --task {c.task}; expected one of {list(names)}")
    _check_validation_attack_runs(c)
    _check(not (c.method == "fare" and c.lock_image), "--lock-image with fare leaves nothing to train (FARE trains the image tower only)")
    _check(not (c.lock_image and c.lock_text), "--lock-image and --lock-text together leave nothing to train")
    # as the study's seeds (numpy's generators refuse a negative seed)
    _check(c.seed >= 0, f"--seed must be non-negative, got {c.seed}")
    _check(c.seed <= MAX_SEED, f"--seed must be at most 2**64 - 1 (torch's largest seed), got {c.seed}")
    _check(c.epochs >= 1, "--epochs must be at least 1")
    _check(c.max_steps is None or c.max_steps >= 1, "--max-steps must be at least 1")
    _check(c.schedule_steps is None or c.schedule_steps >= 1, "--schedule-steps must be at least 1")
    _check(c.batch_size >= 1, "--batch-size must be at least 1")
    _check(c.grad_accum >= 1, "--grad-accum must be at least 1")
    _check(c.lr > 0 and math.isfinite(c.lr), f"--lr must be positive and finite, got {c.lr}")
    # clipping to a negative norm flips every gradient's sign (torch clamps the scale only from above)
    _check(c.max_grad_norm is None or 0 < c.max_grad_norm < math.inf,
           f"--grad-clip-norm must be positive and finite, got {c.max_grad_norm}")
    # finite too: an infinite weight decay turned every weight to NaN after one step, and trained on
    _check(0 <= c.wd < math.inf, f"--wd must be non-negative and finite, got {c.wd}")
    _check(c.warmup >= 0, "--warmup must be non-negative")
    _check(0 <= c.attack_eps <= 1, f"--attack-eps must lie in [0, 1] (pixels in [0, 1]), got {c.attack_eps}")
    _check(c.pgd_steps >= 0, "--pgd-steps must be non-negative")
    _check(c.pgd_step_size is None or 0 < c.pgd_step_size < math.inf, "--pgd-step-size must be positive and finite")
    _check(0 <= c.clean_weight < math.inf, "--clean-weight must be non-negative and finite")
    _check(c.word_budget >= 0, "--word-budget must be non-negative")
    _check(c.top_k >= 1, "--top-k must be at least 1")
    if c.text_attack_filter is not None:
        from train.text_filter import CAPTION_FILTERS

        _check(c.text_attack_filter in CAPTION_FILTERS,
               f"unknown --text-attack-filter {c.text_attack_filter!r}; expected one of {sorted(CAPTION_FILTERS)}")
        # the truth filter asks whether a caption is true of the scene; an expression must also still single
        # out its object (train eval's check_expression), which it let pass ("the square" -> "the solid")
        _check(c.task != "grounding", f"--text-attack-filter {c.text_attack_filter} judges captions of a scene, not "
                                      "whether an expression still singles out its object: not for --task grounding")
    # ALBEF's files: a captioner reads none of them (they were accepted, even a missing file, and ignored)
    for name in ("albef_config", "albef_bert_config", "albef_tokenizer"):
        _check(getattr(c, name) is None or c.task != "captioning",
               f"{option_name(name)} applies to --task retrieval and grounding (ALBEF/TCL), not captioning")
    _check(c.prompt is None or c.task == "captioning", f"--prompt applies to --task captioning, not {c.task}")
    _check(c.counterfactual_pairs or c.task == "grounding", f"--no-counterfactual-pairs applies to --task grounding, not {c.task}")
    # validated on the very rows trained on: the best checkpoint picked by training data
    _check(not (c.val_frequency and c.val_data is None and _splits_overlap(c.val_split, c.train_split)),
           f"--val-split {c.val_split} validates on the rows --train-split {c.train_split} trains on: choose "
           "another split, or --val-data")
    _check(c.save_every >= 0, "--save-every must be non-negative")
    _check(c.log_every >= 1, "--log-every-n-steps must be at least 1")
    # --overwrite empties --out first: fine before continuing another run's checkpoint there, not this run's own
    _check(not (c.overwrite and c.resume == "latest"),
           "--resume latest continues the run in --out and --overwrite deletes it first: choose one")
    _check(not (c.overwrite and c.resume not in (None, "latest")
                and Path(c.resume).resolve().is_relative_to(Path(c.out).resolve())),
           f"--resume {c.resume} is inside --out {c.out}, which --overwrite deletes first: choose one")
    _check(c.resume is None or c.resume == "latest" or Path(c.resume).is_dir(),
           f"--resume {c.resume}: expected 'latest' or a checkpoint folder (RUN/ckpt)")
    _check_read(c)


def _check_validation_attack_runs(c: TrainConfig) -> None:
    """A --val-attack whose every part the training's budgets switch off (PGD with --pgd-steps 0 or --attack-eps 0,
    word substitutions with --word-budget 0) changes nothing: each validation line recorded the clean score as
    the attack's robust one, and RUN/best was chosen by it (`train.validation.attack_parts`: which part an attack reads)."""
    if not c.val_frequency:
        return
    from train.validation import every_part_off

    given = every_part_off(c.val_attack, c.task, c.pgd_steps, c.attack_eps, c.word_budget)
    if given:
        raise ConfigError(f"--val-attack {c.val_attack} with {given} changes nothing (each validation would record the "
                          "clean score as its robust one): choose --val-attack clean, or an attack the run's budgets leave on")


def _use_canonical_spellings(c: TrainConfig) -> None:
    """One spelling per meaning, so that config.yaml and a resume's comparison see one value:
    open_clip's precision aliases, and the CSV separator as the character itself (`\\t` typed
    as open_clip users type it is a tab), null where it is every table file's own default."""
    c.precision = CANONICAL_PRECISION.get(c.precision, c.precision)
    from augment.source_formats import csv_separator, default_csv_separator

    separator = csv_separator(c.csv_separator)
    tables = [path for path in (c.train_data, c.val_data) if _is_table_file(path)]
    if tables and all(separator == default_csv_separator(path) for path in tables):
        separator = None
    c.csv_separator = separator


def _fill_derived(c: TrainConfig) -> frozenset[str]:
    """Fill the settings left to a default that depends on the others; the names filled."""
    unset = {name for name in DERIVED_SETTINGS if getattr(c, name) is None}
    c.pgd_step_size = pgd_step_size(c.attack_eps, c.pgd_step_size)
    if c.lock_text is None:
        # TeCoA and FARE fine-tune the vision encoder only (as in their papers); FARE's loss does
        # not even reach the text tower. Clean and MAT train both towers.
        c.lock_text = c.method in ("tecoa", "fare") and not c.lock_image
    if c.workers is None:
        from augment.loading import default_workers

        c.workers = default_workers()
    if c.mlm is None and ((_trains_on_substitutions(c) and c.text_candidates == "mlm") or validation_reads_mlm(c)):
        c.mlm = default_mlm(c.model)  # recorded (config.yaml's derived: section): validation reads it too
    if c.pools and c.pool_weights is None:
        c.pool_weights = [1.0] * len(c.pools)
    return frozenset(name for name in unset if getattr(c, name) is not None)


def report_targets(config: TrainConfig) -> set[str]:
    """Where metrics go besides metrics.jsonl: a subset of {"tensorboard", "wandb"}."""
    names = {r.strip() for r in str(config.report_to).split(",") if r.strip()}
    if "all" in names:
        return {"tensorboard", "wandb"}
    return names - {"none"}


def config_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG_FILE


def save_config(config: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write the resolved config as RUN/config.yaml (atomically), ready to be fed back with --config.

    The settings resolve_config derived (not given) are null, and their values in a `derived:`
    section after them: fed back with other settings (`--attack-eps`, `--model`, `--lock-image`),
    they are derived again from those instead of keeping values made for the old ones; the run's
    own record (load_saved_config, for a resume's comparison) reads the values that ran."""
    import yaml

    path = config_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # how this run was started, not what it is: fed back with --config, they must not carry over
    settings = {**config.to_dict(), "resume": None, "overwrite": False}
    derived_names = [name for name in DERIVED_SETTINGS if name in getattr(config, "derived_settings", ())]
    derived = {name: settings[name] for name in derived_names}
    settings.update(dict.fromkeys(derived_names))
    # what the trainer's set-up derived from the loaded model and the device (RUN_DERIVED): recorded, never read back
    derived.update({name: value for name, value in getattr(config, "run_derived", {}).items() if name in RUN_DERIVED})
    text = yaml.safe_dump(settings, sort_keys=False)
    if derived:
        ran_as = ("# precision: what ran, where it is not the one asked above (tf32 off a CUDA GPU is fp32)\n"
                  if "precision" in derived else "")
        text += ("# the values the null settings above were derived as in this run (from the other settings;\n"
                 "# fed back with --config they are derived again: set one above to keep it)\n" + ran_as
                 + yaml.safe_dump({DERIVED_SECTION: derived}, sort_keys=False))
    atomic_write_text(path, text)
    return path


def load_saved_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """RUN/config.yaml as the current names spell it (the keys of SAME_MEANING_RENAMES migrated: the
    file is this project's record of the run, not the user's input, which keeps being refused)."""
    path = config_path(run_dir)
    if not path.is_file():
        return None
    settings = _read_settings_file(path)
    for name, value in _derived_section(settings, path).items():  # the values that ran
        if name in DERIVED_SETTINGS and settings.get(name) is None:
            settings[name] = value
    for old in SAME_MEANING_RENAMES:
        if old in settings and RENAMED[old] not in settings:
            settings[RENAMED[old]] = settings.pop(old)
    if ("tensorboard" in settings or "wandb" in settings) and "report_to" not in settings:
        _migrate_before_open_clip_names(settings)
    _unknown_settings(settings, f"{path}: ")
    return settings


# a record written before open_clip_train's names (f852f0a): its `precision` was accelerate's
OLD_PRECISIONS = {"no": "fp32", "fp16": "amp", "bf16": "amp_bf16"}


def _migrate_before_open_clip_names(settings: dict[str, Any]) -> None:
    """A run record of the version before open_clip_train's names, known by its two logger switches
    (every such config.yaml has both): `tensorboard`/`wandb` become `report_to`, `eps` (then the PGD
    budget) `attack_eps` (Adam's epsilon was then fixed at today's default), accelerate's precision
    names open_clip's. Only the run's own record is read so; a --config file keeps being refused."""
    loggers = [name for name in ("tensorboard", "wandb") if settings.pop(name, False)]
    settings["report_to"] = "all" if len(loggers) == 2 else (loggers[0] if loggers else "none")
    if "eps" in settings and "attack_eps" not in settings:
        settings["attack_eps"] = settings.pop("eps")
    if settings.get("precision") in OLD_PRECISIONS:
        settings["precision"] = OLD_PRECISIONS[settings["precision"]]


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with one spelling per meaning: a run saved before the spellings were made one
    (`amp_bfloat16`, `csv_separator: "\\t"` for a .tsv) compares equal to the same run typed anew.
    The separator compared is the one the train data is read with (the validation data may change
    on a resume)."""
    from augment.source_formats import csv_separator, default_csv_separator

    out = dict(settings)
    out["precision"] = CANONICAL_PRECISION.get(out.get("precision"), out.get("precision"))
    train_data = out.get("train_data")
    separator = csv_separator(out.get("csv_separator"))
    out["csv_separator"] = (separator or default_csv_separator(train_data)) if _is_table_file(train_data) else None
    return out


def resume_conflicts(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """Settings that differ from the run being resumed and would change its result."""
    current = _comparable(json.loads(json.dumps(config.to_dict())))
    defaults = json.loads(json.dumps(_DEFAULTS.to_dict()))  # a setting added since the run was saved had its default
    saved = _comparable({**defaults, **json.loads(json.dumps(saved))})
    # a setting nothing reads changes nothing (UNREAD_WHEN): a run recorded before one was refused as unread (mat
    # --word-budget 0 with its derived masked LM, tecoa --pgd-steps 0 with a --pgd-step-size) resumes
    unread = {name for name, (is_unread, _) in UNREAD_WHEN.items() if is_unread(config)}
    return sorted(k for k in FIELD_NAMES
                  if k not in RESUMABLE_CHANGES and k not in unread and saved.get(k) != current.get(k))
