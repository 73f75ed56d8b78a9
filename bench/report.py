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
