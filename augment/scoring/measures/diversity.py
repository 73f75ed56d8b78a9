"""Diversity of a set of unit embeddings (a pool item's captions or images): mean pairwise cosine
distance, and the Vendi score (Friedman & Dieng 2023) with the cosine kernel."""
from __future__ import annotations

import numpy as np

from augment.scoring.measures.threads import single_blas_thread

# below this an eigenvalue of K/n counts as zero in the Vendi entropy (0 * log 0 = 0)
EIGENVALUE_FLOOR = 1e-12


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
