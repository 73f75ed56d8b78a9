"""Pool scoring speed against torchmetrics' CLIPScore, and memory as the pool grows.

    python -m bench.bench_scoring [--pairs 1024] [--batch-size 64] [--repeats 3]
                                  [--model tiny|vit-b-16-shaped] [--device cpu|cuda]
                                  [--sizes 10000,30000,100000] [--out outputs/bench/scoring.json]

1. **Pairs per second**, the same tiny transformers `CLIPModel` (random weights, built from a
   config) on the same image-caption pairs, measurements interleaved so that load on a shared
   machine hits both sides alike; medians:
   * torchmetrics `CLIPScore` (update per batch, then compute), same batch size, given the
     images already decoded as tensors, and again reading and decoding the same image files
     (the same inputs `augment score` starts from);
   * mat-plus's scorer (`ModelScorer` over the transformers CLIP family: batched encode + cosine), no cache;
   * the whole `augment score` pipeline on a pool of those pairs (pair rows: each image's bytes
     and its caption) against a source holding exactly those pairs (one caption per image), with
     `--workers` decoding processes (used only above `embeddings.WORKER_MIN_BYTES` of images:
     the 4 MiB of 64 px PNGs here are decoded inline): it encodes the same 1,024 images and 1,024 captions as
     CLIPScore (the pool's copies are cache hits) and adds diversity, gap, bootstrap CIs and
     the side tables. Timed cold (fresh cache: the first pass), cold without the statistics'
     resamples (`--bootstrap 0 --gap-bootstrap 0`), re-score of the unchanged pool (the stored
     scores are reused: the issue-18 target is >= 20x torchmetrics), re-score with other
     settings (every embedding from the cache, every statistic recomputed), and cold against
     the sample world's own source, 5 captions per image (what a Flickr or COCO source looks
     like: the source's captions are encoded too, for the gap and the source alignment).
   * one more cold pass with inline decoding, timed by stage (encode, decode, preprocess, hash
     and cache, statistics, tables, rest): what remains of the first pass.
   The first pass and CLIPScore reading the files are also timed in CPU seconds (this process
   and its workers): the ratio a loaded machine distorts least. `--model vit-b-16-shaped` runs
   this part with a ViT-B/16-shaped CLIPModel (random weights, 224 px, 512-dimensional embeddings,
   whose gap statistics cost what a real scorer's do), and `--device cuda` on a GPU: both sides
   on the device (CLIPScore runs where its image tensors are), fp32 with cuDNN's TF32 off so that
   both compute the same numbers, torch's default CPU threads there (the gap's statistics run on
   them, as in `augment score`). That is `device_check`'s `scoring` measurement. The issue-18 target (first pass
   >= 1x CLIPScore) is the comparison with CLIPScore reading the same files.
   Every timed path is checked to score the same pairs: the mean of 100 * cos before clamping of
   mat-plus's scorer, its first pass and CLIPScore reading the files within `SAME_SCORE_TOLERANCE` of
   CLIPScore's on decoded tensors, else exit status 1.
2. **The statistics at a real scorer's width**: the gap's cost does not grow with the pool (its
   samples stop at `--gap-samples`, 2,000 per side) but with the embedding width, which the tiny
   model (32) hides. One modality's gap at the defaults (2,000 points per side, 200 resamples)
   on synthetic unit embeddings of ViT-B-16's width (512) and ViT-L-14's (768), in CPU seconds,
   with and without the resamples; against CLIPScore in the same run on a ViT-B/16-shaped
   transformers CLIPModel (random weights, 224 px), as the number of pairs CLIPScore scores in
   the same CPU time. `--skip-real-size` leaves it out.
3. **Memory** while scoring text pools of growing size (default 10k, 30k, 100k rows) with
   tiny-clip, each in a fresh process: peak RSS above the process's RSS before scoring, and the
   tracemalloc peak (Python and numpy allocations), plus rows per second (with tracemalloc on).

torchmetrics 1.9.0's CLIPScore calls `.norm` on what `get_image_features` returns, which in
transformers 5 is a model output, not a tensor (torchmetrics issue 3407, fixed after 1.9.0);
it also only takes a Hub name or a callable returning (model, processor). The benchmark passes
a callable and, only when needed, a thin adapter that returns `pooler_output` (the projected
features, what transformers 4 returned): the computation path stays torchmetrics' own.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from augment.arguments import non_negative_int, positive_int
from bench.report import offline, positive_counts, report_path

DEFAULT_OUT = "outputs/bench/scoring.json"
LABELS = {
    "torchmetrics": "torchmetrics CLIPScore (decoded tensors)",
    "torchmetrics_from_files": "torchmetrics CLIPScore, reading the files",
    "ours": "mat-plus scorer (no cache)",
    "pipeline_cold": "augment score, first pass*",
    "pipeline_cold_no_resampling": "augment score, first pass, no resampling*",
    "pipeline_rescore": "augment score, re-score unchanged pool*",
    "pipeline_new_settings": "augment score, re-score other settings*",
    "pipeline_cold_world_source": "augment score, first pass, 5-caption source**",
}
# the scorers the speed comparison can run, as the report names them (`scorer_folder` builds them)
SCORER_MODELS = {
    "tiny": "tiny transformers CLIPModel (random weights; vision 64px/16, width 32, 2 layers)",
    "vit-b-16-shaped": "ViT-B/16-shaped transformers CLIPModel (random weights, 224 px, 512-dimensional embeddings)",
}
MEMORY_SOURCE_SIZE = 400  # sample-world scenes: 300 train x 5 captions = 1,500 source captions


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_scoring", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--pairs", type=positive_int, default=1024, help="image-caption pairs for the speed comparison (default 1024)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="scorer batch size (default 64)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per side, median kept (default 3)")
    parser.add_argument("--workers", type=non_negative_int, default=None, help="decoding workers of the pipeline (default: augment score's)")
    parser.add_argument("--model", choices=sorted(SCORER_MODELS), default="tiny",
                        help="the scorer of the speed comparison (default tiny; vit-b-16-shaped: ViT-B/16's sizes)")
    parser.add_argument("--device", default="cpu", help="where the scorer and CLIPScore run (cpu, cuda, cuda:1; default cpu)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default 1 on the CPU: steady on a shared machine; torch's own on a GPU)")
    parser.add_argument("--sizes", type=positive_counts, default="10000,30000,100000", help="text-pool sizes for the memory run (default 10000,30000,100000)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the memory run")
    parser.add_argument("--skip-real-size", action="store_true", help="leave out the statistics at real widths")
    parser.add_argument("--widths", type=positive_counts, default="512,768", help="embedding widths for the statistics at real widths (default 512,768)")
    parser.add_argument("--real-size-pairs", type=positive_int, default=8,
                        help="pairs CLIPScore scores with the ViT-B/16-shaped model (the baseline of the real widths; default 8)")
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    # internal: one memory measurement in a fresh process
    parser.add_argument("--memory-child", nargs=3, metavar=("POOL", "SOURCE", "JSON"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _cpu_timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its finished children, result): CPU time
    is what load on a shared machine inflates least."""
    import resource

    def cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    started, started_cpu = time.perf_counter(), cpu()
    result = fn()
    return time.perf_counter() - started, cpu() - started_cpu, result


