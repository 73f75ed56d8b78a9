"""Cost of a MAT step against a clean step, and of the batched text attack against a one-by-one loop.

    python -m bench.bench_trainer [--source DIR] [--batch-size 64] [--pgd-steps 10] [--repeats 3]
                                  [--model tiny-clip] [--mlm tiny-mlm] [--text-attack-only]

Both comparisons run in the same process on the same batches (the tiny CLIP on the sample world),
measurements interleaved so that load on a shared machine hits both sides alike; medians are
reported as ratios, of wall time and of this process's CPU time (steadier when other jobs share
the cores):

* MAT step / clean step, against the issue's target: 1 + 0.5 x PGD steps + 1 (text attack);
* the text attack scoring each candidate caption in its own forward pass (`text_batch=1`) against
  the batched attack (all candidates of a round in one chunked pass); both must give the same
  captions (exit status 1 if not). The one-candidate loop runs twice: with the product's text
  encoding, and encoding as the code did before the shortcuts (`fast_text = False`:
  open_clip's tokenizer and full-context text tower; the layers as the libraries build them);
* each step also with the libraries' layers (`model.library_layers()`: the patch conv and
  `nn.MultiheadAttention`, in turn with mat-plus's on the same trainer): what `patch_matmul` and
  `batch_first_attention` save a clean and a MAT step.

`--model` takes any name training accepts; an open_clip architecture without a pretrained tag
(e.g. `ViT-B-16`) is built with random weights, offline (a real CLIP's 77-token context, where
tiny-clip's 32 understates what the text shortcuts save). `--text-attack-only` skips the step
timings (a real-size MAT step takes minutes on CPU).

Writes the table's numbers as JSON to `--out` (default outputs/bench/trainer.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from augment.arguments import positive_int
from bench.report import offline, report_path

DEFAULT_OUT = "outputs/bench/trainer.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_trainer", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--source", default=None, help="dataset to train on (default: a fresh 200-scene sample world)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="items per training step (default 64)")
    parser.add_argument("--pgd-steps", type=positive_int, default=10, help="PGD iterations of MAT's image attack (default 10)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed steps per method, after one warm-up step (default 3)")
    parser.add_argument("--model", default="tiny-clip",
                        help="victim: a model name; an open_clip architecture without a tag (ViT-B-16) has random weights (default tiny-clip)")
    parser.add_argument("--mlm", default="tiny-mlm", help="the text attack's masked LM (default tiny-mlm)")
    parser.add_argument("--text-attack-only", action="store_true", help="time only the text attack, not the steps")
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def _timed(fn) -> tuple[tuple[float, float], object]:
    """((wall seconds, process CPU seconds), result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), result


def _medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def _trainer(method: str, source: str, out: Path, args):
    from train.config import MULTIMODAL_METHODS, resolve_config
    from train.trainer import Trainer

    # the masked LM of mat's text attack (clean, tecoa and fare read one only for an MLM --val-attack)
    mlm = {"mlm": args.mlm} if method in MULTIMODAL_METHODS else {}
    config = resolve_config({"method": method, "model": args.model, **mlm,
                             "train_data": source, "out": str(out), "batch_size": args.batch_size,
                             "pgd_steps": args.pgd_steps, "max_steps": 1000, "progress": False, "cpu": True,
                             # decoding inside the timed step, as before the DataLoader: the ratio
                             # compares the steps' work, not how well a worker hides decoding
                             "workers": 0, "overwrite": True})
    trainer = Trainer(config)
    trainer.setup()
    return trainer


def bench_steps(source: str, work: Path, args) -> dict:
    """Clean and MAT steps, each also with the libraries' layers (`model.library_layers()`) in turn."""
    clean = _trainer("clean", source, work / "clean", args)
    mat = _trainer("mat", source, work / "mat", args)
    clean.train_step(0), mat.train_step(0)  # warm-up: lazy inits, allocator
    times: dict[str, list] = {"clean": [], "mat": [], "clean_library_layers": [], "mat_library_layers": []}
    for step in range(1, args.repeats + 1):
        for name, trainer in (("clean", clean), ("mat", mat)):
            times[name].append(_timed(lambda: trainer.train_step(step))[0])
            with trainer.model.library_layers():
                times[f"{name}_library_layers"].append(_timed(lambda: trainer.train_step(step))[0])
    (clean_s, clean_cpu), (mat_s, mat_cpu) = _medians(times["clean"]), _medians(times["mat"])
    (clean_lib_s, clean_lib_cpu), (mat_lib_s, mat_lib_cpu) = (_medians(times["clean_library_layers"]),
                                                              _medians(times["mat_library_layers"]))
    target = 1 + 0.5 * args.pgd_steps + 1
    return {"clean_step_s": clean_s, "mat_step_s": mat_s, "mat_over_clean": mat_s / clean_s,
            "clean_step_cpu_s": clean_cpu, "mat_step_cpu_s": mat_cpu, "mat_over_clean_cpu": mat_cpu / clean_cpu,
            "target_mat_over_clean": target, "within_target": mat_s / clean_s <= target,
            "within_target_cpu": mat_cpu / clean_cpu <= target,
            "clean_step_library_layers_s": clean_lib_s, "clean_step_library_layers_cpu_s": clean_lib_cpu,
            "mat_step_library_layers_s": mat_lib_s, "mat_step_library_layers_cpu_s": mat_lib_cpu,
            "mat_trainer": mat}


