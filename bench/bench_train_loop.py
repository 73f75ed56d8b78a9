"""Training steps through the trainer's own loop: clean and MAT step time and the data-loading share.

    python -m bench.bench_train_loop [--model tiny-clip] [--batch-size 32] [--workers N]
        [--precision fp32] [--methods clean,mat] [--pgd-steps 10] [--steps 4] [--warmup 2] [--data-rounds 3]
        [--images 256] [--image-size 500x375] [--device cpu|cuda] [--profile N] [--out outputs/bench/train_loop.json]

Issue 18's GPU measurement: on a GPU machine, with a real-size architecture and random weights
(offline, no Hub):

    python -m bench.bench_train_loop --model ViT-B-16 --device cuda --batch-size 128 --precision amp \\
        --workers 12 --image-size 500x375

What runs is the product's path: `train.trainer.Trainer` set up from the same settings as
`train clean|mat`, its DataLoader (`--workers` processes decoding and preprocessing, pinned memory
on a GPU) feeding `Trainer.train_step`, on a synthetic Karpathy source of JPEG files at a real
photo size (`--image-size`, default 500x375 like most Flickr30k images: sample-world scenes scaled
up, so decoding costs what a real JPEG of that size costs). Reported per method, over `--steps`
steps after `--warmup` (worker start-up, cuDNN/oneDNN kernel choice):

* `step_s`: one optimizer step, wall time (the GPU synchronised at its end), the median;
* `data_s`: of a step, the time it waited for its batch (the trainer's `data_seconds`,
  open_clip_train's data time), the mean over the timed steps, and `data_share` = the timed steps'
  total wait / their total time: near 0 means the loader keeps up;
* `images_per_s` of the (median) step, `window_images_per_s` of the timed steps with their waits,
  and of the loader alone (`loader_images_per_s`: the same batches drawn with no model, i.e. what
  the data path can supply);
* peak GPU memory on a GPU.

The data share and the loader's rate describe the steady state only over enough batches: a
loader with W workers decodes its first W batches all at once while it starts, so steps that
draw only those find them ready whatever the decoding rate (6 batches for 12 workers reported a
0% share and a loader "alone" at 85,543 images/s), and later waits come once per round of the
workers, not at every step. So the first method (`--data-method`: the cheapest step, where the
loader is likeliest to fall behind) and the loader alone leave at least W steps untimed and time
whole rounds, at least `--data-rounds` of them (`data_window`); other methods keep `--warmup` /
`--steps` (`data_window_steady` says whether a method's share is a steady-state one).

The JSON is written after each method (`"complete": false` until the last), so a run killed at
its time limit keeps what finished.

`--loader-only` times the data path alone (no model steps; any `--model`'s training transform):
images per second, and per decoding process, so the workers a GPU needs can be worked out on a CPU machine
(a GPU step of S seconds at batch B needs B / S images per second).

And MAT / clean against the issue's budget of 1 + 0.5 x PGD steps + 1 clean steps, beside the
ratio of their floating-point operations (one more step of each counted by
torch.utils.flop_counter after the timing, `--flops 1`): where a device is bound by arithmetic
(a GPU at ViT-B-16's size and batch 128) the time ratio comes to the FLOP ratio, whatever the
per-call costs. MAT's text
attack uses `--mlm` (default tiny-mlm, random weights: a real masked LM such as bert-base, which
needs the Hub, makes the text attack costlier).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from augment.arguments import non_negative_int, positive_int
from bench.report import environment, profile_path, report_path, write_report

DEFAULT_OUT = "outputs/bench/train_loop.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_train_loop", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", default="tiny-clip",
                        help="any name training accepts; an open_clip architecture without a pretrained tag "
                             "(e.g. ViT-B-16) has random weights, offline (default tiny-clip)")
    parser.add_argument("--mlm", default="tiny-mlm", help="MAT's masked LM (default tiny-mlm: offline)")
    parser.add_argument("--methods", default="clean,mat", help="comma list of training methods (default clean,mat)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="items per training step (default 32)")
    parser.add_argument("--pgd-steps", type=positive_int, default=10, help="PGD iterations of MAT's image attack (default 10)")
    from models.half_precision import PRECISIONS  # the trainer's mixed-precision names

    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="training --precision (default: amp on cuda, fp32 on cpu)")
    parser.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader workers (default: the trainer's)")
    parser.add_argument("--steps", type=positive_int, default=4, help="timed optimizer steps per method (default 4)")
    parser.add_argument("--warmup", type=positive_int, default=2,
                        help="untimed steps first, at least 1: the first starts the loader's workers (default 2)")
    parser.add_argument("--data-method", default=None,
                        help="the method whose data share is measured in the steady state (default: the first of "
                             "--methods); it and the loader alone run at least --workers untimed steps and "
                             "--data-rounds x --workers timed ones")
    parser.add_argument("--data-rounds", type=positive_int, default=3,
                        help="rounds of the workers (one batch each) timed for the data share and the loader alone "
                             "(default 3)")
    parser.add_argument("--images", type=positive_int, default=256, help="images of the synthetic source (default 256)")
    parser.add_argument("--image-size", default="500x375", help="WIDTHxHEIGHT of its JPEG files (default 500x375)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--loader-only", action="store_true",
                        help="time only the data path (decoding and the model's training transform), no steps: "
                             "how many workers a GPU's step rate needs, measurable on any machine")
    parser.add_argument("--profile", type=non_negative_int, default=0, metavar="N",
                        help="after each method's timed steps, run N more under torch.profiler and add its tables (self "
                             "time per operator, CPU and device) to OUT's folder as NAME.profile.txt (default 0: none)")
    parser.add_argument("--flops", type=int, choices=(0, 1), default=1,
                        help="1 (default): after each method's timed steps, count one more step's floating-point "
                             "operations (torch.utils.flop_counter), and MAT/clean's FLOP ratio: the time ratio of a "
                             "device bound by its arithmetic; 0: skip")
    parser.add_argument("--keep", default=None, metavar="DIR", help="write the source and runs here and keep them")
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        parser.error(f"--image-size {args.image_size!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    args.width, args.height = width, height
    return args


def data_window(workers: int, warmup: int, steps: int, rounds: int) -> tuple[int, int]:
    """(untimed, timed) batches over which a loader of `workers` processes shows its steady state.

    At the start every worker decodes its first batch at once (and one more is queued, prefetched,
    behind it): the first `workers` batches arrive together, so at least that many are untimed
    (with `warmup`, which covers the start-up of a loader in the main process too). After them a
    round of the workers delivers `workers` batches, and a step that outpaces the loader waits
    once per round: the timed batches are whole rounds, at least `rounds` and at least `steps`.
    """
    per_round = max(1, workers)
    untimed = max(warmup, workers, 1)
    timed = max(steps, rounds * per_round)
    return untimed, -(-timed // per_round) * per_round


# ----------------------------------------------------------------------------- the source


def jpeg_source(work: Path, images: int, size: tuple[int, int]) -> Path:
    """A Karpathy JSON source of `images` sample-world scenes as JPEG files of `size` pixels."""
    from PIL import Image

    from augment.world.writer import write_sample

    world = write_sample(work / "world", n=images, seed=0, val_frac=0.0, test_frac=0.0, overwrite=True)
    document = json.loads((world / "dataset_sample.json").read_text())
    folder = work / "jpeg"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for entry in document["images"]:
        name = Path(entry["filename"]).with_suffix(".jpg").name
        with Image.open(world / "images" / entry["filename"]) as image:
            image.convert("RGB").resize(size, Image.BICUBIC).save(folder / "images" / name, quality=90)
        entry["filename"] = name
    path = folder / "dataset_jpeg.json"
    path.write_text(json.dumps(document))
    return path


# ----------------------------------------------------------------------------- timing


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _release(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def trainer_for(method: str, source: Path, out: Path, args, device: str, max_steps: int | None = None):
    from train.config import MULTIMODAL_METHODS, resolve_config
    from train.trainer import Trainer

    # the masked LM of mat's text attack (clean, tecoa and fare read one only for an MLM --val-attack)
    settings = {"method": method, "model": args.model, **({"mlm": args.mlm} if method in MULTIMODAL_METHODS else {}),
                "train_data": str(source), "out": str(out),
                "batch_size": args.batch_size, "pgd_steps": args.pgd_steps, "precision": args.precision,
                "max_steps": max_steps or args.warmup + args.steps, "progress": False, "overwrite": True,
                "cpu": device == "cpu"}
    if args.workers is not None:
        settings["workers"] = args.workers
    trainer = Trainer(resolve_config(settings))
    trainer.setup()
    return trainer


def profile_steps(trainer, args, device: str, first: int) -> Path:
    """`--profile` steps after the timed ones under torch.profiler: where a step's time goes, per operator
    (self CPU time; self device time on a GPU), written beside `--out`."""
    from bench.report import add_profile, profile_tables

    def steps():
        for step in range(first, first + args.profile):
            trainer.train_step(step)

    method = trainer.cfg.method
    text = profile_tables(steps, device, f"== {args.profile} {method} step(s), {args.model}, batch {args.batch_size}, "
                                         f"{device}")
    path = add_profile(args.out, text)  # every method's tables in one file (main empties it first)
    print(f"profile of {args.profile} {method} step(s): {path}")
    return path


def time_steps(trainer, args, device: str, untimed: int, timed: int) -> dict:
    """The step's median, the data wait's mean and share over the `timed` steps after `untimed`."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step_times, data_times = [], []
    for step in range(untimed + timed):
        _synchronize(device)
        started = time.perf_counter()
        trainer.train_step(step)
        _synchronize(device)
        if step >= untimed:
            step_times.append(time.perf_counter() - started)
            data_times.append(trainer.step_data_seconds)
    step_s, total = statistics.median(step_times), sum(step_times)
    workers = trainer.cfg.workers
    result = {"step_s": step_s, "data_s": sum(data_times) / len(data_times), "data_share": sum(data_times) / total,
              "images_per_s": args.batch_size / step_s, "window_images_per_s": len(step_times) * args.batch_size / total,
              "untimed_steps": untimed, "timed_steps": timed,
              # the share counts every wait in proportion only after the first round, over whole rounds
              "data_window_steady": untimed >= workers and timed % max(1, workers) == 0,
              "step_s_all": step_times, "data_s_all": data_times}
    if device.startswith("cuda"):
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def loader_batches(trainer, count: int):
    """The trainer's micro batches 0..count-1 (the plan wraps over epochs) from a new DataLoader
    of its --workers, as `Trainer.batches` builds it, with no model."""
    from train.data import MicroBatches, micro_batches

    cfg = trainer.cfg
    dataset = MicroBatches(trainer.data, trainer.global_batch, trainer.rank, cfg.batch_size,
                           trainer.task.train_transform(trainer.model))
    return micro_batches(dataset, 0, count, cfg.workers, trainer.accelerator.device.type == "cuda")


