"""Attack speed against named baselines, measured in the same run, reported as ratios.

    python -m bench.bench_attacks [--images 32] [--captions 5] [--repeats 3] [--device cpu]
                                  [--model tiny-clip] [--attacks pgd,bert-attack,sep,co-attack,sga]
                                  [--profile] [--out outputs/bench/attacks.json]

`--model` takes any name `load_model` accepts; an open_clip architecture without a pretrained tag
(e.g. `ViT-B-16`) is built with random weights, offline: a real-size tower (77-token context, 224 px)
to time what the text shortcuts save for real users, where tiny-clip's 32-token context
understates it. A random-weight victim's attack may stop at other steps than a trained one's; both
sides of each comparison still run the same attack on the same model and must give the same
captions. `--attacks` picks the comparisons (a real-size image PGD is slow on CPU).

1. **Image PGD vs torchattacks.PGD**: the same tiny CLIP (tiny-clip architecture, random
   weights), the same images and settings (eps 2/255, 10 steps of 0.5/255, random start). The
   CLIP is wrapped as a classifier over the batch's captions (logits = scale * image_emb @
   text_emb.T, label = the paired caption), and mat-plus's `pgd_linf` maximises the same cross
   entropy as torchattacks does. torchattacks runs on the model as the library builds it (its
   layers: `victim.library_layers()`, i.e. `patch_matmul` and `batch_first_attention` off, what a
   user running torchattacks on open_clip gets), and, for transparency, on mat-plus's loaded
   victim (those layers too): the gain is the model's layers, not the PGD loop. Reported: time ratios (torchattacks /
   mat-plus, > 1 means mat-plus is faster) and the final loss of each (they should be close).
   For context, the `PGD` class with its default "pair" objective is timed too.
2. **Multimodal attacks, batched vs one sample at a time**: Sep-Attack, Co-Attack and SGA (and
   BERT-Attack alone) on `--images` images with `--captions` captions each, once as one batch
   and once as a loop over single images (each with its captions), same model and settings
   (`--protocol`; no random start and no SGA noise, so both sides must give the same
   adversarial examples). Reported: time ratio (loop / batched; target >= 5), whether the
   adversarial captions are identical (exit status 1 if not), the largest pixel difference and
   how many pixel values differ (the encoders' rounding depends on the batch size, which can
   flip the sign of a near-zero gradient), and the mean image-caption similarity each leaves.
   The loop runs twice: with the product's text encoding (the ratio of batching alone), and
   encoding as the code did before the shortcuts (`fast_text = False` and the library's layers
   on the victim: open_clip's tokenizer, full-context text tower, the library's patch conv and
   `nn.MultiheadAttention`; SGA's views resized by torch's own bicubic kernels; the word search
   one step a round, without look-ahead), the ratio of "the attack loops faster".
   Also reported: the token positions each side's text tower computed (an open_clip victim);
   with `--profile`, each side's aten calls (their ratio is what a host-bound GPU's time ratio
   follows: on the H200, BERT-Attack's 2.17 predicted its measured 2.12-2.61x).

Both sides run under `--precision` (default fp32; `tf32` lets a GPU's float32 products use TF32
tensor cores, where the batched side's large products gain and the loop's host-bound small ones
hardly do). Runs are interleaved (baseline, ours, baseline, ...) so load on a shared machine hits both
alike; times are medians of wall time and of process CPU time (which barely moves with other
processes' load). torchattacks pins an old `requests`, so it must be installed with
`pip install --no-deps torchattacks`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from augment.arguments import positive_int
from models.half_precision import PRECISIONS, autocast
from bench.report import offline, report_path

DEFAULT_OUT = "outputs/bench/attacks.json"
MULTIMODAL = ("bert-attack", "sep", "co-attack", "sga")
COMPARISONS = ("pgd",) + MULTIMODAL
INSTALL_HINT = "torchattacks is not installed: pip install --no-deps torchattacks (its requests pin breaks huggingface_hub)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_attacks", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--images", type=positive_int, default=32, help="images per batch (an evaluation batch; default 32)")
    parser.add_argument("--captions", type=positive_int, default=5, help="captions per image (default 5)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per side, median kept (default 3)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--protocol", default="project", choices=("project", "sga", "co-attack"), help="attack protocol, as train eval's --protocol (default project)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="both sides run under train eval's --precision (tf32: TF32 products on a GPU, fp32 on a "
                             "CPU; amp_*: autocast)")
    parser.add_argument("--model", default="tiny-clip",
                        help="victim: a model name; an open_clip architecture without a tag (ViT-B-16) has random "
                             "weights; the multimodal comparisons need an open_clip model (their baseline's text path) (default tiny-clip)")
    parser.add_argument("--attacks", default=",".join(COMPARISONS),
                        help=f"comma-separated comparisons to run, of {', '.join(COMPARISONS)} (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="after each multimodal attack's timing, count each side's aten calls once (their "
                             "ratio: a host-bound GPU's time ratio), run its batched call once more under "
                             "torch.profiler and add the per-operator tables to OUT's folder as NAME.profile.txt")
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


def _timed(fn):
    """(wall seconds, process CPU seconds, result). CPU time barely moves with other processes'
    load on a shared machine, so its ratios are the steadier ones there."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _interleaved(sides: dict, repeats: int) -> dict:
    """{name: {"seconds", "cpu_seconds", "result"}}: medians, the sides run in turn `repeats` times
    after one untimed run each (first-use costs, kernels and caches, would otherwise all fall on the
    side timed first, the baseline: with the GPU run's 2 repeats, a median that is their mean)."""
    walls: dict[str, list[float]] = {name: [] for name in sides}
    cpus: dict[str, list[float]] = {name: [] for name in sides}
    results = {}
    for fn in sides.values():
        fn()
    for _ in range(repeats):
        for name, fn in sides.items():
            wall, cpu, results[name] = _timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {name: {"seconds": statistics.median(walls[name]), "cpu_seconds": statistics.median(cpus[name]),
                   "result": results[name]} for name in sides}


