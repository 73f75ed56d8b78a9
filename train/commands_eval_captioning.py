"""`train eval --task captioning`: caption metrics of a captioner, clean and under attacks.

    train eval CKPT --task captioning --source SRC --split test --attacks clean,pgd,pgd-targeted --out DIR

CKPT is anything the captioner family loads (`models.captioner`): a Hub id such as
`Salesforce/blip-image-captioning-base`, the aliases `blip` / `blip-large`, a training run's
checkpoint folder, or `tiny-captioner`. Writes DIR/eval.json (every number and setting),
DIR/eval.md (a table: rows = attacks, columns = metrics under attack and drops) and
DIR/captions.jsonl (every generated caption, per attack).

`train eval`'s shared options keep their meaning (--attack-eps, --pgd-steps, --pgd-step-size,
--text-candidates, --mlm, --top-k, --word-budget, --max-length, --batch-size, --limit,
--captions-per-image, --device, --seed, --truth-checker, --workers, --restart: a killed evaluation resumes
from DIR/.progress, --attacker-model: transfer attacks crafted on another captioner, --save-adv:
each attack's adversarial inputs as a pool); the options below are captioning's own.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from train.caption_metrics import CJK_SEGMENTATIONS

    group = parser.add_argument_group("captioning (--task captioning)")
    group.add_argument("--prompt", default=None,
                       help="text the captioner starts from, e.g. 'a picture of' (BLIP's COCO setting); enables the prompt attacks")
    group.add_argument("--target", default=None,
                       help="target caption of pgd-targeted (default: 'a black triangle')")
    group.add_argument("--num-beams", type=int, default=3, help="beam search width (default: 3, BLIP's COCO setting)")
    group.add_argument("--gen-max-length", type=int, default=20, help="caption tokens at most, prompt included (default: 20)")
    group.add_argument("--gen-min-length", type=int, default=5, help="caption tokens at least, prompt included (default: 5)")
    group.add_argument("--meteor", action=argparse.BooleanOptionalAction, default=None,
                       help="compute METEOR (needs Java; default: when Java is present)")
    group.add_argument("--segment-cjk", choices=CJK_SEGMENTATIONS, default="none",
                       help="cut Chinese/Japanese text into tokens before the metrics, references and generated "
                            "captions alike: chars (a token per character), jieba (Chinese words; pip install jieba); "
                            "default none: a run without spaces is one token, as COCO's PTB tokenizer reads it")


def run(args: argparse.Namespace) -> int:
    import torch

    from augment.commands.common import read_source, source_meta
    from augment.errors import MatPlusError
    from models import load_model
    from train.eval_common import load_evaluated, record_checkpoint_steps
    from models.half_precision import autocast
    from train.attacks.captioning import CAPTION_ATTACK_NAMES, DEFAULT_TARGET
    from train.caption_metrics import require_java_for_meteor, require_segmenter
    from train.commands_eval import (_refuse_options_no_attack_reads, _truth_checker, _workers, progress_folder,
                                     record_masked_lm_only_where_read, refuse_attacks_that_change_nothing)
    from train.eval_report import EVAL_JSON, EVAL_MD
    from train.evaluate_captioning import default_attacks, evaluate_captioning, write_captioning_report

    device = args.device  # resolved and checked with the other options (commands_eval._check_option_values)
    for option in ("num_beams", "gen_max_length"):
        if getattr(args, option) < 1:
            raise MatPlusError(f"--{option.replace('_', '-')} must be at least 1")
    if not 0 <= args.gen_min_length <= args.gen_max_length:  # transformers only warns, then ignores one of them
        raise MatPlusError(f"--gen-min-length {args.gen_min_length} must lie in [0, --gen-max-length {args.gen_max_length}]")
    require_java_for_meteor(args.meteor)  # a flag asked for and impossible stops before anything loads
    require_segmenter(args.segment_cjk)  # jieba missing: its install line, before anything loads
    torch.manual_seed(args.seed)
    dataset, source_report = read_source(args)  # the data first: a wrong path stops in one line before any model loads
    victim, victim_step = load_evaluated(args.checkpoint, lambda: load_model(
        args.checkpoint, pretrained=args.pretrained, device=device, kind="captioning", prompt=args.prompt))
    attacker = attacker_step = None
    if args.attacker_model:  # transfer: the attacks run on this captioner (with the same --prompt), the victim is evaluated
        attacker, attacker_step = load_evaluated(args.attacker_model, lambda: load_model(
            args.attacker_model, pretrained=args.attacker_pretrained, device=device, kind="captioning",
            prompt=args.prompt))
        if args.prompt is None and attacker.prompt != victim.prompt:
            # each fell back to its own saved prompt: the attacks would be crafted under another prompt than
            # the victim captions with, and nothing in the report said so
            raise MatPlusError(f"--attacker-model {args.attacker_model} captions with its saved prompt "
                               f"{attacker.prompt!r}, the victim {args.checkpoint} with {victim.prompt!r}: a transfer "
                               "attack needs one prompt for both; pass --prompt TEXT")
    attacks = args.attacks or list(default_attacks(attacker or victim))
    unknown = [a for a in attacks if a not in CAPTION_ATTACK_NAMES]
    if unknown:
        raise MatPlusError(f"unknown captioning attack(s) {', '.join(unknown)}; choose from {', '.join(CAPTION_ATTACK_NAMES)}")
    if not args.attacks:  # the defaults are known now (the prompt attacks come with a prompted captioner)
        _refuse_options_no_attack_reads(args, attacks, defaults=True)
        refuse_attacks_that_change_nothing(args, attacks, defaults=True)
    options = {
        "eps": args.attack_eps, "steps": args.pgd_steps, "step_size": args.pgd_step_size, "target": args.target or DEFAULT_TARGET,
        "candidates": args.text_candidates, "mlm": args.mlm or "default", "top_k": args.top_k,
        "budget": args.word_budget, "max_length": args.max_length,
    }
    generation = {"num_beams": args.num_beams, "max_length": args.gen_max_length, "min_length": args.gen_min_length}
    out = Path(args.out)
    progress_dir = progress_folder(args)
    try:
        with autocast(device, args.precision):
            report = evaluate_captioning(
                victim, dataset, split=args.split, attacks=attacks, attacker=attacker, batch_size=args.batch_size,
                captions_per_image=args.captions_per_image, limit=args.limit, attack_options=options,
                caption_checker=_truth_checker(args.truth_checker, dataset, args.split, args.limit), generation=generation, meteor=args.meteor,
                segment_cjk=args.segment_cjk,
                seed=args.seed, progress=args.progress, progress_dir=progress_dir, save_adv=args.save_adv,
                workers=_workers(args),
                source_meta=source_meta(args, source_report.format),
            )
    except ValueError as exc:
        raise MatPlusError(str(exc)) from None
    record_masked_lm_only_where_read(report, args, attacks)
    report["settings"].update({"source": args.source, "device": device, "command": "train eval --task captioning",
                               # --skip-bad: the gallery is not the source's first images; say how many were left out
                               "skipped_records": len(source_report.skipped)})
    record_checkpoint_steps(report, victim_step, attacker_step, args.checkpoint, args.attacker_model)
    table = write_captioning_report(report, out)
    from train.eval_store import remove_finished_store

    remove_finished_store(progress_dir)  # finished: the report holds everything
    print(table)
    print(f"wrote {out / EVAL_JSON}, {out / EVAL_MD} and {out / 'captions.jsonl'}"
          + (f"; adversarial pools under {args.save_adv}" if args.save_adv else ""))
    return 0
