"""Start-up cost against source size: does a small job cost the same on a big source?

    python -m bench.bench_scale [--sizes 200,2000,20000] [--out outputs/bench/scale.json]

The benchmark writes synthetic Karpathy-JSON sources of each size (the sample world's 200
images and captions, repeated under new ids; the image files are hard links, so a 20,000-image
source costs seconds to make) and times three small jobs on each, every one in a fresh
process (the interpreter and the heavy imports are loaded before the clock starts, so what is
timed is what the command does):

* `augment generate --method img-aug --n 1 --limit 8` (no model: the source reading shows);
* one training step: `train clean --model tiny-clip --max-steps 1 --batch-size 8`;
* one evaluation batch: `train eval tiny-clip --split test --limit 8 --batch-size 8 --attacks clean`.

Two more jobs, on request (`--jobs pool_select,pool_train_step`), time what a pool's size costs: each
size's source gets an eda pool (`--n 1`, every train caption: 3.75 rows per source image), made untimed
before its jobs, and the jobs are `augment select POOL --max-per-item 1` (every row read and written)
and one MAT+ step drawing from it (`train mat+ --pools POOL --max-steps 1 --batch-size 8`: the pool's
check and index at start-up).

Reported: seconds per job and size (the fastest of `--repeats` runs: the least disturbed by
other load on a shared machine; also the least CPU time of the main process, which other load
disturbs less than wall time), and the ratio of each size's seconds to the smallest
size's. Each job and size has its own source cache (`MATPLUS_CACHE`, `augment.source_cache`),
empty before the first run: the first run parses the source and writes the cache (reported as
`first_seconds` and `first_ratio_to_smallest`), later runs map it, so "fastest" is a cached run. Flat (ratios near 1) is the target of issue 18; linear would be 10x and 100x. The
three jobs of one size and repeat share one `datasets` cache folder, as a user's commands
would; each size and repeat starts with an empty one; every job runs once untimed on the smallest source first
(one-time costs: byte-compiling, building the tiny models' cache). A job that fails is reported with its error line instead of a
time (the benchmark measures whatever the code base has when it runs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from augment.arguments import positive_int
from bench.report import offline, positive_counts, report_path

DEFAULT_OUT = "outputs/bench/scale.json"
DEFAULT_SIZES = "200,2000,20000"
BASE_IMAGES = 200  # distinct sample-world scenes the synthetic sources repeat
LIMIT = 8
BATCH = 8
RACY_SECONDS = 2.0  # augment.source_cache.RACY_SECONDS (not imported: the parent process stays light)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_scale", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--sizes", type=positive_counts, default=DEFAULT_SIZES, help=f"source sizes in images (default {DEFAULT_SIZES})")
    parser.add_argument("--jobs", default="generate,train_step,eval_batch",
                        help="which jobs to time, comma-separated, of generate, train_step, eval_batch, pool_select, "
                             "pool_train_step (default: the first three)")
    parser.add_argument("--repeats", type=positive_int, default=2, help="runs per job and size; the fastest counts (default 2)")
    parser.add_argument("--out", type=report_path, default=DEFAULT_OUT, help=f"the report, JSON (default {DEFAULT_OUT}); "
                        "a quick look: --sizes 200,2000 --repeats 1 (~1.5 min on 2 cores)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="write the sources and outputs here and keep them")
    # internal: time one job in this (fresh) process
    parser.add_argument("--child", nargs=2, metavar=("JOB", "ARGV_JSON"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Synthetic sources
# ---------------------------------------------------------------------------------------------


def base_world(work: Path) -> tuple[dict, Path]:
    """The sample world's Karpathy JSON and image folder, BASE_IMAGES scenes."""
    from augment.world.writer import write_sample

    folder = write_sample(work / "base", n=BASE_IMAGES, seed=0)
    document = json.loads(next(Path(folder).glob("dataset_*.json")).read_text())
    return document, Path(folder) / "images"


def synthetic_source(work: Path, size: int, base: dict, base_images: Path) -> tuple[Path, Path]:
    """(Karpathy JSON, image folder) of `size` images: base entries repeated under new ids and
    file names (hard links to the base files, copies where links are refused)."""
    folder = work / f"source-{size}"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    sentence = 0
    for index in range(size):
        original = base["images"][index % len(base["images"])]
        name = f"{index:06d}.png"
        target = images / name
        if not target.exists():
            try:
                os.link(base_images / original["filename"], target)
            except OSError:
                shutil.copyfile(base_images / original["filename"], target)
        sentences = []
        for s in original["sentences"]:
            sentences.append({**s, "imgid": index, "sentid": sentence})
            sentence += 1
        entries.append({**original, "filename": name, "imgid": index, "sentences": sentences,
                        "sentids": [s["sentid"] for s in sentences]})
    path = folder / "dataset_synthetic.json"
    path.write_text(json.dumps({"dataset": "synthetic", "images": entries}))
    return path, images


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


