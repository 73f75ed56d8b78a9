"""`train eval CKPT --task grounding`: grounding accuracy, clean and under attack (eval.json, eval.md).

    train eval tiny-albef --task grounding --source data/sample --split test --out runs/ground-eval
    train eval VICTIM --task grounding --attacker-model ATTACKER ...   (transfer: crafted on ATTACKER)
    train eval refcoco.pth --task grounding --protocol co-attack ...     (Co-Attack's GroundingEval.py)

Imports nothing heavy at module level, so `train --help` stays fast.
"""
from __future__ import annotations


def add_grounding_arguments(parser) -> None:
    """The options `train eval` gets for `--task grounding` (the rest are shared with retrieval)."""
    group = parser.add_argument_group("grounding (--task grounding)")
    # default None, read as itm: under --protocol co-attack even `itm` is refused (it would be ignored)
    group.add_argument("--grounding-objective", choices=("itm", "heat"), default=None,
                       help="what the grounding attacks lower: the ITM score of the pair, or the heat share on the "
                            "true box (default: itm; --protocol project only)")
    group.add_argument("--dets", default=None, help="RefCOCO+ detections (default: refcoco+/dets.json beside --source)")
    group.add_argument("--refs", default=None, help="RefCOCO+ refs as JSON (default: refcoco+/refs(unc).json beside --source)")
    group.add_argument("--instances", default=None, help="COCO instances (default: refcoco+/instances.json beside --source)")


def run(args) -> int:
    """`train eval CKPT --task grounding --source SRC --out DIR`: eval.json and eval.md."""
    from pathlib import Path

    import torch

    from augment.errors import MatPlusError
    from augment.referring import load_grounding
    from models import load_model
    from train.eval_common import load_evaluated, record_checkpoint_steps
    from models.half_precision import autocast
    from tasks.grounding import GroundingTask
    from train.attacks.grounding_protocols import GROUNDING_PROTOCOLS
    from train.commands_eval import (_check_attack_options, _workers, attack_options_from_arguments, check_fusion_target,
                                     progress_folder, record_masked_lm_only_where_read, truth_checker_for)
    from train.evaluate_grounding import (check_attacker, evaluate_grounding, markdown_grounding_report,
                                          world_expression_checker)
    from train.eval_report import EVAL_JSON, EVAL_MD, write_report
    from train.trainer import model_options

    if args.protocol not in GROUNDING_PROTOCOLS:
        raise MatPlusError(f"--protocol {args.protocol} has no grounding evaluation to reproduce (the SGA code evaluates "
                           f"retrieval only): use --protocol co-attack (Co-Attack's GroundingEval.py) or project")
    reference = args.protocol != "project"
    if reference and args.grounding_objective is not None:
        raise MatPlusError(f"--grounding-objective is a project-protocol choice: under --protocol {args.protocol} the "
                           "attacks read the encoders' embeddings, as the reference code does; leave it out")
    objective = args.grounding_objective or "itm"
    options = attack_options_from_arguments(args)
    if reference:  # only here: the settings would read the project's `objective` (itm, heat) as an attack loss
        _check_attack_options(options)
    else:  # the project's attacks lower a grounding objective; its reports have always recorded no protocol
        del options["protocol"], options["reference_bugs"]
        options["objective"] = objective
    device = args.device  # resolved and checked with the other options (commands_eval._check_option_values)
    torch.manual_seed(args.seed)
    # the data first: a wrong path or split stops in one line before any model loads
    data = load_grounding(args.source, image_root=args.image_root, dets_file=args.dets, refs_file=args.refs,
                          instances_file=args.instances).select(args.split, args.limit)
    if not len(data):
        raise MatPlusError(f"{args.source}: no expressions in split '{args.split}'")
    checker = None
    if args.truth_checker != "none":
        checker = truth_checker_for(args.truth_checker, all(image.scene is not None for image in data.images),
                                    world_expression_checker)
    # fp32 weights: --precision is the autocast the evaluation runs in, as for every task
    model, victim_step = load_evaluated(args.checkpoint, lambda: load_model(
        args.checkpoint, pretrained=args.pretrained, device=device, **model_options(args)))
    attacker = attacker_step = None
    try:
        GroundingTask().check_model(model)
        if args.attacker_model:  # transfer: the attacks craft on the attacker's grounding objective
            attacker, attacker_step = load_evaluated(args.attacker_model, lambda: load_model(
                args.attacker_model, pretrained=args.attacker_pretrained, device=device))
            if not reference:  # the reference attacks read the encoders' embeddings, which every family has
                check_attacker(attacker, objective)
    except ValueError as exc:
        raise MatPlusError(str(exc)) from None
    check_fusion_target(args, attacker or model)
    workers = _workers(args)
    out = Path(args.out)
    progress_dir = progress_folder(args)
    try:  # the evaluation's one-line refusals (e.g. OUT/.progress made with other settings)
        with autocast(device, args.precision):
            report = evaluate_grounding(model, data, attacks=args.attacks, attack_options=options,
                                        batch_size=args.batch_size, expression_checker=checker, seed=args.seed,
                                        progress=args.progress, attacker=attacker, progress_dir=progress_dir,
                                        workers=workers, caption_preprocess=args.caption_preprocess)
    except ValueError as exc:
        raise MatPlusError(str(exc)) from None
    record_masked_lm_only_where_read(report, args, args.attacks)
    report["settings"].update({"source": args.source, "split": args.split, "device": device,
                               "command": "train eval --task grounding", "checkpoint": args.checkpoint,
                               "attacker_model": args.attacker_model})
    record_checkpoint_steps(report, victim_step, attacker_step, args.checkpoint, args.attacker_model)
    table = write_report(report, out, markdown_grounding_report)
    from train.eval_store import remove_finished_store

    remove_finished_store(progress_dir)  # finished: the report holds everything
    print(table)
    print(f"wrote {out / EVAL_JSON} and {out / EVAL_MD}")
    return 0
