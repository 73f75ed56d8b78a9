"""The statistics of pool scoring, on unit-normalised embeddings (numpy arrays, one row each).

* alignment: cosine of an image and a caption embedding; CLIPScore = 100 * max(cos, 0)
  (Hessel et al. 2021 with w = 100, the convention torchmetrics uses);
* diversity of a set: mean pairwise cosine distance, and the Vendi score;
* distribution gap between two samples: Frechet distance of Gaussians fitted to them, and the
  unbiased RBF-kernel MMD^2 with a median-heuristic bandwidth;
* percentile bootstrap confidence intervals (bias-shifted for the gap measures).

Library code does the numerics wherever a well-kept implementation exists: scipy.linalg.sqrtm
(Frechet), sklearn's pairwise distances and RBF kernel (MMD), scipy.stats.bootstrap (means),
numpy's eigvalsh (Vendi).
"""
from __future__ import annotations

import functools
import math

import numpy as np

CLIPSCORE_WEIGHT = 100.0
# below this an eigenvalue of K/n counts as zero in the Vendi entropy (0 * log 0 = 0)
EIGENVALUE_FLOOR = 1e-12
# points the median heuristic looks at (its distance matrix is MEDIAN_POINTS^2)
MEDIAN_POINTS = 1000
# numbers held at once by a block of bootstrap resamples of the Frechet distance (~32 MB of float64)
RESAMPLE_BLOCK_VALUES = 4_000_000


def single_blas_thread(function):
    """Run `function` with one BLAS thread. Its matrices are small (at most a few thousand
    rows): extra threads only contend, and on two busy cores made sqrtm 40x slower here."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


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


@single_blas_thread
def set_diversity(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean pairwise cosine distance, Vendi score) of each set, sets of one size batched."""
    distances = np.zeros(len(sets))
    vendi = np.zeros(len(sets))
    by_size: dict[int, list[int]] = {}
    for index, members in enumerate(sets):
        by_size.setdefault(len(members), []).append(index)
    for size, indices in by_size.items():
        if size < 2:
            distances[indices], vendi[indices] = 0.0, 1.0
            continue
        stacked = np.stack([np.asarray(sets[i], dtype=np.float64) for i in indices])
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
    several times faster than sqrtm: used for the many bootstrap resamples. Takes one pair of
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
    return frechet_distance(*gaussian_fit(x), *gaussian_fit(y))