POOL_JOBS = ("pool_select", "pool_train_step")


def pool_of(source: Path) -> Path:
    """The eda pool the pool jobs read: beside the source's folder, not in it (`make_pool`)."""
    return source.parent.parent / f"{source.parent.name}-pool-eda"


def make_pool(source: Path, images: Path, env: dict | None = None) -> Path:
    """The pool jobs' pool of `source`, by `augment generate` in a process of its own (this one stays
    light), untimed; a finished one is kept (generate finds it done)."""
    command = [sys.executable, "-m", "augment.cli", "generate", "--method", "eda", "--n", "1", "--source", str(source),
               "--image-root", str(images), "--out", str(pool_of(source)), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"the pool jobs' pool of {source} could not be made: {lines[-1] if lines else done.returncode}")
    return pool_of(source)


def job_argv(job: str, source: Path, images: Path, out: Path) -> tuple[str, list[str]]:
    """(CLI module, argv) of one job (a pool job's pool: `make_pool`)."""
    where = ["--source", str(source), "--image-root", str(images)]
    if job == "generate":
        return "augment.cli", ["generate", "--method", "img-aug", *where, "--out", str(out / "pool"), "--n", "1",
                               "--limit", str(LIMIT), "--no-progress", "--overwrite"]
    if job == "train_step":
        return "train.cli", ["clean", "--model", "tiny-clip", "--train-data", str(source), "--image-root", str(images),
                             "--out", str(out / "run"), "--max-steps", "1",
                             "--batch-size", str(BATCH), "--cpu", "--no-progress", "--overwrite"]
    if job == "eval_batch":
        return "train.cli", ["eval", "tiny-clip", *where, "--split", "test", "--limit", str(LIMIT), "--batch-size",
                             str(BATCH), "--attacks", "clean", "--out", str(out / "eval"), "--no-progress",
                             "--restart"]  # each repeat replaces the last one's report, as --overwrite above
    if job == "pool_select":
        return "augment.cli", ["select", str(pool_of(source)), "--out", str(out / "selected"), "--max-per-item", "1",
                               "--overwrite"]
    if job == "pool_train_step":
        return "train.cli", ["mat+", "--model", "tiny-clip", "--train-data", str(source), "--image-root", str(images),
                             "--pools", str(pool_of(source)), "--out", str(out / "run-matplus"), "--max-steps", "1",
                             "--batch-size", str(BATCH), "--cpu", "--no-progress", "--overwrite"]
    raise ValueError(f"unknown job {job!r}")


def child(job: str, payload: str) -> int:
    """Run one CLI call in this process and print {"seconds", "code"} as the last line."""
    import importlib

    spec = json.loads(payload)
    # the heavy imports every job makes anyway, before the clock starts
    import datasets  # noqa: F401
    import torch  # noqa: F401

    module = importlib.import_module(spec["module"])
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        code = module.main(spec["argv"])
    except SystemExit as exc:
        code = exc.code
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "code": code}))
    return 0


def time_job(job: str, source: Path, images: Path, out: Path, env: dict) -> dict:
    module, argv = job_argv(job, source, images, out)
    payload = json.dumps({"module": module, "argv": argv})
    command = [sys.executable, "-m", "bench.bench_scale", "--child", job, payload]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"seconds": None, "code": done.returncode}
    result["process_seconds"] = wall
    result["command"] = " ".join([module.split(".")[0], *argv])
    if result.get("code"):
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        result["error"] = errors[-1] if errors else f"exit status {result['code']}"
        result["seconds"] = result["cpu_seconds"] = None
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def summarise_runs(runs: list[dict]) -> dict:
    """One job's repeats at one size (`time_job`'s results, in order): the fastest finished run (else
    the last, failed one) with every run's seconds, the first run's (it parsed the source and wrote
    the cache) and the least main-process CPU time of the finished runs (less load-dependent)."""
    timed = [r for r in runs if r["seconds"] is not None]
    result = dict(min(timed, key=lambda r: r["seconds"]) if timed else runs[-1])
    result["seconds_all"] = [r["seconds"] for r in runs]
    result["first_seconds"] = runs[0]["seconds"]
    result["first_cpu_seconds"] = runs[0].get("cpu_seconds")
    cpu = [r["cpu_seconds"] for r in runs if r.get("cpu_seconds") is not None and r["seconds"] is not None]
    result["cpu_seconds"] = min(cpu) if cpu else None
    return result


def ratios(results: dict, sizes: list[int], jobs: list[str], key: str = "seconds") -> dict:
    table = {}
    for job in jobs:
        base = results[str(sizes[0])][job].get(key)
        table[job] = {str(size): (results[str(size)][job][key] / base
                                  if base and results[str(size)][job].get(key) else None) for size in sizes}
    return table