class CaptionClassifier(torch.nn.Module):
    """CLIP as a classifier over fixed captions: [0,1] pixels -> scale * image_emb @ text_emb.T."""

    def __init__(self, victim, text_emb: torch.Tensor):
        super().__init__()
        self.victim = victim
        # registered, so torchattacks finds its device and training mode
        self.clip = victim
        self.text_emb = text_emb

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.victim.logit_scale * self.victim.encode_image(pixels) @ self.text_emb.T


def bench_pgd(victim, pixels, captions_per_image: list[str], repeats: int) -> dict:
    import torch.nn.functional as F
    import torchattacks

    from train.attacks import PGD, pgd_linf

    eps, steps, step_size = 2 / 255, 10, 0.5 / 255
    with torch.no_grad():
        text_emb = victim.encode_text(captions_per_image)
    labels = torch.arange(len(pixels), device=pixels.device)
    classifier = CaptionClassifier(victim, text_emb).eval()
    baseline = torchattacks.PGD(classifier, eps=eps, alpha=step_size, steps=steps, random_start=True)

    def cross_entropy(adversarial):
        return F.cross_entropy(classifier(adversarial), labels)

    def ours():
        return pgd_linf(pixels, cross_entropy, eps, steps, step_size, random_start=True)

    pair_pgd = PGD(victim, eps=eps, steps=steps, step_size=step_size)

    def baseline_library_layers():
        with victim.library_layers():
            return baseline(pixels, labels)

    measured = _interleaved({
        "torchattacks, library layers": baseline_library_layers,
        "torchattacks": lambda: baseline(pixels, labels),
        "mat-plus pgd_linf": ours,
        "mat-plus PGD (pair objective)": lambda: pair_pgd(pixels, captions_per_image).images,
    }, repeats)
    with torch.no_grad():
        losses = {name: float(cross_entropy(side["result"])) for name, side in measured.items()}
        clean_loss = float(cross_entropy(pixels))
    # the timed sides draw their random starts from different generators: without one, both loops
    # must make the same adversarial images (the same update rule, up to float rounding)
    fixed_baseline = torchattacks.PGD(classifier, eps=eps, alpha=step_size, steps=steps, random_start=False)
    fixed_theirs = fixed_baseline(pixels, labels)
    fixed_ours = pgd_linf(pixels, cross_entropy, eps, steps, step_size, random_start=False)
    fixed_difference = (fixed_theirs - fixed_ours).abs()
    return {
        "without_random_start": {"max_image_difference": float(fixed_difference.max()),
                                 "pixels_differing": int((fixed_difference > 0).sum()),
                                 "pixels_beyond_rounding": int((fixed_difference > SAME_IMAGE_TOLERANCE).sum()),
                                 "pixels": int(fixed_ours.numel())},
        "settings": {"eps": eps, "steps": steps, "step_size": step_size, "images": len(pixels)},
        "seconds": {name: side["seconds"] for name, side in measured.items()},
        "cpu_seconds": {name: side["cpu_seconds"] for name, side in measured.items()},
        # against torchattacks on the model as the library builds it (the issue's baseline) ...
        "ratio_torchattacks_over_matplus": _ratio(measured, "torchattacks, library layers", "mat-plus pgd_linf",
                                                  "seconds"),
        "cpu_ratio_torchattacks_over_matplus": _ratio(measured, "torchattacks, library layers", "mat-plus pgd_linf",
                                                      "cpu_seconds"),
        # ... and on mat-plus's victim (the same patch matmul): the PGD loops alone
        "ratio_torchattacks_same_model_over_matplus": _ratio(measured, "torchattacks", "mat-plus pgd_linf", "seconds"),
        "cpu_ratio_torchattacks_same_model_over_matplus": _ratio(measured, "torchattacks", "mat-plus pgd_linf",
                                                                 "cpu_seconds"),
        "clean_loss": clean_loss,
        "final_loss": losses,
        "linf": {name: float((side["result"] - pixels).abs().max()) for name, side in measured.items()},
    }


