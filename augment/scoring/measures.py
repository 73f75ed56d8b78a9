"""The statistics of pool scoring, on unit-normalised embeddings (numpy arrays, one row each).

* alignment: cosine of an image and a caption embedding; CLIPScore = 100 * max(cos, 0) per pair
  (Hessel et al. 2021 with w = 100, torchmetrics' weight; a pool's CLIPScore is the mean of its
  pairs' as in Hessel et al., where torchmetrics clips the mean: equal unless a cosine is negative);
* diversity of a set: mean pairwise cosine distance, and the Vendi score;
* distribution gap between two samples: Frechet distance of Gaussians fitted to them, and the
  unbiased RBF-kernel MMD^2 with a median-heuristic bandwidth;
* percentile bootstrap confidence intervals (alignment's by items, `bootstrap_item_means`;
  the gap measures' by items too, paired between pool and source, and bias-shifted).

Library code does the numerics wherever a well-kept implementation exists: scipy.linalg.sqrtm
(the Frechet estimate, where no side has fewer points than dimensions: `frechet_between`),
sklearn's pairwise distances and RBF kernel (`mmd2_unbiased`), numpy's eigvalsh and svd (Vendi,
the resampled Frechet distances). The bootstraps are written here as array
code, because the libraries' versions are the slow part of a first scoring pass: the means'
percentile intervals draw exactly what scipy.stats.bootstrap draws (one index matrix shared by
every statistic of one length, tested equal to scipy's), and the gap's resamples are one index
matrix of items, drawn once for both sides (a paired cluster bootstrap; per side and by rows
when no item ids are given), whose draw counts weight one kernel and one set of per-point
outer products.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

CLIPSCORE_WEIGHT = 100.0
# how the resamples are drawn: part of a pool's inputs key, so scores stored under another
# scheme (multinomial gap counts, then the gap's rows redrawn one by one, before this one)
# are recomputed, not reused as if equal
RESAMPLING = "index-matrix-3-gap-by-paired-items"
# below this an eigenvalue of K/n counts as zero in the Vendi entropy (0 * log 0 = 0)
EIGENVALUE_FLOOR = 1e-12
# points the median heuristic looks at (its distance matrix is MEDIAN_POINTS^2)
MEDIAN_POINTS = 1000
# numbers held at once by a block of bootstrap resamples of the Frechet distance (~32 MB of float64)
RESAMPLE_BLOCK_VALUES = 4_000_000


@functools.lru_cache(maxsize=1)
def _thread_pools():
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
        with _thread_pools().limit(limits=1, user_api="blas"):
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


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------


def clipscore(cosine) -> np.ndarray:
    return CLIPSCORE_WEIGHT * np.maximum(np.asarray(cosine, dtype=np.float64), 0.0)


# ---------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """Mean of 1 - cos over the m(m-1)/2 pairs of a set of m >= 2 unit vectors."""
    return float(set_diversity([embeddings])[0][0])


def vendi_score(embeddings: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel: 1 for identical items, m for
    m orthogonal ones. Written here because its only package (vendi-score, last release 2022)
    is unmaintained; it is three lines of numpy."""
    return float(set_diversity([embeddings])[1][0])


def set_diversity(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean pairwise cosine distance, Vendi score) of each set, sets of one size batched: by hand,
    not scipy's pdist, which takes one set per call and would loop over thousands of pool items."""
    if not sets:
        return np.zeros(0), np.zeros(0)
    vectors = np.concatenate([np.asarray(members, dtype=np.float64).reshape(len(members), -1) for members in sets])
    bounds = np.cumsum([0] + [len(members) for members in sets])
    return set_diversity_indexed(vectors, [range(bounds[k], bounds[k + 1]) for k in range(len(sets))])


@single_blas_thread
def set_diversity_indexed(vectors: np.ndarray, index_sets) -> tuple[np.ndarray, np.ndarray]:
    """`set_diversity` of the sets vectors[index_set], one gather per set size: the pool's
    items are given as row numbers, never copied out one set at a time."""
    vectors = np.asarray(vectors, dtype=np.float64)
    distances = np.zeros(len(index_sets))
    vendi = np.zeros(len(index_sets))
    by_size: dict[int, list[int]] = {}
    for index, members in enumerate(index_sets):
        by_size.setdefault(len(members), []).append(index)
    for size, indices in by_size.items():
        if size < 2:
            distances[indices], vendi[indices] = 0.0, 1.0
            continue
        stacked = vectors[np.array([index_sets[i] for i in indices], dtype=np.int64)]  # (k, m, d)
        # renormalise in float64: float32 unit vectors give cos(v, v) = 1 - 3e-8, not 1
        stacked /= np.linalg.norm(stacked, axis=-1, keepdims=True)
        similarity = stacked @ stacked.transpose(0, 2, 1)  # (k, m, m) cosine kernels
        upper = np.triu_indices(size, 1)
        # exact copies give 1 - cos = -1e-16; distances are never negative
        distances[indices] = np.maximum(1.0 - similarity[:, upper[0], upper[1]].mean(axis=1), 0.0)
        vendi[indices] = _vendi_from_kernels(similarity / size)
    return distances, vendi


