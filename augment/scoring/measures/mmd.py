"""Unbiased RBF-kernel MMD^2 between two samples with a median-heuristic bandwidth: the kernel's
blocks (float32, torch's products), the estimate, and its bootstrap resamples from draw counts
(`resampled_mmd2`)."""
from __future__ import annotations

import functools

import numpy as np

# points the median heuristic looks at (its distance matrix is MEDIAN_POINTS^2)
MEDIAN_POINTS = 1000


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
    rows = centred_rows(samples)
    return squared_block(rows, rows, same=True).numpy()


def rbf_kernel_blocks(x: np.ndarray, y: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K_xx, K_yy, K_xy), K = exp(-gamma |a - b|^2) with the squared distances of
    `squared_distances` (rows centred by the pooled mean), as three contiguous float32 arrays:
    the y-x block of the pooled kernel (the transpose of K_xy) is never computed, and BLAS takes
    each block without a copy. float32 halves the memory; entries are in [0, 1] and every sum
    of them is taken in float64."""
    rows = centred_rows(np.concatenate([x, y]))
    return kernel_blocks(rows[: len(x)], rows[len(x):], gamma)


def kernel_blocks(rows_x, rows_y, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`rbf_kernel_blocks` of rows already centred together (`centred_rows`): the gap centres the
    pooled rows once for the median heuristic's distances and the kernel alike."""
    blocks = []
    for a, b, same in ((rows_x, rows_x, True), (rows_y, rows_y, True), (rows_x, rows_y, False)):
        block = squared_block(a, b, same).numpy()
        block *= -gamma
        blocks.append(np.exp(block, out=block))
    return tuple(blocks)


def centred_rows(samples: np.ndarray):
    """float32 torch rows of `samples` less their mean (in float64): distances do not change,
    and small norms keep float32's cancellation error small."""
    import torch

    centred = np.asarray(samples, dtype=np.float64)
    return torch.from_numpy((centred - centred.mean(axis=0)).astype(np.float32))


def squared_block(a, b, same: bool):
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