# adversarial images that differ by less are the same up to float rounding (a PGD step is 2e-3) ...
SAME_IMAGE_TOLERANCE = 1e-5
# ... and a share of pixels this small beyond it is flipped gradient signs, not another attack
MAX_FLIPPED_SHARE = 1e-3


def images_that_differ(report: dict) -> list[str]:
    """The comparisons whose two sides made other adversarial images: more than `MAX_FLIPPED_SHARE`
    of the pixels beyond float rounding. Measured on the CPU: PGD and torchattacks 1.8e-7 apart on
    2.7% of pixels (the projection's rounding), 1 pixel beyond it at 32 images; the multimodal sides
    identical but for Co-Attack's 4 of 393,216 pixels, 1/255 apart: gradient elements near zero whose
    sign the batch's and the loop's rounding flip. A different attack moves most pixels."""
    def flipped(count: int, pixels: int) -> bool:
        return count > MAX_FLIPPED_SHARE * pixels

    differ = [name for name, entry in report["multimodal"]["attacks"].items()
              if flipped(max(entry["pixels_differing"], entry["pixels_differing_before"]), entry["pixels"])]
    fixed = (report.get("pgd") or {}).get("without_random_start")
    if fixed and flipped(fixed["pixels_beyond_rounding"], fixed["pixels"]):
        differ.insert(0, "pgd (against torchattacks, no random start)")
    return differ


def captions_that_differ(report: dict) -> list[str]:
    """The multimodal attacks whose batched side made other adversarial captions than either loop
    (the product's or the one encoding as before): a speed-up that changes them is not one."""
    return [name for name, entry in report["multimodal"]["attacks"].items()
            if not (entry["identical_texts"] and entry["identical_texts_before"])]


def _ratio(measured: dict, baseline: str, ours: str, key: str) -> float:
    return measured[baseline][key] / measured[ours][key]


@contextmanager
def encoding_before(victim):
    """Within the block the attacks run as the code did before the shortcuts: the victim encodes
    text as before the text shortcuts (`OpenClipModel.fast_text`) with its layers as the libraries
    build them, images are resized by the libraries' kernels (`library_resize`: SGA's views), and
    the word search takes one step a round (`one_step_rounds`: no look-ahead)."""
    from train.attacks.resize import library_resize
    from train.attacks.text import one_step_rounds

    if not hasattr(victim, "fast_text"):  # a silent no-op would report a ratio of the wrong baseline
        raise ValueError(f"{type(victim).__name__} has no fast_text switch")
    previous, victim.fast_text = victim.fast_text, False
    try:
        with victim.library_layers(), library_resize(), one_step_rounds():
            yield
    finally:
        victim.fast_text = previous


