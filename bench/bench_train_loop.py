"""Training steps through the trainer's own loop: clean and MAT step time and the data-loading share.

    python -m bench.bench_train_loop [--model tiny-clip] [--batch-size 32] [--workers N]
        [--precision fp32] [--methods clean,mat] [--pgd-steps 10] [--steps 4] [--warmup 2]
        [--images 256] [--image-size 500x375] [--device cpu|cuda] [--out outputs/bench/train_loop.json]

Issue 18's GPU measurement: on a GPU machine, with a real-size architecture and random weights
(offline, no Hub):

    python -m bench.bench_train_loop --model ViT-B-16 --device cuda --batch-size 128 --precision amp \\
        --workers 12 --image-size 500x375

What runs is the product's path: `train.trainer.Trainer` set up from the same settings as
`train clean|mat`, its DataLoader (`--workers` processes decoding and preprocessing, pinned memory
on a GPU) feeding `Trainer.train_step`, on a synthetic Karpathy source of JPEG files at a real
photo size (`--image-size`, default 500x375 like most Flickr30k images: sample-world scenes scaled
up, so decoding costs what a real JPEG of that size costs). Reported per method, medians over
`--steps` steps after `--warmup` (worker start-up, cuDNN/oneDNN kernel choice):

* `step_s`: one optimizer step, wall time (the GPU synchronised at its end);
* `data_s`: of that, the time the step waited for its batch (the trainer's `data_seconds`,
  open_clip_train's data time) and `data_share` = data_s / step_s: near 0 means the loader keeps up;
* `images_per_s` of the step, and of the loader alone (`loader_images_per_s`: the same batches
  drawn with no model, i.e. what the data path can supply);
* peak GPU memory on a GPU.

`--loader-only` times the data path alone (no model steps; any `--model`'s training transform):
images per second, and per decoding process, so the workers a GPU needs can be worked out on a CPU machine
(a GPU step of S seconds at batch B needs B / S images per second).

And MAT / clean against the issue's budget of 1 + 0.5 x PGD steps + 1 clean steps. MAT's text
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

from bench.report import environment, write_report

DEFAULT_OUT = "outputs/bench/train_loop.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_train_loop", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", default="tiny-clip",
                        help="any name training accepts; an open_clip architecture without a pretrained tag "
                             "(e.g. ViT-B-16) has random weights, offline")
    parser.add_argument("--mlm", default="tiny-mlm", help="MAT's masked LM (default tiny-mlm: offline)")
    parser.add_argument("--methods", default="clean,mat", help="comma list of training methods (default clean,mat)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--precision", default=None, help="training --precision (default: amp on cuda, fp32 on cpu)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the trainer's)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per method (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--images", type=int, default=256, help="images of the synthetic source (default 256)")
    parser.add_argument("--image-size", default="500x375", help="WIDTHxHEIGHT of its JPEG files (default 500x375)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--loader-only", action="store_true",
                        help="time only the data path (decoding and the model's training transform), no steps: "
                             "how many workers a GPU's step rate needs, measurable on any machine")
    parser.add_argument("--keep", default=None, metavar="DIR", help="write the source and runs here and keep them")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        parser.error(f"--image-size {args.image_size!r}: expected WIDTHxHEIGHT, e.g. 500x375")
    args.width, args.height = width, height
    if args.steps < 1 or args.warmup < 1:  # the first step starts the loader's workers: never timed
        parser.error("--steps and --warmup must each be at least 1")
    return args


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


def trainer_for(method: str, source: Path, out: Path, args, device: str):
    from train.config import resolve_config
    from train.trainer import Trainer

    settings = {"method": method, "model": args.model, "mlm": args.mlm, "train_data": str(source), "out": str(out),
                "batch_size": args.batch_size, "pgd_steps": args.pgd_steps, "precision": args.precision,
                "max_steps": args.warmup + args.steps, "progress": False, "overwrite": True,
                "cpu": device == "cpu"}
    if args.workers is not None:
        settings["workers"] = args.workers
    trainer = Trainer(resolve_config(settings))
    trainer.setup()
    return trainer


def time_steps(trainer, args, device: str) -> dict:
    """Medians of the timed steps: step, data wait, their ratio; the loader alone on the same batches."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step_times, data_times = [], []
    for step in range(args.warmup + args.steps):
        _synchronize(device)
        started = time.perf_counter()
        trainer.train_step(step)
        _synchronize(device)
        if step >= args.warmup:
            step_times.append(time.perf_counter() - started)
            data_times.append(trainer.step_data_seconds)
    trainer.stop_loader()  # its workers stop before the loader-only pass
    step_s, data_s = statistics.median(step_times), statistics.median(data_times)
    result = {"step_s": step_s, "data_s": data_s, "data_share": data_s / step_s,
              "images_per_s": args.batch_size / step_s, "step_s_all": step_times, "data_s_all": data_times}
    if device.startswith("cuda"):
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result.update(time_loader(trainer, args))
    return result


