"""Text generators: EDA against nlpaug, and the model generators' throughput by batch size.

* EDA captions per second against nlpaug's word-level augmenters doing the same operation
  (`RandomWordAug` swap and delete, aug_p = alpha = 0.1), on the same captions (default 10,000
  sample-world captions) in the same run, one augmentation per caption; reported as a ratio
  (> 1: mat-plus is faster). nlpaug's `SynonymAug(aug_src="wordnet")` needs NLTK's POS-tagger
  data (`averaged_perceptron_tagger_eng`); when that cannot be found (no network) the synonym
  comparison is skipped and the output says why. mat-plus's own synonym ops are timed anyway.
* `t2t-tiny-paraphraser` and `i2t-tiny-captioner` rows per second for several batch sizes.
  The tiny models have random weights, so this measures the batching and bookkeeping
  overhead of the generators, not real model speed.

`python -m bench.bench_text_generators [--out PATH]` prints a table and writes JSON
(default outputs/bench/text_generators.json). Needs `pip install -e '.[bench]'` (nlpaug).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Callable

from augment.arguments import non_negative_int, positive_fraction, positive_int
from bench.report import offline, report_path

DEFAULT_OUT = "outputs/bench/text_generators.json"
NLPAUG_MISSING = "nlpaug is not installed: pip install -e '.[bench]' (or pip install nlpaug)"
TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_text_generators", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--captions", type=positive_int, default=10_000, help="captions for the EDA comparison (default 10000)")
    parser.add_argument("--repeats", "--repeat", dest="repeat", type=positive_int, default=3, help="timed runs per EDA measurement, best kept (default 3)")
    parser.add_argument("--alpha", type=positive_fraction, default=0.1, help="EDA alpha = nlpaug aug_p (default 0.1)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="batch sizes for the model generators (default 1,4,16)")
    parser.add_argument("--model-captions", type=positive_int, default=48, help="captions paraphrased per batch size (default 48)")
    parser.add_argument("--model-images", type=positive_int, default=24, help="images captioned per batch size (default 24)")
    parser.add_argument("--n", type=positive_int, default=2, help="outputs per caption / image for the model generators (default 2)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=16, help="model generators' longest output (default 16)")
    # the tiny models' matrices are so small that thread hand-offs dominate: one thread is fastest
    parser.add_argument("--threads", type=non_negative_int, default=1, help="torch CPU threads (default 1; 0: torch's own)")
    parser.add_argument("--device", default="cpu", help="where the model generators run (default cpu)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sample captions and the generators (default 0)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- inputs


def sample_world_scenes(count: int, seed: int) -> list:
    from augment.world.scene import sample_scene

    return [sample_scene(random.Random(f"bench/{seed}/{i}")) for i in range(count)]


def sample_world_captions(count: int, seed: int) -> list[str]:
    """`count` captions of sample-world scenes (5 per scene), no images rendered."""
    from augment.world.captions import captions_for_scene

    captions: list[str] = []
    for i, scene in enumerate(sample_world_scenes((count + 4) // 5, seed)):
        captions += captions_for_scene(scene, random.Random(f"bench/{seed}/captions/{i}"), 5)
    return captions[:count]


def sample_world_items(count: int, seed: int) -> list[dict]:
    """Source-like items (image_id, image, captions) for the model generators."""
    from augment.world.captions import captions_for_scene
    from augment.world.render import render_scene

    items = []
    for i, scene in enumerate(sample_world_scenes(count, seed)):
        captions = captions_for_scene(scene, random.Random(f"bench/{seed}/captions/{i}"), 5)
        items.append({"image_id": f"bench-{i}", "image": render_scene(scene), "captions": captions, "split": "train"})
    return items


# ----------------------------------------------------------------------------- timing


def captions_per_second(augment: Callable[[], object], count: int, repeat: int) -> tuple[float, float]:
    """Best of `repeat` runs (timeit's rule: slower runs measure other load on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()  # start each run with the same garbage-collector state
        start = time.perf_counter()
        augment()
        best = min(best, time.perf_counter() - start)
    return count / best, best


def eda_runner(ops: tuple[str, ...], captions: list[str], alpha: float, seed: int) -> Callable[[], list]:
    from augment.generators.eda import EdaGenerator

    generator = EdaGenerator(ops=ops, alphas={op: alpha for op in ops})
    return lambda: [generator.augment(text, 1, [seed + i]) for i, text in enumerate(captions)]


def nlpaug_runner(augmenter, captions: list[str]) -> Callable[[], list]:
    return lambda: augmenter.augment(captions)  # a list in one call: nlpaug's fastest path


def tagger_available() -> bool:
    import nltk

    try:
        nltk.data.find(TAGGER_RESOURCE)
    except LookupError:
        return False
    return True


def bench_eda(args, captions: list[str]) -> dict:
    import nlpaug.augmenter.word as naw

    from augment.wordnet import require_wordnet, synonyms

    start = time.perf_counter()
    require_wordnet()
    synonyms("square")  # the first look-up loads WordNet: timed apart, not counted per caption
    wordnet_load_s = time.perf_counter() - start
    rows = []
    for op, action in (("rs", "swap"), ("rd", "delete")):
        ours, ours_s = captions_per_second(eda_runner((op,), captions, args.alpha, args.seed), len(captions),
                                           args.repeat)
        random.seed(args.seed)  # nlpaug draws from the global random module
        theirs, theirs_s = captions_per_second(
            nlpaug_runner(naw.RandomWordAug(action=action, aug_p=args.alpha), captions), len(captions), args.repeat)
        rows.append({"op": op, "baseline": f"nlpaug RandomWordAug(action={action!r})",
                     "matplus_captions_per_s": ours, "nlpaug_captions_per_s": theirs,
                     "ratio": ours / theirs, "matplus_s": ours_s, "nlpaug_s": theirs_s})
    synonym_rows = []
    for ops in (("sr",), ("ri",), ("sr", "ri", "rs", "rd")):
        ours, ours_s = captions_per_second(eda_runner(ops, captions, args.alpha, args.seed), len(captions),
                                           args.repeat)
        synonym_rows.append({"ops": ",".join(ops), "matplus_captions_per_s": ours, "matplus_s": ours_s})
    result = {"captions": len(captions), "alpha": args.alpha, "repeat": args.repeat, "wordnet_load_s": wordnet_load_s,
              "word_level": rows, "matplus_only": synonym_rows}
    if tagger_available():
        theirs, theirs_s = captions_per_second(
            nlpaug_runner(naw.SynonymAug(aug_src="wordnet", aug_p=args.alpha), captions), len(captions), args.repeat)
        result["synonym_baseline"] = {"baseline": "nlpaug SynonymAug(aug_src='wordnet')",
                                      "nlpaug_captions_per_s": theirs, "nlpaug_s": theirs_s,
                                      "ratio_sr": synonym_rows[0]["matplus_captions_per_s"] / theirs}
    else:
        result["synonym_baseline"] = {
            "skipped": f"nlpaug's SynonymAug needs NLTK's POS-tagger data ({TAGGER_RESOURCE}), which is not "
                       "installed and cannot be fetched here (offline); mat-plus's sr/ri are timed alone"}
    return result


def bench_models(args) -> dict:
    from augment.generators.captioner import CaptionerGenerator
    from augment.generators.paraphrase import ParaphraseGenerator, Sampling

    sampling = Sampling(max_new_tokens=args.max_new_tokens, max_rounds=1)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    caption_items = sample_world_items((args.model_captions + 4) // 5, args.seed)
    image_items = sample_world_items(args.model_images, args.seed + 1)
    results = {"n": args.n, "max_new_tokens": args.max_new_tokens, "paraphraser": [], "captioner": []}
    for name, make, items, unit in (
        ("paraphraser", lambda b: ParaphraseGenerator("t2t-tiny-paraphraser", "tiny-paraphraser", batch_size=b,
                                                      sampling=sampling, device=args.device),
         caption_items, "captions"),
        ("captioner", lambda b: CaptionerGenerator("i2t-tiny-captioner", "tiny-captioner", batch_size=b,
                                                   sampling=sampling, device=args.device),
         image_items, "images"),
    ):
        for batch_size in batch_sizes:
            generator = make(batch_size)
            generator.generate(items[:1], 1, args.seed)  # warm-up: first-call set-up is not throughput
            start = time.perf_counter()
            rows = generator.generate(items, args.n, args.seed)
            seconds = time.perf_counter() - start
            inputs = sum(len(i["captions"]) for i in items) if unit == "captions" else len(items)
            results[name].append({"batch_size": batch_size, unit: inputs, "rows": len(rows), "seconds": seconds,
                                  "rows_per_s": len(rows) / seconds, f"{unit}_per_s": inputs / seconds})
            generator.close()
    return results


# ----------------------------------------------------------------------------- report


def print_table(result: dict) -> None:
    eda = result["eda"]
    print(f"EDA vs nlpaug on {eda['captions']} sample-world captions, alpha {eda['alpha']}, one augmentation each, "
          f"best of {eda['repeat']} (WordNet load {eda['wordnet_load_s']:.1f} s, not counted)")
    print(f"  {'op':<4} {'mat-plus cap/s':>15} {'nlpaug cap/s':>13} {'ratio':>6}  baseline")
    for row in eda["word_level"]:
        print(f"  {row['op']:<4} {row['matplus_captions_per_s']:>15,.0f} {row['nlpaug_captions_per_s']:>13,.0f} "
              f"{row['ratio']:>6.2f}  {row['baseline']}")
    for row in eda["matplus_only"]:
        print(f"  {row['ops']:<11} {row['matplus_captions_per_s']:>8,.0f} cap/s (mat-plus only)")
    baseline = eda["synonym_baseline"]
    if "skipped" in baseline:
        print(f"  synonym baseline skipped: {baseline['skipped']}")
    else:
        print(f"  sr vs {baseline['baseline']}: ratio {baseline['ratio_sr']:.2f}")
    models = result["models"]
    print(f"\nModel generators (tiny random-weight twins, n={models['n']}, max_new_tokens={models['max_new_tokens']}, "
          f"{result['environment']['torch_threads']} torch threads)")
    print(f"  {'generator':<12} {'batch':>5} {'rows/s':>8} {'inputs/s':>9}")
    for name, unit in (("paraphraser", "captions"), ("captioner", "images")):
        for row in models[name]:
            print(f"  {name:<12} {row['batch_size']:>5} {row['rows_per_s']:>8.1f} {row[f'{unit}_per_s']:>9.1f}")


def environment() -> dict:
    import torch

    from augment.pool import package_versions

    versions = package_versions()
    try:
        from importlib import metadata

        versions["nlpaug"] = metadata.version("nlpaug")
    except Exception:  # reported as absent
        pass
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "packages": versions}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import nlpaug  # noqa: F401
    except ImportError:
        print(f"error: {NLPAUG_MISSING}", file=sys.stderr)
        return 2
    offline()
    import torch

    from augment.errors import MatPlusError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        captions = sample_world_captions(args.captions, args.seed)
        result = {"benchmark": "text_generators", "eda": bench_eda(args, captions), "models": bench_models(args),
                  "environment": environment()}
    except MatPlusError as exc:  # e.g. WordNet missing: one line saying what to run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