@contextmanager
def text_tokens_counted(victim):
    """Yields a list whose one number grows by the token positions (texts x length) the victim's
    open_clip text tower computes within the block; stays 0 for other families."""
    counted = [0]
    tower = getattr(getattr(victim, "model", None), "transformer", None)
    if tower is None:
        yield counted
        return
    # the last block's first layer norm sees every position the tower computes: the whole tower's,
    # the trimmed one's ([texts, length, width]) and the prefix cache's new positions ([positions, width];
    # its first block computes each distinct (token, position) once)
    tower = tower.resblocks[-1].ln_1 if len(getattr(tower, "resblocks", ())) else tower

    def count(module, args, output):
        counted[0] += args[0].numel() // args[0].shape[-1]

    handle = tower.register_forward_hook(count)
    try:
        yield counted
    finally:
        handle.remove()


def _counting(victim, fn, tokens: dict, side: str):
    """`fn` that records in tokens[side] the text-tower token positions of its latest run."""
    def run():
        with text_tokens_counted(victim) as counted:
            result = fn()
        tokens[side] = counted[0]
        return result
    return run


def bench_multimodal(victim, mlm, pixels, captions: list[str], image_of_text, repeats: int, protocol: str = "project",
                     names: tuple[str, ...] = MULTIMODAL, finished: Callable[[dict], None] | None = None,
                     profile_out: Path | None = None) -> dict:
    """Each attack in `names`, batched against the per-image loops; `finished(out)` is called with
    what is measured so far after each attack (the caller writes it: a run killed later keeps it).
    With `profile_out` (the report's path), each batched call is then run once under torch.profiler,
    its tables added to the report's profile file (`bench.report.add_profile`)."""
    from train.attacks import build_attack

    def mean_similarity(images, texts):
        with torch.no_grad():
            return float((victim.encode_image(images)[image_of_text] * victim.encode_text(texts)).sum(-1).mean())

    out = {"clean_similarity": mean_similarity(pixels, captions), "attacks": {}}
    per_image = torch.bincount(image_of_text).tolist()
    for name in names:
        # deterministic (no random start, no SGA noise): batched and looped must agree exactly
        attack = build_attack(name, victim, mlm=mlm, seed=0, protocol=protocol, random_start=False, noise_std=0.0)

        def batched():
            return attack(pixels, captions, image_of_text)

        def one_at_a_time():
            images, texts, start = [], [], 0
            for index, count in enumerate(per_image):
                result = attack(pixels[index:index + 1], captions[start:start + count], torch.zeros(count, dtype=torch.long))
                images.append(result.images)
                texts += result.texts
                start += count
            return torch.cat(images), texts

        def one_at_a_time_before():
            with encoding_before(victim):
                return one_at_a_time()

        tokens: dict[str, int] = {}
        sides = {"one_at_a_time_before": one_at_a_time_before, "one_at_a_time": one_at_a_time, "batched": batched}
        measured = _interleaved({side: _counting(victim, fn, tokens, side) for side, fn in sides.items()}, repeats)
        loop_images, loop_texts = measured["one_at_a_time"]["result"]
        before_images, before_texts = measured["one_at_a_time_before"]["result"]
        batch_result = measured["batched"]["result"]
        out["attacks"][name] = {
            "seconds": {side: m["seconds"] for side, m in measured.items()},
            "cpu_seconds": {side: m["cpu_seconds"] for side, m in measured.items()},
            "ratio_loop_over_batched": _ratio(measured, "one_at_a_time", "batched", "seconds"),
            "identical_texts": loop_texts == batch_result.texts,
            "max_image_difference": float((loop_images - batch_result.images).abs().max()),
            "pixels_differing": int((loop_images != batch_result.images).sum()),
            "pixels": int(loop_images.numel()),
            "cpu_ratio_loop_over_batched": _ratio(measured, "one_at_a_time", "batched", "cpu_seconds"),
            "ratio_before_loop_over_batched": _ratio(measured, "one_at_a_time_before", "batched", "seconds"),
            "cpu_ratio_before_loop_over_batched": _ratio(measured, "one_at_a_time_before", "batched", "cpu_seconds"),
            "identical_texts_before": before_texts == batch_result.texts,
            "max_image_difference_before": float((before_images - batch_result.images).abs().max()),
            "pixels_differing_before": int((before_images != batch_result.images).sum()),
            "text_tokens": tokens,
            "similarity_after": {
                "batched": mean_similarity(batch_result.images, batch_result.texts),
                "one_at_a_time": mean_similarity(loop_images, loop_texts),
            },
        }
        print(f"  {name}: batched {measured['batched']['seconds']:.2f}s, loop {measured['one_at_a_time']['seconds']:.2f}s, "
              f"loop encoding as before {measured['one_at_a_time_before']['seconds']:.2f}s (CPU "
              f"{measured['batched']['cpu_seconds']:.2f}s / {measured['one_at_a_time']['cpu_seconds']:.2f}s / "
              f"{measured['one_at_a_time_before']['cpu_seconds']:.2f}s); text tokens {tokens}", flush=True)
        if profile_out is not None:
            from bench.report import add_profile, aten_calls, profile_tables

            # each side's host calls once: their ratio is the time ratio of a host-bound GPU
            calls = {side: aten_calls(fn) for side, fn in sides.items()}
            out["attacks"][name]["aten_calls"] = calls
            out["attacks"][name]["aten_call_ratio_before_loop_over_batched"] = \
                calls["one_at_a_time_before"] / max(1, calls["batched"])
            print(f"  {name}: aten calls {calls} (before / batched "
                  f"{out['attacks'][name]['aten_call_ratio_before_loop_over_batched']:.2f})", flush=True)
            device = pixels.device.type
            text = profile_tables(batched, device, f"== {name}, batched: {len(pixels)} images, {len(captions)} captions, "
                                                   f"{device}")
            print(f"  {name}: profile added to {add_profile(profile_out, text)}", flush=True)
        if finished is not None:
            finished(out)
    return out