# ---------------------------------------------------------------------------------------------
# 1. Pairs per second against torchmetrics
# ---------------------------------------------------------------------------------------------


def scorer_folder(work: Path, model: str) -> Path:
    """The scorer `model` (a SCORER_MODELS name) saved as a transformers folder under `work`,
    random weights, built offline once per run."""
    from augment.scoring import tiny_hf

    folder = work / f"{model}-transformers-clip"
    if (folder / "config.json").is_file():
        return folder
    if model == "tiny":
        return tiny_hf.save_tiny_transformers_clip(folder)
    return tiny_hf.save_tiny_transformers_clip(folder, text_config=tiny_hf.VIT_B16_TEXT_CONFIG,
                                               vision_config=tiny_hf.VIT_B16_VISION_CONFIG,
                                               projection_dim=tiny_hf.VIT_B16_PROJECTION_DIM)


def torch_threads(args) -> int:
    """The torch CPU threads of this run: `--threads`, else 1 on the CPU (steady on a shared
    machine) and torch's own count on a GPU (what `augment score` computes its statistics with)."""
    import torch

    if args.threads is not None:
        return args.threads
    return 1 if args.device == "cpu" else torch.get_num_threads()


def make_pairs(work: Path, count: int):
    """`count` pairs of distinct sample-world images with their first caption.

    Returns (pairs source, images, captions, world folder, world source): the pairs source is a
    Karpathy JSON holding exactly those pairs (one caption per image), so `augment score` of a
    pool of them encodes the same 1,024 images and 1,024 captions CLIPScore does; the world
    source keeps the sample world's 5 captions per image (what a Flickr/COCO source looks like).
    """
    from augment.world.writer import write_sample
    from augment.sources import load_source

    world = write_sample(work / "world", n=count, seed=1, val_frac=0.0, test_frac=0.0)
    world_source, _ = load_source(str(world))
    document = json.loads((world / "dataset_sample.json").read_text())
    pairs_json = work / "pairs-source" / "dataset_pairs.json"
    pairs_json.parent.mkdir(parents=True, exist_ok=True)
    pairs_json.write_text(json.dumps({"images": [
        {"filename": entry["filename"], "split": "train", "sentences": entry["sentences"][:1]}
        for entry in document["images"]]}))
    source, _ = load_source(str(pairs_json), image_root=str(world / "images"))
    images = [row["image"] for row in source]
    captions = [row["captions"][0] for row in source]
    return source, images, captions, world, world_source


