"""The distribution gap between a pool's embeddings and its source's: Frechet distance and MMD^2
with bootstrap intervals, the resamples drawn by items, paired between the two samples."""
from __future__ import annotations

from typing import Callable

import numpy as np

from augment.scoring.measures.bootstrap import item_codes, item_resample_counts, percentile_interval, resample_counts
from augment.scoring.measures.frechet import frechet_between, resampled_frechet
from augment.scoring.measures.mmd import (centred_rows, kernel_blocks, median_heuristic_gamma, median_subset,
                                          mmd2_from_kernels, resampled_mmd2, squared_block)
from augment.scoring.measures.threads import gap_blas_threads, resample_threads, threadpool_controller


def gap_measures(x: np.ndarray, y: np.ndarray, n_resamples: int = 200, confidence: float = 0.95,
                 seed: int = 0, items_x=None, items_y=None, on_resamples: Callable[[int], None] | None = None) -> dict:
    """Frechet distance and MMD^2 between samples x (pool) and y (source) with bootstrap CIs,
    with `gap_blas_threads` BLAS threads (one for narrow embeddings), the resampled Frechet
    distances shared by `resample_threads` threads.

    The squared distances of the median heuristic's subsample give the bandwidth, then the
    kernel's blocks are computed (`rbf_kernel_blocks`). `items_x` / `items_y`: the item (source
    image id) of each row; with them each resample draws items with replacement, one draw for
    both sides, and every row comes with its item's count (`item_resample_counts`); without
    them x and y are redrawn row by row as two independent samples. The intervals are
    bias-shifted percentile intervals (`percentile_interval`): they contain the estimate.
    "items": the items redrawn (None for row draws). `on_resamples(count)` is told of each block of
    resamples finished (`resampled_frechet`'s blocks, most of the time at real widths: seconds).
    """
    width = np.shape(x)[1] if np.ndim(x) == 2 else 0
    with threadpool_controller().limit(limits=gap_blas_threads(width), user_api="blas"):
        return _gap_measures(x, y, n_resamples, confidence, seed, items_x, items_y, on_resamples,
                             resample_threads(width))


def _gap_measures(x: np.ndarray, y: np.ndarray, n_resamples: int, confidence: float, seed: int,
                  items_x=None, items_y=None, on_resamples: Callable[[int], None] | None = None,
                  threads: int = 1) -> dict:
    import torch

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:  # no gap to measure (an empty side may come without its ids)
        return {"n_pool": n, "n_source": m, "items": None, "frechet": None, "mmd2": None, "gamma": None}
    codes = item_codes(items_x, items_y, n, m)
    items = None if codes is None else int(codes[2])
    rows = centred_rows(np.concatenate([x, y]))  # one centring: the distances the pooled matrix had
    subset = median_subset(len(rows), seed=seed)
    points = rows if subset is None else rows[torch.from_numpy(subset)]
    squared = squared_block(points, points, same=True).numpy()
    gamma = median_heuristic_gamma(points, seed=seed, squared=squared)
    kernels = kernel_blocks(rows[:n], rows[n:], gamma)
    frechet = frechet_between(x, y)
    mmd2 = mmd2_from_kernels(*kernels)
    frechet_samples, mmd_samples = _bootstrap_gap(x, y, kernels, n_resamples, seed, codes, on_resamples, threads)
    return {
        "n_pool": n,
        "n_source": m,
        "items": items,
        "frechet": percentile_interval(frechet, frechet_samples, confidence),
        "mmd2": percentile_interval(mmd2, mmd_samples, confidence),
        "gamma": gamma,
    }


def _bootstrap_gap(x: np.ndarray, y: np.ndarray, kernels: tuple, n_resamples: int, seed: int, codes=None,
                   on_resamples: Callable[[int], None] | None = None, threads: int = 1):
    """Frechet and MMD^2 of `n_resamples` resamples of x and y: by items, both sides from one
    draw (`item_resample_counts`), when `codes` (`item_codes`) are given, else row by row, each
    side drawn independently with replacement.

    A resample is its draw counts per point, so no resampled matrix is ever gathered: MMD^2 of
    all resamples is two matrix products with the kernel, and the Frechet distances weight the
    rows by their counts (equal to the distances of the resampled rows), a block of resamples at
    a time (`resampled_frechet`). Duplicated draws count as distinct points in MMD^2's within-sample
    terms, which biases the resampled values up a little: the usual price of bootstrapping a
    U-statistic. A resample by items that brings fewer than 2 rows to a side has no value (NaN,
    left out of the interval by `percentile_interval`).
    """
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    if codes is None:
        counts_x = resample_counts(rng, n, n_resamples)
        counts_y = resample_counts(rng, m, n_resamples)
    else:
        counts_x, counts_y = item_resample_counts(rng, *codes, n_resamples)
    mmd_samples = resampled_mmd2(kernels, counts_x, counts_y)
    return resampled_frechet(x, y, counts_x, counts_y, on_resamples, threads).tolist(), mmd_samples.tolist()
