"""glibc malloc settings that keep freed tensor memory for the next step instead of giving it back.

torch allocates CPU tensors with malloc. glibc returns a large freed block to the kernel: blocks
above its mmap threshold are unmapped, and the heap's free top is trimmed past a threshold that
follows the largest block freed so far. An attack or training step allocates and frees the same
large activations every step, so the next step takes each 4 KiB page back from the kernel as a
page fault, zero-filled: SGA's batched attack on the bench world (32 images, tiny-clip, 2
threads) took 42,000-71,000 page faults per run and a tenth of its CPU time in the kernel.

`reuse_freed_memory` fixes the mmap threshold at 32 MiB (the ceiling of glibc's own dynamic
threshold: smaller blocks come from the heap) and lets the heap keep up to 256 MiB free at its
top. Measured (2 threads): SGA's batched attack 0.96 / 0.91 s -> 0.88 / 0.90 s per run, its page
faults 46,000-71,000 -> under 100; `make demo` 90 -> 87-88 s, kernel time 17.5 -> 10.2 s, peak
memory +5%. The price: a process holds up to 256 MiB of freed memory for reuse.

Called by every command line (`augment.cli_common.run_main`), `make demo` and the benchmarks.
Left alone where the user chose: another allocator preloaded (`LD_PRELOAD`, e.g. jemalloc or
tcmalloc), glibc's own settings (`GLIBC_TUNABLES`, `MALLOC_*_` variables), or
`MATPLUS_MALLOC=default`; and off glibc (macOS, musl). Written here because no library sets
glibc's malloc parameters (jemalloc and tcmalloc replace malloc, and need LD_PRELOAD before the
process starts).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
# variables by which a user tells glibc (or the loader) how to allocate: their choice stands
USER_SETTINGS = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                 "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")

_applied: list[bool] = []


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module doc); True when they
    are in effect (set now or by an earlier call), False where the user's choice or the platform
    leaves them alone."""
    if _applied:
        return _applied[0]
    _applied.append(_set_thresholds())
    return _applied[0]


def _set_thresholds() -> bool:
    if os.environ.get("MATPLUS_MALLOC", "").strip().lower() == "default":
        return False
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; either setting ends glibc's dynamic thresholds
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