class _FeatureTensors:
    """transformers-5 CLIPModel seen through the transformers-4 API torchmetrics 1.9.0 expects:
    get_image_features / get_text_features return the projected feature tensor."""

    def __init__(self, model):
        self.model = model
        self.config = model.config

    def to(self, device):
        self.model.to(device)
        return self

    def get_image_features(self, *args, **kwargs):
        output = self.model.get_image_features(*args, **kwargs)
        return getattr(output, "pooler_output", output)

    def get_text_features(self, *args, **kwargs):
        output = self.model.get_text_features(*args, **kwargs)
        return getattr(output, "pooler_output", output)


def _needs_adapter(model) -> bool:
    import torch

    device = next(model.parameters()).device  # the scorer's: a GPU run's model is already there
    with torch.inference_mode():
        output = model.get_text_features(input_ids=torch.tensor([[0, 1]], device=device),
                                         attention_mask=torch.ones(1, 2, dtype=torch.long, device=device))
    return not isinstance(output, torch.Tensor)


def torchmetrics_clipscore(scorer):
    """(CLIPScore metric on the scorer's own model and processor, note on how it was built)."""
    from importlib.metadata import version

    from torchmetrics.multimodal.clip_score import CLIPScore

    family = scorer.model  # models.hf_clip.HFClipModel: the transformers CLIPModel and its processor inside
    adapted = _needs_adapter(family.model)
    model = _FeatureTensors(family.model) if adapted else family.model
    metric = CLIPScore(model_name_or_path=lambda: (model, family.processor))
    note = f"torchmetrics {version('torchmetrics')} with transformers {version('transformers')}"
    if adapted:
        note += ": get_*_features return model outputs, wrapped to return pooler_output (torchmetrics issue 3407)"
    return metric, note


def run_torchmetrics(metric, image_tensors, captions, batch_size: int) -> float:
    """Mean 100 * cos over the pairs, before CLIPScore's clamp at 0 (comparable per pair)."""
    import torch

    metric.reset()
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            metric.update(image_tensors[start:start + batch_size], captions[start:start + batch_size])
        metric.compute()
    return float(metric.score / metric.n_samples)


def run_ours(scorer, images, captions) -> float:
    image_embeddings = scorer.encode_images(images)
    text_embeddings = scorer.encode_texts(captions)
    return float(100 * (image_embeddings * text_embeddings).sum(dim=1).mean())


def pair_pool(work: Path, source, world: Path):
    """The same pairs as a pool of pair rows (image bytes and caption), for the pipeline."""
    from datasets import Image

    from augment.pool import load_pool, write_pool

    undecoded = source.cast_column("image", Image(decode=False))
    rows = ({
        "row_id": f"pairs:{row['image_id']}:0:0", "source_image_id": row["image_id"], "source_caption_index": 0,
        "split": row["split"], "modality": "pair", "image": row["image"], "caption": row["captions"][0],
        "method": "pairs", "seed": 0, "provenance": "{}",
    } for row in undecoded)
    write_pool(work / "pairs", rows, {"method": "pairs", "source": str(world)}, overwrite=True)
    return load_pool(work / "pairs")


def run_pipeline(pool, source, scorer, cache_dir: Path, workers: int = 0, force: bool = False, **settings) -> dict:
    from augment.scoring.pool_scores import ScoreSettings, score_and_save

    return score_and_save(pool, source, scorer, ScoreSettings(**settings), cache_dir=str(cache_dir), plot=False,
                          workers=workers, force=force)