def bench_text_attack(mat_trainer, repeats: int) -> dict:
    from train.attacks.text import BertAttack

    victim = mat_trainer.context.model
    plan = mat_trainer.data.plan(0, mat_trainer.global_batch)
    batch = mat_trainer.data.materialise(plan, 0, mat_trainer.cfg.batch_size, mat_trainer.model.preprocess_eval)
    pixels = batch.pixels.to(victim.device)
    mlm = mat_trainer.cfg.mlm
    batched_attack = BertAttack(victim, mlm=mlm, loss="contrastive")
    one_by_one_attack = BertAttack(victim, mlm=mlm, loss="contrastive", text_batch=1)
    from bench.bench_attacks import _counting, encoding_before

    def one_by_one_as_before():
        with encoding_before(victim):
            return one_by_one_attack(pixels, batch.texts)

    tokens: dict[str, int] = {}  # text-tower token positions of each side's latest run
    batched = _counting(victim, lambda: batched_attack(pixels, batch.texts), tokens, "batched")
    one_by_one = _counting(victim, lambda: one_by_one_attack(pixels, batch.texts), tokens, "one_by_one")
    one_by_one_before = _counting(victim, one_by_one_as_before, tokens, "one_by_one_before")

    batched(), one_by_one(), one_by_one_before()  # warm-up
    batched_times, loop_times, before_times, same = [], [], [], True
    for _ in range(repeats):
        seconds, before = _timed(one_by_one_before)
        before_times.append(seconds)
        seconds, fast = _timed(batched)
        batched_times.append(seconds)
        seconds, slow = _timed(one_by_one)
        loop_times.append(seconds)
        same = same and fast.texts == slow.texts == before.texts
    (batched_s, batched_cpu), (loop_s, loop_cpu) = _medians(batched_times), _medians(loop_times)
    before_s, before_cpu = _medians(before_times)
    changed = sum(a != b for a, b in zip(batch.texts, fast.texts))
    return {"captions": len(batch.texts), "captions_changed": changed, "text_tokens": tokens,
            "text_attack_batched_s": batched_s,
            "text_attack_one_by_one_s": loop_s, "loop_over_batched": loop_s / batched_s,
            "text_attack_batched_cpu_s": batched_cpu, "text_attack_one_by_one_cpu_s": loop_cpu,
            "loop_over_batched_cpu": loop_cpu / batched_cpu,
            "text_attack_one_by_one_before_s": before_s, "text_attack_one_by_one_before_cpu_s": before_cpu,
            "before_loop_over_batched": before_s / batched_s, "before_loop_over_batched_cpu": before_cpu / batched_cpu,
            "same_captions": same}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    offline()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        work = Path(tmp)
        source = args.source
        if source is None:
            from augment.world.writer import write_sample

            source = str(write_sample(work / "world", n=200, seed=0))
        if args.text_attack_only:
            steps, mat_trainer = {}, _trainer("mat", source, work / "mat", args)
        else:
            steps = bench_steps(source, work, args)
            mat_trainer = steps.pop("mat_trainer")
        text = bench_text_attack(mat_trainer, args.repeats)

    result = {"batch_size": args.batch_size, "pgd_steps": args.pgd_steps, "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "model": args.model, "mlm": args.mlm, "load_average_at_end": os.getloadavg(),
              **steps, **text}
    met = {True: "met", False: "NOT met"}
    rows = [] if not steps else [
        ("clean step (s)", f"{steps['clean_step_s']:.3f}", f"{steps['clean_step_cpu_s']:.3f}"),
        ("MAT step (s)", f"{steps['mat_step_s']:.3f}", f"{steps['mat_step_cpu_s']:.3f}"),
        ("MAT / clean", f"{steps['mat_over_clean']:.2f} ({met[steps['within_target']]})",
         f"{steps['mat_over_clean_cpu']:.2f} ({met[steps['within_target_cpu']]})"),
        (f"target: 1 + 0.5 x {args.pgd_steps} PGD + 1 text", f"{steps['target_mat_over_clean']:.2f}", ""),
        ("clean step, library's layers (s)", f"{steps['clean_step_library_layers_s']:.3f}",
         f"{steps['clean_step_library_layers_cpu_s']:.3f}"),
        ("MAT step, library's layers (s)", f"{steps['mat_step_library_layers_s']:.3f}",
         f"{steps['mat_step_library_layers_cpu_s']:.3f}"),
    ]
    rows += [
        (f"text attack, batched ({text['captions']} captions, s)", f"{text['text_attack_batched_s']:.3f}",
         f"{text['text_attack_batched_cpu_s']:.3f}"),
        ("text attack, one candidate per forward (s)", f"{text['text_attack_one_by_one_s']:.3f}",
         f"{text['text_attack_one_by_one_cpu_s']:.3f}"),
        ("one-by-one / batched", f"{text['loop_over_batched']:.2f}", f"{text['loop_over_batched_cpu']:.2f}"),
        ("text attack, one candidate per forward, encoding as before (s)", f"{text['text_attack_one_by_one_before_s']:.3f}",
         f"{text['text_attack_one_by_one_before_cpu_s']:.3f}"),
        ("one-by-one as before / batched", f"{text['before_loop_over_batched']:.2f}",
         f"{text['before_loop_over_batched_cpu']:.2f}"),
        ("text tokens: batched / one-by-one / as before", f"{text['text_tokens']['batched']:,}",
         f"{text['text_tokens']['one_by_one']:,} / {text['text_tokens']['one_by_one_before']:,}"),
        ("same adversarial captions", str(text["same_captions"]), ""),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'measure'.ljust(width)}  {'wall':>14}  {'cpu':>14}")
    for name, wall, cpu in rows:
        print(f"{name.ljust(width)}  {wall:>14}  {cpu:>14}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not text["same_captions"]:  # a speed-up that changes the adversarial captions is not one
        print("batched and one-candidate text attacks gave different captions", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