def _vendi_from_kernels(scaled_kernels: np.ndarray) -> np.ndarray:
    """exp(Shannon entropy of the eigenvalues of K/m) for a stack of kernels K/m."""
    eigenvalues = np.clip(np.linalg.eigvalsh(scaled_kernels), 0.0, None)
    safe = np.where(eigenvalues > EIGENVALUE_FLOOR, eigenvalues, 1.0)  # log(1) = 0 drops them
    entropy = -(eigenvalues * np.log(safe)).sum(axis=-1)
    return np.exp(entropy)


# ---------------------------------------------------------------------------------------------
# Distribution gap
# ---------------------------------------------------------------------------------------------


def gaussian_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (n, d) samples, n >= 2, in float64."""
    samples = np.asarray(samples, dtype=np.float64)
    return samples.mean(axis=0), np.cov(samples, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2), the formula FID uses, with scipy's sqrtm."""
    from scipy.linalg import sqrtm

    product = np.asarray(sqrtm(cov1 @ cov2))
    if not np.isfinite(product).all():
        # singular product (fewer samples than dimensions): offset both, as pytorch-fid does
        offset = np.eye(len(cov1)) * 1e-6
        product = np.asarray(sqrtm((cov1 + offset) @ (cov2 + offset)))
    trace_sqrt = float(np.trace(product).real)
    return _frechet_from_trace(mu1, cov1, mu2, cov2, trace_sqrt)


def frechet_distance_eigh(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray):
    """The same distance via Tr (C1 C2)^1/2 = sum sqrt(eig(C1^1/2 C2 C1^1/2)), symmetric and
    several times faster than sqrtm (the resamples now take `trace_sqrt_products`' Cholesky form
    of it; this one is the tests' batched reference). Takes one pair of
    Gaussians (returns a float) or stacks of them, (k, d) means and (k, d, d) covariances
    (returns k distances, computed by numpy's batched eigh in one call)."""
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]) @ np.swapaxes(vectors, -1, -2)
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    trace_sqrt = np.sqrt(np.clip(inner, 0.0, None)).sum(axis=-1)
    difference = mu1 - mu2
    value = ((difference * difference).sum(axis=-1) + np.trace(cov1, axis1=-2, axis2=-1)
             + np.trace(cov2, axis1=-2, axis2=-1) - 2.0 * trace_sqrt)
    value = np.maximum(value, 0.0)  # rounding can give -1e-12 for identical samples
    return float(value) if np.ndim(value) == 0 else value


def _frechet_from_trace(mu1, cov1, mu2, cov2, trace_sqrt: float) -> float:
    difference = mu1 - mu2
    value = float(difference @ difference + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # rounding can give -1e-12 for identical samples


def frechet_between(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to x and y (>= 2 rows each): FID's formula with
    scipy's sqrtm (`frechet_distance`), or, where `frechet_route` finds the cross matrix cheaper,
    the way the resamples take there: always so when a side has fewer points than dimensions,
    where C1 C2 is singular, sqrtm's slow and inexact case (4.7 s for 100 and 50 points at 512
    dimensions, and pytorch-fid's offset when its result is not finite); the cross way needs no
    d x d matrix and is exact there."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if frechet_route(len(x), len(y), x.shape[1]) == "cross":
        distance = _cross_frechet_blocks(x, y, np.ones((1, len(x))), np.ones((1, len(y))))
        return float(distance(slice(0, 1))[0])
    return frechet_distance(*gaussian_fit(x), *gaussian_fit(y))


def median_heuristic_gamma(samples: np.ndarray, max_points: int = MEDIAN_POINTS, seed: int = 0,
                           squared: np.ndarray | None = None) -> float:
    """RBF gamma = 1 / (2 sigma^2), sigma^2 the median squared distance between distinct pooled
    points; on a seeded subsample of `max_points` when there are more (a median needs no more,
    and the full distance matrix would dominate the memory). `squared`: the samples' squared
    distance matrix when the caller has it (the subsample's entries are read from it)."""
    subset = median_subset(len(samples), max_points, seed)
    if squared is None:
        from sklearn.metrics.pairwise import euclidean_distances

        points = samples if subset is None else samples[subset]
        squared = euclidean_distances(points, squared=True)
    elif subset is not None:
        squared = squared.take(subset, axis=0).take(subset, axis=1)  # the np.ix_ block at half the cost
    upper = squared[_upper_mask(len(squared))]
    positive = upper[upper > 0]
    if positive.size == 0:  # all points identical: any bandwidth gives MMD 0
        return 1.0
    return 1.0 / (2.0 * median_in_place(positive))


def median_subset(count: int, max_points: int = MEDIAN_POINTS, seed: int = 0) -> np.ndarray | None:
    """The sorted seeded subsample of `max_points` of `count` points the median heuristic looks
    at; None when it looks at all of them."""
    if count <= max_points:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, max_points, replace=False))