def chw_tensor(image, device: str = "cpu"):
    """A PIL image as the CHW uint8 tensor CLIPScore takes, on `device`."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().to(device)


def decoded_tensors(source, device: str = "cpu") -> list:
    """The source's images read from their files and decoded as CHW uint8 tensors on `device`
    (what CLIPScore takes; it runs its model where they are): the part of a CLIPScore run that
    reads the data."""

    from augment.sources import open_image, undecoded

    return [chw_tensor(open_image(value), device) for value in undecoded(source)["image"]]


class StageTimer:
    """Seconds spent in each stage of one `augment score` pass, by wrapping the functions that
    do each job for the duration of the pass (inline decoding: `--workers 0`):

    * encode: the scorer's batches (tokenising, the model);
    * decode: image bytes to pixels;
    * preprocess: the model's eval transform of each batch of decoded images;
    * hash and cache: content keys, cache look-ups and writes;
    * statistics: bootstrap CIs, distribution gap, per-item diversity;
    * tables: the parquet side tables;
    * rest: everything else (reading pool rows, per-row scores, scores.json).
    """

    def __init__(self, scorer):
        from augment.scoring import embeddings, measures, store

        self.seconds: dict[str, float] = {}
        self._patches = [
            (scorer, "_encode_pixel_batch", "encode"), (scorer, "_encode_text_batch", "encode"),
            (embeddings, "decode_image", "decode"), (scorer, "prepare_images", "preprocess"),
            (embeddings, "image_key", "hash and cache"), (embeddings, "text_key", "hash and cache"),
            (embeddings, "image_bytes_of", "hash and cache"),
            (embeddings.EmbeddingCache, "lookup", "hash and cache"), (embeddings.EmbeddingCache, "put", "hash and cache"),
            (measures, "bootstrap_means", "statistics"), (measures, "bootstrap_item_means", "statistics"),
            (measures, "gap_measures", "statistics"), (measures, "set_diversity_indexed", "statistics"),
            (store.TableWriter, "write", "tables"), (store.TableWriter, "close", "tables"),
        ]
        self._saved: list = []

    def _wrap(self, function, stage: str):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

        return timed

    def __enter__(self):
        for owner, name, stage in self._patches:
            original = owner.__dict__.get(name, getattr(owner, name))
            self._saved.append((owner, name, original, name in owner.__dict__))
            setattr(owner, name, self._wrap(getattr(owner, name), stage))
        return self

    def __exit__(self, *exc):
        for owner, name, original, own in reversed(self._saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


def stage_breakdown(pool, source, scorer, cache: Path, **settings) -> dict:
    with StageTimer(scorer) as timer:
        total, _ = _timed(lambda: run_pipeline(pool, source, scorer, cache, 0, force=True, **settings))
    stages = dict(sorted(timer.seconds.items(), key=lambda item: -item[1]))
    stages["rest"] = total - sum(stages.values())
    return {"total": total, **stages}


def bench_pairs(work: Path, args) -> dict:
    import torch

    from augment.loading import default_workers
    from augment.scoring.embeddings import WORKER_MIN_BYTES, image_bytes_of
    from augment.sources import undecoded
    from augment.scoring.scorers import load_scorer

    workers = default_workers() if args.workers is None else args.workers
    device = args.device
    torch.set_num_threads(torch_threads(args))
    source, images, captions, world, world_source = make_pairs(work, args.pairs)
    image_bytes = sum(len(image_bytes_of(value)) for value in undecoded(source)["image"])  # what the pipeline decodes
    scorer = load_scorer(str(scorer_folder(work, args.model)), batch_size=args.batch_size, device=device)
    metric, note = torchmetrics_clipscore(scorer)
    metric.to(device)  # its running sums; the model runs where the image tensors are
    image_tensors = [chw_tensor(image, device) for image in images]
    pool = pair_pool(work, source, world)
    times: dict[str, list[float]] = {name: [] for name in LABELS}
    cpu_times: dict[str, list[float]] = {"torchmetrics_from_files": [], "pipeline_cold": []}
    ours_value = tm_value = tm_files_value = pipeline_value = None
    run_ours(scorer, images[:8], captions[:8])  # warm-up: first calls allocate
    run_pipeline(pool, source, scorer, work / "cache-warm-up", workers, force=True)  # imports (scipy, sklearn...)
    # CLIPScore's first calls (its processor, the update path) are warmed up as ours are
    run_torchmetrics(metric, image_tensors[:8], captions[:8], args.batch_size)
    run_torchmetrics(metric, decoded_tensors(source, device)[:8], captions[:8], args.batch_size)
    for repeat in range(args.repeats):
        elapsed, ours_value = _timed(lambda: run_ours(scorer, images, captions))
        times["ours"].append(elapsed)
        elapsed, tm_value = _timed(lambda: run_torchmetrics(metric, image_tensors, captions, args.batch_size))
        times["torchmetrics"].append(elapsed)
        elapsed, cpu, tm_files_value = _cpu_timed(
            lambda: run_torchmetrics(metric, decoded_tensors(source, device), captions, args.batch_size))
        times["torchmetrics_from_files"].append(elapsed)
        cpu_times["torchmetrics_from_files"].append(cpu)
        cache = work / f"cache-{repeat}"
        # force: the pool's stored scores of the previous repeat must not be reused here
        elapsed, cpu, entry = _cpu_timed(lambda: run_pipeline(pool, source, scorer, cache, workers, force=True))
        pipeline_value = 100 * entry["alignment"]["all"]["mean"]
        times["pipeline_cold"].append(elapsed)
        cpu_times["pipeline_cold"].append(cpu)
        elapsed, entry = _timed(lambda: run_pipeline(pool, source, scorer, cache, workers))
        assert entry.get("reused"), "the unchanged re-score should reuse the stored scores"
        times["pipeline_rescore"].append(elapsed)
        elapsed, entry = _timed(lambda: run_pipeline(pool, source, scorer, cache, workers, seed=repeat + 1))
        assert not entry.get("reused") and entry["encoding"]["encoded"] == {"text": 0, "image": 0}
        times["pipeline_new_settings"].append(elapsed)
        bare = dict(bootstrap=0, gap_bootstrap=0)
        times["pipeline_cold_no_resampling"].append(
            _timed(lambda: run_pipeline(pool, source, scorer, work / f"bare-{repeat}", workers, force=True, **bare))[0])
        elapsed, entry = _timed(lambda: run_pipeline(pool, world_source, scorer, work / f"world-{repeat}", workers,
                                                     force=True))
        times["pipeline_cold_world_source"].append(elapsed)
    encoded_world = entry["encoding"]["encoded"]
    breakdown = stage_breakdown(pool, source, scorer, work / "breakdown")
    return {
        "pairs": args.pairs,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "settings": {"workers": workers, "image_bytes": image_bytes, "worker_min_bytes": WORKER_MIN_BYTES,
                     "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                     "load_average_1m": os.getloadavg()[0], "score_settings": "ScoreSettings() defaults"},
        "model": SCORER_MODELS[args.model],
        "device": device,
        "torchmetrics_note": note,
        **speed_ratios(times, cpu_times, args.pairs),
        "world_source_encoded": encoded_world,
        "cold_pass_stages_seconds": breakdown,
        "mean_100cos": score_agreement(ours_value, pipeline_value, tm_value, tm_files_value),
    }


def score_agreement(ours: float, pipeline: float, torchmetrics: float, torchmetrics_from_files: float) -> dict:
    """Each timed side's mean 100 * cos and the largest gap of ours, the cold pass's and CLIPScore's
    from files to CLIPScore's on decoded tensors (`main` fails the run beyond SAME_SCORE_TOLERANCE:
    a speed-up of other work is no speed-up)."""
    return {"ours": ours, "pipeline_cold": pipeline, "torchmetrics": torchmetrics,
            "torchmetrics_from_files": torchmetrics_from_files,
            "abs_difference": max(abs(value - torchmetrics) for value in (ours, pipeline, torchmetrics_from_files))}


def speed_ratios(times: dict[str, list[float]], cpu_times: dict[str, list[float]], pairs: int) -> dict:
    """`bench_pairs`' speed figures from each side's repeats (`times`: wall seconds of every side in
    LABELS; `cpu_times`: process CPU seconds of CLIPScore from files and the cold pass): medians,
    pairs per second, and each side's rate over CLIPScore's (> 1: mat-plus faster), on decoded
    tensors and reading the files."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    per_second = {name: pairs / seconds for name, seconds in medians.items()}
    pipelines = [name for name in LABELS if name.startswith("pipeline")]
    return {
        "seconds_median": medians,
        "seconds_all": times,
        "pairs_per_second": per_second,
        "ratio_ours_vs_torchmetrics": per_second["ours"] / per_second["torchmetrics"],
        **{f"ratio_{name}_vs_torchmetrics": per_second[name] / per_second["torchmetrics"] for name in pipelines},
        **{f"ratio_{name}_vs_torchmetrics_from_files": per_second[name] / per_second["torchmetrics_from_files"]
           for name in pipelines},
        "cpu_seconds_median": {name: statistics.median(values) for name, values in cpu_times.items()},
        "cpu_ratio_pipeline_cold_vs_torchmetrics_from_files":
            statistics.median(cpu_times["torchmetrics_from_files"]) / statistics.median(cpu_times["pipeline_cold"]),
    }


