"""How many threads the gap statistics' numpy BLAS and LAPACK calls use: one controller of the
loaded BLAS libraries (`threadpool_controller`), one-thread sections (`single_blas_thread`), and
the embedding widths from which the process's threads pay (`gap_blas_threads`,
`resample_threads`)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def threadpool_controller():
    """threadpoolctl's view of the loaded BLAS libraries, built once: building it scans every
    loaded library (about 10 ms, paid on each call by `threadpool_limits`). scipy.linalg is
    imported first: scipy ships its own OpenBLAS, which a controller built before it loaded
    never limits (its second thread then spun through each gap: 0.071 CPU s against 0.035 s of
    wall time for one 1,024-point gap in a fresh process)."""
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, so the controller sees it)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_blas_thread(function):
    """Run `function` with one BLAS thread. Its matrices are small (at most a few thousand
    rows): extra threads only contend, and on two busy cores made sqrtm 40x slower here."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_controller().limit(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


# embedding width from which the gap's BLAS calls (kernel blocks, MMD^2 products, the point
# estimate) use the process's threads (torch's count): at 128 two threads were slower than
# one, at 256 within the noise (bench_scoring)
GAP_THREADED_WIDTH = 384
# embedding width from which the resampled Frechet distances run a block of resamples per
# thread (`resample_threads`), each thread with one BLAS thread: a resample costs width^3-sized
# products and an eigenvalue problem (ViT-B-16's 512: 12 CPU s for one modality at the
# defaults), resamples are independent, and numpy's BLAS and LAPACK calls release the GIL, so
# two threads ran them 1.86-2.01x faster than one from 64 dimensions up (2,000 points a side),
# where two BLAS threads inside each call gained 1.1-1.5x (eigvalsh's reduction barely scales);
# at 32 dimensions (the tiny twins') they took 0.8-1.3x the wall time and more CPU time. The
# values do not depend on the thread count: every call runs on one BLAS thread, as on one core.
RESAMPLE_THREADED_WIDTH = 64


def gap_blas_threads(width: int) -> int:
    """BLAS threads for the gap of embeddings `width` wide: 1 below GAP_THREADED_WIDTH, else
    the threads torch computes with in this process."""
    return 1 if width < GAP_THREADED_WIDTH else _process_threads()


def resample_threads(width: int) -> int:
    """Threads that share the resampled Frechet distances of embeddings `width` wide: 1 below
    RESAMPLE_THREADED_WIDTH, else the threads torch computes with in this process."""
    return 1 if width < RESAMPLE_THREADED_WIDTH else _process_threads()


def _process_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())
