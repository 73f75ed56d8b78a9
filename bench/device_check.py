"""The prepared GPU run: the benchmarks' real-size measurements on a GPU, in one command.

    python -m bench.device_check [--out DIR] [--smoke]

A session that is lent a GPU machine (an H200, no network, a 15-minute budget that a start and
every idle minute also spend) runs this once, as it is, and copies the printed numbers into the
README's benchmark table. Each measurement runs in its own process under its own time limit, so
one that hangs or fails costs only its slot and the others still report; each writes NAME.json
under `--out` (the device tool's `$OUT`, from where at most eight files come back: the five
reports, the log and the two profiles are eight), all their
output goes to one `device_check.log` there, and the last lines printed are a summary of all of
them. Each benchmark rewrites its NAME.json as each of its parts finishes (`"complete": false` until
the last), so one killed at its limit still reports what finished. Models are real-size
architectures with random weights, built offline (the machine has no Hub):

1. `train_loop`: ViT-B-16 at 224 px, batch 128, `--precision amp`, 12 loader workers: clean step,
   MAT step (10 PGD steps), and the share of the clean step spent waiting for data, and the loader
   alone, each over 3 rounds of the 12 workers after their first (issue 18); one more step of each
   counted for its FLOPs (MAT/clean's FLOP ratio: a compute-bound device's time ratio); then one
   more under torch.profiler (`train_loop.profile.txt`: where a step's host and GPU time go);
2. `image_generators_tiny`: batched vs one-image loop on the tiny SD twin on the GPU, fp16
   (issue 18's 2x target is stated for the tiny twin);
3. `attacks_pgd`: PGD against torchattacks.PGD, ViT-B-16, 32 images (issue 19's 1.1x);
4. `attacks_multimodal`: BERT-Attack, Sep, Co-Attack and SGA batched vs a per-image loop,
   ViT-B-16, 8 images x 5 captions, `--precision tf32` (issue 19's 5x; its fp32 runs are in the
   README: there SGA's batched side was bound by fp32 products), each side's aten calls (their ratio: the
   time ratio a host-bound GPU shows) and each batched call's torch.profiler tables
   (`attacks_multimodal.profile.txt`: where a host-bound attack's time goes);
5. `scoring`: `augment score`'s first pass, re-score and scorer against torchmetrics' CLIPScore
   on the same 1,024 pairs, both on the GPU, with a ViT-B/16-shaped CLIPModel (issue 18's first
   pass >= 1x, where a pair is cheap and the gap statistics' CPU cost weighs most).
   (`image_generators_sd15`, the tiny twin's measurement at SD 1.5's size, ran on 2026-12-04:
   3.02x / 3.17x; it gave its slot to `scoring`, and `bench_image_generators --model sd15-shaped`
   still runs it.)

`--smoke` runs the same five with tiny settings on the CPU (1-3 minutes here; `scoring` with the
ViT-B/16-shaped scorer on 8 pairs): what to run before spending device time, so that a renamed
flag or a broken import is found for free.

Needed there besides the machine's own packages (see KINDS.md of the device tool): the wheels that
`make device-wheels` downloads into `.whl/`; the README's "Measuring on a GPU machine" gives the
device command that installs them and runs this module.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from augment.atomic import remove_stale_temporaries

DEFAULT_OUT = "outputs/bench/device"
LOG_NAME = "device_check.log"  # every measurement's output, one after another


@dataclass(frozen=True)
class Measurement:
    name: str  # also its file name: NAME.json (its output goes to device_check.log)
    module: str  # bench module run with `python -m`
    argv: tuple[str, ...]
    limit_s: int  # killed after this many seconds
    smoke_argv: tuple[str, ...] = field(default=())  # CPU, tiny: replaces argv under --smoke
    smoke_limit_s: int | None = None  # under --smoke (CPU time is free), if not limit_s

    def limit(self, smoke: bool) -> int:
        return self.smoke_limit_s if smoke and self.smoke_limit_s is not None else self.limit_s


MEASUREMENTS = (
    Measurement("train_loop", "bench.bench_train_loop",
                ("--model", "ViT-B-16", "--device", "cuda", "--batch-size", "128", "--precision", "amp",
                 "--workers", "12", "--images", "1024", "--steps", "4", "--warmup", "2", "--data-rounds", "3",
                 "--profile", "1"),
                limit_s=160,  # one more step of each counted for its FLOPs (was 150)
                smoke_argv=("--device", "cpu", "--batch-size", "8", "--images", "32", "--steps", "1", "--warmup", "1",
                            "--pgd-steps", "2", "--workers", "1", "--data-rounds", "3", "--threads", "1",
                            "--profile", "1")),
    Measurement("image_generators_tiny", "bench.bench_image_generators",
                ("--device", "cuda", "--dtype", "fp16", "--images", "16", "--batch-size", "8", "--repeats", "3"),
                limit_s=45,
                smoke_argv=("--device", "cpu", "--images", "2", "--n", "1", "--batch-size", "2", "--steps", "2",
                            "--repeats", "1", "--threads", "1")),
    Measurement("attacks_pgd", "bench.bench_attacks",
                ("--model", "ViT-B-16", "--device", "cuda", "--attacks", "pgd", "--images", "32", "--repeats", "3"),
                limit_s=60,
                smoke_argv=("--device", "cpu", "--attacks", "pgd", "--images", "2", "--captions", "2", "--repeats", "1",
                            "--threads", "1")),
    Measurement("attacks_multimodal", "bench.bench_attacks",
                # tf32: the fp32 runs (2026-12-04, README) showed SGA's batched side bound by fp32 products
                ("--model", "ViT-B-16", "--device", "cuda", "--attacks", "bert-attack,sep,co-attack,sga",
                 "--images", "8", "--repeats", "2", "--precision", "tf32", "--profile"),
                limit_s=135,  # with --profile each side's aten calls are counted once too (was 120)
                smoke_argv=("--device", "cpu", "--attacks", "bert-attack,sga", "--images", "2", "--captions", "2",
                            "--repeats", "1", "--threads", "1", "--precision", "tf32", "--profile")),
    Measurement("scoring", "bench.bench_scoring",
                # the first pass against CLIPScore where a pair is cheap: ViT-B-16's 512-dimensional
                # gap statistics on the CPU's threads against both sides' encoding on the GPU
                # one repeat: a repeat is eight passes over the 1,024 pairs, each preprocessing the
                # images to 224 px on the CPU (0.7 s here) and most computing the gap statistics
                # there, after building, saving and loading the 150M-parameter model and warming up
                ("--model", "vit-b-16-shaped", "--device", "cuda", "--repeats", "1", "--skip-memory",
                 "--skip-real-size"),
                limit_s=75,
                # the same ViT-B/16-shaped scorer on the CPU, 8 pairs: about 0.4 CPU s a pair on each side
                smoke_limit_s=240,
                smoke_argv=("--model", "vit-b-16-shaped", "--device", "cpu", "--pairs", "8", "--repeats", "1",
                            "--skip-memory", "--skip-real-size")),
)
# the device tool's longest command is 600 s; leave room for installing the wheels and a rerun
TOTAL_LIMIT_S = 475


def planned_argv(measurement: Measurement, smoke: bool, out: Path) -> list[str]:
    argv = list(measurement.smoke_argv if smoke else measurement.argv)
    return [*argv, "--out", str(out / f"{measurement.name}.json")]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="device_check", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", default=os.environ.get("OUT") or DEFAULT_OUT, help="folder for NAME.json and device_check.log")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU (a rehearsal, not a measurement)")
    parser.add_argument("--only", default=None, help="comma list of measurement names (default: all)")
    return parser.parse_args(argv)


PACKAGES = ("torch", "torchvision", "transformers", "huggingface_hub", "diffusers", "datasets", "open_clip",
            "accelerate", "timm", "torchattacks", "torchmetrics")


def preflight() -> list[str]:
    """One line per package the benchmarks import (version and where from), failures first named."""
    import importlib

    lines, missing = [], []
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported, the run stops before spending time
            missing.append(name)
            lines.append(f"{name}: cannot import ({type(exc).__name__}: {exc})")
            continue
        lines.append(f"{name} {getattr(module, '__version__', '?')} ({Path(module.__file__).parent})")
    if missing:
        lines.insert(0, f"missing: {', '.join(missing)}: install the wheels of `make device-wheels` (README)")
    return lines


def headline(payload: dict) -> list[str]:
    """The numbers of one benchmark's JSON that go into the README's table, one line each."""
    lines = []
    if payload.get("complete") is False:
        lines.append("(partial: the benchmark was stopped before its end; what finished follows)")
    if payload.get("benchmark") == "train_loop":
        for method, r in payload["results"].items():
            if "step_s" in r:
                if r.get("data_window_steady", True):
                    data = f"waited for data {100 * r['data_share']:.1f}% over {r.get('timed_steps', '?')} steps"
                else:  # too few steps for the loader's workers: the share of batches decoded before the clock
                    data = f"data share not measured ({r.get('timed_steps')} steps for {r.get('workers')} workers)"
                lines.append(f"{method}: step {r['step_s']:.3f} s ({r['images_per_s']:.0f} img/s), {data}"
                             + (f", loader alone {r['loader_images_per_s']:.0f} img/s over {r['loader_timed_batches']}"
                                " batches" if "loader_images_per_s" in r else "")
                             + (f", peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""))
        if "mat_over_clean" in payload:
            lines.append(f"MAT/clean {payload['mat_over_clean']:.2f} (budget {payload['target_mat_over_clean']:.1f})"
                         + (f"; FLOP ratio {payload['mat_over_clean_flops']:.2f}" if "mat_over_clean_flops" in payload else ""))
    elif payload.get("benchmark") == "image_generators":
        for r in payload["results"]:
            lines.append(f"{r['method']}: batched {r['speedup']:.2f}x the loop (bound {r['per_image_bound']:.2f}x), "
                         f"{r['batched']['images_per_s']:.1f} img/s, largest pixel difference {r['max_pixel_difference']}"
                         + ("" if r.get("same_images", True) else " (not the same images)"))
    elif payload.get("benchmark") == "scoring":
        speed = payload["speed"]
        ratios = {name: speed[f"ratio_{name}_vs_torchmetrics_from_files"] for name in ("pipeline_cold", "pipeline_rescore")}
        seconds = speed["seconds_median"]
        stages = speed.get("cold_pass_stages_seconds", {})
        lines.append(f"scoring ({speed['device']}, {speed['pairs']} pairs): first pass {ratios['pipeline_cold']:.2f}x "
                     f"CLIPScore reading the files ({seconds['pipeline_cold']:.3f} s against "
                     f"{seconds['torchmetrics_from_files']:.3f} s; statistics {stages.get('statistics', float('nan')):.3f} s), "
                     f"without resampling {speed['ratio_pipeline_cold_no_resampling_vs_torchmetrics_from_files']:.2f}x, "
                     f"re-score {ratios['pipeline_rescore']:.1f}x; the scorer alone "
                     f"{speed['ratio_ours_vs_torchmetrics']:.2f}x CLIPScore on decoded tensors; "
                     f"mean 100*cos |diff| {speed['mean_100cos']['abs_difference']:.1e}")
    else:  # bench_attacks
        if "pgd" in payload:
            pgd = payload["pgd"]
            lines.append(f"PGD: {pgd['ratio_torchattacks_over_matplus']:.2f}x torchattacks.PGD on the library's layers, "
                         f"{pgd['ratio_torchattacks_same_model_over_matplus']:.2f}x on the same model")
        for name, entry in payload.get("multimodal", {}).get("attacks", {}).items():
            lines.append(f"{name} ({payload.get('precision', 'fp32')}): batched {entry['ratio_loop_over_batched']:.2f}x the loop, "
                         f"{entry['ratio_before_loop_over_batched']:.2f}x the loop encoding as before; "
                         f"same captions {entry['identical_texts'] and entry['identical_texts_before']}")
    return lines


def run_one(measurement: Measurement, argv: list[str], log_path: Path, limit_s: int) -> dict:
    """Run one measurement in its own process, killed after `limit_s`; its output is appended to
    `log_path` under a header."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", measurement.module, *argv]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {measurement.name}: {' '.join(command[1:])}\n")
        log.flush()
        start = log.tell()
        started = time.perf_counter()
        try:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            status = f"killed after {limit_s} s"
    seconds = time.perf_counter() - started
    with open(log_path, encoding="utf-8", errors="replace") as log:
        log.seek(start)
        tail = log.read().splitlines()[-12:]
    return {"name": measurement.name, "status": status, "seconds": round(seconds, 1), "tail": tail}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    chosen = MEASUREMENTS
    if args.only:  # a misspelt name would run nothing and report success, wasting device time
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        known = [m.name for m in MEASUREMENTS]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            print(f"device_check: --only {args.only!r}: unknown measurement(s) {', '.join(unknown) or '(none given)'}; "
                  f"known: {', '.join(known)}", file=sys.stderr)
            return 2
        chosen = [m for m in MEASUREMENTS if m.name in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = preflight()
    print("\n".join(lines), flush=True)
    if lines[0].startswith("missing:"):
        return 2
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("device_check: torch sees no GPU (use --smoke for the CPU rehearsal)", file=sys.stderr)
            return 2
        print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
    results = []
    log_path = out / LOG_NAME
    log_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for measurement in chosen:
        limit_s = measurement.limit(args.smoke)
        print(f"=== {measurement.name} (limit {limit_s} s)", flush=True)
        # a report left by an earlier run in the same --out must not be summarised as this run's
        (out / f"{measurement.name}.json").unlink(missing_ok=True)
        result = run_one(measurement, planned_argv(measurement, args.smoke, out), log_path, limit_s)
        # a benchmark killed while writing its report leaves the file it was writing (bench/report.py)
        remove_stale_temporaries(out, recursive=False)
        results.append(result)
        print(f"    status {result['status']} in {result['seconds']} s", flush=True)
    print("\n=== summary")
    for result in results:
        print(f"--- {result['name']}: status {result['status']}, {result['seconds']} s")
        report = out / f"{result['name']}.json"
        try:
            print("\n".join(headline(json.loads(report.read_text(encoding="utf-8")))))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # the log's tail says what happened
            print(f"(no headline from {report.name}: {type(exc).__name__}: {exc})")
            print("\n".join(result["tail"]))
    return 0 if all(r["status"] == 0 for r in results) else 1


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