# the timed paths score the same pairs: mean 100 * cos within this of CLIPScore's (float32 rounding
# of 1,024 cosines is ~1e-5; a wrong image, caption or preprocessing moves it by far more)
SAME_SCORE_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------------------------
# 2. The statistics at a real scorer's width
# ---------------------------------------------------------------------------------------------


def unit_embeddings(rng, count: int, width: int, shift: float = 0.0):
    """`count` unit vectors of `width` from a Gaussian with a decaying spectrum (as embeddings
    have): the gap's cost depends on the width and the number of points, not on the values."""
    import numpy as np

    scales = 1.0 / np.sqrt(np.arange(1, width + 1))
    rows = rng.normal(size=(count, width)) * scales + shift
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def bench_real_size(work: Path, args, images, captions) -> dict:
    import numpy as np
    import torch

    from augment.scoring import measures
    from augment.scoring.pool_scores import ScoreSettings
    from augment.scoring.scorers import load_scorer

    # on the CPU whatever --device says: this part compares CPU seconds with CPU seconds, one
    # thread unless --threads, then torch's default count for the "all cores" column
    threads = args.threads if args.threads is not None else 1
    torch.set_num_threads(threads)
    defaults = ScoreSettings()
    scorer = load_scorer(str(scorer_folder(work, "vit-b-16-shaped")), batch_size=args.batch_size)
    metric, _ = torchmetrics_clipscore(scorer)
    count = args.real_size_pairs
    tensors = [chw_tensor(image) for image in images[:count]]
    warm_up = tensors[:2]  # one pair when --real-size-pairs 1: CLIPScore refuses unequal counts
    run_torchmetrics(metric, warm_up, captions[:len(warm_up)], args.batch_size)
    _, clipscore_cpu, _ = _cpu_timed(lambda: run_torchmetrics(metric, tensors, captions[:count], args.batch_size))
    per_pair = clipscore_cpu / count
    rng = np.random.default_rng(0)
    widths = {}
    for width in args.widths:
        pool = unit_embeddings(rng, defaults.gap_samples, width, shift=0.05)
        source = unit_embeddings(rng, defaults.gap_samples, width)
        measures.gap_measures(pool[:64], source[:64], n_resamples=2)  # warm-up (thread pools, imports)
        resampled_wall, resampled_cpu, _ = _cpu_timed(
            lambda: measures.gap_measures(pool, source, n_resamples=defaults.gap_bootstrap, seed=defaults.seed))
        _, bare_cpu, _ = _cpu_timed(lambda: measures.gap_measures(pool, source, n_resamples=0, seed=defaults.seed))
        torch.set_num_threads(os.cpu_count() or 1)  # torch's default: what `augment score` computes with
        threaded_wall, threaded_cpu, _ = _cpu_timed(
            lambda: measures.gap_measures(pool, source, n_resamples=defaults.gap_bootstrap, seed=defaults.seed))
        blas_threads = measures.gap_blas_threads(width)
        resample_threads = measures.resample_threads(width)
        torch.set_num_threads(threads)
        widths[str(width)] = {"gap_cpu_seconds": resampled_cpu, "gap_wall_seconds": resampled_wall,
                              "gap_without_resamples_cpu_seconds": bare_cpu,
                              "all_cores": {"blas_threads": blas_threads, "resample_threads": resample_threads,
                                            "gap_wall_seconds": threaded_wall,
                                            "gap_cpu_seconds": threaded_cpu,
                                            "wall_speed_up": resampled_wall / threaded_wall},
                              "clipscore_pairs_in_the_same_cpu_time": resampled_cpu / per_pair}
    return {
        "points_per_side": defaults.gap_samples,
        "resamples": defaults.gap_bootstrap,
        "clipscore_model": "ViT-B/16-shaped transformers CLIPModel (random weights, 224 px)",
        "clipscore_pairs": count,
        "clipscore_cpu_seconds_per_pair": per_pair,
        "widths": widths,
    }


