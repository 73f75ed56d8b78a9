"""`train` command line: one sub-command per method (clean, tecoa, fare, mat, mat+) plus `eval`.

    train METHOD --model M [--pretrained TAG] --train-data SRC [--pools P1 P2 ...] --out RUN [options]

Every method sub-command is built by `add_method_parser` from the same option groups; a method
only gets the groups it uses (attack options for the adversarial methods, text-attack options for
mat/mat+). Settings resolve as defaults < `--config FILE` (YAML) < options given on the command
line; the result is saved as RUN/config.yaml. Expected failures print one line and exit 2.
Options that open_clip_train also has carry its names and meanings (`--train-data`, `--wd`,
`--warmup`, `--eps` = AdamW's epsilon, `--precision`, `--workers`, `--report-to`, `--grad-clip-norm`,
`--log-every-n-steps`, ...); the two last were `--max-grad-norm` and `--log-every`, kept as aliases.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys

from augment.arguments import file_path, folder_path, number
from augment.cli_common import run_main
from train.config import (
    ACCELERATE_PRECISION,
    ADVERSARIAL_METHODS,
    INNER_ORDERS,
    METHODS,
    MULTIMODAL_METHODS,
    POOL_MODES,
    PRECISIONS,
    REPORT_TO,
    TEXT_CANDIDATES,
    ConfigError,
    TrainConfig,
    option_name,
    read_yaml_config,
    resolve_config,
)

DEFAULTS = TrainConfig()

METHOD_HELP = {
    "clean": "fine-tuning with the task's loss on clean pairs (retrieval: the family's ITC loss, + ITM for fusion models)",
    "tecoa": "TeCoA: the task's loss of PGD images against the clean captions",
    "fare": "FARE: L2 between adversarial image embeddings and the frozen original model's clean ones",
    "mat": "MAT: text (word substitutions) then image (PGD) inner maximisation of the task's loss",
    "mat+": "MAT+: MAT with each item's image and caption drawn from its 1:N pools every step",
}


# what `train METHOD` says when Ctrl-C or SIGTERM stops it
INTERRUPTED_TRAINING = ("the last checkpoint (saved every --save-every steps, else only at the end) is kept; "
                        "add --resume latest to the same command to continue from it")
# set by the parser for run_main, not settings of the run
_RUNNER_DEFAULTS = ("func", "command", "config", "sigterm_interrupts", "interrupted")


def _default(name: str) -> str:
    value = getattr(DEFAULTS, name)
    return "" if value is None or value is False or value == [] else f" (default: {value})"


def add_method_parser(subparsers, method: str) -> argparse.ArgumentParser:
    """The sub-command of one training method; options are only the ones that method reads."""
    parser = subparsers.add_parser(
        method, help=METHOD_HELP[method], description=METHOD_HELP[method],
        # only options given on the command line enter the namespace: they override --config
        argument_default=argparse.SUPPRESS, allow_abbrev=False,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (keys as the options, '-' or '_'); options given here override it")

    _add_model_and_data_options(parser)
    _add_pool_options(parser)
    _add_optimisation_options(parser)
    _add_attack_options(parser, method)
    _add_logging_options(parser)
    _add_validation_options(parser, method)
    # SIGTERM (a scheduler's) stops it as Ctrl-C does: one line, exit 143; re-running the same command
    # is refused (RUN holds a run), so the line names what resumes it
    parser.set_defaults(func=run_method, method=method, sigterm_interrupts=True, interrupted=INTERRUPTED_TRAINING)
    return parser


def _add_model_and_data_options(parser: argparse.ArgumentParser) -> None:
    """The model, its task and family options, and the training data."""
    group = parser.add_argument_group("model and data")
    group.add_argument("--task", metavar="{retrieval,captioning,grounding}", help="what to train for: retrieval, captioning, grounding" + _default("task"))
    group.add_argument("--counterfactual-pairs", action=argparse.BooleanOptionalAction,
                       help="grounding on the sample world: also pair each expression with its scene re-rendered with one "
                       "object edited, labelled by the world's checker (default: on; off = ALBEF's pairs only)")
    group.add_argument("--model", help="any model name: open_clip architecture (with --pretrained), Hub id (BLIP, CLIP), "
                       "local folder, or a tiny twin (tiny-clip, tiny-siglip, tiny-blip, ...)" + _default("model"))
    group.add_argument("--pretrained", help="open_clip pretrained tag or checkpoint file for an architecture name "
                       "(albef, tcl: the checkpoint file)")
    group.add_argument("--prompt", help="--task captioning: text the decoder starts from, left out of the loss and saved "
                       "with the checkpoint (BLIP's COCO setting: 'a picture of'; default: the model's own)")
    albef = parser.add_argument_group("ALBEF / TCL checkpoints (models/albef)")
    albef.add_argument("--albef-config", help="ALBEF's YAML (image_res, vision sizes) for a checkpoint of another size")
    albef.add_argument("--albef-bert-config", help="ALBEF's BERT config JSON (with fusion_layer)")
    albef.add_argument("--albef-tokenizer", help="BERT tokenizer name or folder (default: bert-base-uncased)")
    albef.add_argument("--momentum-distillation", action=argparse.BooleanOptionalAction,
                       help="ALBEF's momentum encoders and queue with distillation (default: on for clean, off for adversarial methods)")
    group.add_argument("--train-data", help="dataset: Karpathy/ALBEF JSON, CSV/TSV (open_clip's), parquet, datasets folder, "
                       "imagefolder or Hub id")
    group.add_argument("--image-root", help="image folder for JSON/CSV sources (default: the file's folder, then images/ beside it)")
    group.add_argument("--train-split", help="split of the source to train on" + _default("train_split"))
    group.add_argument("--csv-img-key", help="CSV/TSV column of image paths" + _default("csv_img_key"))
    group.add_argument("--csv-caption-key", help="CSV/TSV column of captions" + _default("csv_caption_key"))
    group.add_argument("--csv-separator", help="CSV/TSV column separator (default: ',' for .csv, tab for .tsv)")
    group.add_argument("--source-split", help="split for sources that name none (CSV/TSV, ALBEF files without "
                       "train/val/test in the name; default: train)")
    group.add_argument("--allow-outside-root", action="store_true",
                       help="read image paths that lead outside the image root (absolute paths in an open_clip TSV, ../, symlinks)")
    group.add_argument("--validate", action="store_true",
                       help="decode every source image before training (default: each image is checked when it is used)")
    group.add_argument("--skip-bad", action="store_true",
                       help="leave bad records out and write a report of them instead of stopping (decodes every image first)")
    group.add_argument("--skip-report", type=file_path, help="where --skip-bad writes its report (default: beside --out, RUN.skipped.json)")
    group.add_argument("--workers", type=int, help="DataLoader worker processes per training process, 0: decode in the "
                       "main process (default: the usable CPUs less one, at most 8)")
    group.add_argument("--out", type=folder_path, help="run folder: config.yaml, metrics.jsonl, summary.json, ckpt/")


def _add_pool_options(parser: argparse.ArgumentParser) -> None:
    """The 1:N pools MAT+ draws from."""
    pools = parser.add_argument_group("pools (1:N views of each item; required by mat+)")
    pools.add_argument("--pools", nargs="+", metavar="POOL", help="pool folders or Hub ids made from this source")
    pools.add_argument("--pool-weights", nargs="+", type=number, metavar="W", help="one weight per pool for choosing which pool a view comes from (default: equal)")
    pools.add_argument("--p-original", type=number, help="chance that an item keeps its original pair in a step" + _default("p_original"))
    pools.add_argument("--pool-mode", choices=POOL_MODES, help="sample: one view per item per step; expand: pool rows as extra independent pairs (control)" + _default("pool_mode"))
    pools.add_argument("--allow-pool-mismatch", action="store_true", help="use pools made from a source with another fingerprint (warn instead of refusing)")


def _add_optimisation_options(parser: argparse.ArgumentParser) -> None:
    """AdamW, its schedule, precision and which towers train (open_clip_train's names)."""
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, help="passes over the train items" + _default("epochs"))
    opt.add_argument("--max-steps", type=int, help="optimizer steps to run (overrides --epochs)")
    opt.add_argument("--schedule-steps", type=int, help="length of the cosine LR schedule (default: the run's length)")
    opt.add_argument("--batch-size", type=int, help="items per process per micro step" + _default("batch_size"))
    opt.add_argument("--lr", type=number, help="peak AdamW learning rate" + _default("lr"))
    opt.add_argument("--wd", type=number, help="AdamW weight decay (not on gains, biases, logit scale)" + _default("wd"))
    # read by the config (not argparse) so that the old PGD spelling "--eps 2/255" fails in one line
    opt.add_argument("--eps", help="AdamW epsilon, as in open_clip (the PGD budget is --attack-eps)" + _default("eps"))
    opt.add_argument("--warmup", type=int, help="linear warm-up steps before the cosine decay" + _default("warmup"))
    opt.add_argument("--grad-accum", type=int, help="micro steps per optimizer step" + _default("grad_accum"))
    # open_clip_train's name first (the help shows it); the old one stays, so saved commands keep working
    opt.add_argument("--grad-clip-norm", "--max-grad-norm", dest="max_grad_norm", type=number, metavar="NORM",
                     help="clip gradients to this norm (default: no clipping)")
    opt.add_argument("--precision", choices=PRECISIONS,
                     help=f"open_clip's names; mixed precision through accelerate: {', '.join(ACCELERATE_PRECISION)} "
                          "(tf32: fp32 with TF32 products on a GPU; the half-weight ones are refused)"
                          + _default("precision"))
    opt.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction,
                     help="recompute activations in the backward pass (less memory, more time)")
    opt.add_argument("--seed", type=int, help="seed of data order, pool draws, crops and attacks" + _default("seed"))
    opt.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    opt.add_argument("--lock-image", action=argparse.BooleanOptionalAction, help="freeze the image tower")
    opt.add_argument("--lock-text", action=argparse.BooleanOptionalAction,
                     help="freeze the text tower (default: locked for tecoa and fare unless --lock-image is given, trained otherwise)")