def print_table(results: dict, table: dict, sizes: list[int], jobs: list[str], key: str = "seconds",
                title: str = "fastest run") -> None:
    print(f"\n{title}: seconds per job (fresh process; imports before the clock), ratio to {sizes[0]} images")
    header = f"{'job':<12}" + "".join(f"{size:>10} img" for size in sizes) + "".join(f"{'x' + str(s):>10}" for s in sizes[1:])
    print(header)
    for job in jobs:
        cells = []
        for size in sizes:
            seconds = results[str(size)][job].get(key)
            cells.append(f"{seconds:>14.2f}" if seconds is not None else f"{'failed':>14}")
        cells += [f"{table[job][str(s)]:>9.2f}x" if table[job][str(s)] else f"{'-':>10}" for s in sizes[1:]]
        print(f"{job:<12}" + "".join(cells))
    for size in sizes if key == "seconds" else []:
        for job in jobs:
            if results[str(size)][job].get("error"):
                print(f"{job} on {size}: {results[str(size)][job]['error']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else [])
    if args.child:
        return child(*args.child)
    sizes = sorted(args.sizes)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    offline()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    try:
        base, base_images = base_world(work)
        for size in sizes:
            if size == sizes[0]:
                source, images = synthetic_source(work, size, base, base_images)
                if any(job in POOL_JOBS for job in jobs):
                    make_pool(source, images, {**os.environ, "MATPLUS_CACHE": str(work / "matplus-cache-pools")})
                env = {**os.environ, "HF_DATASETS_CACHE": str(work / "datasets-cache-warmup"), "MATPLUS_LOGLEVEL": "ERROR",
                       "MATPLUS_CACHE": str(work / "matplus-cache-warmup")}
                for job in jobs:
                    time_job(job, source, images, work / "warmup", env)
            started = time.perf_counter()
            source, images = synthetic_source(work, size, base, base_images)
            print(f"source of {size} images written in {time.perf_counter() - started:.1f} s", flush=True)
            if any(job in POOL_JOBS for job in jobs):
                started = time.perf_counter()
                make_pool(source, images, {**os.environ, "MATPLUS_CACHE": str(work / "matplus-cache-pools")})
                print(f"  its eda pool written in {time.perf_counter() - started:.1f} s", flush=True)
            time.sleep(RACY_SECONDS)  # a source changed within the last RACY_SECONDS is not cached (racy)
            runs: dict[str, list[dict]] = {job: [] for job in jobs}
            for repeat in range(args.repeats):
                env = {**os.environ, "HF_DATASETS_CACHE": str(work / f"datasets-cache-{size}-{repeat}"),
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MATPLUS_LOGLEVEL": "ERROR"}
                for job in jobs:
                    job_env = {**env, "MATPLUS_CACHE": str(work / f"matplus-cache-{size}-{job}")}
                    runs[job].append(time_job(job, source, images, work / f"out-{size}", job_env))
            results[str(size)] = {}
            for job in jobs:
                results[str(size)][job] = result = summarise_runs(runs[job])
                shown = (f"{result['seconds']:.2f} s (first run {result['first_seconds'] or float('nan'):.2f} s)"
                         if result["seconds"] is not None else f"failed: {result['error']}")
                print(f"  {job}: {shown}", flush=True)
                for number, run in enumerate(runs[job], 1):  # a failed repeat is said, not silently left out
                    if run["seconds"] is None:
                        print(f"    run {number} failed: {run['error']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    table = ratios(results, sizes, jobs)
    first = ratios(results, sizes, jobs, key="first_seconds")
    print_table(results, first, sizes, jobs, key="first_seconds", title="first run (parses the source, writes the cache)")
    print_table(results, table, sizes, jobs)
    cpu = ratios(results, sizes, jobs, key="cpu_seconds")
    print_table(results, cpu, sizes, jobs, key="cpu_seconds", title="least main-process CPU time")
    first_cpu = ratios(results, sizes, jobs, key="first_cpu_seconds")
    print_table(results, first_cpu, sizes, jobs, key="first_cpu_seconds", title="first run, main-process CPU time")
    payload = {
        "benchmark": "scale",
        "settings": {"sizes": sizes, "jobs": jobs, "limit": LIMIT, "batch_size": BATCH, "repeats": args.repeats,
                     "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"), "cpu_count": os.cpu_count(),
                     "load_average_1m": os.getloadavg()[0]},
        "seconds": results,
        "ratio_to_smallest": table,
        "first_ratio_to_smallest": first,
        "cpu_ratio_to_smallest": cpu,
        "first_cpu_ratio_to_smallest": first_cpu,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from bench.report import run_benchmark

    sys.exit(run_benchmark(main))