# ---------------------------------------------------------------------------------------------
# 3. Memory as the pool grows
# ---------------------------------------------------------------------------------------------


def text_pool(path: Path, source, world: Path, size: int):
    """`size` text rows: numbered variants of every train caption (all distinct, all encoded)."""
    from augment.pool import write_pool

    train = [row for row in source.select_columns(["image_id", "captions", "split"]) if row["split"] == "train"]
    per_caption = math.ceil(size / sum(len(row["captions"]) for row in train))

    def rows():
        produced = 0
        for k in range(per_caption):
            for row in train:
                for c, caption in enumerate(row["captions"]):
                    if produced == size:
                        return
                    produced += 1
                    yield {
                        "row_id": f"variant:{row['image_id']}:{c}:{k}", "source_image_id": row["image_id"],
                        "source_caption_index": c, "split": "train", "modality": "text", "image": None,
                        "caption": f"{caption}, variant {k}", "method": "variant", "seed": k, "provenance": "{}",
                    }

    write_pool(path, rows(), {"method": "variant", "source": str(world)}, overwrite=True)
    return path


def memory_child(pool_path: str, source_path: str, out_json: str) -> int:
    """Score one pool in this (fresh) process and write what it cost."""
    import resource
    import tracemalloc

    import psutil

    from augment.pool import load_pool
    from augment.scoring.pool_scores import ScoreSettings, score_and_save
    from augment.scoring.scorers import load_scorer
    from augment.sources import load_source

    scorer = load_scorer("tiny-clip", batch_size=256)
    source, _ = load_source(source_path)
    pool = load_pool(pool_path)
    baseline = psutil.Process().memory_info().rss
    tracemalloc.start()
    elapsed, entry = _timed(lambda: score_and_save(pool, source, scorer, ScoreSettings(), plot=False))
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result = {
        "rows": len(pool),
        "seconds": elapsed,
        "rows_per_second": len(pool) / elapsed,
        "rss_before_mib": baseline / 2**20,
        "peak_rss_mib": peak_rss / 2**20,
        "peak_rss_growth_mib": (peak_rss - baseline) / 2**20,
        "tracemalloc_peak_mib": traced_peak / 2**20,
        "encoded": entry["encoding"]["encoded"],
    }
    Path(out_json).write_text(json.dumps(result))
    return 0


