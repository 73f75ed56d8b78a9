"""Image generators: batched generation against a plain one-image-at-a-time loop.

For `t2i-sd` and `t-i2i-sd`, the same pipeline makes the same images (same prompts, same
per-image seeds) twice in one run:

* **loop**: one pipeline call per image (`num_images_per_prompt=1`, one generator);
* **batched**: mat-plus's generator (`--batch-size` images per call, `num_images_per_prompt`
  for t2i, one CPU generator per image).

Reported: images per second of each, their ratio (> 1: batching is faster), peak memory of each
(GPU: `torch.cuda.max_memory_allocated`; CPU: peak resident set size sampled every 5 ms, and its
rise over the level before the mode ran), and the largest pixel difference between the two
outputs (0 or a few levels: they do the same work; float kernels differ slightly by batch shape).
Where the time goes: seconds inside the UNet, VAE encoder/decoder and text encoder (forward
hooks) and the rest, the UNet's milliseconds per sample (a guided image is 2 samples per step),
and the bound: the ratio batching would reach if it removed all of the loop's time outside the
UNet and VAE while they cost per image what they cost in the loop.

Default model `tiny-sd` (random weights, 64x64, CPU): it measures the batching and bookkeeping
overhead, not real model speed. On a GPU pass `--model sd15 --device cuda --dtype fp16`; on a GPU
without the Hub, `--model sd15-shaped`: Stable Diffusion 1.5's architecture (UNet, VAE, CLIP
ViT-L/14 text encoder, CLIP tokenizer; 512 px unless `--size`) with seeded random weights, built
offline on the device by bench/real_shapes.py, with tiny-sd's scheduler class (DDIM, SD 1.5's
betas). Its images are noise, its cost is SD 1.5's; the JSON records the build time.

What the CPU ratio can show. At the twin's own 64x64 px and one thread the UNet is
compute-bound: its cost per sample is the same at batch 2 and 16 (within a few %), and the
per-call work a batch saves (prompt encoding, scheduler, latents, PIL, mat-plus's loop) is
~3-5% of the loop, so the bound above is ~1.05x. `--size` (t2i) shows where batching pays: at
32 or 16 px fixed per-op cost dominates the UNet and batching gives 2.4x / 3.5x (no user makes
such images; it stands for the per-kernel launch cost of a GPU). More intra-op threads than
free cores do not stand for a GPU: on a shared 2-core machine (load 5-12) two threads made the
one-image loop 16x slower than at one thread (thread hand-offs stall on busy cores) and the
"speed-up" 3-4x, which measures that contention, not batching. Use `--threads` only on
quiet cores; the default is torch's own (OMP_NUM_THREADS).

`python -m bench.bench_image_generators [--out PATH]` prints a table and writes JSON
(default outputs/bench/image_generators.json).
"""
from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from augment.arguments import non_negative_int, positive_fraction, positive_int
from bench.real_shapes import SHAPED_MODELS, sd_pipeline
from bench.report import environment, report_path, write_report