def time_loader(trainer, args) -> dict:
    """The same micro batches drawn from a fresh loader with no model: the data path's own rate."""
    batches = trainer.batches(first_step=0)
    next(batches)  # worker start-up
    started = time.perf_counter()
    count = 0
    for _ in range(args.warmup + args.steps - 1):
        next(batches)
        count += 1
    seconds = time.perf_counter() - started
    batches.close()
    return {"loader_s_per_batch": seconds / count, "loader_images_per_s": count * args.batch_size / seconds}


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
    with tempfile.TemporaryDirectory(prefix="bench-train-loop-") as scratch:
        work = Path(args.keep) if args.keep else Path(scratch)
        made = time.perf_counter()
        source = jpeg_source(work, args.images, (args.width, args.height))
        print(f"source: {args.images} JPEG images of {args.width}x{args.height} px in {time.perf_counter() - made:.1f} s")
        results = {}
        if args.loader_only:  # clean and MAT draw the same batches: one method's loader tells it
            trainer = trainer_for(methods[0], source, work / "run-loader", args, device)
            loader = {**time_loader(trainer, args), "workers": trainer.cfg.workers}
            # per decoding process: the workers, or the main process itself with --workers 0
            loader["images_per_s_per_process"] = loader["loader_images_per_s"] / max(1, loader["workers"])
            results["loader"] = loader
            print(f"loader alone ({loader['workers'] or 'no'} workers, {args.model}'s training transform): "
                  f"{loader['loader_images_per_s']:.1f} img/s, {loader['images_per_s_per_process']:.1f} per decoding process")
            methods = []
        for method in methods:
            trainer = trainer_for(method, source, work / f"run-{method}", args, device)
            results[method] = time_steps(trainer, args, device)
            results[method]["workers"] = trainer.cfg.workers
            del trainer
            _release(device)  # the next method's peak memory must not include this one's model
            r = results[method]
            print(f"{method:<6} step {r['step_s']:.3f} s ({r['images_per_s']:.1f} img/s), waited for data "
                  f"{r['data_s']:.3f} s ({100 * r['data_share']:.1f}%); loader alone {r['loader_images_per_s']:.1f} img/s"
                  + (f"; peak {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""))
    payload = {"benchmark": "train_loop", "settings": {k: v for k, v in vars(args).items() if k != "out"},
               "environment": environment(device), "results": results}
    if "clean" in results and "mat" in results:
        ratio = results["mat"]["step_s"] / results["clean"]["step_s"]
        budget = 1 + 0.5 * args.pgd_steps + 1
        payload["mat_over_clean"], payload["target_mat_over_clean"] = ratio, budget
        print(f"MAT / clean step: {ratio:.2f} (issue budget {budget:.1f}: {'met' if ratio <= budget else 'NOT met'})")
    write_report(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