def _table(report: dict) -> str:
    lines = [
        "| comparison | baseline s | mat-plus s | ratio wall | ratio CPU | loss or similarity (baseline / mat-plus) | same result |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    if "pgd" in report:
        pgd = report["pgd"]
        ours = "mat-plus pgd_linf"
        for theirs, label, key in (("torchattacks, library layers", "PGD vs torchattacks.PGD (library's layers)", ""),
                                   ("torchattacks", "PGD vs torchattacks.PGD on the same patched model",
                                    "_same_model")):
            lines.append(
                f"| {label} | {pgd['seconds'][theirs]:.3f} | {pgd['seconds'][ours]:.3f} | "
                f"{pgd[f'ratio_torchattacks{key}_over_matplus']:.2f} | "
                f"{pgd[f'cpu_ratio_torchattacks{key}_over_matplus']:.2f} | "
                f"CE {pgd['final_loss'][theirs]:.3f} / {pgd['final_loss'][ours]:.3f} (clean {pgd['clean_loss']:.3f}) | - |")
    for name, entry in report["multimodal"]["attacks"].items():
        seconds, similarity = entry["seconds"], entry["similarity_after"]
        lines.append(
            f"| {name}: one at a time vs batched | {seconds['one_at_a_time']:.3f} | {seconds['batched']:.3f} | "
            f"{entry['ratio_loop_over_batched']:.2f} | {entry['cpu_ratio_loop_over_batched']:.2f} | "
            f"sim {similarity['one_at_a_time']:.3f} / {similarity['batched']:.3f} "
            f"(clean {report['multimodal']['clean_similarity']:.3f}) | texts {'yes' if entry['identical_texts'] else 'NO'}, "
            f"pixels {entry['max_image_difference']:.1e} ({entry['pixels_differing']} of {entry['pixels']} differ); "
            f"text tokens {entry['text_tokens']['one_at_a_time']:,} / {entry['text_tokens']['batched']:,} |"
        )
        lines.append(
            f"| {name}: one at a time encoding as before vs batched | {seconds['one_at_a_time_before']:.3f} | "
            f"{seconds['batched']:.3f} | {entry['ratio_before_loop_over_batched']:.2f} | "
            f"{entry['cpu_ratio_before_loop_over_batched']:.2f} | - | "
            f"texts {'yes' if entry['identical_texts_before'] else 'NO'}, pixels {entry['max_image_difference_before']:.1e} "
            f"({entry['pixels_differing_before']} of {entry['pixels']} differ); "
            f"text tokens {entry['text_tokens']['one_at_a_time_before']:,} / {entry['text_tokens']['batched']:,} |"
        )
    lines.append("ratio = baseline time / mat-plus time (> 1: mat-plus faster); CPU = process CPU time, "
                 "steadier than wall time on a shared machine.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    chosen = tuple(name.strip() for name in args.attacks.split(",") if name.strip())
    unknown = sorted(set(chosen) - set(COMPARISONS))
    if unknown or not chosen:
        print(f"--attacks: unknown {', '.join(unknown) or '(none given)'}; expected some of {', '.join(COMPARISONS)}",
              file=sys.stderr)
        return 2
    from models import family_of

    family = family_of(args.model)
    if family != "open_clip" and set(chosen) & set(MULTIMODAL):
        # the multimodal comparisons' baseline (`encoding_before`) is open_clip's text path before the shortcuts
        print(f"--model {args.model}: the multimodal attacks' baseline, the loop encoding as before, exists for "
              f"open_clip models only, not {family}; run --attacks pgd, or an open_clip model", file=sys.stderr)
        return 2
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    offline()
    from augment.registry import load_mlm
    from augment.world.writer import write_sample
    from augment.sources import load_source
    from models import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bundle = victim = load_model(args.model, device=device)
    model_name = args.model + (" (random weights)" if getattr(victim, "pretrained", None) is None else "")
    model, tokenizer = load_mlm("tiny-mlm", device=device)
    mlm = (model, tokenizer, "tiny-mlm")
    with tempfile.TemporaryDirectory(prefix="bench-attacks-") as work:
        world = write_sample(Path(work) / "world", n=args.images, seed=2, val_frac=0.0, test_frac=0.0,
                             n_captions=args.captions)
        rows = load_source(str(world))[0]
        pixels = torch.stack([bundle.preprocess_eval(row["image"]) for row in rows]).to(device)
        captions = [c for row in rows for c in row["captions"]]
        image_of_text = torch.tensor([i for i, row in enumerate(rows) for _ in row["captions"]])
        first_captions = [row["captions"][0] for row in rows]

    print(f"bench_attacks on {device}: {len(pixels)} images x {args.captions} captions, {model_name}, tiny-mlm, "
          f"{args.precision}", flush=True)
    report = {
        "device": device, "precision": args.precision, "threads": args.threads, "load_average_at_start": os.getloadavg(), "images": len(pixels), "captions_per_image": args.captions,
        "repeats": args.repeats, "model": model_name, "mlm": "tiny-mlm",
        "torch": torch.__version__, "torchattacks": getattr(torchattacks, "__version__", "?"),
    }
    from bench.report import profile_path, write_report

    def partial(multimodal: dict | None = None) -> None:  # what finished survives a kill at the time limit
        write_report(args.out, {**report, **({"multimodal": multimodal} if multimodal else {}), "complete": False})

    with autocast(device, args.precision):  # both sides, as train eval --precision runs its attacks
        if "pgd" in chosen:
            print("PGD vs torchattacks.PGD ...", flush=True)
            report["pgd"] = bench_pgd(victim, pixels, first_captions, args.repeats)
            partial()
        report["protocol"] = args.protocol
        names = tuple(name for name in MULTIMODAL if name in chosen)
        print("multimodal attacks, batched vs one sample at a time ...", flush=True)
        profile_out = Path(args.out) if args.profile and names else None
        if profile_out is not None:
            profile_path(profile_out).unlink(missing_ok=True)  # this run's tables only
        report["multimodal"] = bench_multimodal(victim, mlm, pixels, captions, image_of_text, args.repeats,
                                                args.protocol, names, finished=partial, profile_out=profile_out)
    report["load_average_at_end"] = os.getloadavg()
    table = _table(report)
    print(table)
    report["table"] = table
    report["complete"] = True
    write_report(args.out, report)
    differ = captions_that_differ(report)
    if differ:  # a speed-up that changes the adversarial captions is not one
        print(f"batched and one-at-a-time adversarial captions differ: {', '.join(differ)}", file=sys.stderr)
        return 1
    differ = images_that_differ(report)
    if differ:  # a GPU's kernels round by batch shape more often: there they are reported only
        print(f"{'' if device == 'cpu' else 'note: '}batched and one-at-a-time adversarial images differ: "
              f"{', '.join(differ)}", file=sys.stderr)
        if device == "cpu":
            return 1
    return 0


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