DEFAULT_OUT = "outputs/bench/image_generators.json"
METHODS = ("t2i-sd", "t-i2i-sd")
SAME_IMAGES_LEVELS = 1  # batched and loop images count as the same within this many 8-bit levels


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_image_generators", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--model", default="tiny-sd",
                        help="SD model: tiny-sd (default), sd15-shaped (SD 1.5's architecture, random weights, "
                             "offline), alias, Hub id or folder")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {METHODS} (default both)")
    parser.add_argument("--images", type=positive_int, default=16, help="images per mode and method (default 16)")
    parser.add_argument("--n", type=positive_int, default=2, help="images per caption (default 2)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per batched call (default 8)")
    parser.add_argument("--steps", type=positive_int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--strength", type=positive_fraction, default=0.75, help="t-i2i-sd strength (default 0.75)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="t2i-sd image side in pixels, a multiple of 8 (default: the model's, 64 for tiny-sd, "
                             "512 for sd15-shaped)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, help="model dtype, fp32, fp16 or bf16 (default: fp16 on cuda, fp32 on cpu)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sample captions and the per-image generators (default 0)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved loop/batched repeats, medians (default 3)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- inputs


def sample_world_items(count: int, seed: int) -> list[dict]:
    """Source-like items (image_id, image, captions) rendered from sample-world scenes."""
    from augment.world.captions import captions_for_scene
    from augment.world.render import render_scene
    from augment.world.scene import sample_scene

    items = []
    for i in range(count):
        scene = sample_scene(random.Random(f"bench-images/{seed}/{i}"))
        captions = captions_for_scene(scene, random.Random(f"bench-images/{seed}/captions/{i}"), 5)
        items.append({"image_id": f"bench-{i}", "image": render_scene(scene), "captions": captions, "split": "train"})
    return items


# ----------------------------------------------------------------------------- memory


class PeakRss:
    """Peak resident set size of this process, sampled by a background thread."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@contextmanager
def peak_memory(device: str) -> Iterator[dict]:
    """Fills the yielded dict with peak memory (MiB) of the block it wraps."""
    import torch

    result: dict = {}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield result
        torch.cuda.synchronize()
        result.update(kind="cuda max_memory_allocated", peak_mib=torch.cuda.max_memory_allocated() / 2**20)
        return
    with PeakRss() as rss:
        yield result
    result.update(kind="process RSS", peak_mib=rss.peak / 2**20, rise_mib=(rss.peak - rss.start) / 2**20)


# ----------------------------------------------------------------------------- where the time goes


COMPONENTS = {"unet": "unet", "vae_encode": "vae.encoder", "vae_decode": "vae.decoder", "text_encoder": "text_encoder"}


class ComponentTimes:
    """Seconds spent in each model of the pipeline (forward hooks), and the UNet's samples.

    What is left of a run's time ("rest") is the pipeline's own work around the models
    (scheduler, latents, pre/post-processing, PIL) plus mat-plus's loop. On CUDA each hook
    synchronises so that time lands on the model that spent it.
    """

    def __init__(self, pipe, device: str):
        self.pipe = pipe
        self.sync = device.startswith("cuda")
        self.seconds: dict[str, float] = {}
        self.unet_samples = 0
        self._handles: list = []

    def _module(self, path: str):
        module = self.pipe
        for name in path.split("."):
            module = getattr(module, name, None)
        return module

    def _clock(self) -> float:
        if self.sync:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def __enter__(self) -> "ComponentTimes":
        for name, path in COMPONENTS.items():
            module = self._module(path)
            if module is None:
                continue
            started: list[float] = []

            def before(_module, args, kwargs, started=started, name=name):
                if name == "unet":
                    sample = args[0] if args else kwargs["sample"]
                    self.unet_samples += sample.shape[0]
                started.append(self._clock())

            def after(_module, _args, _kwargs, _output, started=started, name=name):
                self.seconds[name] = self.seconds.get(name, 0.0) + self._clock() - started.pop()

            self._handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            self._handles.append(module.register_forward_hook(after, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def summary(self, total_s: float) -> dict:
        unet_s = self.seconds.get("unet", 0.0)
        return {
            "seconds": dict(self.seconds),
            "rest_s": total_s - sum(self.seconds.values()),
            "unet_samples": self.unet_samples,
            "unet_ms_per_sample": 1000 * unet_s / self.unet_samples if self.unet_samples else None,
        }


# ----------------------------------------------------------------------------- the two modes


def loop_runner(generator, jobs: list, seed: int) -> Callable[[], list]:
    """One pipeline call per image: the same prompt, init image and seed a row of the pool gets."""
    from augment.generators.base import row_seed

    def run() -> list:
        images = []
        for job in jobs:
            call = generator.replay_call(job, {"prompts": 1, "images_per_prompt": 1, "slot": 0})
            seeds = [row_seed(seed, job.item["image_id"], job.caption_index, job.k)]
            images.append(generator.call_pipeline(call, seeds)[0][0])
        return images
    return run


def batched_runner(generator, items: list[dict], n: int, seed: int) -> Callable[[], list]:
    return lambda: [row["image"] for row in generator.generate(items, n, seed)]


def timed(device: str, run: Callable[[], list], pipe) -> tuple[list, float, dict, dict]:
    import torch

    with peak_memory(device) as memory, ComponentTimes(pipe, device) as components:
        start = time.perf_counter()
        images = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return images, seconds, memory, components.summary(seconds)


def median_run(seconds: list[float], breakdowns: list[dict]) -> dict:
    """The component breakdown of the run whose time is the median (lower median if even)."""
    order = sorted(range(len(seconds)), key=seconds.__getitem__)
    return breakdowns[order[(len(order) - 1) // 2]]


def per_image_bound(loop_s: float, breakdown: dict) -> float:
    """The speed-up batching would reach if it removed ALL of the loop's time outside the UNet
    and VAE while their per-sample cost stayed as in the loop: loop / (UNet + VAE of the loop)."""
    per_image_s = sum(breakdown["seconds"].get(k, 0.0) for k in ("unet", "vae_encode", "vae_decode"))
    return loop_s / per_image_s if per_image_s else float("inf")


def max_pixel_difference(first: list, second: list) -> int:
    import numpy as np

    return int(max(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max()
                   for a, b in zip(first, second)))


def bench_method(method: str, args, device: str, dtype: str, components: dict | None = None) -> dict:
    """`components`: modules of a real-shaped model (bench.real_shapes); None loads `args.model`."""
    from augment.generators.diffusion import GENERATOR_CLASSES, DiffusionSettings

    settings = DiffusionSettings(model=args.model, device=device, dtype=dtype, batch_size=args.batch_size,
                                 steps=args.steps, strength=args.strength, captions_per_image=1,
                                 **({"height": args.size, "width": args.size} if method == "t2i-sd" and args.size else {}))
    generator_class = GENERATOR_CLASSES[method]
    pipe = sd_pipeline(components, generator_class.kind) if components is not None else None
    generator = generator_class(settings, pipe=pipe)
    items = sample_world_items(-(-args.images // args.n), args.seed)
    jobs = generator.jobs(items, args.n)[: args.images]
    items = items[: -(-len(jobs) // args.n)]
    # warm-up: the first calls pay for kernel selection and allocator growth
    batched_runner(generator, items[:1], args.n, args.seed + 1)()
    loop_runner(generator, jobs[:1], args.seed + 1)()

    # interleaved repeats, medians: load on a shared machine hits both modes alike
    loop_times, batched_times, loop_parts, batched_parts = [], [], [], []
    for _ in range(args.repeats):
        loop_images, loop_s, loop_memory, parts = timed(device, loop_runner(generator, jobs, args.seed), generator.pipe)
        loop_times.append(loop_s)
        loop_parts.append(parts)
        batched_images, batched_s, batched_memory, parts = timed(
            device, batched_runner(generator, items, args.n, args.seed), generator.pipe)
        batched_times.append(batched_s)
        batched_parts.append(parts)
    loop_s, batched_s = statistics.median(loop_times), statistics.median(batched_times)
    loop_breakdown = median_run(loop_times, loop_parts)
    images = len(jobs)
    # the batched side makes n images for each item, so more than the loop where --images is not a multiple of --n
    batched_count = len(items) * args.n
    return {
        "method": method,
        "images": images,
        "loop": {"images": images, "seconds": loop_s, "seconds_all": loop_times, "images_per_s": images / loop_s,
                 "memory": loop_memory, "breakdown": loop_breakdown},
        "batched": {"images": batched_count, "seconds": batched_s, "seconds_all": batched_times,
                    "images_per_s": batched_count / batched_s, "memory": batched_memory,
                    "breakdown": median_run(batched_times, batched_parts)},
        "speedup": (batched_count / batched_s) / (images / loop_s),  # images per second, batched over loop
        "per_image_bound": per_image_bound(loop_s, loop_breakdown),
        "max_pixel_difference": max_pixel_difference(loop_images, batched_images),
        # the bar: batching makes the same images as the loop, within one 8-bit level
        "same_images": max_pixel_difference(loop_images, batched_images) <= SAME_IMAGES_LEVELS,
        "params": generator.params(),
    }


# ----------------------------------------------------------------------------- report


def print_table(results: list[dict]) -> None:
    parts = ("unet", "vae_encode", "vae_decode", "text_encoder")
    header = (f"{'method':<10} {'mode':<8} {'images':>6} {'s':>8} {'img/s':>8} {'peak MiB':>9} {'rise MiB':>9} "
              + " ".join(f"{p + ' s':>13}" for p in parts) + f" {'rest s':>7} {'UNet ms/sample':>15}")
    print(header)
    print("-" * len(header))
    for result in results:
        for mode in ("loop", "batched"):
            entry = result[mode]
            memory, breakdown = entry["memory"], entry["breakdown"]
            rise = f"{memory['rise_mib']:9.0f}" if "rise_mib" in memory else f"{'-':>9}"
            seconds = " ".join(f"{breakdown['seconds'].get(p, 0.0):13.3f}" for p in parts)
            per_sample = breakdown["unet_ms_per_sample"]
            print(f"{result['method']:<10} {mode:<8} {entry['images']:>6} {entry['seconds']:8.2f} "
                  f"{entry['images_per_s']:8.2f} {memory['peak_mib']:9.0f} {rise} {seconds} "
                  f"{breakdown['rest_s']:7.3f} {per_sample if per_sample is None else round(per_sample, 2):>15}")
        print(f"{result['method']:<10} batched / loop speed: {result['speedup']:.2f}x "
              f"(bound if batching removed all per-call work: {result['per_image_bound']:.2f}x); "
              f"largest pixel difference {result['max_pixel_difference']}"
              + ("" if result["same_images"] else
                 f" (NOT the same images: more than {SAME_IMAGES_LEVELS}/255 apart)"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else [])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; choose from {METHODS}")
        return 2
    components, build_s = None, None
    if args.model in SHAPED_MODELS:
        if dtype == "fp16" and device.startswith("cpu"):
            print("--dtype fp16 needs a GPU; use --dtype fp32 (or bf16) with --device cpu")
            return 2
        start = time.perf_counter()
        components = SHAPED_MODELS[args.model](device, dtype, args.seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        build_s = time.perf_counter() - start
        print(f"built {args.model} (random weights) on {device} {dtype} in {build_s:.1f} s")
    env = environment(device, dtype=dtype)
    payload = {
        "benchmark": "image_generators",
        "model": args.model,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": env,
        "model_build_s": build_s,  # sd15-shaped: building the random-weight modules (None: loaded)
        "results": [],
        "complete": False,
    }
    results = payload["results"]
    for method in methods:
        results.append(bench_method(method, args, device, dtype, components))
        if method != methods[-1]:  # what finished survives a kill at the time limit
            write_report(args.out, payload)
    size = f"t2i {args.size}x{args.size} px" if args.size else "the model's size"
    print(f"settings: {args.model}, {size}, {args.images} images per mode, n {args.n}, batch {args.batch_size}, "
          f"{args.steps} steps, {device} {dtype}, {env['torch_threads']} torch threads on {env['cpu_count']} CPUs "
          f"(load {env['load_average_1m']:.1f}), median of {args.repeats}")
    print_table(results)
    payload["complete"] = True
    write_report(args.out, payload)
    # a speed-up with other images is no speed-up: exit 1 so a script sees it (the JSON is written). Only
    # in fp32: half-precision kernels chosen per batch shape differ by more, amplified over the steps
    return 1 if dtype == "fp32" and not all(result["same_images"] for result in results) else 0


if __name__ == "__main__":
    import sys

    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
