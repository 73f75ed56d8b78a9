"""What every benchmark records beside its numbers: the machine it ran on, and the JSON it writes."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


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
