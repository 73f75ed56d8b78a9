"""`train eval`: robustness of any vision-language model (retrieval, captioning, grounding), clean and under attacks.

    train eval CKPT --source SRC --split test --attacks clean,pgd,bert-attack,sep,co-attack,sga --out DIR

CKPT is anything `models.load_model` accepts: an open_clip architecture with `--pretrained TAG`,
a Hub id (BLIP, transformers CLIP), a training run's checkpoint folder, or a tiny twin. Fusion
models (BLIP, ALBEF) are ranked by ITC and re-ranked by ITM (`--rerank-k`). Writes DIR/eval.json (every number, the settings, the model ids) and DIR/eval.md (a
table: rows = attacks, columns = recalls under attack and attack success rates).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from augment.arguments import finite_number, folder_path, non_negative_number
from train.attacks.settings import FUSED_ATTACKS

# the same list as train.evaluate.DEFAULT_ATTACKS, spelt out so `train --help` needs no torch import
DEFAULT_ATTACKS = "clean,pgd,bert-attack,sep,co-attack,sga"
# finished batches of a running evaluation, inside --out (removed once eval.json is written)
PROGRESS_DIR = ".progress"
# held (flock) by the one evaluation writing into --out, beside OUT/.progress (`writing_into`)
LOCK_FILE = ".lock"

# `train eval`'s options (argparse dests) every task reads
SHARED_OPTIONS = frozenset({
    "checkpoint", "model", "pretrained", "source", "image_root", "split", "task", "attacks", "out", "attacker_model",
    "attacker_pretrained", "attack_eps", "eps", "pgd_steps", "pgd_step_size", "text_candidates", "mlm", "top_k", "word_budget",
    "max_length", "batch_size", "limit", "device", "precision", "restart", "seed", "workers", "truth_checker", "progress",
})
_SOURCE_TABLE = ("source_split", "skip_bad", "skip_report", "validate", "allow_outside_root",  # read_source's
                 "csv_img_key", "csv_caption_key", "csv_separator")
_ALBEF = ("albef_config", "albef_bert_config", "albef_tokenizer")
RERANK_K_DEFAULT = 128  # the Flickr30k protocol's k
# the options only some tasks read: one set explicitly for a task that does not read it is refused
# in one line rather than silently ignored
TASK_OPTIONS: dict[str, frozenset[str]] = {
    "retrieval": frozenset({*_SOURCE_TABLE, *_ALBEF, "text_guide", "protocol", "reference_bugs", "attacked_embedding",
                            "caption_preprocess", "sga_scales", "co_alpha", "text_batch", "rerank_k",
                            "captions_per_image", "save_adv"}),
    "captioning": frozenset({*_SOURCE_TABLE, "captions_per_image", "save_adv", "prompt", "target", "num_beams",
                             "gen_max_length", "gen_min_length", "meteor", "segment_cjk"}),
    "grounding": frozenset({*_ALBEF, "sga_scales", "co_alpha", "text_batch", "grounding_objective", "dets", "refs",
                            "instances", "protocol", "reference_bugs", "attacked_embedding", "caption_preprocess"}),
}


# the options only some attacks read -> those attacks, per task family: one set explicitly (not left
# at its default) when none of --attacks reads it is refused in one line, as the trainer refuses a
# setting its other settings leave unread (`--attacks clean --attack-eps 8/255` measured nothing of it)
_IMAGE_OPTIONS = ("attack_eps", "pgd_steps", "pgd_step_size")
_TEXT_OPTIONS = ("text_candidates", "top_k", "word_budget", "max_length", "text_guide")
_MULTIMODAL = ("sep", "co-attack", "sga")
# --seed seeds the attacks' random draws: PGD's random start and SGA's noise, the image attacks' (the word searches
# draw nothing); `--attacks clean --seed 3` recorded seed 3 for an evaluation that drew nothing
_SEEDED = (*_IMAGE_OPTIONS, "seed")
_RETRIEVAL_ATTACK_OPTIONS = {
    **{option: ("pgd", *_MULTIMODAL) for option in _SEEDED},
    **{option: ("bert-attack", "synonym", *_MULTIMODAL) for option in _TEXT_OPTIONS},
    "mlm": ("bert-attack", *_MULTIMODAL),  # synonym: WordNet's
    "sga_scales": ("sga",), "co_alpha": ("co-attack",),
    "attacked_embedding": FUSED_ATTACKS[1:],
    **{option: ("pgd", "bert-attack", "synonym", *_MULTIMODAL) for option in ("attacker_model", "save_adv")},
}
ATTACK_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "retrieval": _RETRIEVAL_ATTACK_OPTIONS,
    # `--attacks clean --grounding-objective heat` measured nothing of it (and the report said "objective heat")
    "grounding": {**_RETRIEVAL_ATTACK_OPTIONS, "grounding_objective": ("pgd", "bert-attack", "synonym", *_MULTIMODAL)},
    "captioning": {
        **{option: ("pgd", "pgd-targeted", "prompt-pgd") for option in _SEEDED},
        **{option: ("prompt", "prompt-pgd") for option in (*_TEXT_OPTIONS, "mlm")},
        "target": ("pgd-targeted",),
        **{option: ("pgd", "pgd-targeted", "prompt", "prompt-pgd") for option in ("attacker_model", "save_adv")},
    },
}


def attack_option_readers(task: str, protocol: str = "project", candidates: str = "mlm",
                          attacked_embedding: str = "unimodal") -> dict[str, tuple[str, ...]]:
    """`ATTACK_OPTIONS[task]` under a retrieval `protocol`: the Co-Attack code's schedule sets its own
    PGD step (`--pgd-step-size` unread there), and `--reference-bugs` is read by the attacks that have
    one (the MLM's bugs: the attacks reading an MLM; SGA's gradient scaling: the SGA code's image step;
    on a fused `attacked_embedding`, the unnormalised pixels of the fused text attack, which every
    fused attack but PGD runs). On a fused embedding only the fused attacks run: no other is a reader."""
    from train.attacks.protocols import co_attack_schedule, sga_image_attacker

    readers = dict(ATTACK_OPTIONS[task])
    if task == "captioning" or protocol == "project":
        return readers
    readers["pgd_step_size"] = tuple(a for a in readers["pgd_step_size"] if not co_attack_schedule(protocol, a))
    mlm_readers = readers["mlm"] if candidates == "mlm" else ()
    readers["reference_bugs"] = tuple(a for a in ("pgd", "bert-attack", "sep", "co-attack", "sga")
                                      if a in mlm_readers or sga_image_attacker(protocol, a))
    if attacked_embedding != "unimodal":
        # `build_attack`: FusedTextAttack (REFERENCE_BUGS["fused-text-pixels"]) in all of them but FusedPGD,
        # whatever the candidates (WordNet's too)
        fused_text_attacks = tuple(a for a in FUSED_ATTACKS if a not in ("clean", "pgd"))
        readers["reference_bugs"] = tuple(a for a in FUSED_ATTACKS
                                          if a in readers["reference_bugs"] or a in fused_text_attacks)
        # an attack the fused embedding refuses (sga) is no reader to suggest
        readers = {dest: tuple(a for a in names if a in FUSED_ATTACKS) for dest, names in readers.items()}
    return readers


def _refuse_options_no_attack_reads(args: argparse.Namespace, attacks: list[str], defaults: bool = False) -> None:
    """One line naming every attack option set (not left at its default) that none of `attacks` reads
    (`defaults`: the attacks were not named, they are the task's defaults)."""
    from augment.errors import MatPlusError

    protocol = getattr(args, "protocol", "project")
    readers = attack_option_readers(args.task, protocol, args.text_candidates,
                                    getattr(args, "attacked_embedding", "unimodal"))
    stray = [dest for dest, names in readers.items()
             if hasattr(args, dest) and getattr(args, dest) != args.option_default(dest) and not set(names) & set(attacks)]
    if stray:
        named = ", ".join(f"--{dest.replace('_', '-')} ({', '.join(readers[dest]) or 'no attack here'})" for dest in stray)
        them = "it" if len(stray) == 1 else "them"
        chosen = f"the default attacks ({','.join(attacks)}) do" if defaults else f"--attacks {','.join(attacks)} does"
        if protocol != "project":
            chosen = chosen.replace(" do", f" under --protocol {protocol} do", 1)
        raise MatPlusError(f"{chosen} not read {named}: leave {them} out (or add an attack that reads {them})")


def refuse_attacks_that_change_nothing(args: argparse.Namespace, attacks: list[str], defaults: bool = False) -> None:
    """One line when the budgets switch off every part of an attack (bert-attack with --word-budget 0, pgd with
    --attack-eps 0: its row repeated clean's under the attack's name), or set a text option with --word-budget 0
    (the masked LM was loaded for nothing) or a PGD option with --attack-eps 0, which no attack then reads. A
    multimodal attack with one part off runs as its other part, as in-training validation runs it
    (`train.validation.every_part_off`)."""
    from augment.errors import MatPlusError
    from train.validation import every_part_off

    inert = {name: flags for name in attacks
             if (flags := every_part_off(name, args.task, args.pgd_steps, args.attack_eps, args.word_budget))}
    if inert:
        named = ", ".join(f"{name} (with {flags})" for name, flags in inert.items())
        them = "it" if len(inert) == 1 else "them"
        where = "the default attacks include" if defaults else "--attacks has"
        rows = "its row would repeat" if len(inert) == 1 else "their rows would repeat"
        raise MatPlusError(f"{where} {named}, which would change nothing ({rows} clean's): leave {them} out"
                           + (" with --attacks" if defaults else "") + " or raise the budget")
    # the options of a part its budget switches off, which no attack then reads
    for off, flag, change, dests in ((args.word_budget == 0, "--word-budget 0", "word",
                                      ("text_candidates", "mlm", "top_k", "max_length", "text_guide")),
                                     (args.attack_eps == 0, "--attack-eps 0", "pixel", ("pgd_steps", "pgd_step_size"))):
        unread = [dest for dest in dests if off and getattr(args, dest, None) != args.option_default(dest)]
        if unread:
            named = ", ".join(f"--{dest.replace('_', '-')}" for dest in unread)
            raise MatPlusError(f"{named} {'is' if len(unread) == 1 else 'are'} not read with {flag} (no {change} is "
                               f"changed): leave {'it' if len(unread) == 1 else 'them'} out")


def _check_protocol_options(args: argparse.Namespace) -> None:
    """The reference-protocol options' one-line refusals, retrieval's and grounding's alike."""
    from augment.errors import MatPlusError

    if args.reference_bugs and args.protocol == "project":
        raise MatPlusError("--reference-bugs needs --protocol sga or co-attack")
    if args.text_guide is not None and args.protocol != "project":  # even `image`, the default: it would be ignored
        raise MatPlusError(f"--text-guide is a project-protocol choice: under --protocol {args.protocol} the text attacks "
                           "score candidates as the reference code does (README: Protocols)")
    # first: e.g. --attacked-embedding needs --protocol co-attack
    _check_attack_options({"protocol": args.protocol, "attacked_embedding": args.attacked_embedding})
    if args.attacked_embedding != "unimodal":  # the model first, where its name says its family without loading it
        attacked = args.attacker_model or args.checkpoint
        family = _family_without_loading(attacked)
        if family is not None and family != "albef":
            raise MatPlusError(_not_a_fusion_model(args.attacked_embedding, attacked, family))
    unfused = [name for name in args.attacks if name not in FUSED_ATTACKS]
    if args.attacked_embedding != "unimodal" and unfused:
        raise MatPlusError(f"--attacked-embedding {args.attacked_embedding}: the Co-Attack code's fused-embedding attacks "
                           f"are {','.join(FUSED_ATTACKS[1:])}; evaluate {','.join(unfused)} without it")


def check_fusion_target(args: argparse.Namespace, attacked) -> None:
    """`--attacked-embedding` needs a model with a fusion encoder to attack (the attacker, else the victim)."""
    from augment.errors import MatPlusError

    if args.attacked_embedding != "unimodal" and not callable(getattr(attacked, "fusion_states", None)):
        raise MatPlusError(_not_a_fusion_model(args.attacked_embedding, attacked.name or attacked.family, attacked.family))


def _not_a_fusion_model(attacked_embedding: str, name: str, family: str) -> str:
    # BLIP has a fusion encoder (its ITM encoder) but is not in that script, which the option reproduces
    return (f"--attacked-embedding {attacked_embedding} is the Co-Attack code's attack on ALBEF's and TCL's fusion "
            f"encoder (RetrievalFusionEval.py): {name} ({family}) is neither")


def _family_without_loading(name: str) -> str | None:
    """The family of a tiny twin's name or a local model folder, else None (a Hub id is not looked up here)."""
    from pathlib import Path

    from models import TINY_FAMILY, family_of

    if name in TINY_FAMILY or Path(name).is_dir():
        try:
            return family_of(name)
        except Exception:  # noqa: BLE001 - loading says what is wrong with it, in its own words
            return None
    return None


def record_masked_lm_only_where_read(report: dict, args: argparse.Namespace, attacks: list[str]) -> None:
    """eval.json's `settings.attack_options` without `mlm` when none of `attacks` draws substitutes from a masked LM
    (--text-candidates wordnet, --word-budget 0; clean and the image attacks): the model's default masked LM was recorded there as if one
    had run, until audit AR. Only the report's: OUT/.progress's settings keep it, so a killed evaluation resumes as before."""
    readers = attack_option_readers(args.task, getattr(args, "protocol", "project"), args.text_candidates,
                                    getattr(args, "attacked_embedding", "unimodal"))["mlm"]
    if args.text_candidates != "mlm" or not set(readers) & set(attacks) or args.word_budget == 0:
        report["settings"].get("attack_options", {}).pop("mlm", None)


def attack_options_from_arguments(args: argparse.Namespace) -> dict:
    """The attack options (`attack_options` of `evaluate` and `evaluate_grounding`) that `train eval`'s
    arguments set, built here for retrieval and grounding alike. An option left unset (None) is absent,
    so the attacks fall back on their own default or, under a reference protocol, the reference code's."""
    from train.config import default_mlm

    options = {
        "eps": args.attack_eps, "steps": args.pgd_steps, "step_size": args.pgd_step_size,
        "candidates": args.text_candidates, "mlm": args.mlm or default_mlm(args.attacker_model or args.checkpoint),
        "top_k": args.top_k, "budget": args.word_budget, "max_length": args.max_length,
        "guide": args.text_guide,  # None: the protocol's (image under project, the reference's text KL otherwise)
        "scales": args.sga_scales, "alpha": args.co_alpha, "text_batch": args.text_batch,
        "protocol": args.protocol, "reference_bugs": args.reference_bugs,
    }
    if args.attacked_embedding != "unimodal":  # recorded only when chosen: reports before it read the same
        options["attacked_embedding"] = args.attacked_embedding
    return {key: value for key, value in options.items() if value is not None}


def _check_attack_options(options: dict) -> None:
    """Before any model loads: settings the attacks refuse (e.g. `--text-guide text` under a
    reference protocol, which would be ignored there) are one line, not a traceback mid-run."""
    from augment.errors import MatPlusError
    from train.attacks.settings import AttackSettings, with_flag_names

    try:
        AttackSettings.from_options(**{key: value for key, value in options.items() if key != "mlm"})
    except ValueError as exc:
        raise MatPlusError(with_flag_names(str(exc))) from None


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers, e.g. 0.5,0.75,1.25,1.5") from None
    if not scales or not all(0 < s < math.inf for s in scales):  # nan fails the comparison too
        raise argparse.ArgumentTypeError(f"{text!r}: scales must be positive finite numbers")
    return scales


def _not_the_pgd_budget(text: str) -> None:
    raise argparse.ArgumentTypeError(f"the PGD budget is --attack-eps {text}, as in training (where --eps is AdamW's "
                                     "epsilon, open_clip's name)")


def _model_is_positional(text: str) -> None:
    raise argparse.ArgumentTypeError(f"train eval takes the model as its first argument: train eval {text} --source ... "
                                     "(the trainer's --model)")


def _attack_names(text: str) -> list[str]:
    """--attacks as a list, each name once in the order given; the names are checked in `_check_attack_names`,
    once the task is known (an argparse type's refusal is the usage block, not one line)."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _check_attack_names(args: argparse.Namespace) -> None:
    """One line for an --attacks naming no attack or one the task does not have, before any model loads."""
    from augment.errors import MatPlusError
    from train.attacks import ATTACK_NAMES
    from train.attacks.captioning import CAPTION_ATTACK_NAMES

    if args.attacks is None:  # the task's defaults
        return
    known = CAPTION_ATTACK_NAMES if args.task == "captioning" else ATTACK_NAMES
    if not args.attacks:
        raise MatPlusError(f"--attacks: no attack named (choose, comma-separated, from {', '.join(known)})")
    unknown = [name for name in args.attacks if name not in known]
    if unknown:
        from augment.errors import did_you_mean

        raise MatPlusError(f"--attacks: unknown attack{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(repr(name) + did_you_mean(name, known) for name in unknown)} "
                           f"(choose from {', '.join(known)})")


def register(subparsers) -> argparse.ArgumentParser:
    from augment.commands.common import add_source_arguments
    from augment.words import CAPTION_PREPROCESSING
    from train.attacks.settings import ATTACK_DEFAULTS as D  # the defaults training and the study share
    from train.attacks.settings import ATTACKED_EMBEDDINGS, REFERENCE_BUGS, SELECTABLE_GUIDES, TEXT_CANDIDATES

    parser = subparsers.add_parser(
        "eval", help="retrieval recall, captioning scores or grounding accuracy, clean and under image, text and multimodal attacks",
        description=__doc__.split("\n\n")[0] + " " + "Defaults follow the attack papers' protocol.",
        allow_abbrev=False,
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="model: open_clip name (with --pretrained), Hub id, checkpoint folder, or a tiny twin")
    # the trainer's spelling: one line saying where the model goes, not argparse's "unrecognized arguments"
    parser.add_argument("--model", type=_model_is_positional, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file for an architecture "
                        "name (albef, tcl: the checkpoint file)")
    parser.add_argument("--albef-config", default=None, help="ALBEF/TCL checkpoint of another size: ALBEF's YAML (image_res, vision sizes)")
    parser.add_argument("--albef-bert-config", default=None, help="ALBEF/TCL: ALBEF's BERT config JSON (with fusion_layer)")
    parser.add_argument("--albef-tokenizer", default=None, help="ALBEF/TCL: BERT tokenizer name or folder (default: bert-base-uncased)")
    add_source_arguments(parser)
    parser.add_argument("--split", default="test", help="split to evaluate ('all' for every row; default: test)")
    parser.add_argument("--task", choices=("retrieval", "captioning", "grounding"), default="retrieval",
                        help="retrieval (default; recall@K), captioning (captioners: BLEU-4, METEOR, ROUGE-L, CIDEr) "
                             "or grounding (referring expressions: accuracy at IoU 0.5)")
    parser.add_argument("--attacks", type=_attack_names, default=None,
                        help=f"comma-separated attacks (retrieval and grounding default: {DEFAULT_ATTACKS}; also: synonym; "
                             "captioning default: clean,pgd,pgd-targeted, and prompt,prompt-pgd for a captioner with a prompt)")
    parser.add_argument("--out", required=True, type=folder_path, help="folder for eval.json and eval.md")

    transfer = parser.add_argument_group("transfer attacks (default: white-box, the attacker is the evaluated model)")
    transfer.add_argument("--attacker-model", default=None, help="craft the attacks on this model instead (any family; same name forms as CKPT)")
    transfer.add_argument("--attacker-pretrained", default=None, help="pretrained tag of --attacker-model")

    image = parser.add_argument_group("image attack (PGD, L-inf, on [0, 1] pixels before normalisation)")
    image.add_argument("--attack-eps", type=non_negative_number, default=D.eps,
                       help="perturbation budget, e.g. 2/255, as in training (default: 2/255)")
    # training's --eps is AdamW's epsilon (open_clip's name): here it is one line pointing to --attack-eps
    image.add_argument("--eps", type=_not_the_pgd_budget, default=None, help=argparse.SUPPRESS)
    image.add_argument("--pgd-steps", type=int, default=D.steps, help="PGD iterations (default: 10)")
    image.add_argument("--pgd-step-size", type=non_negative_number, default=None,
                       help="PGD step (default: attack-eps/4, i.e. 0.5/255 at 2/255)")

    text = parser.add_argument_group("text attack (word substitutions)")
    text.add_argument("--text-candidates", choices=TEXT_CANDIDATES, default=D.candidates,
                      help="substitutes from a masked LM (BERT-Attack) or WordNet synonyms (default: mlm)")
    text.add_argument("--mlm", default=None, help="masked LM (default: tiny-mlm for a tiny twin or a model trained from one, "
                                                     "else the registry's default)")
    text.add_argument("--top-k", type=int, default=D.top_k, help="substitutes per word (default: 10)")
    text.add_argument("--word-budget", type=int, default=D.budget, help="words changed per caption at most (default: 1)")
    text.add_argument("--max-length", type=int, default=None,
                      help="MLM tokens read per caption; later words are kept (default: 30; under a reference protocol "
                           "each attack reads what its code reads: 77 for the SGA code's attacks on a CLIP, else 30; at most the "
                           "MLM's position table)")
    text.add_argument("--text-guide", choices=SELECTABLE_GUIDES, default=None,
                      help="image: lower the caption's similarity to its image; text: move the caption embedding the most "
                           "(default: image; project protocol only)")

    protocol = parser.add_argument_group("protocol (README: Protocols)")
    protocol.add_argument("--protocol", choices=("project", "sga", "co-attack"), default="project",
                          help="whose choices the attacks follow: the project's, or the SGA / Co-Attack code's, item by item (default: project)")
    protocol.add_argument("--reference-bugs", action="store_true",
                          help="with --protocol sga|co-attack: also reproduce the reference code's bugs "
                               f"({', '.join(REFERENCE_BUGS)}; README: Reference bugs)")
    protocol.add_argument("--attacked-embedding", choices=ATTACKED_EMBEDDINGS, default="unimodal",
                          help="with --protocol co-attack on ALBEF/TCL: multimodal attacks the fusion encoder's output of each "
                               "(image, caption) pair (all its states; multimodal-cls: its [CLS] state), as the Co-Attack "
                               "code's RetrievalFusionEval.py (default: unimodal; README: Protocols, item 12)")
    protocol.add_argument("--caption-preprocess", choices=CAPTION_PREPROCESSING, default=None,
                          help="pre_caption: lower case, no punctuation, 30 words, as the SGA and Co-Attack (ALBEF) code; "
                               "blip_pre_caption: BLIP's, lower case, .!\"()*#:;~ to spaces, 30 words, as BLIP's reference "
                               "evaluation (default: none under --protocol project, pre_caption under a reference protocol; "
                               "retrieval and grounding only)")

    multi = parser.add_argument_group("multimodal attacks")
    multi.add_argument("--sga-scales", type=_scales, default=D.scales, help="SGA resize scales (default: 0.5,0.75,1.25,1.5)")
    multi.add_argument("--co-alpha", type=finite_number, default=D.alpha, help="Co-Attack weight of the attacked-text term (default: 3)")

    runtime = parser.add_argument_group("run")
    runtime.add_argument("--batch-size", type=int, default=32, help="images per attack batch, with all their captions (default: 32)")
    runtime.add_argument("--text-batch", type=int, default=256, help="captions per text-encoder forward pass (default: 256)")
    # default None: 128 for a model with an ITM head, so that any k given for one without it is seen and refused
    runtime.add_argument("--rerank-k", type=int, default=None,
                         help="fusion models (BLIP, ALBEF): ITM re-ranks each query's top k of the ITC ranking; 0: ITC only "
                              "(default: 128, the Flickr30k protocol; ALBEF/BLIP's COCO configs use 256)")
    runtime.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images of the split only")
    runtime.add_argument("--captions-per-image", type=int, default=None, metavar="N", help="use the first N captions of each image (default: all)")
    runtime.add_argument("--save-adv", default=None, type=folder_path, metavar="DIR", help="write each attack's adversarial examples as a pool under DIR/<attack>/")
    runtime.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    runtime.add_argument("--precision", default="fp32", metavar="{fp32,tf32,amp,amp_fp16,amp_bf16,amp_bfloat16}",
                         help="as the trainer's (open_clip_train's names): autocast of every task's forward passes, "
                              "weights kept fp32 (amp = amp_fp16, on a GPU; amp_bfloat16 = amp_bf16; its attack gradients are loss-scaled; "
                              "tf32: fp32 with TF32 products on a GPU; default: fp32)")
    runtime.add_argument("--restart", action="store_true",
                         help="start over in OUT: discard the finished batches a killed evaluation left in OUT/.progress "
                              "(default: resume from them) and replace a finished evaluation's report (default: refused)")
    runtime.add_argument("--seed", type=int, default=0, help="seed of PGD's random start and SGA's noise (default: 0)")
    runtime.add_argument("--workers", type=int, default=None,
                         help="DataLoader processes decoding the next batches' images, 0: none (default: the usable CPUs less one, at most 8)")
    runtime.add_argument("--truth-checker", choices=("auto", "world", "none"), default="auto",
                         help="judge attacked captions with the sample world's truth checker: auto (default): when every evaluated "
                              "image has a scene; world: always (refused when one has none); none: never")
    runtime.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar (default: yes)")
    from train.commands_grounding import add_grounding_arguments

    add_grounding_arguments(parser)

    from train.commands_eval_captioning import add_arguments as add_captioning_arguments

    add_captioning_arguments(parser)
    # SIGTERM (a scheduler's) stops it as Ctrl-C does: one line, exit 143, finished batches kept
    parser.set_defaults(func=run, option_default=parser.get_default, sigterm_interrupts=True,
                        interrupted="finished batches are kept; re-run the same command to resume")
    return parser


def _refuse_other_tasks_options(args: argparse.Namespace) -> None:
    """One line naming every option set (not left at its default) that `--task` does not read."""
    from augment.errors import MatPlusError

    stray = [dest for dest, value in vars(args).items()
             if any(dest in options for options in TASK_OPTIONS.values()) and dest not in TASK_OPTIONS[args.task]
             and value != args.option_default(dest)]
    if stray:
        named = ", ".join(f"--{dest.replace('_', '-')} ({' and '.join(t for t, o in TASK_OPTIONS.items() if dest in o)})"
                          for dest in stray)
        raise MatPlusError(f"--task {args.task} does not read {named}: leave {'it' if len(stray) == 1 else 'them'} out")


def refuse_replacing_a_finished_report(args: argparse.Namespace) -> None:
    """A finished evaluation in OUT (eval.json, no unfinished batches left) is hours of attacks: a
    command with other settings must not silently write over it; --restart replaces it."""
    from augment.errors import MatPlusError
    from train.eval_report import EVAL_JSON

    out = Path(args.out)
    if (out / EVAL_JSON).is_file() and not (out / PROGRESS_DIR).exists() and not args.restart:
        raise MatPlusError(f"{out} holds a finished evaluation (eval.json): choose another --out, "
                           "or add --restart to replace it")


def progress_folder(args: argparse.Namespace) -> Path:
    """OUT/.progress, the finished batches a killed evaluation left (every task's); emptied first under
    --restart, as one step (`remove_tree`: a kill part-way leaves no half-deleted progress to resume)."""
    from train.eval_store import remove_tree

    folder = Path(args.out) / PROGRESS_DIR
    if args.restart:
        remove_tree(folder)
    return folder


def writing_into(out: Path):
    """Within: this process alone evaluates into `out` (`augment.atomic.sole_writer` on OUT/.lock, held
    to the end). Two evaluations into one OUT would share OUT/.progress and eval.json: one report
    silently replacing the other, one's batches counted in the other's numbers. The lock file is kept
    out of OUT/.progress: nothing reads it as progress."""
    from augment.atomic import sole_writer

    return sole_writer(out, LOCK_FILE, "another train eval is writing here; wait for it to finish or choose another --out")


def _check_option_values(args) -> None:
    """One line for an option value out of its range, or given without the option that reads it."""
    from augment.errors import MatPlusError

    for option in ("pgd_steps", "top_k", "batch_size", "text_batch"):
        if getattr(args, option) < 1:
            raise MatPlusError(f"--{option.replace('_', '-')} must be at least 1")
    from train.config import MAX_SEED

    if args.seed < 0:  # as train's and the study's seeds
        raise MatPlusError(f"--seed must be non-negative, got {args.seed}")
    if args.seed > MAX_SEED:
        raise MatPlusError(f"--seed must be at most 2**64 - 1 (torch's largest seed), got {args.seed}")
    if args.rerank_k is not None and args.rerank_k < 0:
        raise MatPlusError(f"--rerank-k must not be negative: {args.rerank_k}")
    for option in ("word_budget", "limit", "captions_per_image"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "word_budget" else 1):
            raise MatPlusError(f"--{option.replace('_', '-')} is out of range: {value}")
    if args.workers is not None and args.workers < 0:  # before --restart empties anything
        raise MatPlusError("--workers must be non-negative")
    from augment.devices import resolve_device

    # every task's device, checked here: it was blamed on the model ("cannot load CLIP model ...: Expected one of cpu, ...")
    args.device = resolve_device(args.device)
    if args.attacker_pretrained is not None and not args.attacker_model:  # it would be silently ignored
        raise MatPlusError("--attacker-pretrained is read only with --attacker-model: leave it out or add "
                           "--attacker-model ARCH")


def truth_checker_for(choice: str, has_scenes: bool, checker):
    """`--truth-checker`: `checker` where every evaluated image has a world scene ('auto', 'world'), else
    None ('auto', 'none'); 'world' without scenes is an error. Shared by every task's evaluation."""
    from augment.errors import MatPlusError

    if choice == "world" and not has_scenes:
        raise MatPlusError("--truth-checker world needs a sample-world source (every image with a scene)")
    return checker if choice != "none" and has_scenes else None


def _truth_checker(choice: str, dataset, split: str | None = None, limit: int | None = None):
    from augment.world.truth import check_caption_of_row, has_scenes
    from augment.sources import select_split
    from train.eval_common import UNLABELLED_HINT

    if choice == "none":
        return None
    # only the rows evaluated: start-up stays flat in the source size
    rows = select_split(dataset, split, UNLABELLED_HINT.format(split=split))
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return truth_checker_for(choice, has_scenes(rows), check_caption_of_row)


def _workers(args: argparse.Namespace) -> int:
    from augment.loading import default_workers
    from train.config import ConfigError

    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers must be non-negative")
    return default_workers() if args.workers is None else args.workers


def run(args: argparse.Namespace) -> int:
    """`train eval` of every task, holding OUT (`writing_into`) before anything in it is read."""
    from augment.loading import raise_worker_death

    with writing_into(Path(args.out)):
        try:
            return _run(args)
        except RuntimeError as exc:  # torch's SIGCHLD handler raises a dead worker's error wherever the attack is
            raise_worker_death(exc, "re-run the same command: it resumes from the finished batches",
                               args.workers if args.workers is not None and args.workers >= 0 else None)


def _run(args: argparse.Namespace) -> int:
    import torch

    from augment.commands.common import read_source, source_meta
    from augment.errors import MatPlusError
    from models import load_model
    from models.half_precision import autocast, check_precision
    from train.attacks.settings import pgd_step_size
    from train.eval_report import EVAL_JSON, EVAL_MD, write_report
    from train.eval_common import load_evaluated, record_checkpoint_steps
    from train.evaluate import evaluate, markdown_report

    refuse_replacing_a_finished_report(args)  # before anything is read or loaded
    try:  # here, not as an argparse type: one line, as the trainer refuses it, not the usage block
        check_precision(args.precision)
    except ValueError as exc:
        raise MatPlusError(f"--precision: {exc}") from None
    _check_attack_names(args)
    _refuse_other_tasks_options(args)
    if args.mlm is not None and args.text_candidates == "wordnet":  # every task's text attacks alike
        raise MatPlusError("--mlm is not read with --text-candidates wordnet (WordNet synonyms, no masked LM): leave it out")
    _check_option_values(args)
    named = bool(args.attacks)
    if args.task != "captioning":
        args.attacks = args.attacks or DEFAULT_ATTACKS.split(",")
    # named attacks only (known ones: `_check_attack_names`); captioning's defaults are known once the
    # captioner is loaded (the prompt attacks need --prompt)
    if args.attacks:
        _refuse_options_no_attack_reads(args, args.attacks)
        refuse_attacks_that_change_nothing(args, args.attacks, defaults=not named)
    if args.task == "captioning" or (args.task == "grounding" and args.protocol == "project"):
        # the shared default, recorded in the report (a reference protocol's attacks may pick their own)
        args.pgd_step_size = pgd_step_size(args.attack_eps, args.pgd_step_size)
    if args.task == "captioning":
        from train.commands_eval_captioning import run as run_captioning

        return run_captioning(args)
    _check_protocol_options(args)
    if args.task == "grounding":
        from train import commands_grounding

        return commands_grounding.run(args)
    options = attack_options_from_arguments(args)
    _check_attack_options(options)
    device = args.device
    torch.manual_seed(args.seed)
    from train.trainer import model_options

    # the data first: a wrong path or split stops in one line before minutes of model loading
    dataset, source_report = read_source(args)
    checker = _truth_checker(args.truth_checker, dataset, args.split, args.limit)
    victim, steps = load_evaluated(args.checkpoint, lambda: load_model(
        args.checkpoint, pretrained=args.pretrained, device=device, kind="retrieval", **model_options(args)))
    attacker = attacker_step = None
    if args.attacker_model:
        attacker, attacker_step = load_evaluated(args.attacker_model, lambda: load_model(
            args.attacker_model, pretrained=args.attacker_pretrained, device=device, kind="retrieval"))
    if args.rerank_k not in (None, 0) and not getattr(victim, "has_itm", False):  # it would be silently ignored
        raise MatPlusError(f"--rerank-k {args.rerank_k}: re-ranking needs an ITM head, which "
                           f"{victim.name or victim.family} has none of (BLIP, ALBEF and TCL do): leave it out")
    check_fusion_target(args, attacker or victim)
    out = Path(args.out)
    progress_dir = progress_folder(args)
    with autocast(device, args.precision):
        report = evaluate(
            victim, dataset, split=args.split, attacks=args.attacks, attacker=attacker,
            rerank_k=RERANK_K_DEFAULT if args.rerank_k is None else args.rerank_k,
            batch_size=args.batch_size, captions_per_image=args.captions_per_image, limit=args.limit,
            save_adv=args.save_adv, attack_options=options, text_batch=args.text_batch, seed=args.seed,
            progress=args.progress, caption_checker=checker, progress_dir=progress_dir,
            caption_preprocess=args.caption_preprocess, workers=_workers(args),
            source_meta=source_meta(args, source_report.format),
        )
    record_masked_lm_only_where_read(report, args, args.attacks)
    report["settings"].update({"source": args.source, "device": device, "command": "train eval",
                               # --skip-bad: the gallery is not the source's first images; say how many were left out
                               "skipped_records": len(source_report.skipped)})
    record_checkpoint_steps(report, steps, attacker_step, args.checkpoint, args.attacker_model)
    table = write_report(report, out, markdown_report)
    from train.eval_store import remove_finished_store

    remove_finished_store(progress_dir)  # finished: the report holds everything
    print(table)
    print(f"wrote {out / EVAL_JSON} and {out / EVAL_MD}")
    return 0