def median_in_place(values: np.ndarray) -> float:
    """np.median(values), the same number, reordering `values`: one partition at the upper
    middle, the lower middle being the largest value left of it (np.median partitions at both,
    twice the selection work on the half-million distances of the median heuristic)."""
    middle = len(values) // 2
    values.partition(middle)
    if len(values) % 2:
        return float(np.mean(values[middle:middle + 1]))
    return float(np.mean(np.array([values[:middle].max(), values[middle]], dtype=values.dtype)))


@functools.lru_cache(maxsize=4)
def _upper_mask(size: int) -> np.ndarray:
    """(size, size) mask of the strict upper triangle (a mask: index arrays cost more), made once
    per size (every gap of a pass asks for the same MEDIAN_POINTS one)."""
    mask = np.triu(np.ones((size, size), dtype=bool), 1)
    mask.flags.writeable = False
    return mask


def squared_distances(samples: np.ndarray) -> np.ndarray:
    """(n, n) float32 squared Euclidean distances, |a|^2 + |b|^2 - 2 a.b on rows centred first
    (distances do not change; small norms keep float32's cancellation error near 1e-7 for unit
    embeddings), the diagonal exactly 0. float32: the matrix feeds a float32 kernel anyway, and
    its product is the largest single cost of the gap at small embedding widths; torch's matmul
    computes it (3x faster than numpy's OpenBLAS here for narrow rows, 32 wide)."""
    rows = _centred_rows(samples)
    return _squared_block(rows, rows, same=True).numpy()


def rbf_kernel_blocks(x: np.ndarray, y: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K_xx, K_yy, K_xy), K = exp(-gamma |a - b|^2) with the squared distances of
    `squared_distances` (rows centred by the pooled mean), as three contiguous float32 arrays:
    the y-x block of the pooled kernel (the transpose of K_xy) is never computed, and BLAS takes
    each block without a copy. float32 halves the memory; entries are in [0, 1] and every sum
    of them is taken in float64."""
    rows = _centred_rows(np.concatenate([x, y]))
    return _kernel_blocks(rows[: len(x)], rows[len(x):], gamma)


def _kernel_blocks(rows_x, rows_y, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    blocks = []
    for a, b, same in ((rows_x, rows_x, True), (rows_y, rows_y, True), (rows_x, rows_y, False)):
        block = _squared_block(a, b, same).numpy()
        block *= -gamma
        blocks.append(np.exp(block, out=block))
    return tuple(blocks)


def _centred_rows(samples: np.ndarray):
    """float32 torch rows of `samples` less their mean (in float64): distances do not change,
    and small norms keep float32's cancellation error small."""
    import torch

    centred = np.asarray(samples, dtype=np.float64)
    return torch.from_numpy((centred - centred.mean(axis=0)).astype(np.float32))


def _squared_block(a, b, same: bool):
    """|a_i - b_j|^2 of float32 torch rows, clamped at 0; the diagonal exactly 0 when a is b."""
    import torch

    norms_a = (a * a).sum(dim=1)
    norms_b = norms_a if same else (b * b).sum(dim=1)
    squared = torch.addmm(norms_a[:, None], a, b.T, alpha=-2.0)  # |a|^2 - 2 a.b in one pass
    squared += norms_b[None, :]
    squared.clamp_(min=0.0)
    if same:
        squared.fill_diagonal_(0.0)
    return squared


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, gamma: float | None = None) -> tuple[float, float]:
    """(unbiased MMD^2 with an RBF kernel, gamma used); gamma=None picks the median heuristic on
    the pooled samples. Unbiased: can be slightly negative when the samples match."""
    from sklearn.metrics.pairwise import rbf_kernel

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if gamma is None:
        gamma = median_heuristic_gamma(np.concatenate([x, y]))
    value = mmd2_from_kernels(rbf_kernel(x, gamma=gamma), rbf_kernel(y, gamma=gamma), rbf_kernel(x, y, gamma=gamma))
    return value, gamma