def median_heuristic_gamma(samples: np.ndarray, max_points: int = MEDIAN_POINTS, seed: int = 0) -> float:
    """RBF gamma = 1 / (2 sigma^2), sigma^2 the median squared distance between distinct pooled
    points; on a seeded subsample of `max_points` when there are more (a median needs no more,
    and the full distance matrix would dominate the memory)."""
    from sklearn.metrics.pairwise import euclidean_distances

    if len(samples) > max_points:
        samples = samples[np.random.default_rng(seed).choice(len(samples), max_points, replace=False)]
    squared = euclidean_distances(samples, squared=True)
    upper = squared[np.triu_indices(len(samples), 1)]
    positive = upper[upper > 0]
    if positive.size == 0:  # all points identical: any bandwidth gives MMD 0
        return 1.0
    return 1.0 / (2.0 * float(np.median(positive)))


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
    """Gretton et al.'s MMD^2_u: within-sample means leave out the diagonal, the cross term not."""
    n, m = len(kxx), len(kyy)
    within_x = (kxx.sum(dtype=np.float64) - np.trace(kxx, dtype=np.float64)) / (n * (n - 1))
    within_y = (kyy.sum(dtype=np.float64) - np.trace(kyy, dtype=np.float64)) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * kxy.mean(dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


def bootstrap_mean(values, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict | None:
    """{"mean", "low", "high", "n"}: percentile bootstrap CI of the mean; None for no values."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return None
    mean = float(values.mean())
    if values.size == 1 or np.ptp(values) == 0 or n_resamples <= 0:
        return {"mean": mean, "low": mean, "high": mean, "n": int(values.size)}
    # batch bounds memory: each batch holds batch x n resampled values
    batch = max(1, min(n_resamples, 4_000_000 // values.size))
    result = bootstrap(
        (values,), np.mean, n_resamples=n_resamples, batch=batch, confidence_level=confidence,
        method="percentile", vectorized=True, rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return {"mean": mean, "low": float(interval.low), "high": float(interval.high), "n": int(values.size)}


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


@single_blas_thread
def gap_measures(x: np.ndarray, y: np.ndarray, n_resamples: int = 200, confidence: float = 0.95,
                 seed: int = 0) -> dict:
    """Frechet distance and MMD^2 between samples x (pool) and y (source) with bootstrap CIs.

    Each resample draws x and y with replacement; the kernel is computed once and reweighted
    per resample, the Frechet resamples use the symmetric-eigenvalue form. The intervals are
    bias-shifted percentile intervals (`percentile_interval`): they contain the estimate.
    """
    from sklearn.metrics.pairwise import rbf_kernel

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        return {"n_pool": n, "n_source": m, "frechet": None, "mmd2": None, "gamma": None}
    pooled = np.concatenate([x, y])
    gamma = median_heuristic_gamma(pooled, seed=seed)
    # float32 halves the (n + m)^2 kernel; its entries are in [0, 1], sums are taken in float64
    kernel = rbf_kernel(pooled.astype(np.float32), gamma=gamma)
    frechet = frechet_between(x, y)
    mmd2 = mmd2_from_kernels(kernel[:n, :n], kernel[n:, n:], kernel[:n, n:])
    frechet_samples, mmd_samples = _bootstrap_gap(x, y, kernel, n_resamples, seed)
    return {
        "n_pool": n,
        "n_source": m,
        "frechet": percentile_interval(frechet, frechet_samples, confidence),
        "mmd2": percentile_interval(mmd2, mmd_samples, confidence),
        "gamma": gamma,
    }


def _bootstrap_gap(x: np.ndarray, y: np.ndarray, kernel: np.ndarray, n_resamples: int, seed: int):
    """Frechet and MMD^2 of `n_resamples` resamples of x and y (drawn with replacement).

    A resample is its draw counts per point, so no resampled matrix is ever gathered: MMD^2 of
    all resamples is two matrix products with the kernel, the Gaussians are count-weighted
    fits (equal to fits of the resampled rows), fitted and compared a block of resamples at a
    time with batched matrix products and eigensolvers. Duplicated draws count as distinct
    points in MMD^2's within-sample terms, which biases the resampled values up a little: the
    usual price of bootstrapping a U-statistic.
    """
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    counts_x = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    counts_y = rng.multinomial(m, np.full(m, 1.0 / m), size=n_resamples).astype(np.float64)
    mmd_samples = resampled_mmd2(kernel, n, counts_x, counts_y)
    dims = x.shape[1]
    # resamples per block: its (block, points, d) weighted rows and (block, d, d) covariances
    # stay near RESAMPLE_BLOCK_VALUES numbers whatever the embedding width
    block = max(1, RESAMPLE_BLOCK_VALUES // (max(n, m, dims) * dims))
    frechet_samples = []
    for start in range(0, n_resamples, block):
        chunk = slice(start, start + block)
        frechet_samples.extend(frechet_distance_eigh(*weighted_gaussian_fits(x, counts_x[chunk]),
                                                     *weighted_gaussian_fits(y, counts_y[chunk])).tolist())
    return frechet_samples, mmd_samples.tolist()


def weighted_gaussian_fit(samples: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the rows repeated `counts` times (np.cov with frequency weights)."""
    means, covariances = weighted_gaussian_fits(samples, counts[None, :])
    return means[0], covariances[0]


def weighted_gaussian_fits(samples: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, d) means and (k, d, d) covariances of the rows repeated counts[r] times, for each of
    the k rows of `counts`. The rows are first shifted by their plain mean (covariances do not
    change; the products stay small, so the one-pass formula sum c z z^T - total mean mean^T
    loses nothing to cancellation). Narrow embeddings: every resample's second moments in one
    matrix product with the rows' outer products; wide ones: one product per resample (large
    enough to keep BLAS busy)."""
    samples = np.asarray(samples, dtype=np.float64)
    shift = samples.mean(axis=0)
    centred = samples - shift
    count, dims = centred.shape
    totals = counts.sum(axis=1)
    shifted_means = counts @ centred / totals[:, None]
    if count * dims * dims <= RESAMPLE_BLOCK_VALUES:
        outer = (centred[:, :, None] * centred[:, None, :]).reshape(count, dims * dims)
        second = (counts @ outer).reshape(len(counts), dims, dims)
    else:
        second = np.stack([(centred * weights[:, None]).T @ centred for weights in counts])
    covariances = (second - totals[:, None, None] * shifted_means[:, :, None] * shifted_means[:, None, :]) \
        / (totals - 1.0)[:, None, None]
    return shifted_means + shift, covariances


def resampled_mmd2(kernel: np.ndarray, n: int, counts_x: np.ndarray, counts_y: np.ndarray) -> np.ndarray:
    """MMD^2_u of each resample, from draw counts: sum over draws a != b of K[a, b] is
    c^T K c - sum_i c_i K_ii for counts c."""
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    m = len(kyy)

    def weighted(counts: np.ndarray, block: np.ndarray) -> np.ndarray:
        # in the kernel's own dtype: a float64 copy of a float32 kernel would double the memory
        return (counts.astype(block.dtype) @ block).astype(np.float64)

    def within(block: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
        quadratic = np.einsum("rn,rn->r", weighted(counts, block), counts)
        return (quadratic - counts @ np.diag(block)) / (size * (size - 1))

    cross = np.einsum("rn,rn->r", weighted(counts_x, kxy), counts_y) / (n * m)
    return within(kxx, counts_x, n) + within(kyy, counts_y, m) - 2.0 * cross


class Reservoir:
    """A uniform random sample of at most `capacity` rows of a stream (Vitter's algorithm R),
    seeded: memory stays fixed however long the stream is."""

    def __init__(self, capacity: int, seed: int = 0):
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.rows: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float32)
        if len(rows) == 0:
            return
        if self.rows is None:
            self.rows = np.empty((self.capacity, rows.shape[1]), dtype=np.float32)
        positions = np.arange(self.seen, self.seen + len(rows))
        direct = positions < self.capacity
        self.rows[positions[direct]] = rows[direct]
        later = ~direct
        if later.any():
            slots = self.rng.integers(0, positions[later] + 1)  # slot j in [0, t] for stream index t
            keep = slots < self.capacity
            self.rows[slots[keep]] = rows[later][keep]
        self.seen += len(rows)

    def sample(self) -> np.ndarray:
        if self.rows is None:
            return np.empty((0, 0), dtype=np.float32)
        return self.rows[: min(self.seen, self.capacity)]