def bench_memory(work: Path, sizes: list[int]) -> list[dict]:
    from augment.world.writer import write_sample
    from augment.sources import load_source

    world = write_sample(work / "memory-world", n=MEMORY_SOURCE_SIZE, seed=2)
    source, _ = load_source(str(world))
    results = []
    for size in sizes:
        pool = text_pool(work / f"text-{size}", source, world, size)
        out = work / f"memory-{size}.json"
        env = {**os.environ, "MATPLUS_LOGLEVEL": "ERROR"}
        command = [sys.executable, "-m", "bench.bench_scoring", "--memory-child", str(pool), str(world), str(out)]
        subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        results.append(json.loads(out.read_text()))
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def print_real_size(real: dict) -> None:
    print(f"\nOne modality's gap at the defaults ({real['points_per_side']:,} points per side, {real['resamples']} "
          f"resamples), synthetic unit embeddings; CLIPScore with a {real['clipscore_model']}: "
          f"{real['clipscore_cpu_seconds_per_pair']:.3f} CPU s per pair ({real['clipscore_pairs']} pairs)")
    print(f"{'width':>6}{'gap CPU s':>11}{'no resamples':>14}{'= CLIPScore pairs':>19}"
          f"{'all cores: BLAS/resample threads, wall s':>42}")
    for width, row in real["widths"].items():
        cores = row["all_cores"]
        print(f"{width:>6}{row['gap_cpu_seconds']:>11.2f}{row['gap_without_resamples_cpu_seconds']:>14.2f}"
              f"{row['clipscore_pairs_in_the_same_cpu_time']:>19.0f}{cores['blas_threads']:>14}/{cores['resample_threads']}, "
              f"{cores['gap_wall_seconds']:.2f} ({cores['wall_speed_up']:.2f}x one thread's {row['gap_wall_seconds']:.2f})")
    print("  ('= CLIPScore pairs': pairs CLIPScore scores at ViT-B/16's size, one thread, in the gap's CPU time;\n"
          "   all cores: torch's default thread count, which the gap's BLAS calls use from GAP_THREADED_WIDTH on\n"
          "   and its resampled Frechet distances, a block of resamples per thread, from RESAMPLE_THREADED_WIDTH on)")