def _add_attack_options(parser: argparse.ArgumentParser, method: str) -> None:
    """The inner attacks: PGD for the adversarial methods, word substitutions for mat and mat+."""
    if method in ADVERSARIAL_METHODS:
        attack = parser.add_argument_group("image attack (PGD, L-inf, on [0, 1] pixels)")
        attack.add_argument("--attack-eps", type=number, help="PGD perturbation budget, e.g. 2/255 (default: 2/255)")
        attack.add_argument("--pgd-steps", type=int, help="PGD iterations" + _default("pgd_steps"))
        attack.add_argument("--pgd-step-size", type=number, help="PGD step (default: attack-eps/4)")
        attack.add_argument("--random-start", action=argparse.BooleanOptionalAction, help="start PGD from a random point of the ball (default: yes)")
        attack.add_argument("--clean-weight", type=number, help="weight of an added clean loss term (default: 0, robust loss only)")
    if method in MULTIMODAL_METHODS:
        text = parser.add_argument_group("text attack (word substitutions)")
        text.add_argument("--inner-order", choices=INNER_ORDERS, help="order of the inner maximisation" + _default("inner_order"))
        text.add_argument("--text-candidates", choices=TEXT_CANDIDATES,
                          help="substitutes from a masked LM (BERT-Attack) or WordNet synonyms, as train eval's"
                          + _default("text_candidates"))
        text.add_argument("--mlm", help="masked LM for --text-candidates mlm (default: tiny-mlm for a tiny twin or a model trained "
                          "from one, else the registry's default)")
        text.add_argument("--top-k", type=int, help="substitutes per word (masked LM or WordNet), as train eval's"
                          + _default("top_k"))
        text.add_argument("--word-budget", type=int, help="words changed per caption at most" + _default("word_budget"))
        text.add_argument("--text-attack-filter", choices=["truth"],
                          help="keep only substitutions this checker calls true of the image (truth: the sample world's; "
                               "filters of your own are registered from Python, train/text_filter.py) (default: every substitution)")


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Checkpoints, resuming and loggers."""
    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--save-every", type=int, help="checkpoint every N steps (default: only at the end)")
    run.add_argument("--log-every-n-steps", "--log-every", dest="log_every", type=int, metavar="N",
                     help="metrics.jsonl line every N steps" + _default("log_every"))
    run.add_argument("--resume", metavar="latest|CKPT", help="continue from a checkpoint: 'latest' (the one in --out) "
                     "or a checkpoint folder such as RUN/ckpt")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: yes)")
    run.add_argument("--report-to", help=f"also log to {', '.join(REPORT_TO)} (comma-separated list allowed; "
                     "install the logging extra)" + _default("report_to"))
    run.add_argument("--wandb-project-name", help="W&B project" + _default("wandb_project_name"))


def _add_validation_options(parser: argparse.ArgumentParser, method: str) -> None:
    """Robust validation during training."""
    val = parser.add_argument_group("validation during training (robust R@1, CIDEr or grounding accuracy; best checkpoint in RUN/best)")
    val.add_argument("--val-frequency", type=int, help="validate every N epochs (and after the last step); 0: never"
                     + _default("val_frequency"))
    val.add_argument("--val-data", help="source to validate on (default: --train-data); one that names no splits "
                     "(an open_clip CSV/TSV) is validated on whole")
    val.add_argument("--val-image-root", help="image folder for --val-data's JSON/CSV (--image-root is --train-data's)")
    val.add_argument("--val-split", help="its split, for a source that has splits" + _default("val_split"))
    val.add_argument("--val-attack", help="attack of the robust score (train eval's names)" + _default("val_attack"))
    val.add_argument("--val-limit", type=int, help="images validated" + _default("val_limit"))
    from train.caption_metrics import CJK_SEGMENTATIONS

    val.add_argument("--val-segment-cjk", choices=CJK_SEGMENTATIONS,
                     help="captioning: cut Chinese/Japanese text before CIDEr, as train eval's --segment-cjk"
                     + _default("val_segment_cjk"))
    if method not in MULTIMODAL_METHODS:  # mat and mat+ name it among their text attack's options
        val.add_argument("--mlm", help="masked LM of a --val-attack that reads one (bert-attack, sep, co-attack, sga; "
                         "captioning's prompt attacks) (default: tiny-mlm for a tiny twin or a model trained from one, else the registry's default)")


@functools.lru_cache(maxsize=None)  # the parsers are fixed: built once per method, not per study run
def method_settings(method: str) -> frozenset[str]:
    """The settings `train METHOD` offers (its options' TrainConfig names): what the study passes
    from its `train:` section to that method's runs."""
    parser = add_method_parser(argparse.ArgumentParser().add_subparsers(), method)
    return frozenset(a.dest for a in parser._actions if a.dest not in ("help", "config"))


def settings_from_args(args: argparse.Namespace) -> dict:
    """The settings given on the command line (argparse.SUPPRESS left the others out)."""
    given = {k: v for k, v in vars(args).items() if k not in _RUNNER_DEFAULTS}
    return given


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    file_settings = read_yaml_config(args.config) if getattr(args, "config", None) else {}
    given = settings_from_args(args)
    try:
        config = resolve_config(file_settings, given)
    except ConfigError as exc:
        # a value that came from the file (and not the command line) is named with the file it is in
        # (the flag's spelling, or the key's: a type check names the setting as the file spells it)
        from_file = [key for key in file_settings if key not in given
                     and (f"{option_name(key)} " in f"{exc} " or str(exc).startswith(f"{key}: "))]
        if not from_file:
            raise
        raise ConfigError(f"{exc} ({', '.join(from_file)} from {args.config})") from None
    _refuse_settings_the_method_lacks(args.config if file_settings else None, file_settings, given, config)
    return config


def _refuse_settings_the_method_lacks(path, file_settings: dict, given: dict, config: TrainConfig) -> None:
    """A --config file may hold settings `train METHOD` does not offer (pgd_steps for clean,
    word_budget for tecoa): one that changes the resolved config would be recorded in config.yaml
    and read by nothing, so it is refused. A run's saved config.yaml fed back holds only what the
    method resolved (defaults there), and passes."""
    method = given["method"]
    foreign = {k: v for k, v in file_settings.items() if k not in method_settings(method) and k != "method"}
    if not foreign:
        return
    without = resolve_config({k: v for k, v in file_settings.items() if k not in foreign}, given)
    changed = sorted(k for k in foreign if getattr(config, k) != getattr(without, k))
    if changed:
        readers = {k: [m for m in METHODS if k in method_settings(m)] for k in changed}
        named = "; ".join(f"{k} (read by {', '.join(readers[k]) or 'no method'})" for k in changed)
        raise ConfigError(f"{path}: train {method} does not read {named}: leave "
                          f"{'it' if len(changed) == 1 else 'them'} out")


def run_method(args: argparse.Namespace) -> int:
    from train.launch import end_process_group
    from train.trainer import train_run

    finished = False
    try:
        train_run(config_from_args(args))
        finished = True
    finally:
        end_process_group(finished)
    return 0


def _register_eval(subparsers) -> None:
    """`train eval` lives in train.commands_eval; a build without it simply has no eval command."""
    try:
        module = importlib.import_module("train.commands_eval")
    except ModuleNotFoundError as exc:
        if exc.name == "train.commands_eval":
            return
        raise
    module.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train", allow_abbrev=False,
        description="Fine-tune vision-language models of every family for retrieval, captioning or grounding: "
                    "clean, TeCoA, FARE, MAT and MAT+ (and evaluate them).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for method in METHODS:
        add_method_parser(sub, method)
    _register_eval(sub)
    return parser


# mat-plus's packages the train commands import: not analysis nor data_cards, so a folder of the user's named like
# those (analysis/ of notebooks or results) does not stop `python -m train.cli`, torchrun's and accelerate's launches
IMPORTED_PACKAGES = ("augment", "models", "tasks", "train")


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser, argv, IMPORTED_PACKAGES)


if __name__ == "__main__":
    sys.exit(main())