def mmd2_from_kernels(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Gretton et al.'s MMD^2_u: within-sample means leave out the diagonal, the cross term not.
    Not torchmetrics' KID helper, which assumes both samples have one size; pool and source differ."""
    n, m = len(kxx), len(kyy)
    within_x = (kxx.sum(dtype=np.float64) - np.trace(kxx, dtype=np.float64)) / (n * (n - 1))
    within_y = (kyy.sum(dtype=np.float64) - np.trace(kyy, dtype=np.float64)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kxy.mean(dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


# values gathered at once by a block of mean resamples (scipy's bootstrap batch, as used before)
MEAN_BLOCK_VALUES = 4_000_000


def bootstrap_mean(values, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict | None:
    """{"mean", "low", "high", "n"}: percentile bootstrap CI of the mean; None for no values."""
    return bootstrap_means([values], n_resamples, confidence, seed)[0]


def bootstrap_means(series, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict | None]:
    """`bootstrap_mean` of each value series, the resamples shared: series of one length use
    one index matrix (drawn once, a block of rows at a time), each gathered once per block.

    The numbers are scipy.stats.bootstrap's (method="percentile", vectorized, batch of
    MEAN_BLOCK_VALUES // n rows, the same seeded generator): the same index draws, the same
    quantiles. Written as array code because scipy's per-call set-up and per-statistic draws
    were a fifth of a first scoring pass of 1,024 pairs.
    """
    arrays = [np.asarray(values, dtype=np.float64).reshape(-1) for values in series]
    results: list[dict | None] = [None] * len(arrays)
    resampled: dict[int, list[int]] = {}
    for index, values in enumerate(arrays):
        if values.size == 0:
            continue
        mean = float(values.mean())
        if values.size == 1 or np.ptp(values) == 0 or n_resamples <= 0:
            results[index] = {"mean": mean, "low": mean, "high": mean, "n": int(values.size)}
        else:
            resampled.setdefault(values.size, []).append(index)
    # np.take then sum / n: the numbers of `values[indices].mean(-1)` (numpy's mean is that sum over
    # that count) at a third of its time (fancy indexing's per-element overhead)
    bounds = _percentile_bounds(resampled, lambda index, indices: np.take(arrays[index], indices).sum(axis=-1)
                                / arrays[index].size, n_resamples, confidence, seed)
    for index, (low, high) in bounds.items():
        values = arrays[index]
        results[index] = {"mean": float(values.mean()), "low": low, "high": high, "n": int(values.size)}
    return results


def _percentile_bounds(groups: dict[int, list[int]], statistic, n_resamples: int, confidence: float,
                       seed: int) -> dict[int, tuple[float, float]]:
    """{series index: (low, high)}: percentile bounds of `statistic(index, indices)` over resamples,
    the series of each group (`groups`: units per resample -> series indices) sharing one seeded
    index matrix, drawn a block of rows at a time as scipy's vectorized bootstrap draws them."""
    tail = (1.0 - confidence) / 2.0
    bounds = {}
    for size, members in groups.items():
        rng = np.random.default_rng(seed)
        block = max(1, min(n_resamples, MEAN_BLOCK_VALUES // size))
        distributions = np.empty((len(members), n_resamples))
        for start in range(0, n_resamples, block):
            rows = min(block, n_resamples - start)
            indices = rng.integers(0, size, (rows, size))
            for k, index in enumerate(members):
                distributions[k, start:start + rows] = statistic(index, indices)
        low, high = np.quantile(distributions, [tail, 1.0 - tail], axis=-1)
        bounds.update({index: (float(low[k]), float(high[k])) for k, index in enumerate(members)})
    return bounds


def bootstrap_item_means(series, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict | None]:
    """`bootstrap_means` for values that come in items: each series is (values, item of each value).
    A resample draws whole items with replacement and takes the mean of the values they bring (a
    cluster bootstrap): a pool's rows of one item share their source image and move together, so
    redrawing rows one at a time made the intervals too narrow (a simulation of 200 items x 5 rows
    covered the mean 70% of the time at a nominal 95%; by items, 94%). {"mean", "low", "high", "n",
    "items"}; series with one item or one value have no spread (low = high = mean). Series with the
    same number of items share one index matrix, drawn as `bootstrap_means` draws its rows."""
    results: list[dict | None] = []
    grouped: dict[int, list[int]] = {}
    sums_of, sizes_of = [], []
    for index, (values, items) in enumerate(series):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.size == 0:
            results.append(None)
            sums_of.append(None)
            sizes_of.append(None)
            continue
        _, codes = item_numbers(items)
        sums, sizes = np.bincount(codes, weights=values), np.bincount(codes).astype(np.float64)
        mean = float(values.mean())
        results.append({"mean": mean, "low": mean, "high": mean, "n": int(values.size), "items": int(sizes.size)})
        sums_of.append(sums)
        sizes_of.append(sizes)
        if sizes.size > 1 and np.ptp(values) > 0 and n_resamples > 0:
            grouped.setdefault(sizes.size, []).append(index)
    def item_mean(index, indices):
        sizes = sizes_of[index]
        # items of one size: each resample brings that size times its draws (an exact float sum)
        totals = float(sizes[0]) * indices.shape[-1] if sizes.min() == sizes.max() else np.take(sizes, indices).sum(-1)
        return np.take(sums_of[index], indices).sum(-1) / totals

    bounds = _percentile_bounds(grouped, item_mean, n_resamples, confidence, seed)
    for index, (low, high) in bounds.items():
        results[index].update(low=low, high=high)
    return results


def percentile_interval(estimate: float, resampled: list[float], confidence: float) -> dict:
    """Bias-shifted percentile interval of a plug-in estimate: {"value", "low", "high", "bootstrap_bias"}.

    Frechet distance and resampled MMD^2 are biased upwards (resampling duplicates points and
    adds spread), so the raw percentile interval of the resamples sits above the estimate, on
    the side of the bias, and can exclude it (FD 0.043 [0.071, 0.089]). The resamples are
    therefore shifted by the bootstrap estimate of the bias (their median minus the estimate)
    before the percentiles are taken: the interval shows the sampling spread of the estimate and
    contains it. It is not an interval for the population distance (which the plug-in estimate
    overstates by roughly `bootstrap_bias`).
    """
    tail = 100.0 * (1.0 - confidence) / 2.0
    finite = np.asarray([v for v in resampled if math.isfinite(v)], dtype=np.float64)
    if not finite.size:
        return {"value": estimate, "low": estimate, "high": estimate, "bootstrap_bias": 0.0}
    bias = float(np.median(finite)) - estimate
    low, high = np.percentile(finite - bias, [tail, 100.0 - tail])
    return {"value": estimate, "low": float(min(low, estimate)), "high": float(max(high, estimate)),
            "bootstrap_bias": bias}


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
    with _thread_pools().limit(limits=gap_blas_threads(width), user_api="blas"):
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
    rows = _centred_rows(np.concatenate([x, y]))  # one centring: the distances the pooled matrix had
    subset = median_subset(len(rows), seed=seed)
    points = rows if subset is None else rows[torch.from_numpy(subset)]
    squared = _squared_block(points, points, same=True).numpy()
    gamma = median_heuristic_gamma(points, seed=seed, squared=squared)
    kernels = _kernel_blocks(rows[:n], rows[n:], gamma)
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


def resample_counts(rng: np.random.Generator, size: int, n_resamples: int) -> np.ndarray:
    """(n_resamples, size) draw counts of `n_resamples` resamples of `size` points drawn with
    replacement: one index matrix, counted in one bincount (offset per resample)."""
    indices = rng.integers(0, size, (n_resamples, size))
    indices += size * np.arange(n_resamples)[:, None]
    return np.bincount(indices.reshape(-1), minlength=n_resamples * size).reshape(n_resamples, size).astype(np.float64)


def item_numbers(ids) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct ids, each id's number among them): ids compared as strings, so an id read as
    an int in one place and a str in another is one item (the item bootstraps' grouping)."""
    names, codes = np.unique(np.asarray(ids, dtype=object).reshape(-1).astype(str), return_inverse=True)
    return names, codes.reshape(-1)


def item_codes(items_x, items_y, n: int, m: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(item number of each x row, of each y row, number of items): the ids of both sides
    numbered together (`item_numbers`), so that one id names one item on both sides; None without ids."""
    if items_x is None and items_y is None:
        return None
    if items_x is None or items_y is None:
        raise ValueError("item ids are needed for both samples or neither")
    items_x = np.asarray(items_x, dtype=object).reshape(-1)
    items_y = np.asarray(items_y, dtype=object).reshape(-1)
    if len(items_x) != n or len(items_y) != m:
        raise ValueError(f"{len(items_x)} and {len(items_y)} item ids for samples of {n} and {m} rows")
    names, codes = item_numbers(np.concatenate([items_x, items_y]))
    return codes[:n], codes[n:], len(names)


def item_resample_counts(rng: np.random.Generator, codes_x: np.ndarray, codes_y: np.ndarray, n_items: int,
                         n_resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_resamples, n) and (n_resamples, m) draw counts of a paired cluster bootstrap: each
    resample draws `n_items` items with replacement from the items of both samples (one index
    matrix, as `resample_counts`), and every row, on either side, counts as often as its item
    was drawn. The draw is shared: an item drawn k times brings k copies of its pool rows and
    of its source rows. The totals per resample vary (items differ in size)."""
    counts = resample_counts(rng, n_items, n_resamples)
    return counts[:, codes_x], counts[:, codes_y]


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


def resampled_frechet(x: np.ndarray, y: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray,
                      on_resamples: Callable[[int], None] | None = None, threads: int = 1) -> np.ndarray:
    """Frechet distance of each resample (rows of the count matrices), a block at a time, the
    cheaper of two exact ways for the samples' shape (`frechet_route`): count-weighted fits and a
    d x d eigenvalue problem, or the singular values of the sides' n x m cross matrix. Each
    resample is weighted by its own count totals; one with fewer than 2 points on a side
    (possible when items are drawn) has no covariance: NaN. `on_resamples(count)`: called as
    each block of resamples is done (those without a value count as done at once). `threads` > 1:
    that many threads share the blocks, each with one BLAS thread (`RESAMPLE_THREADED_WIDTH`)."""
    values = np.full(len(counts_x), np.nan)
    valid = (counts_x.sum(axis=1) >= 2) & (counts_y.sum(axis=1) >= 2)
    if valid.all():
        return _resampled_frechet(x, y, counts_x, counts_y, on_resamples, threads)
    if on_resamples is not None:
        on_resamples(int((~valid).sum()))
    if valid.any():
        values[valid] = _resampled_frechet(x, y, counts_x[valid], counts_y[valid], on_resamples, threads)
    return values


def frechet_route(n1: int, n2: int, dims: int) -> str:
    """How `resampled_frechet` computes Tr (C1 C2)^1/2 for samples of n1 and n2 points in `dims`
    dimensions: the way with fewer multiply-adds per resample (both near 3.5e-11 s each at one
    BLAS thread here; the rule picked the faster way in each of 12 timed shapes, 2026-12-05):

    * "covariances": both sides' d x d count-weighted covariances (`weighted_gaussian_fits`), then
      one d x d eigenvalue problem (`trace_sqrt_products`): (n1 + n2) d^2 + about 5 d^3;
    * "cross": with A, B the two sides' centred rows weighted by sqrt(count / (total - 1)),
      C1 C2 = A^T A B^T B has the nonzero eigenvalues of (A B^T)(A B^T)^T, so the trace is the sum
      of the singular values of the n1 x n2 matrix A B^T, which one Gram matrix X Y^T gives every
      resample (`_cross_frechet_blocks`): about n1 n2 min(n1, n2). Whenever a side has fewer points
      than dimensions this is the cheaper one (no d x d matrix at all: 8 points at 512 dimensions
      took 2.6 s for 200 resamples the other way, 0.01 s this way), and its values are the more
      exact there: a singular value is computed directly, where the square root of a near-zero
      eigenvalue turns its rounding error of ~1e-16 into ~1e-8.
    """
    return "cross" if n1 * n2 * min(n1, n2) < (n1 + n2) * dims * dims + 5 * dims ** 3 else "covariances"


def _resampled_frechet(x: np.ndarray, y: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray,
                       on_resamples: Callable[[int], None] | None = None, threads: int = 1) -> np.ndarray:
    n, m, dims = len(x), len(y), x.shape[1]
    if frechet_route(n, m, dims) == "cross":
        block_values, per_resample = _cross_frechet_blocks(x, y, counts_x, counts_y), n * m
    else:
        block_values, per_resample = _covariance_frechet_blocks(x, y, counts_x, counts_y), dims * dims
    # resamples per block: what a block holds per resample (its d x d covariances, or its n x m
    # cross matrix) stays near RESAMPLE_BLOCK_VALUES numbers for all the threads' blocks together,
    # but never under one resample a thread (at 768 dimensions: 135 MB at peak on 1 thread, 511 on 16); with
    # threads, at most an equal share each
    threads = max(1, min(threads, len(counts_x)))
    block = max(1, RESAMPLE_BLOCK_VALUES // (threads * per_resample))
    if threads > 1:
        block = min(block, -(-len(counts_x) // threads))
    chunks = [slice(start, start + block) for start in range(0, len(counts_x), block)]
    values = []

    def collect(results) -> None:
        for value in results:  # in block order, on this thread: the callback needs no lock
            values.append(value)
            if on_resamples is not None:
                on_resamples(len(value))

    if threads == 1:
        collect(map(block_values, chunks))
        return np.concatenate(values) if values else np.empty(0)
    from concurrent.futures import ThreadPoolExecutor

    # one BLAS thread even for a single block: the values are those of one thread at any count
    with _thread_pools().limit(limits=1, user_api="blas"):
        pool = ThreadPoolExecutor(threads)
        try:
            collect(pool.map(block_values, chunks))
        finally:  # on an error or Ctrl-C, the blocks not yet started are dropped, not waited for
            pool.shutdown(wait=True, cancel_futures=True)
    return np.concatenate(values) if values else np.empty(0)


def _covariance_frechet_blocks(x: np.ndarray, y: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray):
    """The Frechet distances of a block of resamples (a slice of the count matrices' rows) from
    their count-weighted Gaussian fits (`frechet_route`'s "covariances")."""

    def block_values(chunk: slice) -> np.ndarray:
        mu1, cov1 = weighted_gaussian_fits(x, counts_x[chunk])
        mu2, cov2 = weighted_gaussian_fits(y, counts_y[chunk])
        difference = mu1 - mu2
        value = ((difference * difference).sum(axis=-1) + np.trace(cov1, axis1=-2, axis2=-1)
                 + np.trace(cov2, axis1=-2, axis2=-1) - 2.0 * trace_sqrt_products(cov1, cov2))
        return np.maximum(value, 0.0)  # rounding can give -1e-12 for identical samples

    return block_values


def _cross_frechet_blocks(x: np.ndarray, y: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray):
    """The Frechet distances of a block of resamples from the cross matrix of the two sides'
    centred, count-weighted rows (`frechet_route`'s "cross"). Each side is first shifted by its
    plain mean (centring removes any shift, and the products stay small, so the one-pass sums
    lose nothing to cancellation); with the Gram matrix G = X Y^T, a resample's means mu_x, mu_y
    give (X - mu_x)(Y - mu_y)^T = G - (X mu_y) 1^T - 1 (Y mu_x)^T + mu_x . mu_y, and Tr C = (sum
    c |x|^2 - total |mu|^2) / (total - 1): per resample only the rows it drew (count > 0) enter
    its singular value problem."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shift_x, shift_y = x.mean(axis=0), y.mean(axis=0)
    x, y = x - shift_x, y - shift_y
    gram = x @ y.T
    squares_x, squares_y = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)

    def block_values(chunk: slice) -> np.ndarray:
        cx, cy = counts_x[chunk], counts_y[chunk]
        total_x, total_y = cx.sum(axis=1), cy.sum(axis=1)
        mu_x, mu_y = cx @ x / total_x[:, None], cy @ y / total_y[:, None]  # of the shifted rows
        x_along, y_along = mu_y @ x.T, mu_x @ y.T  # (k, n): x_i . mu_y; (k, m): y_j . mu_x
        means_product = (mu_x * mu_y).sum(axis=1)
        trace_x = (cx @ squares_x - total_x * (mu_x * mu_x).sum(axis=1)) / (total_x - 1.0)
        trace_y = (cy @ squares_y - total_y * (mu_y * mu_y).sum(axis=1)) / (total_y - 1.0)
        nuclear = np.empty(len(cx))
        for k in range(len(cx)):
            rows, cols = np.flatnonzero(cx[k]), np.flatnonzero(cy[k])
            cross = gram[np.ix_(rows, cols)] - x_along[k][rows][:, None] - y_along[k][cols][None, :] + means_product[k]
            cross *= np.sqrt(cx[k, rows] / (total_x[k] - 1.0))[:, None]
            cross *= np.sqrt(cy[k, cols] / (total_y[k] - 1.0))[None, :]
            nuclear[k] = np.linalg.svd(cross, compute_uv=False).sum()
        difference = (mu_x + shift_x) - (mu_y + shift_y)
        value = (difference * difference).sum(axis=1) + trace_x + trace_y - 2.0 * nuclear
        return np.maximum(value, 0.0)  # rounding can give -1e-12 for identical samples

    return block_values


def trace_sqrt_products(cov1: np.ndarray, cov2: np.ndarray) -> np.ndarray:
    """Tr (C1 C2)^1/2 for stacks of covariances: with any factor C1 = F F^T, C1 C2 has the
    eigenvalues of the symmetric F^T C2 F, so the trace is the sum of the square roots of its
    eigenvalues (one eigvalsh, no eigenvectors). F is the Cholesky factor, and the eigen square
    root when C1 is singular (duplicates, rank < d)."""
    try:
        factor = np.linalg.cholesky(cov1)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(cov1)
        factor = vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]
    inner = np.linalg.eigvalsh(np.swapaxes(factor, -1, -2) @ cov2 @ factor)
    return np.sqrt(np.clip(inner, 0.0, None)).sum(axis=-1)


def weighted_gaussian_fit(samples: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the rows repeated `counts` times (np.cov with frequency weights)."""
    means, covariances = weighted_gaussian_fits(samples, counts[None, :])
    return means[0], covariances[0]


def weighted_gaussian_fits(samples: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, d) means and (k, d, d) covariances of the rows repeated counts[r] times, for each of
    the k rows of `counts`. The rows are first shifted by their plain mean (covariances do not
    change; the products stay small, so the one-pass formula sum c z z^T - total mean mean^T
    loses nothing to cancellation). Narrow embeddings: every resample's second moments in one
    matrix product with the rows' outer products (upper triangles only: half the work; built
    a row of the triangle at a time from contiguous slices, 10x faster than fancy indexing);
    wide ones: one symmetric product A^T A per resample, A the drawn rows scaled by sqrt(count)
    (numpy hands it to BLAS syrk: half a general product's work)."""
    samples = np.asarray(samples, dtype=np.float64)
    shift = samples.mean(axis=0)
    centred = samples - shift
    count, dims = centred.shape
    totals = counts.sum(axis=1)
    shifted_means = counts @ centred / totals[:, None]
    pairs = dims * (dims + 1) // 2
    if count * pairs <= RESAMPLE_BLOCK_VALUES:
        columns = np.ascontiguousarray(centred.T)
        # (d(d+1)/2, n): z_i z_j for i <= j in np.triu_indices order
        products = np.concatenate([columns[i:i + 1] * columns[i:] for i in range(dims)])
        upper = counts @ products.T  # (k, d(d+1)/2)
        second = upper[:, _symmetric_positions(dims)].reshape(len(counts), dims, dims)
    else:
        second = np.empty((len(counts), dims, dims))
        for k, row_counts in enumerate(counts):
            drawn = np.flatnonzero(row_counts)  # a resample leaves ~37% of the rows out: 1.5x less work
            scaled = centred[drawn] * np.sqrt(row_counts[drawn])[:, None]
            second[k] = scaled.T @ scaled
    covariances = (second - totals[:, None, None] * shifted_means[:, :, None] * shifted_means[:, None, :]) \
        / (totals - 1.0)[:, None, None]
    return shifted_means + shift, covariances


@functools.lru_cache(maxsize=4)
def _symmetric_positions(dims: int) -> np.ndarray:
    """(d * d,) position of each entry (i, j) of a symmetric d x d matrix in its upper
    triangle listed in np.triu_indices order: one gather rebuilds the full matrices."""
    rows, cols = np.triu_indices(dims)
    positions = np.empty((dims, dims), dtype=np.intp)
    positions[rows, cols] = positions[cols, rows] = np.arange(len(rows))
    positions = positions.reshape(-1)
    positions.flags.writeable = False
    return positions


def resampled_mmd2(kernels: tuple, counts_x: np.ndarray, counts_y: np.ndarray) -> np.ndarray:
    """MMD^2_u of each resample, from draw counts: sum over draws a != b of K[a, b] is
    c^T K c - sum_i c_i K_ii for counts c. The within-sample quadratic forms use the kernel's
    symmetry, c^T K c = 2 c^T U c - sum_i c_i^2 K_ii with U its upper triangle (diagonal
    included), one BLAS triangular product (trmm: half a general product's work); the kernel
    is symmetric up to float rounding, so the values agree with the full product to rounding
    (tested against the formula on the resampled rows). Each resample's terms are divided by
    its own count totals (a resample by items brings a varying number of points); one with
    fewer than 2 points on a side has no within-sample term: NaN."""
    kxx, kyy, kxy = kernels  # (K_xx, K_yy, K_xy)
    totals_x, totals_y = counts_x.sum(axis=1), counts_y.sum(axis=1)

    def weighted(counts: np.ndarray, block: np.ndarray) -> np.ndarray:
        # in the kernel's own dtype: a float64 copy of a float32 kernel would double the memory
        return (counts.astype(block.dtype) @ block).astype(np.float64)

    def within(block: np.ndarray, counts: np.ndarray, size: np.ndarray) -> np.ndarray:
        from scipy.linalg.blas import get_blas_funcs

        trmm = get_blas_funcs("trmm", (block,))
        # counts @ one triangle of K (block.T: Fortran order for BLAS, no copy of a contiguous
        # block; for the quadratic form either triangle does, as c^T U c = c^T U^T c)
        upper_product = trmm(1.0, block.T, np.array(counts, dtype=block.dtype, order="F"), side=1,
                             overwrite_b=1).astype(np.float64)
        diagonal = np.diag(block).astype(np.float64)
        quadratic = 2.0 * np.einsum("rn,rn->r", upper_product, counts) - (counts * counts) @ diagonal
        pairs = size * (size - 1)
        # pairs is 0 for a side of 0 or 1 point: no within term, NaN rather than a division by 0
        return np.divide(quadratic - counts @ diagonal, pairs, out=np.full(len(counts), np.nan), where=pairs > 0)

    cross = np.einsum("rn,rn->r", weighted(counts_x, kxy), counts_y)
    cross = np.divide(cross, totals_x * totals_y, out=np.full(len(cross), np.nan), where=totals_x * totals_y > 0)
    return within(kxx, counts_x, totals_x) + within(kyy, counts_y, totals_y) - 2.0 * cross


class Reservoir:
    """A uniform random sample of at most `capacity` rows of a stream (Vitter's algorithm R),
    seeded: memory stays fixed however long the stream is. Rows may come with ids (the item each
    row belongs to, for the gap's item-level bootstrap): an id is written to the slot its row is,
    by the same assignment, so the two stay aligned; ids take no draws, so the rows kept are the
    same with or without them."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.rows: np.ndarray | None = None
        self.item_ids: np.ndarray | None = None  # (capacity,) object array once ids are given

    def add(self, rows: np.ndarray, ids=None) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if len(rows) == 0:
            return
        if ids is not None:
            ids = np.asarray(ids, dtype=object).reshape(-1)
            if len(ids) != len(rows):
                raise ValueError(f"{len(ids)} ids for {len(rows)} rows")
        # a stream is either all with ids or all without: a row kept without its id would
        # silently be grouped with another item's
        if self.seen and (ids is None) != (self.item_ids is None):
            raise ValueError("rows were added with ids and without: give ids with every call or none")
        if self.rows is None:
            self.rows = np.empty((self.capacity, rows.shape[1]), dtype=np.float32)
            if ids is not None:
                self.item_ids = np.empty(self.capacity, dtype=object)
        positions = np.arange(self.seen, self.seen + len(rows))
        direct = positions < self.capacity
        self.rows[positions[direct]] = rows[direct]
        if ids is not None:
            self.item_ids[positions[direct]] = ids[direct]
        later = ~direct
        if later.any():
            slots = self.rng.integers(0, positions[later] + 1)  # slot j in [0, t] for stream index t
            keep = slots < self.capacity
            # a slot drawn twice in one call: the later row wins, for the ids as for the rows
            self.rows[slots[keep]] = rows[later][keep]
            if ids is not None:
                self.item_ids[slots[keep]] = ids[later][keep]
        self.seen += len(rows)

    def sample(self) -> np.ndarray:
        if self.rows is None:
            return np.empty((0, 0), dtype=np.float32)
        return self.rows[: min(self.seen, self.capacity)]

    def ids(self) -> np.ndarray | None:
        """The item id of each row of `sample()`, in its order; None when rows came without ids."""
        if self.item_ids is None:
            return None
        return self.item_ids[: min(self.seen, self.capacity)]