def time_loader(trainer, untimed: int, timed: int) -> dict:
    """The data path's own rate: `timed` batches drawn with no model after `untimed` (`data_window`)."""
    batches = loader_batches(trainer, untimed + timed)
    for _ in range(untimed):  # worker start-up and the first round, decoded all at once
        next(batches)
    started = time.perf_counter()
    for _ in range(timed):
        next(batches)
    seconds = time.perf_counter() - started
    batches.close()
    return {"loader_s_per_batch": seconds / timed, "loader_images_per_s": timed * trainer.cfg.batch_size / seconds,
            "loader_untimed_batches": untimed, "loader_timed_batches": timed}


def step_flops(trainer, step: int) -> int:
    """Floating-point operations of one more optimizer step (torch.utils.flop_counter: matrix
    products, convolutions and attention, forward and backward): the work a compute-bound device
    pays whatever its per-call costs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.train_step(step)
    return counter.get_total_flops()


def mat_over_clean(payload: dict, pgd_steps: int) -> bool:
    """MAT's step over clean's and the issue's budget (1 + 0.5 x PGD steps + 1) into `payload`, once
    both are measured, and their FLOPs' ratio where both were counted (what a compute-bound
    device's time ratio comes to); whether they are."""
    results = payload["results"]
    if "clean" not in results or "mat" not in results:
        return False
    payload["mat_over_clean"] = results["mat"]["step_s"] / results["clean"]["step_s"]
    payload["target_mat_over_clean"] = 1 + 0.5 * pgd_steps + 1
    if results["clean"].get("flops_per_step") and results["mat"].get("flops_per_step"):
        payload["mat_over_clean_flops"] = results["mat"]["flops_per_step"] / results["clean"]["flops_per_step"]
    return True


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_train_loop: --device cuda but torch sees no GPU")
        return 2
    args.precision = args.precision or ("amp" if device.startswith("cuda") else "fp32")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    data_method = args.data_method or (methods[0] if methods else None)
    if data_method is not None and data_method not in methods and not args.loader_only:
        print(f"bench_train_loop: --data-method {data_method} is not one of --methods {args.methods}")
        return 2
    results = {}
    payload = {"benchmark": "train_loop", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "environment": environment(device), "results": results, "complete": False}
    if args.profile:
        profile_path(args.out).unlink(missing_ok=True)  # this run's tables only
    with tempfile.TemporaryDirectory(prefix="bench-train-loop-") as scratch:
        work = Path(args.keep) if args.keep else Path(scratch)
        made = time.perf_counter()
        source = jpeg_source(work, args.images, (args.width, args.height))
        print(f"source: {args.images} JPEG images of {args.width}x{args.height} px in {time.perf_counter() - made:.1f} s")
        if args.loader_only:  # clean and MAT draw the same batches: one method's loader tells it
            trainer = trainer_for(methods[0], source, work / "run-loader", args, device)
            window = data_window(trainer.cfg.workers, 1, args.steps, args.data_rounds)
            loader = {**time_loader(trainer, *window), "workers": trainer.cfg.workers}
            # per decoding process: the workers, or the main process itself with --workers 0
            loader["images_per_s_per_process"] = loader["loader_images_per_s"] / max(1, loader["workers"])
            results["loader"] = loader
            print(f"loader alone ({loader['workers'] or 'no'} workers, {args.model}'s training transform, "
                  f"{window[1]} batches timed after {window[0]}): {loader['loader_images_per_s']:.1f} img/s, "
                  f"{loader['images_per_s_per_process']:.1f} per decoding process")
            methods = []
        for method in methods:
            workers = args.workers
            if workers is None:  # the trainer's default
                from augment.loading import default_workers

                workers = default_workers()
            untimed, timed = (data_window(workers, args.warmup, args.steps, args.data_rounds) if method == data_method
                              else (args.warmup, args.steps))
            trainer = trainer_for(method, source, work / f"run-{method}", args, device,
                                  max_steps=untimed + timed + args.profile + args.flops)
            results[method] = time_steps(trainer, args, device, untimed, timed)
            results[method]["workers"] = trainer.cfg.workers
            if args.flops:  # after the timing, which the counter's dispatch overhead would slow
                results[method]["flops_per_step"] = step_flops(trainer, untimed + timed)
            if args.profile:  # the timing is written first: a profile killed at the time limit loses only itself
                mat_over_clean(payload, args.pgd_steps)
                write_report(args.out, payload)
                profile_steps(trainer, args, device, untimed + timed + args.flops)
            trainer.stop_loader()  # its workers stop before the loader-only pass
            if method == data_method:
                results[method].update(time_loader(trainer, *data_window(trainer.cfg.workers, 1, args.steps,
                                                                          args.data_rounds)))
            del trainer
            _release(device)  # the next method's peak memory must not include this one's model
            r = results[method]
            print(f"{method:<6} step {r['step_s']:.3f} s ({r['images_per_s']:.1f} img/s), waited for data "
                  f"{r['data_s']:.3f} s ({100 * r['data_share']:.1f}%, {r['timed_steps']} steps timed after "
                  f"{r['untimed_steps']}{'' if r['data_window_steady'] else ': not a steady-state share'})"
                  + (f"; loader alone {r['loader_images_per_s']:.1f} img/s" if "loader_images_per_s" in r else "")
                  + (f"; peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else "")
                  + (f"; {r['flops_per_step'] / 1e12:.3f} TFLOP a step" if "flops_per_step" in r else ""))
            if r.get("step_s_all"):  # a host-bound step on a GPU shows as a wide spread
                print(f"       timed steps from {min(r['step_s_all']):.3f} to {max(r['step_s_all']):.3f} s")
            if method != methods[-1]:  # what finished survives a kill at the time limit
                write_report(args.out, payload)
    if mat_over_clean(payload, args.pgd_steps):
        ratio, budget = payload["mat_over_clean"], payload["target_mat_over_clean"]
        print(f"MAT / clean step: {ratio:.2f} (issue budget {budget:.1f}: {'met' if ratio <= budget else 'NOT met'})"
              + (f"; their FLOPs' ratio {payload['mat_over_clean_flops']:.2f} (a compute-bound device's)"
                 if "mat_over_clean_flops" in payload else ""))
    payload["complete"] = True
    write_report(args.out, payload)
    return 0


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