def print_tables(speed: dict) -> None:
    print(f"\nCLIPScore on {speed['pairs']} pairs, batch {speed['batch_size']}, median of {speed['repeats']} "
          f"({speed['model']}, {speed['device']})")
    settings = speed["settings"]
    inline = settings["image_bytes"] < settings["worker_min_bytes"]
    print(f"settings: --workers {settings['workers']} ({'unused: ' if inline else ''}{settings['image_bytes'] / 2**20:.1f} MiB "
          f"of images, workers start at {settings['worker_min_bytes'] / 2**20:.0f} MiB), {settings['torch_threads']} "
          f"torch thread(s), {settings['cpu_count']} CPUs, load {settings['load_average_1m']:.1f}")
    print(f"{'':<44}{'seconds':>9}{'pairs/s':>10}{'vs torchmetrics':>17}")
    base = speed["pairs_per_second"]["torchmetrics"]
    for name, label in LABELS.items():
        rate = speed["pairs_per_second"][name]
        print(f"{label:<44}{speed['seconds_median'][name]:>9.3f}{rate:>10.0f}{rate / base:>16.2f}x")
    print(f"* whole pipeline on a pool of the pairs against a source holding exactly those pairs: the same {speed['pairs']:,} images\n"
          "  and captions encoded once (the pool's copies are cache hits), plus diversity, gap, CIs, side tables")
    print(f"** the same pool against the sample world's source (5 captions per image): encodes "
          f"{speed['world_source_encoded']['text']} texts + {speed['world_source_encoded']['image']} images")
    cpu = speed["cpu_seconds_median"]
    print(f"CPU seconds (this process and its workers): CLIPScore reading the files {cpu['torchmetrics_from_files']:.3f}, "
          f"first pass {cpu['pipeline_cold']:.3f}: "
          f"{speed['cpu_ratio_pipeline_cold_vs_torchmetrics_from_files']:.2f}x")
    stages = speed["cold_pass_stages_seconds"]
    print("first pass by stage (inline decoding): " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
    print(f"mean 100*cos: mat-plus {speed['mean_100cos']['ours']:.4f}, its pipeline "
          f"{speed['mean_100cos']['pipeline_cold']:.4f}, torchmetrics reading the files "
          f"{speed['mean_100cos']['torchmetrics_from_files']:.4f}, torchmetrics "
          f"{speed['mean_100cos']['torchmetrics']:.4f} (|diff| {speed['mean_100cos']['abs_difference']:.2e})")
    print(f"note: {speed['torchmetrics_note']}")


def print_memory(memory: list[dict]) -> None:
    print("\nMemory scoring text pools with tiny-clip (fresh process each; tracemalloc on)")
    print(f"{'rows':>8}{'rows/s':>9}{'RSS before':>12}{'RSS growth':>12}{'tracemalloc peak':>18}")
    for m in memory:
        print(f"{m['rows']:>8}{m['rows_per_second']:>9.0f}{m['rss_before_mib']:>10.0f}Mi"
              f"{m['peak_rss_growth_mib']:>10.0f}Mi{m['tracemalloc_peak_mib']:>16.1f}Mi")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    offline()
    if args.memory_child:
        return memory_child(*args.memory_child)
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        print("bench_scoring needs torchmetrics: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    sizes = args.sizes
    if args.device != "cpu":
        import torch

        # fp32 on both sides: cuDNN's TF32 convolutions (torch's default) round the patch
        # embedding by batch shape, and the check below compares the two sides' scores
        torch.backends.cudnn.allow_tf32 = False
    from bench.report import environment, write_report

    result = {"benchmark": "scoring", "complete": False, "environment": environment(args.device)}
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        work = Path(tmp)
        speed = result["speed"] = bench_pairs(work, args)
        print_tables(speed)
        write_report(args.out, result)  # what finished survives a time limit
        if not args.skip_real_size:
            _, images, captions, _, _ = make_pairs(work / "real-size", max(2, args.real_size_pairs))
            result["real_size"] = bench_real_size(work, args, images, captions)
            print_real_size(result["real_size"])
            write_report(args.out, result)
        if not args.skip_memory:
            result["memory"] = bench_memory(work, sizes)
            print_memory(result["memory"])
    result["complete"] = True
    write_report(args.out, result)
    difference = speed["mean_100cos"]["abs_difference"]
    if not difference <= SAME_SCORE_TOLERANCE:  # a speed-up of other work is no speed-up
        print(f"NOT the same scores: mean 100*cos differs from CLIPScore's by {difference:.3g} "
              f"(> {SAME_SCORE_TOLERANCE})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
