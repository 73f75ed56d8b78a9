"""Frechet distance between Gaussians fitted to two samples (FID's formula): the estimate
(`frechet_between`) and its bootstrap resamples from draw counts (`resampled_frechet`), each by
the cheaper of two exact ways for the samples' shape (`frechet_route`)."""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from augment.scoring.measures.threads import threadpool_controller

# numbers held at once by a block of bootstrap resamples of the Frechet distance (~32 MB of float64)
RESAMPLE_BLOCK_VALUES = 4_000_000


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
    return float(_frechet_from_trace(mu1, cov1, mu2, cov2, float(np.trace(product).real)))


def frechet_distance_eigh(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray):
    """The same distance via Tr (C1 C2)^1/2 = sum sqrt(eig(C1^1/2 C2 C1^1/2)), symmetric and
    several times faster than sqrtm (the resamples now take `trace_sqrt_products`' Cholesky form
    of it; this one is the tests' batched reference). Takes one pair of
    Gaussians (returns a float) or stacks of them, (k, d) means and (k, d, d) covariances
    (returns k distances, computed by numpy's batched eigh in one call)."""
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]) @ np.swapaxes(vectors, -1, -2)
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    value = _frechet_from_trace(mu1, cov1, mu2, cov2, np.sqrt(np.clip(inner, 0.0, None)).sum(axis=-1))
    return float(value) if np.ndim(value) == 0 else value


def _frechet_from_trace(mu1, cov1, mu2, cov2, trace_sqrt):
    """||mu1 - mu2||^2 + Tr C1 + Tr C2 - 2 Tr (C1 C2)^1/2 given the last term's trace: one pair of
    Gaussians or stacks of them ((k, d) means, (k, d, d) covariances, k traces)."""
    difference = mu1 - mu2
    value = ((difference * difference).sum(axis=-1) + np.trace(cov1, axis1=-2, axis2=-1)
             + np.trace(cov2, axis1=-2, axis2=-1) - 2.0 * trace_sqrt)
    return np.maximum(value, 0.0)  # rounding can give -1e-12 for identical samples


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


def resampled_frechet(x: np.ndarray, y: np.ndarray, counts_x: np.ndarray, counts_y: np.ndarray,
                      on_resamples: Callable[[int], None] | None = None, threads: int = 1) -> np.ndarray:
    """Frechet distance of each resample (rows of the count matrices), a block at a time, the
    cheaper of two exact ways for the samples' shape (`frechet_route`): count-weighted fits and a
    d x d eigenvalue problem, or the singular values of the sides' n x m cross matrix. Each
    resample is weighted by its own count totals; one with fewer than 2 points on a side
    (possible when items are drawn) has no covariance: NaN. `on_resamples(count)`: called as
    each block of resamples is done (those without a value count as done at once). `threads` > 1:
    that many threads share the blocks, each with one BLAS thread (`RESAMPLE_THREADED_WIDTH`)."""
    valid = (counts_x.sum(axis=1) >= 2) & (counts_y.sum(axis=1) >= 2)
    if valid.all():
        return _resampled_frechet(x, y, counts_x, counts_y, on_resamples, threads)
    values = np.full(len(counts_x), np.nan)
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
    with threadpool_controller().limit(limits=1, user_api="blas"):
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
        return _frechet_from_trace(mu1, cov1, mu2, cov2, trace_sqrt_products(cov1, cov2))

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
