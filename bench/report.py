"""What every benchmark records beside its numbers: the machine it ran on, and the JSON it writes."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def offline() -> None:
    """Benchmarks build tiny models or real shapes with random weights: never reach for a hub (a variable the
    caller set is kept)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


def environment(device: str, **extra) -> dict:
    """Python, torch, threads, CPUs, load (a shared machine's speed varies several-fold), the GPU's name."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device, **extra,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_report(path: str | Path, payload: dict) -> Path:
    """`payload` as indented JSON at `path` (folders made); prints where it went.

    Written whole or not at all (a file beside it, renamed over it): benchmarks write what has
    finished as they go (`"complete": false` until the end), and a process killed at its time
    limit while writing must leave the previous version readable, not half of a new one."""
    from augment.atomic import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}" + (" (partial: the benchmark is still running)" if payload.get("complete") is False else ""),
          flush=True)
    return path


def profile_path(out: str | Path) -> Path:
    """Where a benchmark's `--profile` tables go: beside its report `out`, NAME.profile.txt."""
    out = Path(out)
    return out.with_name(f"{out.stem}.profile.txt")


def add_profile(out: str | Path, text: str) -> Path:
    """Append `profile_tables`' `text` to the profile file of report `out` (each part of a run adds
    its tables; the benchmark deletes the file when it starts); where it went."""
    path = profile_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(text + "\n")
    return path


# the host-side calls that start GPU work or wait for it: a host-bound step shows many of them
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")


def aten_calls(run) -> int:
    """The aten operator calls `run()` makes (torch.profiler, CPU activity, nested calls included):
    the host-side work a GPU pays per operator whatever its size, so the ratio of two sides' counts
    predicts their time ratio where a GPU is host-bound (docs/benchmarks.md)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    return _aten_count(profiler.key_averages())


def _aten_count(averages) -> int:
    """aten operator calls in a profile's per-operator averages."""
    return sum(e.count for e in averages if e.key.startswith("aten::"))


def profile_tables(run, device: str, title: str, rows: int = 30) -> str:
    """`run()` once under torch.profiler: the title, a count line (aten operator calls; on a GPU
    kernel launches and synchronisations) and the per-operator tables by self CPU time and, on a
    GPU, by self device time. What `--profile` of the benchmarks writes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as profiler:
        run()
        if cuda:
            torch.cuda.synchronize()
    averages = profiler.key_averages()
    counts = f"aten calls {_aten_count(averages):,}"
    if cuda:
        launches = sum(e.count for e in averages if e.key in LAUNCH_CALLS)
        waits = sum(e.count for e in averages if "Synchronize" in e.key)
        counts += f", kernel launches {launches:,}, synchronisations {waits:,}"
    text = [title, counts]
    for sort in ["self_cpu_time_total"] + (["self_device_time_total"] if cuda else []):
        text += [f"\n== by {sort}", averages.table(sort_by=sort, row_limit=rows, max_name_column_width=60)]
    return "\n".join(text) + "\n"


def run_benchmark(main, argv: list[str] | None = None) -> int:
    """A benchmark's `main` with the commands' error handling: the project's own errors (a source or
    model that cannot load, a setting refused) and OS errors are one line and exit status 2, not a
    traceback (as `augment.cli_common.run_main` does for the commands)."""
    from augment.errors import MatPlusError, first_line

    try:
        return main(argv if argv is not None else sys.argv[1:])
    except (MatPlusError, OSError) as exc:
        if os.environ.get("MATPLUS_TRACEBACK"):
            raise
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2


def positive_counts(text: str) -> list[int]:
    """`--sizes 200,2000`: whole numbers >= 1, comma-separated (argparse type; `abc` was a ValueError
    traceback, `-5` a report of nulls, exit 0)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 200,2000") from None
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be at least 1")
    return counts


def report_path(text: str) -> str:
    """`--out FILE`: refused when it is a folder (the report was lost after the first benchmark ran)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give the report's file name, e.g. {text}/bench.json")
    return text
