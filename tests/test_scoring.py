"""Pool scoring and selection: measures against direct computations, pool-level properties that
hold for any scorer, the embedding cache, side tables, select, and the CLI."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.errors import ModelLoadError, PoolError
from augment.scoring import measures

N_ITEMS = 24  # source images per test pool (train split of the sample world)


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------


def test_vendi_and_pairwise_distance_of_identical_and_orthogonal_sets():
    vector = np.ones(8) / math.sqrt(8)
    identical = np.stack([vector] * 5)
    orthogonal = np.eye(6)
    assert measures.vendi_score(identical) == pytest.approx(1.0, abs=1e-9)
    assert measures.mean_pairwise_cosine_distance(identical) == pytest.approx(0.0, abs=1e-12)
    assert measures.vendi_score(orthogonal) == pytest.approx(6.0, abs=1e-9)
    assert measures.mean_pairwise_cosine_distance(orthogonal) == pytest.approx(1.0)
    # two identical pairs of orthogonal vectors: effectively two distinct items
    assert measures.vendi_score(np.eye(4)[[0, 0, 1, 1]]) == pytest.approx(2.0, abs=1e-9)


def test_set_diversity_batches_sets_of_mixed_sizes():
    rng = np.random.default_rng(0)
    sets = [_unit(rng.normal(size=(size, 5))) for size in (2, 3, 3, 5, 2)]
    distances, vendi = measures.set_diversity(sets)
    for members, distance, score in zip(sets, distances, vendi):
        pairs = [1 - members[i] @ members[j] for i, j in itertools.combinations(range(len(members)), 2)]
        eigenvalues = np.linalg.eigvalsh(members @ members.T / len(members))
        eigenvalues = eigenvalues[eigenvalues > 1e-12]
        assert distance == pytest.approx(np.mean(pairs))
        assert score == pytest.approx(math.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def test_frechet_matches_the_closed_form_for_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 0.0, -1.0])
    variances1, variances2 = np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.5, 0.5])
    # diagonal covariances commute: Tr(C1 + C2 - 2 sqrt(C1 C2)) = sum (sqrt(a) - sqrt(b))^2
    closed = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2))
    cov1, cov2 = np.diag(variances1), np.diag(variances2)
    assert measures.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(closed, rel=1e-9)
    assert measures.frechet_distance_eigh(mu1, cov1, mu2, cov2) == pytest.approx(closed, rel=1e-9)
    # from samples: the estimate converges to the closed form
    rng = np.random.default_rng(0)
    x = rng.normal(mu1, np.sqrt(variances1), size=(40000, 3))
    y = rng.normal(mu2, np.sqrt(variances2), size=(40000, 3))
    assert measures.frechet_between(x, y) == pytest.approx(closed, rel=0.03)


def test_frechet_forms_agree_on_non_commuting_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    assert measures.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
        measures.frechet_distance_eigh(mu1, cov1, mu2, cov2), rel=1e-8)


def _naive_mmd2(x, y, gamma):
    def k(a, b):
        return math.exp(-gamma * float(np.sum((a - b) ** 2)))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _direct_mmd2(x, y, gamma):
    """`_naive_mmd2`'s sums, each pair's squared distance from its difference in float64, broadcast instead
    of a Python loop (300 x 260 rows: 27 s in the loop, milliseconds here)."""
    def kernel_mean(a, b, within):
        values = np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
        if within:
            return (values.sum() - np.trace(values)) / (len(a) * (len(a) - 1))
        return values.mean()

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return kernel_mean(x, x, True) + kernel_mean(y, y, True) - 2 * kernel_mean(x, y, False)


def test_mmd_matches_a_naive_double_loop_and_the_median_heuristic():
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, size=(12, 3))
    y = rng.normal(0.7, 1.5, size=(15, 3))
    value, gamma = measures.mmd2_unbiased(x, y, gamma=0.3)
    assert gamma == 0.3
    assert value == pytest.approx(_naive_mmd2(x, y, 0.3), rel=1e-10)
    pooled = np.concatenate([x, y])
    distances = [float(np.sum((pooled[i] - pooled[j]) ** 2)) for i, j in itertools.combinations(range(len(pooled)), 2)]
    median_value, median_gamma = measures.mmd2_unbiased(x, y)
    assert median_gamma == pytest.approx(1 / (2 * np.median(distances)))
    assert median_value == pytest.approx(_naive_mmd2(x, y, median_gamma), rel=1e-10)
    assert median_value > 0
    # the same sample twice: unbiased MMD^2 is at most 0
    assert measures.mmd2_unbiased(x, x)[0] <= 1e-12


def test_count_weighted_resamples_equal_the_resampled_rows():
    from sklearn.metrics.pairwise import rbf_kernel

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(9, 3)), rng.normal(size=(7, 3))
    ix, iy = rng.integers(0, 9, 9), rng.integers(0, 7, 7)
    counts_x, counts_y = np.bincount(ix, minlength=9).astype(float), np.bincount(iy, minlength=7).astype(float)
    mean, cov = measures.weighted_gaussian_fit(x, counts_x)
    np.testing.assert_allclose(mean, x[ix].mean(axis=0))
    np.testing.assert_allclose(cov, np.cov(x[ix], rowvar=False))
    kernels = (rbf_kernel(x, gamma=0.4), rbf_kernel(y, gamma=0.4), rbf_kernel(x, y, gamma=0.4))
    value = measures.resampled_mmd2(kernels, counts_x[None, :], counts_y[None, :])[0]
    assert value == pytest.approx(_naive_mmd2(x[ix], y[iy], 0.4), rel=1e-10)


def test_batched_resample_fits_and_frechet_equal_one_at_a_time(monkeypatch):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 5)) + 3.0, rng.normal(size=(25, 5))  # an offset mean: the shift must not matter
    counts_x = rng.multinomial(30, np.full(30, 1 / 30), size=7).astype(float)
    counts_y = rng.multinomial(25, np.full(25, 1 / 25), size=7).astype(float)
    means, covariances = measures.weighted_gaussian_fits(x, counts_x)
    for r in range(7):
        rows = np.repeat(x, counts_x[r].astype(int), axis=0)
        np.testing.assert_allclose(means[r], rows.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(covariances[r], np.cov(rows, rowvar=False), rtol=1e-9, atol=1e-12)
    fits_y = measures.weighted_gaussian_fits(y, counts_y)
    batched = measures.frechet_distance_eigh(means, covariances, *fits_y)
    single = [measures.frechet_distance_eigh(means[r], covariances[r], fits_y[0][r], fits_y[1][r]) for r in range(7)]
    assert batched.shape == (7,) and isinstance(single[0], float)
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    # wide embeddings take the per-resample products: the same numbers
    monkeypatch.setattr(measures.frechet, "RESAMPLE_BLOCK_VALUES", 10)
    wide_means, wide_covariances = measures.weighted_gaussian_fits(x, counts_x)
    np.testing.assert_allclose(wide_means, means, rtol=1e-12)
    np.testing.assert_allclose(wide_covariances, covariances, rtol=1e-9, atol=1e-12)
    # and blocks of resamples in the bootstrap give what one block gives
    kernel = tuple(np.ones(shape, dtype=np.float32) for shape in ((30, 30), (25, 25), (30, 25)))
    blocked = measures.gap._bootstrap_gap(x, y, kernel, 7, seed=2)[0]
    monkeypatch.setattr(measures.frechet, "RESAMPLE_BLOCK_VALUES", 10**9)
    np.testing.assert_allclose(blocked, measures.gap._bootstrap_gap(x, y, kernel, 7, seed=2)[0], rtol=1e-9)


def test_gap_measures_and_bootstrap_are_seeded():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 4)), rng.normal(0.5, 1.0, size=(50, 4))
    first = measures.gap_measures(x, y, n_resamples=30, seed=5)
    assert first == measures.gap_measures(x, y, n_resamples=30, seed=5)
    assert first["frechet"]["value"] == pytest.approx(measures.frechet_between(x, y))
    assert first["mmd2"]["value"] == pytest.approx(measures.mmd2_unbiased(x, y)[0], abs=1e-6)  # float32 kernel
    assert first["frechet"]["low"] <= first["frechet"]["high"]
    ci = measures.bootstrap_mean(np.arange(100.0), n_resamples=500, seed=1)
    assert ci["low"] < ci["mean"] == 49.5 < ci["high"]
    assert ci == measures.bootstrap_mean(np.arange(100.0), n_resamples=500, seed=1)


def test_alignment_intervals_redraw_items_not_rows():
    """Rows of one item share its source image and move together: redrawn one by one, 200 items x 5
    rows with an item effect gave intervals covering the mean ~70% of the time at a nominal 95%. By
    items, the interval is the items' bootstrap of the row-weighted mean; with one row per item it
    is the plain bootstrap of the rows."""
    rng = np.random.default_rng(0)
    effect = rng.normal(size=200)
    values = np.repeat(effect, 5) + 0.2 * rng.normal(size=1000)
    items = np.repeat([f"img{i:03d}" for i in range(200)], 5)  # sorted as numbered: items drawn in this order
    by_item, = measures.bootstrap_item_means([(values, items)], n_resamples=400, seed=3)
    by_row = measures.bootstrap_mean(values, n_resamples=400, seed=3)
    assert by_item["mean"] == pytest.approx(values.mean()) and by_item["items"] == 200 and by_item["n"] == 1000
    assert by_item["high"] - by_item["low"] > 1.8 * (by_row["high"] - by_row["low"])
    # the items' own bootstrap: the same draws over item means (equal item sizes: the same statistic)
    means = values.reshape(200, 5).mean(1)
    draws = np.random.default_rng(3).integers(0, 200, (400, 200))
    low, high = np.quantile(means[draws].mean(-1), [0.025, 0.975])
    assert (by_item["low"], by_item["high"]) == (pytest.approx(low), pytest.approx(high))
    # one row per item: rows are the units, as before
    single, = measures.bootstrap_item_means([(means, [f"img{i:03d}" for i in range(200)])], n_resamples=400, seed=3)
    plain = measures.bootstrap_mean(means, n_resamples=400, seed=3)
    assert (single["low"], single["high"]) == (pytest.approx(plain["low"]), pytest.approx(plain["high"]))
    assert measures.bootstrap_item_means([([], []), ([1.0, 3.0], ["a", "a"])], n_resamples=10) == [
        None, {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 2, "items": 1}]


def test_bootstrap_means_equal_scipy_bootstrap_and_share_one_index_matrix(monkeypatch):
    import inspect

    from scipy.stats import bootstrap

    # scipy 1.15 named the generator `rng`; pyproject's oldest scipy (1.10) takes it as `random_state`
    seeded = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    rng = np.random.default_rng(8)
    monkeypatch.setattr(measures.bootstrap, "MEAN_BLOCK_VALUES", 2000)  # 300 values: blocks of 6 resamples
    for size in (7, 300):
        values = rng.normal(size=size)
        ours = measures.bootstrap_mean(values, n_resamples=200, confidence=0.9, seed=4)
        batch = max(1, min(200, measures.bootstrap.MEAN_BLOCK_VALUES // size))
        reference = bootstrap((values,), np.mean, n_resamples=200, batch=batch, confidence_level=0.9,
                              method="percentile", vectorized=True,
                              **{seeded: np.random.default_rng(4)}).confidence_interval
        assert ours["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert ours["low"] == pytest.approx(reference.low, rel=1e-12)
        assert ours["high"] == pytest.approx(reference.high, rel=1e-12)
    # several series in one call: each as if alone (the same draws for one length), constant and empty kept apart
    series = [rng.normal(size=50), rng.normal(size=50) * 3, rng.normal(size=20), np.full(5, 2.0), []]
    together = measures.bootstrap_means(series, n_resamples=150, seed=1)
    assert together == [measures.bootstrap_mean(values, n_resamples=150, seed=1) for values in series]
    assert together[3] == {"mean": 2.0, "low": 2.0, "high": 2.0, "n": 5} and together[4] is None


@pytest.mark.parametrize("n, m, dims", [(40, 30, 3), (9, 12, 16), (14, 14, 14), (300, 260, 24)])
def test_resampled_gap_equals_direct_formulas_on_the_resampled_rows(n, m, dims):
    """Each resample's Frechet distance (Cholesky factor; the data's span when fewer points than
    dimensions; the eigen root when a covariance is singular) and MMD^2 equal the formulas applied
    to the rows the index matrix draws. MMD^2 within 2e-6 absolute, its terms being kernel means
    near 1 (float32 kernel; the within terms from one triangle of it)."""
    rng = np.random.default_rng(n + dims)
    x, y = _unit(rng.normal(size=(n, dims)) + 0.3), _unit(rng.normal(size=(m, dims)))
    draws = np.random.default_rng(2)
    counts_x, counts_y = measures.resample_counts(draws, n, 6), measures.resample_counts(draws, m, 6)
    again = np.random.default_rng(2)
    index_x, index_y = again.integers(0, n, (6, n)), again.integers(0, m, (6, m))
    np.testing.assert_array_equal(counts_x, [np.bincount(row, minlength=n) for row in index_x])
    np.testing.assert_array_equal(counts_y, [np.bincount(row, minlength=m) for row in index_y])
    frechet = measures.resampled_frechet(x, y, counts_x, counts_y)
    direct = [_sqrtm_frechet(x[ix], y[iy]) for ix, iy in zip(index_x, index_y)]
    np.testing.assert_allclose(frechet, direct, rtol=1e-6, atol=1e-10)
    mmd = measures.resampled_mmd2(measures.rbf_kernel_blocks(x, y, 0.7), counts_x, counts_y)
    np.testing.assert_allclose(mmd, [_direct_mmd2(x[ix], y[iy], 0.7) for ix, iy in zip(index_x, index_y)], atol=2e-6)


@pytest.mark.parametrize("n, m, dims", [(30, 25, 6), (12, 40, 20), (50, 50, 50)],
                         ids=["more points than dimensions", "fewer on one side", "as many: rank-deficient"])
def test_both_ways_of_the_resampled_frechet_distance_agree(n, m, dims, monkeypatch):
    """The covariances' way and the cross matrix's singular values (`frechet_route`) give the same
    distances, by rows and by items (totals that vary), whichever the rule would pick; they differ
    by the eigenvalue way's rounding where a covariance is singular (a square root of ~1e-16)."""
    rng = np.random.default_rng(n + m + dims)
    x, y = _unit(rng.normal(size=(n, dims)) + 0.3), _unit(rng.normal(size=(m, dims)))
    draws = np.random.default_rng(3)
    by_rows = measures.resample_counts(draws, n, 9), measures.resample_counts(draws, m, 9)
    items_x, items_y = [f"i{k % 7}" for k in range(n)], [f"i{k % 9}" for k in range(m)]
    codes_x, codes_y, n_items = measures.item_codes(items_x, items_y, n, m)
    by_items = measures.item_resample_counts(np.random.default_rng(4), codes_x, codes_y, n_items, 9)
    for counts_x, counts_y in (by_rows, by_items):
        values = {}
        for route in ("covariances", "cross"):
            monkeypatch.setattr(measures.frechet, "frechet_route", lambda *shape, route=route: route)
            values[route] = measures.resampled_frechet(x, y, counts_x, counts_y)
        assert np.isfinite(values["cross"]).all() and (values["cross"] > 0).all()
        singular = min(n, m) <= dims  # a side's covariance has rank < d
        np.testing.assert_allclose(values["cross"], values["covariances"], rtol=1e-7 if singular else 1e-10)


def test_few_points_in_many_dimensions_never_build_a_covariance(monkeypatch):
    """A small pool scored at a real scorer's width (8 rows, 512 dimensions) takes the cross
    matrix's way: 200 resamples built 2 x 200 covariances of 512 x 512 before (2.4 GB, 4.6 s)."""
    assert measures.frechet_route(8, 8, 512) == "cross" and measures.frechet_route(2000, 2000, 512) == "covariances"
    monkeypatch.setattr(measures.frechet, "weighted_gaussian_fits", lambda *args: pytest.fail("built d x d covariances"))
    rng = np.random.default_rng(5)
    x, y = _unit(rng.normal(size=(8, 512)) + 0.1), _unit(rng.normal(size=(8, 512)))
    gap = measures.gap_measures(x, y, n_resamples=200, seed=1)
    assert gap["frechet"]["low"] <= gap["frechet"]["value"] <= gap["frechet"]["high"]
    assert gap["frechet"]["value"] == pytest.approx(_sqrtm_frechet(x, y), rel=1e-6)


def test_the_estimate_of_few_points_in_many_dimensions_skips_sqrtm(monkeypatch):
    """The point estimate takes the resamples' way (`frechet_route`): where a side has fewer points
    than dimensions, sqrtm of the singular C1 C2 took seconds (4.7 s at 100 and 50 points, 512
    dimensions); the cross matrix's way gives sqrtm's value without it."""
    rng = np.random.default_rng(9)
    x, y = _unit(rng.normal(size=(30, 96)) + 0.2), _unit(rng.normal(size=(20, 96)))
    expected = _sqrtm_frechet(x, y)
    monkeypatch.setattr(measures.frechet, "frechet_distance", lambda *args: pytest.fail("took sqrtm"))
    assert measures.frechet_between(x, y) == pytest.approx(expected, rel=1e-6)


def test_a_non_finite_sqrtm_is_retried_with_both_covariances_offset(monkeypatch):
    """Guards `frechet_distance`'s fallback for a singular C1 C2 whose sqrtm is not finite: pytorch-fid's offset
    of 1e-6 on both covariances (offsetting C1 alone gave a distance 1e-5 off here, and no test reached the fallback)."""
    import scipy.linalg

    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))  # fewer points than dimensions: C1 C2 singular
    (mu1, cov1), (mu2, cov2) = measures.gaussian_fit(x), measures.gaussian_fit(y)
    offset = 1e-6 * np.eye(5)
    root = np.asarray(scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset)))
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root).real)
    real_sqrtm, calls = scipy.linalg.sqrtm, []

    def not_finite_first(matrix):  # what sqrtm gives for some singular products
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", not_finite_first)
    assert measures.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-12)
    assert len(calls) == 2


def test_a_sample_against_itself_is_at_distance_zero_never_below(monkeypatch):
    """Guards the clamp at 0 of each way: for a sample against itself the formula's terms cancel to rounding,
    -1e-14 at 4 dimensions, -1e-6 where a side has fewer points than dimensions; without its clamp, sqrtm's
    estimate, the cross matrix's or the eigenvalue way's resamples gave a negative distance."""
    rng = np.random.default_rng(0)
    counts = measures.resample_counts(np.random.default_rng(1), 6, 8)
    for route in ("covariances", "cross"):
        monkeypatch.setattr(measures.frechet, "frechet_route", lambda *shape, route=route: route)
        for x in (rng.normal(size=(6, 4)) for _ in range(4)):
            assert 0.0 <= measures.frechet_between(x, x) < 1e-9
            resampled = measures.resampled_frechet(x, x, counts, counts)
            assert (resampled >= 0.0).all() and (resampled < 1e-9).all()


def test_the_route_is_the_way_with_fewer_multiply_adds():
    """Guards `frechet_route`'s costs: n1 n2 min(n1, n2) for the cross matrix against (n1 + n2) d^2 + 5 d^3 for
    the covariances; max(n1, n2) sent 10 and 1,000 points at 64 dimensions to the d x d covariances, and
    leaving out the eigenvalue problem's 5 d^3 sent 100 and 100 points there (54x and 2x the cross way's multiply-adds)."""
    assert measures.frechet_route(10, 1000, 64) == measures.frechet_route(1000, 10, 64) == "cross"
    assert measures.frechet_route(100, 100, 64) == "cross"
    assert measures.frechet_route(200, 200, 64) == "covariances"


def _sqrtm_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """The reference: FID's formula on the two samples' fits, with scipy's sqrtm."""
    return measures.frechet_distance(*measures.gaussian_fit(x), *measures.gaussian_fit(y))


def _items_of_sizes(sizes: dict[str, int]) -> list[str]:
    return [item for item, size in sizes.items() for _ in range(size)]


@pytest.mark.parametrize("dims", [5, 24])
def test_item_resamples_equal_the_statistics_of_the_gathered_rows(dims):
    """By items, a resample's Frechet distance and MMD^2 (count-weighted, divided by its own
    totals) equal the formulas on the rows its item draws bring, items of unequal sizes, some on
    one side only (24 dimensions: more than the 17 points, the factor from the weighted rows); a
    resample with fewer than 2 points on a side is NaN, not an error."""
    rng = np.random.default_rng(11)
    pool_sizes = {"a": 1, "b": 4, "c": 2, "d": 6, "e": 3, "f": 1}
    source_sizes = {"b": 2, "c": 5, "d": 1, "e": 3, "g": 4, "h": 2}  # a, f: pool only; g, h: source only
    items_x, items_y = _items_of_sizes(pool_sizes), _items_of_sizes(source_sizes)
    x, y = _unit(rng.normal(size=(len(items_x), dims)) + 0.4), _unit(rng.normal(size=(len(items_y), dims)))
    codes_x, codes_y, n_items = measures.item_codes(items_x, items_y, len(x), len(y))
    assert n_items == 8
    counts_x, counts_y = measures.item_resample_counts(np.random.default_rng(7), codes_x, codes_y, n_items, 6)
    # the same draws, gathered as rows: every row of each drawn item, once per draw
    names = sorted(set(items_x) | set(items_y))
    draws = np.random.default_rng(7).integers(0, n_items, (6, n_items))
    gathered = []
    for draw in draws:
        picked = [names[k] for k in draw]
        rows_x = np.concatenate([x[[j for j, item in enumerate(items_x) if item == name]] for name in picked])
        rows_y = np.concatenate([y[[j for j, item in enumerate(items_y) if item == name]] for name in picked])
        gathered.append((rows_x, rows_y))
    assert len({len(rows_x) for rows_x, _ in gathered}) > 1  # totals vary between resamples
    np.testing.assert_array_equal(counts_x.sum(axis=1), [len(rows_x) for rows_x, _ in gathered])
    frechet = measures.resampled_frechet(x, y, counts_x, counts_y)
    np.testing.assert_allclose(frechet, [_sqrtm_frechet(a, b) for a, b in gathered], rtol=1e-6, atol=1e-10)
    mmd = measures.resampled_mmd2(measures.rbf_kernel_blocks(x, y, 0.7), counts_x, counts_y)
    np.testing.assert_allclose(mmd, [_naive_mmd2(a, b, 0.7) for a, b in gathered], atol=2e-6)
    # a resample bringing one pool row (item "a" twice: 2 rows; "f" once: 1 row) and none at all
    short_x = np.zeros((3, len(x)))
    short_x[0, items_x.index("a")] = 2.0
    short_x[1, items_x.index("f")] = 1.0
    short_y = np.ones((3, len(y)))
    with np.errstate(all="raise"):  # no division by zero on the way to the NaNs
        frechet = measures.resampled_frechet(x, y, short_x, short_y)
        mmd = measures.resampled_mmd2(measures.rbf_kernel_blocks(x, y, 0.7), short_x, short_y)
    assert np.isnan(frechet[1:]).all() and np.isnan(mmd[1:]).all()
    # two copies of one row: no spread on that side, the distance is |mean difference|^2 + Tr C_y
    expected = float(np.sum((x[0] - y.mean(axis=0)) ** 2) + np.trace(np.cov(y, rowvar=False)))
    assert frechet[0] == pytest.approx(expected, rel=1e-9)
    interval = measures.percentile_interval(0.5, list(mmd), 0.95)  # the NaNs are left out
    assert interval["bootstrap_bias"] == pytest.approx(mmd[0] - 0.5)


def test_a_resample_with_one_source_point_has_no_frechet_value():
    """Guards the validity test on the source side as on the pool side: a resample drawing a single source
    point has no covariance there (NaN); counted valid (`>= 1`), its distance divided by total - 1 = 0."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    counts_x, counts_y = np.ones((2, 6)), np.ones((2, 5))
    counts_y[1] = [1.0, 0.0, 0.0, 0.0, 0.0]
    with np.errstate(all="raise"):
        values = measures.resampled_frechet(x, y, counts_x, counts_y)
    assert values[0] == pytest.approx(_sqrtm_frechet(x, y), rel=1e-9) and np.isnan(values[1])


def test_gap_bootstrap_reports_its_resamples_as_each_block_finishes(monkeypatch):
    """`on_resamples` hears of every resample once: a block at a time (several blocks here), those
    without a value at once; the values are the same with or without it."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.3, 1.0, size=(25, 5))
    monkeypatch.setattr(measures.frechet, "RESAMPLE_BLOCK_VALUES", 5 * 5 * 4)  # 4 resamples a block
    plain = measures.gap_measures(x, y, n_resamples=23, seed=4)
    told: list[int] = []
    assert measures.gap_measures(x, y, n_resamples=23, seed=4, on_resamples=told.append) == plain
    assert told == [4, 4, 4, 4, 4, 3]
    short_x, short_y = np.zeros((3, len(x))), np.ones((3, len(y)))
    short_x[0, :2] = 1.0  # only the first resample brings 2 pool rows
    told.clear()
    measures.resampled_frechet(x, y, short_x, short_y, on_resamples=told.append)
    assert told == [2, 1]


def test_cli_shows_a_bar_for_a_gap_bootstrap_that_takes_long(tmp_path, train_items, sample_world_dir, capsys,
                                                              monkeypatch):
    """After the rows' bar, a gap bootstrap that runs past GAP_BAR_DELAY (seconds at real widths) has
    a bar of its own; `--no-progress` shows none."""
    from augment.cli import main
    from augment.scoring import pool_scores

    monkeypatch.setattr(pool_scores, "GAP_BAR_DELAY", 0.0)
    pool = _write(tmp_path / "pool", [_row(item, 0, 0, "own", "text", caption=item["captions"][1])
                                      for item in train_items[:4]], sample_world_dir)
    arguments = ["score", str(pool.path), "--source", str(sample_world_dir), "--scorer", "tiny-clip",
                 "--bootstrap", "20", "--gap-bootstrap", "7", "--no-plot", "--cache-dir", str(tmp_path / "cache")]
    assert main(arguments) == 0
    shown = capsys.readouterr().err
    assert "text gap bootstrap" in shown and "7/7" in shown and "image gap bootstrap" not in shown
    assert main(arguments + ["--seed", "1", "--no-progress"]) == 0
    assert "gap bootstrap" not in capsys.readouterr().err


def test_item_draws_are_shared_by_the_pool_and_source_rows():
    """Pairing: an item drawn k times in a resample brings k copies of each of its rows on both
    sides (one draw per resample, not one per side); rows of no drawn item count 0."""
    pool_sizes, source_sizes = {"p": 3, "q": 1, "r": 2, "s": 4}, {"p": 5, "q": 2, "s": 1, "t": 3}
    items_x, items_y = _items_of_sizes(pool_sizes), _items_of_sizes(source_sizes)
    codes_x, codes_y, n_items = measures.item_codes(np.array(items_x), items_y, len(items_x), len(items_y))
    counts_x, counts_y = measures.item_resample_counts(np.random.default_rng(5), codes_x, codes_y, n_items, 40)
    draws = np.random.default_rng(5).integers(0, n_items, (40, n_items))
    names = sorted(pool_sizes.keys() | source_sizes.keys())
    for draw, row_x, row_y in zip(draws, counts_x, counts_y):
        drawn = {name: int(np.sum(draw == k)) for k, name in enumerate(names)}
        assert row_x.tolist() == [drawn[item] for item in items_x]
        assert row_y.tolist() == [drawn[item] for item in items_y]
    # some item drawn more than once with rows on both sides: the same multiplicity on each
    p_x, p_y = items_x.index("p"), items_y.index("p")
    assert (counts_x[:, p_x] > 1).any()
    np.testing.assert_array_equal(counts_x[:, p_x], counts_y[:, p_y])
    with pytest.raises(ValueError):
        measures.item_codes(items_x, None, len(items_x), len(items_y))
    with pytest.raises(ValueError):
        measures.item_codes(items_x[1:], items_y, len(items_x), len(items_y))


def test_gap_intervals_by_items_widen_when_rows_come_in_items():
    """60 items x 5 near-identical rows per side: the data hold 60 independent points per side,
    not 300. Rows redrawn one by one (no ids) give the spread of 300; items redrawn give an
    interval about sqrt(5) times as wide (2.1x, 2.4x here; 1.7x asserted). With one row per item
    the two agree in width."""
    rng = np.random.default_rng(1)
    pool_centres, source_centres = rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + 0.5
    x = np.repeat(pool_centres, 5, axis=0) + 1e-3 * rng.normal(size=(300, 4))
    y = np.repeat(source_centres, 5, axis=0) + 1e-3 * rng.normal(size=(300, 4))
    items = np.repeat([f"img{k}" for k in range(60)], 5)
    by_rows = measures.gap_measures(x, y, n_resamples=100, seed=2)
    by_items = measures.gap_measures(x, y, n_resamples=100, seed=2, items_x=items, items_y=items)
    assert by_rows["items"] is None and by_items["items"] == 60
    for measure in ("frechet", "mmd2"):
        assert by_items[measure]["value"] == by_rows[measure]["value"]  # the estimate does not change
        width = by_items[measure]["high"] - by_items[measure]["low"]
        assert width > 1.7 * (by_rows[measure]["high"] - by_rows[measure]["low"]), measure
    # one row per item: an item-level draw is a row-level draw (paired): widths of one size
    single = [f"img{k}" for k in range(60)]
    alone = measures.gap_measures(pool_centres, source_centres, n_resamples=100, seed=2)
    paired = measures.gap_measures(pool_centres, source_centres, n_resamples=100, seed=2, items_x=single,
                                   items_y=single)
    for measure in ("frechet", "mmd2"):
        ratio = (paired[measure]["high"] - paired[measure]["low"]) / (alone[measure]["high"] - alone[measure]["low"])
        assert 0.6 < ratio < 1.6, (measure, ratio)


def test_one_distance_matrix_gives_sklearns_distances_and_the_same_bandwidth():
    from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

    rng = np.random.default_rng(5)
    pooled = _unit(rng.normal(size=(60, 8)))
    squared = measures.squared_distances(pooled)
    np.testing.assert_allclose(squared, euclidean_distances(pooled, squared=True), atol=1e-6)
    assert np.all(np.diag(squared) == 0) and squared.dtype == np.float32
    x, y = pooled[:35], pooled[35:]
    blocks = measures.rbf_kernel_blocks(x, y, 0.6)
    expected_blocks = (rbf_kernel(x, gamma=0.6), rbf_kernel(y, gamma=0.6), rbf_kernel(x, y, gamma=0.6))
    for block, expected in zip(blocks, expected_blocks):
        assert block.dtype == np.float32 and block.flags.c_contiguous
        np.testing.assert_allclose(block, expected, atol=1e-6)
    assert np.all(np.diag(blocks[0]) == 1) and np.all(np.diag(blocks[1]) == 1)
    for max_points in (1000, 25):  # all points, and a seeded subsample read from the matrix
        assert measures.median_heuristic_gamma(pooled, max_points, seed=3, squared=squared) == pytest.approx(
            measures.median_heuristic_gamma(pooled, max_points, seed=3), rel=1e-6)


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 1001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_in_place_equals_numpy_median(size, dtype):
    values = np.random.default_rng(size).normal(size=size).astype(dtype)
    values[: size // 3] = values[0]  # ties
    assert measures.mmd.median_in_place(values.copy()) == float(np.median(values))


def test_reservoir_gives_the_same_sample_whatever_the_call_sizes():
    rows = np.random.default_rng(1).normal(size=(900, 2)).astype(np.float32)
    one_by_one, in_blocks = measures.Reservoir(100, seed=3), measures.Reservoir(100, seed=3)
    for k in range(len(rows)):
        one_by_one.add(rows[k:k + 1])
    for start in (0, 70, 455):
        in_blocks.add(rows[start:{0: 70, 70: 455, 455: 900}[start]])
    np.testing.assert_array_equal(one_by_one.sample(), in_blocks.sample())


def test_item_sets_gathered_by_row_number_equal_sets_built_one_by_one():
    from augment.scoring.pool_scores import ChunkRows, SourceVectors, item_columns, item_sets

    rng = np.random.default_rng(11)
    ids = [f"image-{k}" for k in range(5)]
    source = SourceVectors(image={i: _unit(rng.normal(size=(1, 6)))[0] for i in ids},
                           captions={i: _unit(rng.normal(size=(int(rng.integers(1, 5)), 6))) for i in ids})
    modality = rng.choice(["text", "image", "pair"], 30).tolist()
    image_id = rng.choice(ids, 30).tolist()
    index = [int(rng.integers(-1, len(source.captions[i]))) for i in image_id]
    rows = ChunkRows(row_id=list(range(30)), source_image_id=image_id, source_caption_index=index, modality=modality,
                     method=["m"] * 30, caption=[None] * 30, image=[None] * 30)
    texts = {k: _unit(rng.normal(size=(1, 6)))[0] for k, m in enumerate(modality) if m in ("text", "pair")}
    images = {k: _unit(rng.normal(size=(1, 6)))[0] for k, m in enumerate(modality) if m in ("image", "pair")}
    expected = []  # (key, modality, members): originals (all captions for index -1) then new content, rows in order
    for kind, new in (("text", texts), ("image", images)):
        for key in dict.fromkeys((image_id[k], index[k]) for k in new):
            i, c = key
            originals = ([source.image[i]] if kind == "image"
                         else list(source.captions[i]) if c < 0 else [source.captions[i][c]])
            members = originals + [new[k] for k in new if (image_id[k], index[k]) == key]
            expected.append((key, kind, np.stack(members)))
    columns = item_columns(item_sets(rows, texts, images, source))
    distances, vendi = measures.set_diversity([members for _, _, members in expected])
    assert list(zip(columns["source_image_id"], columns["source_caption_index"])) == [key for key, _, _ in expected]
    assert columns["modality"] == [kind for _, kind, _ in expected]
    assert columns["set_size"] == [len(members) for _, _, members in expected]
    np.testing.assert_allclose(columns["mean_pairwise_distance"], distances, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(columns["vendi"], vendi, rtol=1e-12)


@pytest.mark.parametrize("sizes", [[(64, 64)] * 3, [(80, 64), (64, 90), (50, 70), (64, 64)]])
def test_batched_preprocessing_equals_the_transform_image_by_image(sizes):
    import torch
    from PIL import Image

    from augment.scoring.scorers import prepare_batch
    from models import transformers_io

    rng = np.random.default_rng(5)
    modes = ["RGB", "L", "RGBA", "RGB"]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(modes[k % 4])
              for k, (w, h) in enumerate(sizes)]
    for transform in (transformers_io.resize_crop_transform(64, 64), transformers_io.resize_crop_transform(72, 64),
                      transformers_io.square_resize_transform(64)):
        expected = torch.stack([transform(image) for image in images])
        batched = prepare_batch(transform, images)
        assert batched.dtype == expected.dtype and batched.is_contiguous() and torch.equal(batched, expected)


def test_row_scores_equal_the_per_row_definitions():
    """Row-wise products of stacked embeddings give each row's definition (module docstring of
    pool_scores), for every modality and for rows made from all of an image's captions."""
    from augment.scoring.pool_scores import ChunkRows, SourceVectors, row_scores

    rng = np.random.default_rng(9)
    vectors = lambda n: _unit(rng.normal(size=(n, 8))).astype(np.float32)  # noqa: E731
    source = SourceVectors(image={"a": vectors(1)[0], "b": vectors(1)[0]}, captions={"a": vectors(3), "b": vectors(2)})
    cases = [("text", "a", 1), ("text", "b", -1), ("pair", "a", 0), ("pair", "b", -1), ("image", "a", 2),
             ("image", "b", -1), ("image", "a", 0), ("text", "a", 2)]
    rows = ChunkRows(row_id=[f"r{k}" for k in range(len(cases))], source_image_id=[c[1] for c in cases],
                     source_caption_index=[c[2] for c in cases], modality=[c[0] for c in cases],
                     method=["m"] * len(cases), caption=[None] * len(cases), image=[None] * len(cases))
    texts = {k: vectors(1)[0] for k, case in enumerate(cases) if case[0] in ("text", "pair")}
    images = {k: vectors(1)[0] for k, case in enumerate(cases) if case[0] in ("image", "pair")}
    columns = row_scores(rows, texts, images, source)
    for k, (modality, image_id, index) in enumerate(cases):
        captions = source.captions[image_id]
        originals = captions if index < 0 else captions[index:index + 1]
        if modality == "text":
            expected, partner = source.image[image_id] @ texts[k], "source image"
        elif modality == "pair":
            expected, partner = images[k] @ texts[k], "row"
        elif index >= 0:
            expected, partner = originals[0] @ images[k], "source caption"
        else:
            expected, partner = np.mean(originals @ images[k]), "source captions (mean)"
        assert columns["alignment"][k] == pytest.approx(float(expected), abs=1e-6)
        assert columns["alignment_partner"][k] == partner
        assert columns["clipscore"][k] == pytest.approx(100 * max(float(expected), 0.0), abs=1e-4)
        text_distance = 1.0 - np.max(originals @ texts[k]) if k in texts else None
        image_distance = 1.0 - source.image[image_id] @ images[k] if k in images else None
        for name, value in (("text_distance_to_source", text_distance), ("image_distance_to_source", image_distance)):
            if value is None:
                assert columns[name][k] is None
            else:
                assert columns[name][k] == pytest.approx(float(value), abs=1e-6)


def test_take_rows_equals_dataset_select_also_through_an_index_mapping():
    from datasets import Dataset, Features, Image, Sequence, Value

    from augment.scoring.pool_scores import take_rows

    features = Features({"id": Value("string"), "n": Value("int32"), "captions": Sequence(Value("string")),
                         "image": Image(decode=False)})
    rows = {"id": [f"r{k}" for k in range(40)], "n": list(range(40)),
            "captions": [[f"c{k}"] * (k % 3) for k in range(40)],
            "image": [{"bytes": bytes([k]), "path": None} if k % 4 else None for k in range(40)]}
    plain = Dataset.from_dict(rows, features=features)
    mapped = plain.shuffle(seed=1).select(range(0, 40, 3))  # an indices mapping over the table
    for dataset in (plain, mapped):
        order = np.random.default_rng(2).permutation(len(dataset))[:9]
        assert take_rows(dataset, ["id", "n", "captions", "image"], order) == \
            dataset.select_columns(["id", "n", "captions", "image"]).select(order).to_dict()


def test_rows_are_taken_from_slices_around_them_never_from_the_whole_chunked_table(monkeypatch):
    """pyarrow's take on a chunked table goes through every chunk of every column: `augment score`, which
    reads a pool a chunk of rows at a time, spent 74 ms a chunk at 600k rows (6,035 arrow chunks; quadratic
    in the pool: the rows' pass of a re-score from the cache took 81 s, now 16 s). Rows near each other are taken from a slice around
    them; positions all over the table still come back right (audit AM)."""
    import pyarrow as pa
    from datasets import Dataset

    import augment.scoring.pool_scores as pool_scores
    from augment.sources import take_table_lists, take_table_rows

    # RecordBatch.from_pydict: pyarrow 15 (pyproject's oldest) takes no dict in pa.record_batch
    table = pa.Table.from_batches([pa.RecordBatch.from_pydict({"k": list(range(s, s + 10)),
                                                               "s": [f"r{i}" for i in range(s, s + 10)]})
                                   for s in range(0, 100_000, 10)])

    class Recorded:  # the table, counting what is taken from it whole and what is sliced
        def __init__(self):
            self.schema, self.sliced, self.whole = table.schema, [], 0

        def slice(self, offset, length):
            self.sliced.append(length)
            return table.slice(offset, length)

        def take(self, positions):
            self.whole += 1
            return table.take(positions)

    rng = np.random.default_rng(0)
    local = {"a block": np.arange(1200, 2200), "an item order": rng.permutation(np.arange(3000, 3900)),
             "two ends, repeats": np.array([99_999, 0, 7, 7])}
    for name, positions in local.items():
        recorded = Recorded()
        assert take_table_rows(recorded, positions).equals(table.take(positions)), name
        assert recorded.whole == 0 and sum(recorded.sliced) <= positions.max() - positions.min() + 1, name
    assert take_table_rows(Recorded(), np.array([99_999, 0, 7, 7])).column("k").to_pylist() == [99_999, 0, 7, 7]
    spread = rng.permutation(np.arange(0, 100_000, 1_500))  # 67 runs: taken in one go
    assert take_table_rows(table, spread).equals(table.take(spread))
    assert take_table_rows(table, []).num_rows == 0

    taken = []  # take_rows reads the same positions, converted a batch at a time (audit BC)
    monkeypatch.setattr(pool_scores, "take_table_lists", lambda t, p: taken.append(len(p)) or take_table_lists(t, p))
    assert pool_scores.take_rows(Dataset(table), ["s"], [5, 3]) == {"s": ["r5", "r3"]} and taken == [2]
    for name, positions in {**local, "spread": spread}.items():
        assert take_table_lists(table, positions) == table.take(positions).to_pydict(), name


def test_a_chunk_of_image_rows_is_taken_without_copying_the_table_around_it():
    """pyarrow's take on a chunked table of binary columns concatenates the chunks first: `score` took each chunk
    of its rows from a slice around them (or the whole table, for rows all over it) copied whole, then taken, then
    made Python values: 800 rows of 620 KB images (0.5 GB) took 1.9 GB above the process's base. The rows
    are now taken from one arrow chunk at a time, each made Python values before the next is taken: arrow holds
    about one chunk's bytes at once, whatever the rows asked. Counted by a proxy of arrow's memory pool."""
    import pyarrow as pa

    from augment.sources import take_table_lists, take_table_rows

    chunk_bytes = 100 * 10_000
    table = pa.table({"k": pa.chunked_array([list(range(c * 100, c * 100 + 100)) for c in range(8)]),
                      "image": pa.chunked_array([[bytes([c]) * 10_000] * 100 for c in range(8)])})
    rng = np.random.default_rng(0)
    cases = {"in order": np.arange(800), "an item order": rng.permutation(800)[:700],
             "spread": np.arange(0, 800, 7)}
    for name, positions in cases.items():
        expected = table.take(positions)
        default = pa.default_memory_pool()
        counted = pa.proxy_memory_pool(default)
        pa.set_memory_pool(counted)
        try:
            lists = take_table_lists(table, positions)
            most = counted.max_memory()
        finally:
            pa.set_memory_pool(default)  # nothing allocated from the proxy is left (lists are Python values)
        assert lists == expected.to_pydict(), name
        assert most < 2 * chunk_bytes, f"{name}: arrow held {most} bytes to take rows of {chunk_bytes}-byte chunks"
        assert take_table_rows(table, positions).equals(expected), name


def test_reservoir_keeps_each_rows_item_id_in_its_slot():
    """Ids ride with their rows through replacement (a slot drawn twice in one call included),
    take no draws (the rows kept are those of a reservoir without ids) and stay within capacity."""
    rows = np.arange(900, dtype=np.float32)[:, None]
    ids = [f"item{k // 3}" for k in range(900)]  # three rows per item
    with_ids, without = measures.Reservoir(50, seed=4), measures.Reservoir(50, seed=4)
    for start, end in ((0, 30), (30, 80), (80, 900)):  # the last call replaces with many collisions
        with_ids.add(rows[start:end], ids[start:end])
        without.add(rows[start:end])
    np.testing.assert_array_equal(with_ids.sample(), without.sample())
    kept = with_ids.sample()[:, 0].astype(int)
    assert (kept >= 80).sum() > 10  # replacement happened
    assert list(with_ids.ids()) == [f"item{k // 3}" for k in kept]
    assert with_ids.item_ids.shape == (50,) and without.ids() is None
    small = measures.Reservoir(10, seed=0)
    small.add(rows[:4], ids[:4])
    assert list(small.ids()) == ids[:4] and len(small.sample()) == 4
    with pytest.raises(ValueError):
        small.add(rows[4:6])  # ids on one call and not another would misalign them
    with pytest.raises(ValueError):
        small.add(rows[4:6], ids[4:5])


def test_reservoir_keeps_a_fixed_size_uniform_sample():
    reservoir = measures.Reservoir(capacity=100, seed=0)
    for start in range(0, 10000, 700):
        block = np.arange(start, min(start + 700, 10000), dtype=np.float32)[:, None]
        reservoir.add(block)
    sample = reservoir.sample()[:, 0]
    assert sample.shape == (100,) and len(set(sample)) == 100
    assert 3000 < sample.mean() < 7000  # roughly uniform over 0..9999


def test_reservoir_keeps_the_row_at_stream_index_t_with_probability_capacity_over_t_plus_one():
    """Guards Algorithm R's slot draw over [0, t]: drawn over [0, t) the second of two rows always replaced
    the first in a reservoir of one (a sample weighted to the end of the stream, the gap's reference too)."""
    first_kept = 0
    for seed in range(200):
        reservoir = measures.Reservoir(1, seed=seed)
        reservoir.add(np.array([[0.0], [1.0]], dtype=np.float32))
        first_kept += int(reservoir.sample()[0, 0] == 0.0)
    assert 70 < first_kept < 130  # each row kept half the time (binomial sd 7)


def test_the_diversity_intervals_draw_bootstrap_resamples_not_the_gaps(tmp_path):
    """Guards the budget the diversity means are resampled with, --bootstrap: read from --gap-bootstrap (200 by
    default, not 1,000) their intervals were drawn from a fifth of the resamples asked for."""
    import types

    from augment.scoring.pool_scores import ScoreSettings, Totals, summarise

    class Pool:  # what summarise reads of a pool with no data files
        path, name, method, meta = tmp_path, "p", "eda", {}

        def __len__(self):
            return 3

    settings = ScoreSettings(bootstrap=40, gap_bootstrap=7)
    totals = Totals(settings)
    totals.add_items({"modality": ["text"] * 3, "mean_pairwise_distance": [0.1, 0.2, 0.4], "vendi": [1.1, 1.5, 2.0]})
    scorer = types.SimpleNamespace(describe=lambda: {"name": "s"}, slug="s")
    entry = summarise(Pool(), totals, types.SimpleNamespace(scorer=scorer), settings, "source", None, source_fp="fp")
    assert entry["diversity"]["text"]["vendi"] == measures.bootstrap_means([[1.1, 1.5, 2.0]], 40, 0.95, 0)[0]


def test_a_source_image_read_by_two_chunks_joins_the_source_sample_once():
    """Guards Totals.add_sources' seen check: an image whose items fall in two chunks was added twice to the gap's
    reference sample and the source alignment (its captions counted double)."""
    from augment.scoring.pool_scores import ScoreSettings, SourceVectors, Totals

    totals = Totals(ScoreSettings(gap_samples=100))
    vectors = SourceVectors(image={"a": np.array([1.0, 0.0], dtype=np.float32)},
                            captions={"a": np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)})
    totals.add_sources(vectors)
    totals.add_sources(vectors)  # the next chunk reads the same source image
    assert totals.source_alignment == [1.0, 0.0] and totals.source_alignment_items == ["a", "a"]
    assert len(totals.source_sample["text"].sample()) == 2 and len(totals.source_sample["image"].sample()) == 1


def test_a_caption_index_one_past_the_source_captions_is_named_by_its_row():
    """Guards check_caption_indices' bound `index >= len(captions)`: at `>`, an index one past the last caption
    passed the check and failed later as numpy's IndexError, naming no row."""
    from augment.scoring.pool_scores import ChunkRows, SourceVectors, check_caption_indices

    source = SourceVectors(image={"a": np.ones(2, np.float32)}, captions={"a": np.ones((2, 2), np.float32)})

    def rows(index):
        return ChunkRows(["r1"], ["a"], [index], ["image"], ["m"], [None], [None])

    for index in (-1, 0, 1):
        check_caption_indices(rows(index), source)
    for index in (2, -2):
        with pytest.raises(PoolError, match=f"row 'r1': source_caption_index {index} but source image 'a' has 2 captions"):
            check_caption_indices(rows(index), source)


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Fixtures: a source, pools built from it, scorers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(sample_world_dir):
    from augment.sources import load_source

    dataset, _ = load_source(str(sample_world_dir))
    return dataset


@pytest.fixture(scope="module")
def train_items(source):
    from datasets import Image

    undecoded = source.cast_column("image", Image(decode=False))
    train = [i for i, split in enumerate(source["split"]) if split == "train"][:N_ITEMS]
    return list(undecoded.select(train))


def _row(item, index, k, method, modality, caption=None, image=None):
    return {
        "row_id": f"{method}:{item['image_id']}:{index}:{k}", "source_image_id": item["image_id"],
        "source_caption_index": index, "split": item["split"], "modality": modality, "image": image,
        "caption": caption, "method": method, "seed": k, "provenance": "{}",
    }


def _write(path, rows, source_dir, method="test"):
    from augment.pool import load_pool, write_pool

    write_pool(path, rows, {"method": method, "source": str(source_dir)})
    return load_pool(path)


@pytest.fixture(scope="module")
def tiny_scorer():
    from augment.scoring.scorers import load_scorer

    return load_scorer("tiny-clip", batch_size=128)


class EncodeCounter:
    """Counts the scorer's encoder calls and the items encoded."""

    def __init__(self, scorer):
        self.calls = {"text": 0, "image": 0}
        self.items = {"text": 0, "image": 0}
        # images reach the model through encode_prepared (one call per batch of preprocessed pixels)
        for kind, attribute in (("text", "encode_texts"), ("image", "encode_prepared")):
            setattr(scorer, attribute, self._wrap(kind, getattr(scorer, attribute)))

    def _wrap(self, kind, encode):
        def counted(inputs):
            self.calls[kind] += 1
            self.items[kind] += len(inputs)
            return encode(inputs)

        return counted


@pytest.fixture
def counted_scorer():
    from augment.scoring.scorers import load_scorer

    scorer = load_scorer("tiny-clip", batch_size=128)
    return scorer, EncodeCounter(scorer)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    from augment.scoring.tiny_hf import save_tiny_transformers_clip

    return save_tiny_transformers_clip(tmp_path_factory.mktemp("hf-clip") / "tiny-transformers-clip")


@pytest.fixture
def counted_hf_scorer(hf_clip_dir):
    from augment.scoring.scorers import load_scorer

    scorer = load_scorer(str(hf_clip_dir), batch_size=128)
    return scorer, EncodeCounter(scorer)


def test_captions_grouped_by_length_give_the_embeddings_of_batches_in_order(hf_clip_dir, tiny_scorer):
    """encode_texts batches captions by length (less padding to compute): the embeddings equal
    those of batches taken in the given order to float rounding, and come back in that order.
    open_clip models group texts themselves: their scorer passes captions as given."""
    import torch

    from augment.scoring.scorers import load_scorer

    assert tiny_scorer.kind == "open_clip" and not tiny_scorer.groups_texts

    scorer = load_scorer(str(hf_clip_dir), batch_size=4)
    words = "a red cube on a blue sphere next to the green cone under a lamp".split()
    rng = np.random.default_rng(0)
    captions = [" ".join(words[: int(n)]) for n in rng.integers(1, len(words) + 1, 13)]
    in_order = scorer._batched(captions, scorer._encode_text_batch)
    batches = []
    encode_batch = scorer._encode_text_batch
    scorer._encode_text_batch = lambda texts: batches.append(list(texts)) or encode_batch(texts)
    grouped = scorer.encode_texts(captions)
    assert [len(c) for batch in batches for c in batch] == sorted(len(c) for c in captions)
    torch.testing.assert_close(grouped, in_order, rtol=0, atol=1e-6)


def _settings(**overrides):
    from augment.scoring.pool_scores import ScoreSettings

    return ScoreSettings(**{"bootstrap": 200, "gap_bootstrap": 20, **overrides})


def _score(pool, source, scorer, **overrides):
    from augment.scoring.pool_scores import score_and_save

    return score_and_save(pool, source, scorer, _settings(**overrides), plot=False)


# ---------------------------------------------------------------------------------------------
# Pool-level properties
# ---------------------------------------------------------------------------------------------


def test_exact_copies_have_no_diversity_and_no_gap(tmp_path, source, train_items, tiny_scorer, sample_world_dir):
    rows = [_row(item, c, 0, "copy", "text", caption=caption)
            for item in train_items for c, caption in enumerate(item["captions"])]
    pool = _write(tmp_path / "copies", rows, sample_world_dir)
    entry = _score(pool, source, tiny_scorer)
    text = entry["diversity"]["text"]
    assert text["mean_pairwise_distance"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert text["vendi"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert text["items"] == len(rows)
    gap = entry["gap"]["text"]
    assert gap["n_pool"] == gap["n_source"] == len(rows)
    assert gap["items"] == len(train_items)  # the gap's intervals redraw source items, both sides at once
    assert gap["frechet"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert gap["mmd2"]["value"] <= 1e-9
    # a text row's alignment is the source image with the caption: the source pairs themselves
    assert entry["alignment"]["text"]["mean"] == pytest.approx(entry["source_alignment"]["mean"], abs=1e-6)
    # alignment's intervals redraw source items, each with all its rows (and the source's, its captions)
    assert entry["alignment"]["all"]["items"] == entry["clipscore"]["all"]["items"] == len(train_items)
    assert entry["source_alignment"]["items"] == len(train_items)


def test_image_rows_made_from_the_image_use_the_mean_over_captions(tmp_path, source, train_items, tiny_scorer, sample_world_dir):
    import pyarrow.parquet as pq

    rows = [_row(item, -1, 0, "same-image", "image", image=item["image"]) for item in train_items]
    pool = _write(tmp_path / "images", rows, sample_world_dir)
    entry = _score(pool, source, tiny_scorer)
    assert entry["diversity"]["image"]["mean_pairwise_distance"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert entry["gap"]["image"]["frechet"]["value"] == pytest.approx(0.0, abs=1e-6)
    table = pq.read_table(pool.path / entry["tables"]["rows"]).to_pylist()
    first = next(r for r in table if r["source_image_id"] == train_items[0]["image_id"])
    assert first["alignment_partner"] == "source captions (mean)"
    from PIL import Image
    import io

    image = tiny_scorer.encode_images([Image.open(io.BytesIO(train_items[0]["image"]["bytes"] or Path(train_items[0]["image"]["path"]).read_bytes()))])
    captions = tiny_scorer.encode_texts(train_items[0]["captions"])
    assert first["alignment"] == pytest.approx(float((captions @ image.T).mean()), abs=1e-5)
    assert first["clipscore"] == pytest.approx(100 * max(first["alignment"], 0.0))
    assert first["image_distance_to_source"] == pytest.approx(0.0, abs=1e-5)
    assert first["text_distance_to_source"] is None


def test_shuffled_captions_are_less_aligned_under_a_trained_clip(tmp_path, source, train_items, trained_clip, sample_world_dir):
    from augment.scoring.scorers import load_scorer

    scorer = load_scorer(str(trained_clip), batch_size=128)
    matched, shuffled = [], []
    for position, item in enumerate(train_items):
        other = train_items[(position + 1) % len(train_items)]  # a derangement: never its own
        for c in range(len(item["captions"])):
            matched.append(_row(item, c, 0, "own", "text", caption=item["captions"][c]))
            shuffled.append(_row(item, c, 0, "shuffled", "text", caption=other["captions"][c]))
    own = _score(_write(tmp_path / "own", matched, sample_world_dir), source, scorer)["alignment"]["all"]
    other = _score(_write(tmp_path / "shuffled", shuffled, sample_world_dir), source, scorer)["alignment"]["all"]
    assert other["mean"] < own["mean"]
    assert other["high"] < own["low"]  # and clearly so: the CIs do not overlap


def test_rescoring_takes_every_embedding_from_the_cache(tmp_path, source, train_items, counted_scorer, sample_world_dir):
    scorer, counter = counted_scorer
    rows = [_row(item, 0, k, "mixed", "pair", caption=f"{item['captions'][0]} {k}", image=item["image"])
            for item in train_items for k in range(2)]
    pool = _write(tmp_path / "pairs", rows, sample_world_dir)
    first = _score(pool, source, scorer, chunk_rows=16)
    assert counter.calls["text"] > 0 and counter.calls["image"] > 0
    # every distinct content once: N captions of each source image + 2 new captions; source images only
    assert counter.items["text"] == sum(len(i["captions"]) for i in train_items) + 2 * len(train_items)
    assert counter.items["image"] == len(train_items)  # the pair rows reuse the source image bytes
    assert first["encoding"]["encoded"]["text"] == counter.items["text"]
    before = dict(counter.calls)
    second = _score(pool, source, scorer, chunk_rows=7, bootstrap=100)  # other chunks, other settings
    assert counter.calls == before
    assert second["encoding"]["encoded"] == {"text": 0, "image": 0}
    assert second["alignment"]["all"]["mean"] == pytest.approx(first["alignment"]["all"]["mean"], abs=1e-9)


def test_chunk_bounds_close_at_the_byte_limit_on_item_boundaries():
    from augment.scoring.pool_scores import chunk_bounds

    starts, sizes = np.array([0, 2, 3, 6]), np.array([10, 10, 50, 1, 1, 1, 5])  # items of 20, 50, 3, 5 bytes
    assert chunk_bounds(starts, 7, 100) == [(0, 7)]
    assert chunk_bounds(starts, 7, 100, sizes, 20) == [(0, 2), (2, 3), (3, 7)]  # the 50-byte item alone, whole
    assert chunk_bounds(starts, 7, 3, sizes, 10 ** 9) == [(0, 3), (3, 6), (6, 7)]  # rows still cap


def test_item_order_keeps_an_image_only_item_apart_from_the_last_caption_of_the_image_before():
    """Guards item_order's code width (max caption index + 2): at + 1, (image b, index -1) took the code of
    (image a, index 1), and b's row was grouped into a's item, out of the pool's order of first appearance."""
    from datasets import Dataset, Features, Value

    from augment.scoring.pool_scores import item_order

    rows = Dataset.from_dict({"source_image_id": ["a", "b", "a"], "source_caption_index": [0, -1, 1]},
                             features=Features({"source_image_id": Value("string"), "source_caption_index": Value("int32")}))
    order, starts = item_order(rows)
    assert order.tolist() == [0, 1, 2] and starts.tolist() == [0, 1, 2]  # three items, in pool order


def test_chunk_bytes_and_rows_are_no_input_of_the_stored_scores(tmp_path):
    """--chunk-bytes and --chunk-rows change a score at float32 rounding only (the tests below), as --batch-size does,
    yet they went into `inputs_key` with the other settings: a pool scored again with a smaller cap or chunk to fit
    memory was scored again, and every pool scored before --chunk-bytes existed."""
    from types import SimpleNamespace

    from augment.scoring.pool_scores import ScoreSettings, inputs_key

    class Pool:
        path, meta = tmp_path, {"finished": "2026-12-06T00:00:00"}

        def __len__(self):
            return 3

    def key(**settings):
        return inputs_key(Pool(), "source-fp", SimpleNamespace(id="scorer"), ScoreSettings(**settings), "images")

    assert key(chunk_bytes=1) == key() == key(chunk_bytes=2 ** 40) == key(chunk_rows=7)
    assert key(seed=1) != key()  # a setting that changes the scores still does


def test_scores_stored_under_the_key_with_chunk_rows_are_reused(tmp_path, source, train_items, counted_hf_scorer,
                                                                 sample_world_dir, monkeypatch):
    """Entries scored before 2026-12-07 recorded a key with --chunk-rows in it: taking it out must not score every
    stored pool again. Such an entry is reused at the --chunk-rows it was scored with; another one scores again
    (nothing says that entry's chunks were these) and from then on any --chunk-rows reuses the new entry."""
    import augment.scoring.pool_scores as pool_scores

    scorer, counter = counted_hf_scorer
    rows = [_row(item, 0, 0, "own", "text", caption=f"{item['captions'][0]} again") for item in train_items]
    pool = _write(tmp_path / "texts", rows, sample_world_dir)
    keys = pool_scores.inputs_keys
    monkeypatch.setattr(pool_scores, "inputs_keys", lambda *args: keys(*args)[::-1])  # as the version before wrote
    first = _score(pool, source, scorer)
    monkeypatch.undo()
    assert "reused" not in first and first["inputs_key"] == keys(pool, *_key_inputs(source, scorer))[1]
    calls = dict(counter.calls)
    again = _score(pool, source, scorer)
    assert again["reused"] is True and counter.calls == calls and again["alignment"] == first["alignment"]
    assert "reused" not in _score(pool, source, scorer, chunk_rows=7)
    assert _score(pool, source, scorer)["reused"] is True and _score(pool, source, scorer, chunk_rows=3)["reused"]


def _key_inputs(source, scorer):
    """`inputs_keys`'s arguments after the pool, as `score_and_save` computes them for `_score`."""
    from augment.sources import image_files_fingerprint, source_fingerprint

    return source_fingerprint(source), scorer, _settings(), image_files_fingerprint(source, root=None)


def test_chunk_bytes_counts_the_source_images_a_chunk_reads(tmp_path, source, train_items, tiny_scorer,
                                                             sample_world_dir, monkeypatch):
    """A chunk reads the source image of each of its items (`embed_sources`: all their bytes at once, to hash
    them), but --chunk-bytes counted the pool's stored images alone: a text pool (eda, back-translation) of a
    source of 12 MP photos still read 1,024 of them per chunk. Each source image counts once per chunk."""
    import augment.scoring.pool_scores as pool_scores
    from augment.scoring.pool_scores import chunk_bounds, score_and_save

    sizes = {item["image_id"]: Path(item["image"]["path"]).stat().st_size for item in train_items}
    rows = [_row(item, 0, 0, "eda", "text", caption=f"{item['captions'][0]} again") for item in train_items]
    pool = _write(tmp_path / "texts", rows, sample_world_dir)
    chunks, read_chunk = [], pool_scores.read_chunk
    monkeypatch.setattr(pool_scores, "read_chunk", lambda dataset, indices: chunks.append(len(indices))
                        or read_chunk(dataset, indices))
    whole = _score(pool, source, tiny_scorer)
    assert chunks == [len(train_items)]
    chunks.clear()
    two = sorted(sizes.values())[0] * 2  # twice the smallest image: some chunk holds two items, and not all do
    bounded = score_and_save(pool, source, tiny_scorer, _settings(chunk_bytes=two), plot=False, force=True)
    assert 1 < len(chunks) < len(train_items) and sum(chunks) == len(train_items)
    assert bounded["alignment"]["all"]["mean"] == pytest.approx(whole["alignment"]["all"]["mean"], abs=1e-9)
    assert pool_scores.SourceItems(source).image_sizes(list(sizes) + ["no-such-id"]).tolist() == [*sizes.values(), 0]
    # items 0 and 1 share source image 0: counted once; item 2's image 1 takes the chunk past 15 bytes
    assert chunk_bounds(np.array([0, 2, 4, 6]), 8, 100, np.zeros(8), 15, np.array([0, 0, 1, 1]),
                        np.array([10, 10])) == [(0, 6), (6, 8)]


def test_a_chunk_closes_once_its_images_reach_chunk_bytes_and_scores_the_same(tmp_path, source, train_items, tiny_scorer,
                                                                          sample_world_dir, monkeypatch):
    """`score` read --chunk-rows rows at a time whatever their images weighed: 1,024 img-aug rows of 12 MP
    photos held ~23 GB (audit BC). A chunk now also closes once its stored image bytes reach --chunk-bytes."""
    import augment.scoring.pool_scores as pool_scores
    from augment.scoring.pool_scores import score_and_save

    def stored(item, k):  # the source image's bytes and k zero bytes after PNG's end: another size, same pixels
        return {"bytes": Path(item["image"]["path"]).read_bytes() + bytes(k), "path": None}

    rows = [_row(item, 0, k, "mixed", "pair", caption=f"{item['captions'][0]} {k}", image=stored(item, k))
            for item in train_items for k in range(2)]
    rows += [_row(item, 1, 0, "mixed", "text", caption=f"{item['captions'][1]} again") for item in train_items]
    pool = _write(tmp_path / "pairs", rows, sample_world_dir)
    sizes = pool_scores.stored_image_bytes(pool_scores.undecoded_images(pool.dataset))
    expected = [len(stored(i, k)["bytes"]) for i in train_items for k in range(2)] + [0] * len(train_items)
    assert sorted(sizes.tolist()) == sorted(expected) and sizes.min() == 0 and sizes.max() > 0
    backwards = pool_scores.undecoded_images(pool.dataset).select(range(len(pool.dataset) - 1, -1, -1))
    assert pool_scores.stored_image_bytes(backwards).tolist() == sizes[::-1].tolist()  # a selection's order
    chunks, read_chunk = [], pool_scores.read_chunk
    monkeypatch.setattr(pool_scores, "read_chunk", lambda dataset, indices: chunks.append(
        sum(int(sizes[i]) for i in indices)) or read_chunk(dataset, indices))
    whole = _score(pool, source, tiny_scorer, chunk_bytes=2 ** 40)
    assert len(chunks) == 1
    chunks.clear()
    # one byte: each item closes its chunk at once, the caption-1 items (text only, read after every caption-0
    # item) too, by their source image, which each chunk reads (they shared the last chunk before audit BJ)
    bounded = score_and_save(pool, source, tiny_scorer, _settings(chunk_bytes=1), plot=False, force=True)  # the same key
    assert chunks == [len(stored(i, 0)["bytes"]) + len(stored(i, 1)["bytes"]) for i in train_items] + [0] * len(train_items)
    for key in ("all", "pair"):
        assert bounded["alignment"][key]["mean"] == pytest.approx(whole["alignment"][key]["mean"], abs=1e-9)


def test_unchanged_rescore_reuses_the_stored_scores(tmp_path, source, train_items, counted_hf_scorer, sample_world_dir):
    import os

    from augment.scoring.pool_scores import score_and_save

    scorer, counter = counted_hf_scorer
    rows = [_row(item, 0, 0, "own", "text", caption=f"{item['captions'][0]} again") for item in train_items]
    pool = _write(tmp_path / "texts", rows, sample_world_dir)
    first = _score(pool, source, scorer)
    assert "reused" not in first and first["inputs_key"]
    calls = dict(counter.calls)
    again = _score(pool, source, scorer)
    assert again["reused"] is True and counter.calls == calls  # nothing encoded, nothing recomputed
    assert again["alignment"] == first["alignment"] and again["created"] == first["created"]
    # an entry its key shows current, stored before the scheme was recorded: stamped, so push publishes it
    from augment.scoring import store

    document = json.loads((pool.path / "scores.json").read_text())
    for entry in document["scorers"].values():
        entry.pop("resampling")
    (pool.path / "scores.json").write_text(json.dumps(document))
    assert _score(pool, source, scorer)["reused"] is True and counter.calls == calls
    stored = json.loads((pool.path / "scores.json").read_text())["scorers"].values()
    assert all(store.intervals_are_current(entry) for entry in stored)
    forced = score_and_save(pool, source, scorer, _settings(), plot=False, force=True)
    assert "reused" not in forced and forced["alignment"] == first["alignment"]
    # any input changed: the settings, a pool file, a missing side table -> scored again
    assert "reused" not in _score(pool, source, scorer, bootstrap=150)
    shard = sorted((pool.path / "data").glob("*.parquet"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1))
    assert "reused" not in _score(pool, source, scorer)
    (pool.path / first["tables"]["items"]).unlink()
    assert "reused" not in _score(pool, source, scorer)
    assert _score(pool, source, scorer)["reused"] is True
    # a damaged side table: scored again (it was a pyarrow traceback on every run)
    rows_table = pool.path / first["tables"]["rows"]
    rows_table.write_bytes(rows_table.read_bytes()[:100])
    assert "reused" not in _score(pool, source, scorer)
    # a run from other inputs killed after writing its tables, before its entry: the entry is not
    # served with them (select read the other run's alignments)
    from augment.scoring import pool_scores
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    stored = _score(pool, source, scorer)
    assert stored["reused"] is True
    pool_scores.score_pool(pool, source, Embedder(scorer, EmbeddingCache(tmp_path / "cache", scorer.id)), _settings(),
                           inputs_key="another run's inputs")
    assert pool_scores.reusable_entry(pool.path, scorer.slug, (stored["inputs_key"],)) is None
    assert "reused" not in _score(pool, source, scorer)
    # the same rows read from other image files (another --image-root): scored again, not served stale
    import shutil

    from augment.sources import load_source

    images = tmp_path / "other-images"
    shutil.copytree(sample_world_dir / "images", images)
    moved, _ = load_source(str(sample_world_dir), image_root=str(images))
    assert "reused" not in _score(pool, moved, scorer)


def test_decoding_workers_give_the_same_embeddings(tmp_path, train_items, counted_hf_scorer, monkeypatch):
    from augment.scoring import embeddings
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    monkeypatch.setattr(embeddings, "WORKER_MIN_BYTES", 0)  # a few small images: use the workers anyway
    scorer, counter = counted_hf_scorer
    images = [item["image"] for item in train_items[:16]]
    assert len(images) == 16
    scorer.batch_size = 4  # two calls of two batches each: the workers decode ahead, in order
    inline = Embedder(scorer, EmbeddingCache(tmp_path / "inline", scorer.id)).images(images)
    started = []
    real_loader = torch.utils.data.DataLoader
    monkeypatch.setattr(torch.utils.data, "DataLoader", lambda *a, **kw: started.append(1) or real_loader(*a, **kw))
    with Embedder(scorer, EmbeddingCache(tmp_path / "loaded", scorer.id), workers=2) as embedder:
        loaded = np.concatenate([embedder.images(images[:8]), embedder.images(images[8:])])
    assert counter.calls["image"] == 8
    assert np.array_equal(inline, loaded)
    # one loader's workers for the run, not one per chunk (a start imports torch in each under spawn)
    assert started == [1]


def test_a_decoding_worker_dying_between_chunks_is_one_line(tmp_path, source, train_items, sample_world_dir,
                                                            tiny_scorer, monkeypatch):
    """The decoding workers live for the whole scoring run: one killed (the OOM killer) or stopped by a
    SIGTERM to the process group while the main process measures was torch's RuntimeError raised
    there by its SIGCHLD handler, a traceback (exit 1); it is DataWorkerDied, one line, as inside `images`."""
    import os
    import signal
    import time

    from augment.loading import DataWorkerDied
    from augment.scoring import embeddings, pool_scores
    from augment.scoring.pool_scores import score_and_save

    monkeypatch.setattr(embeddings, "WORKER_MIN_BYTES", 0)  # a few small images: use the workers anyway
    monkeypatch.setattr(tiny_scorer, "batch_size", 4)  # two batches: the workers start
    rows = [_row(item, 0, 0, "own", "image", image={"bytes": None, "path": item["image"]["path"]})
            for item in train_items[:8]]
    pool = _write(tmp_path / "images", rows, sample_world_dir)
    real_summarise, killed = pool_scores.summarise, []

    def summarise_after_a_worker_died(pool, totals, embedder, *args, **kwargs):
        workers = embedder._decoding._loader._iterator._workers  # alive: kept for the next chunk
        os.kill(workers[0].pid, signal.SIGKILL)
        killed.append(workers[0].pid)
        for _ in range(100):  # torch's SIGCHLD handler raises here, in the main process's own work
            time.sleep(0.02)
        return real_summarise(pool, totals, embedder, *args, **kwargs)

    monkeypatch.setattr(pool_scores, "summarise", summarise_after_a_worker_died)
    with pytest.raises(DataWorkerDied, match=r"^a data-loading worker process died .*use fewer --workers \(1 now\)"):
        score_and_save(pool, source, tiny_scorer, _settings(), plot=False, workers=1)
    assert killed


def test_an_image_that_does_not_decode_is_named_by_its_record(tmp_path, tiny_scorer):
    """A pool row's image (embedded bytes) names the row, a source image its id and file."""
    from augment.errors import SourceError
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path / "cache", tiny_scorer.id))
    # PIL's reason named the bytes' buffer ("<_io.BytesIO object at 0x...>"): left out
    with pytest.raises(SourceError, match=r"^pool row eda:7:0:1: unreadable or corrupt image \(cannot identify image "
                                          r"file\)$"):
        embedder.images([{"bytes": b"not an image", "path": None}], names=["pool row eda:7:0:1"])
    bad = tmp_path / "7.png"
    bad.write_bytes(b"not an image either")
    with pytest.raises(SourceError, match=rf"^image '7' \({bad}\): unreadable or corrupt image"):
        embedder.images([{"bytes": None, "path": str(bad)}], names=["image '7'"])


def test_image_files_read_by_the_previous_call_are_not_read_again(tmp_path, train_items, tiny_scorer, monkeypatch):
    from augment.scoring import embeddings
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    paths = [item["image"]["path"] for item in train_items[:4]]
    assert all(paths)
    reads = []
    read = embeddings.image_bytes_of
    monkeypatch.setattr(embeddings, "image_bytes_of", lambda image: reads.append(image) or read(image))
    embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path / "a", tiny_scorer.id))
    first = embedder.images([{"path": p, "bytes": None} for p in paths[:3]])
    assert len(reads) == 3
    second = embedder.images([{"path": p, "bytes": None} for p in paths[1:] + paths[1:2]])  # paths[3] is new
    assert len(reads) == 4 and embedder.encoded["image"] == 4
    np.testing.assert_array_equal(second[:2], first[1:])
    np.testing.assert_array_equal(second[3], first[1])
    # a remembered key whose embedding is not cached: its bytes are read and encoded after all
    hashed = []
    hash_bytes = embeddings.image_key
    monkeypatch.setattr(embeddings, "image_key", lambda data: hashed.append(data) or hash_bytes(data))
    fresh = Embedder(tiny_scorer, EmbeddingCache(tmp_path / "b", tiny_scorer.id))
    fresh._path_keys = dict(embedder._path_keys)
    np.testing.assert_allclose(fresh.images([{"path": paths[1], "bytes": None}])[0], first[1], atol=1e-6)
    assert fresh.encoded["image"] == 1 and len(reads) == 5 and not hashed


def test_an_unreadable_cache_file_is_a_miss_computed_again_with_a_warning(tmp_path, train_items, tiny_scorer, caplog):
    """A damaged embedding file (here or in a shared --cache-dir) is not an error: a warning
    names it, it is deleted, and its embeddings are encoded again into a new file."""
    from augment.scoring.embeddings import EmbeddingCache, Embedder

    images = [item["image"] for item in train_items[:3]]
    first = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id)).images(images)
    [damaged] = tmp_path.glob("image-*.safetensors")
    damaged.write_text("garbage\n")  # unreadable when the folder's index is read
    with caplog.at_level("WARNING", logger="augment.scoring.embeddings"):
        embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id))
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"embedding cache file {damaged} is unreadable (")
    assert warning.endswith("): deleted, its embeddings are computed again")
    assert not damaged.exists()
    np.testing.assert_allclose(embedder.images(images), first, atol=1e-6)
    assert embedder.encoded["image"] == 3
    [rewritten] = tmp_path.glob("image-*.safetensors")
    # damaged after the index was read: found missing when its embeddings are read
    caplog.clear()
    cache = EmbeddingCache(tmp_path, tiny_scorer.id)
    rewritten.write_bytes(rewritten.read_bytes()[:100])
    embedder = Embedder(tiny_scorer, cache)
    with caplog.at_level("WARNING", logger="augment.scoring.embeddings"):
        np.testing.assert_allclose(embedder.images(images), first, atol=1e-6)
    assert [r.getMessage().split(" is unreadable")[0] for r in caplog.records] == [f"embedding cache file {rewritten}"]
    assert embedder.encoded["image"] == 3 and not rewritten.exists()
    embedder.images(list(reversed(images)))  # the new file answers now, not the dropped one
    assert embedder.encoded["image"] == 3 and embedder.reused["image"] == 3


def test_a_look_up_reads_back_the_rows_asked_for_from_many_files_in_any_order(tmp_path, monkeypatch):
    """A look-up reads only the rows it needs, a slice per run of consecutive rows of each file (whole files,
    kept four at a time, were read again chunk after chunk): keys of five files in a shuffled order, a key
    asked twice, runs and single rows, misses between them, must come back as they were put."""
    from augment.scoring.embeddings import EmbeddingCache, as_key_strings

    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path, "scorer")
    keys, embeddings = [], []
    for file in range(5):
        file_keys = rng.integers(0, 256, (40, 16), dtype=np.uint8)
        file_embeddings = rng.random((40, 8), dtype=np.float32)
        cache.put("text", file_keys, file_embeddings)
        keys.append(file_keys)
        embeddings.append(file_embeddings)
    keys, embeddings = np.concatenate(keys), np.concatenate(embeddings)
    chosen = np.concatenate([np.arange(3, 17), [45, 46, 47, 90, 199, 120], rng.choice(200, 30), [5, 5]])
    rng.shuffle(chosen)
    missing = rng.integers(0, 256, (7, 16), dtype=np.uint8)
    asked = np.concatenate([keys[chosen], missing])[rng.permutation(len(chosen) + 7)]
    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "load_file", lambda *a, **k: pytest.fail("a whole cache file was read"))
    for reopened in (cache, EmbeddingCache(tmp_path, "scorer")):
        found, got = reopened.lookup("text", asked)
        position = {key: i for i, key in enumerate(as_key_strings(keys))}
        expected = [position.get(key) for key in as_key_strings(asked)]
        assert found.tolist() == [i is not None for i in expected]
        np.testing.assert_array_equal(got, embeddings[[i for i in expected if i is not None]])


def test_a_look_up_of_many_scattered_rows_reads_the_file_whole_and_few_runs_by_slices(tmp_path, monkeypatch):
    """A slice per run of consecutive rows costs ~7 us each: every other row of a file was one slice per row, and
    100k scattered rows of a 200k x 64 file took 0.52 s, 0.12 s with the file read whole. Rows scattered
    enough are taken from the file read whole; a few runs of a large file are still read by slices."""
    import safetensors

    from augment.scoring.embeddings import EmbeddingCache

    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (2000, 16), dtype=np.uint8)
    embeddings = rng.random((2000, 8), dtype=np.float32)
    EmbeddingCache(tmp_path, "scorer").put("text", keys, embeddings)
    reads = {"slices": 0, "whole": 0}
    real_open = safetensors.safe_open

    class Counted:
        def __init__(self, stored):
            self.stored = stored

        def __getattr__(self, name):
            return getattr(self.stored, name)

        def __getitem__(self, index):
            reads["slices"] += 1
            return self.stored[index]

    class CountingOpen:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def __getattr__(self, name):  # metadata(), the index's keys
            return getattr(self.inner, name)

        def get_slice(self, name):
            return Counted(self.inner.get_slice(name))

        def get_tensor(self, name):
            reads["whole"] += name == "embeddings"
            return self.inner.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", CountingOpen)
    cache = EmbeddingCache(tmp_path, "scorer")
    scattered = np.concatenate([np.arange(0, 2000, 2), [4, 4]])[rng.permutation(1002)]
    found, got = cache.lookup("text", keys[scattered])
    assert found.all() and np.array_equal(got, embeddings[scattered])
    assert reads == {"slices": 0, "whole": 1}, reads  # 1,000 slices of one row each before
    reads.update(slices=0, whole=0)
    few = np.concatenate([np.arange(100, 140), [7], np.arange(1500, 1510)])[::-1]
    found, got = cache.lookup("text", keys[few])
    assert found.all() and np.array_equal(got, embeddings[few])
    assert reads == {"slices": 3, "whole": 0}, reads


def test_a_cache_file_of_the_wrong_shape_is_a_miss(tmp_path, train_items, tiny_scorer, caplog):
    """Well-formed safetensors with fewer embeddings than keys (or keys of another shape) are damaged
    files too: a miss, not an IndexError."""
    from safetensors.numpy import load_file, save_file

    from augment.scoring.embeddings import EmbeddingCache, Embedder

    images = [item["image"] for item in train_items[:3]]
    first = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id)).images(images)
    [stored] = tmp_path.glob("image-*.safetensors")
    from safetensors import safe_open

    with safe_open(str(stored), framework="numpy") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(stored))
    save_file({"keys": tensors["keys"], "embeddings": tensors["embeddings"][:1]}, str(stored), metadata=metadata)
    with caplog.at_level("WARNING", logger="augment.scoring.embeddings"):
        embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id))
        np.testing.assert_allclose(embedder.images(images), first, atol=1e-6)
    assert embedder.encoded["image"] == 3 and "not (3, d) float32" in caplog.text
    [stored] = tmp_path.glob("image-*.safetensors")
    tensors = load_file(str(stored))
    save_file({"keys": tensors["keys"].astype(np.int32), "embeddings": tensors["embeddings"]}, str(stored), metadata=metadata)
    embedder = Embedder(tiny_scorer, EmbeddingCache(tmp_path, tiny_scorer.id))
    np.testing.assert_allclose(embedder.images(images), first, atol=1e-6)
    assert embedder.encoded["image"] == 3


def test_a_folder_scorers_id_is_every_file_of_it_and_a_hub_scorers_its_commit(tmp_path):
    """A folder retrained or re-configured in place is another scorer (its id was the first weights
    file's hash only, and `transformers:FOLDER` was not hashed at all); a Hub model's id names the
    commit its weights came from."""
    import shutil

    from augment import tiny
    from augment.scoring.scorers import _model_id, _weights_digest
    from augment.scoring.tiny_hf import save_tiny_transformers_clip

    folder = Path(shutil.copytree(tiny.tiny_dir("tiny-clip"), tmp_path / "clip"))
    before = _weights_digest(str(folder))
    config = folder / "open_clip_config.json"
    config.write_text(config.read_text().replace("{", "{ ", 1))  # re-configured in place
    assert _weights_digest(str(folder)) != before
    hf = save_tiny_transformers_clip(tmp_path / "hf")
    hf_before = _weights_digest(str(hf))
    assert _weights_digest(f"transformers:{hf}") == hf_before is not None
    (hf / "model-00002-of-00002.safetensors").write_bytes(b"a second shard")  # a later shard changed
    assert _weights_digest(str(hf)) != hf_before

    class HubModel:
        family, pretrained = "hf_clip", None

        def describe(self):
            return {"commit": "abc123"}

    assert _model_id("org/clip", HubModel()) == "hf_clip:org/clip:None@abc123"
    # a family of one's own may save `model.pt` (models.base: save_native); a folder of configs alone is refused
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights file"):
        _weights_digest(str(own))
    (own / "model.pt").write_bytes(b"weights")
    assert _weights_digest(str(own)) is not None


def test_cache_is_per_scorer_and_survives_reopening(tmp_path):
    from augment.scoring.embeddings import Embedder, EmbeddingCache, text_key

    class FakeScorer:
        def __init__(self):
            self.calls = 0

        def encode_texts(self, texts):
            import torch

            self.calls += 1
            return torch.nn.functional.normalize(torch.tensor([[len(t), 1.0] for t in texts]), dim=-1)

    scorer = FakeScorer()
    first = Embedder(scorer, EmbeddingCache(tmp_path, "scorer-a")).texts(["a", "bb", "a"])
    assert scorer.calls == 1 and first.shape == (3, 2)
    again = Embedder(scorer, EmbeddingCache(tmp_path, "scorer-a")).texts(["bb", "a"])
    assert scorer.calls == 1
    np.testing.assert_array_equal(again, first[[1, 0]])
    other = EmbeddingCache(tmp_path, "scorer-b")
    found, _ = other.lookup("text", np.frombuffer(text_key("a"), dtype=np.uint8)[None, :])
    assert not found.any()


def test_the_cache_index_sorts_each_key_a_logarithmic_number_of_times_and_finds_as_one_sorted_array(monkeypatch):
    """The embedding cache's key index re-sorted every key it held after each put: `augment score` puts
    once per chunk, so n keys cost O(n^2) sorting (14.6 s for 612k keys in 2,400 puts; a COCO pool's
    1.2M captions ~1 min). Its runs now merge only when the newest is half the size of the one before:
    each key is sorted O(log n) times, and lookups find what one sorted array found (the first file
    indexed for a key in several, nothing of a dropped file) (audit AM)."""
    import augment.scoring.embeddings as embeddings

    sorted_lengths = []
    real_argsort = np.argsort
    monkeypatch.setattr(embeddings.np, "argsort", lambda a, **kw: sorted_lengths.append(len(a)) or real_argsort(a, **kw))
    rng = np.random.default_rng(0)
    index, holders = embeddings._KeyIndex(), {}  # key -> [(file, row)] in the order indexed
    pool_of_keys = rng.integers(0, 256, size=(3000, 16), dtype=np.uint8)
    for file_id in range(300):
        keys = pool_of_keys[rng.choice(len(pool_of_keys), size=int(rng.integers(1, 40)), replace=False)]
        index.find(keys)  # as a scoring chunk does: look up, then put what was missing
        index.add(keys, file_id)
        for row, key in enumerate(keys):
            holders.setdefault(key.tobytes(), []).append((file_id, row))
        if file_id == 150:  # an unreadable file: its keys are forgotten (other files holding them are not)
            index.drop(7)
            holders = {k: [h for h in v if h[0] != 7] for k, v in holders.items()}
    total = len(index)
    assert sum(sorted_lengths) <= 2 * total * np.log2(total)  # re-sorted whole after every put: ~150x the keys
    monkeypatch.setattr(embeddings.np, "argsort", real_argsort)
    queries = np.concatenate([pool_of_keys, rng.integers(0, 256, size=(50, 16), dtype=np.uint8)])
    file_ids, rows = index.find(queries)
    for key, file_id, row in zip(queries, file_ids.tolist(), rows.tolist()):
        expected = holders.get(key.tobytes()) or [(-1, 0)]
        assert (file_id, row) == expected[0]


def test_transformers_clip_scorer(tmp_path, source, train_items, sample_world_dir):
    from augment.scoring.scorers import load_scorer, scorer_kind
    from augment.scoring.tiny_hf import save_tiny_transformers_clip

    folder = save_tiny_transformers_clip(tmp_path / "hf-clip")
    assert scorer_kind(str(folder)) == "hf_clip"  # models.family_of: a CLIPModel folder is the hf_clip family
    scorer = load_scorer(str(folder))
    assert scorer.id.startswith("hf_clip:") and scorer.slug.startswith("hf-clip-")
    # known without loading (a re-score's stored scores are found by it): the loaded scorer's id and slug
    from augment.scoring.scorers import scorer_identity

    for name, loaded in ((str(folder), scorer), ("tiny-clip", load_scorer("tiny-clip"))):
        identity = scorer_identity(name)
        assert (identity.id, identity.slug) == (loaded.id, loaded.slug)
    assert scorer_identity("tiny-clip", pretrained="openai") is None and scorer_identity("ViT-B-16") is None
    rows = [_row(item, 1, 0, "copy", "text", caption=item["captions"][1]) for item in train_items[:6]]
    entry = _score(_write(tmp_path / "pool", rows, sample_world_dir), source, scorer)
    assert entry["scorer"]["kind"] == "hf_clip"
    assert entry["diversity"]["text"]["mean_pairwise_distance"]["mean"] == pytest.approx(0.0, abs=1e-9)


def test_scoring_refuses_a_pool_of_another_source(tmp_path, source, train_items, tiny_scorer, sample_world_dir):
    rows = [_row(train_items[0], 0, 0, "x", "text", caption="a red circle")]
    rows[0]["source_image_id"] = "not-in-the-source"
    with pytest.raises(PoolError, match="not in the source"):
        _score(_write(tmp_path / "stray", rows, sample_world_dir), source, tiny_scorer)


# ---------------------------------------------------------------------------------------------
# Select
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_mixed_pool(tmp_path_factory, source, train_items, tiny_scorer, sample_world_dir):
    """Per item (image, caption 0): two text rows of method a, one of method b, one image row."""
    rows = []
    for position, item in enumerate(train_items[:10]):
        other = train_items[position + 10]
        rows += [
            _row(item, 0, 0, "a", "text", caption=item["captions"][1]),
            _row(item, 0, 1, "a", "text", caption=other["captions"][0]),
            _row(item, 0, 2, "b", "text", caption=item["captions"][2]),
            _row(item, 0, 3, "c", "image", image=other["image"]),
        ]
    pool = _write(tmp_path_factory.mktemp("select") / "mixed", rows, sample_world_dir)
    _score(pool, source, tiny_scorer)
    return pool


def _stored_alignment(pool):
    import pyarrow.parquet as pq

    from augment.scoring.store import find_scorer_entry

    entry = find_scorer_entry(pool.path, None)
    table = pq.read_table(pool.path / entry["tables"]["rows"]).to_pylist()
    return {r["row_id"]: r for r in table}


def test_select_filters_by_alignment_method_modality_and_per_item(tmp_path, scored_mixed_pool):
    from augment.pool import load_pool
    from augment.select import SelectFilters, select_pool

    scores = _stored_alignment(scored_mixed_pool)
    threshold = float(np.median([r["alignment"] for r in scores.values()]))
    meta = select_pool(scored_mixed_pool, str(tmp_path / "high"), SelectFilters(min_alignment=threshold))
    selected = load_pool(tmp_path / "high")
    expected = {rid for rid, r in scores.items() if r["alignment"] >= threshold}
    assert set(selected.dataset["row_id"]) == expected
    assert meta["method"] == "select" and meta["filters"]["min_alignment"] == threshold
    assert meta["parent"]["path"] == str(scored_mixed_pool.path.resolve())
    assert meta["parent"]["meta"]["method"] == "test"
    assert meta["scorer"]["name"] == "tiny-clip"

    select_pool(scored_mixed_pool, str(tmp_path / "top1"), SelectFilters(top_k_per_item=1, modality="text"))
    top = load_pool(tmp_path / "top1")
    by_item = {}
    for rid, r in scores.items():
        if r["modality"] == "text":
            by_item.setdefault(r["source_image_id"], []).append((r["alignment"], rid))
    assert set(top.dataset["row_id"]) == {max(rows)[1] for rows in by_item.values()}

    meta = select_pool(scored_mixed_pool, str(tmp_path / "a1"), SelectFilters(methods=["a", "c"], max_per_item=2))
    kept = load_pool(tmp_path / "a1")
    assert meta["scorer"] is None  # no score-based filter: no scores needed
    assert set(kept.dataset["method"]) == {"a"}  # the first two rows of each item are method a
    assert len(kept) == 20


def test_select_drops_rows_without_a_score_from_every_score_filter(tmp_path, scored_mixed_pool, monkeypatch):
    """A NaN alignment passes neither a threshold nor --top-k-per-item (top-k kept it when its item
    had fewer than k scored rows)."""
    from augment import select
    from augment.pool import load_pool

    original = select.row_alignment

    def with_a_nan(pool, scorer):
        alignment, entry = original(pool, scorer)
        alignment = alignment.copy()
        alignment[0] = float("nan")
        return alignment, entry

    monkeypatch.setattr(select, "row_alignment", with_a_nan)
    first = scored_mixed_pool.dataset[0]["row_id"]
    select.select_pool(scored_mixed_pool, str(tmp_path / "top"), select.SelectFilters(top_k_per_item=1000))
    kept = set(load_pool(tmp_path / "top").dataset["row_id"])
    assert first not in kept and len(kept) == len(scored_mixed_pool) - 1


def test_select_keeps_rows_and_images_unchanged(tmp_path, scored_mixed_pool):
    from datasets import Image

    from augment.pool import load_pool
    from augment.select import SelectFilters, select_pool

    select_pool(scored_mixed_pool, str(tmp_path / "images"), SelectFilters(modality="image"))
    selected = load_pool(tmp_path / "images").dataset.cast_column("image", Image(decode=False))
    parent = scored_mixed_pool.dataset.cast_column("image", Image(decode=False))
    parent_rows = {r["row_id"]: r for r in parent if r["modality"] == "image"}
    assert len(selected) == len(parent_rows)
    for row in selected:
        assert row == parent_rows[row["row_id"]]


def test_select_copies_rows_through_arrow_never_formatting_or_encoding_them(tmp_path, scored_mixed_pool, monkeypatch):
    """A selection's rows go from the parent's arrow table to its shards as stored: read row by row
    through datasets (a select, then each row formatted) and encoded again example by example, 600k rows
    took 51-64 s with no progress shown; 3-8 s now, the shards byte for byte the same (audit AM)."""
    import datasets
    from datasets import Image

    from augment.pool import load_pool
    from augment.select import SelectFilters, select_pool

    def refused(*args, **kwargs):
        raise AssertionError("a selection formatted or encoded its rows one by one")

    parent = scored_mixed_pool.dataset.cast_column("image", Image(decode=False))
    parent_rows = {r["row_id"]: r for r in parent}
    with monkeypatch.context() as patch:
        patch.setattr(datasets.Dataset, "__iter__", refused)
        patch.setattr(datasets.Dataset, "from_dict", refused)
        meta = select_pool(scored_mixed_pool, str(tmp_path / "sel"), SelectFilters(methods=["a", "c"]))
    selected = load_pool(tmp_path / "sel").dataset.cast_column("image", Image(decode=False))
    assert meta["num_rows"] == len(selected) > 0 and any(row["image"] for row in selected)
    for row in selected:
        assert row == parent_rows[row["row_id"]]


def test_select_refuses_to_write_into_its_own_pool(tmp_path, scored_mixed_pool):
    """--out the pool itself (or a folder in or above it) with --overwrite deleted the shards it read:
    the pool was replaced by its own subset."""
    import shutil

    from augment.pool import load_pool
    from augment.select import SelectFilters, select_pool

    copy = Path(shutil.copytree(scored_mixed_pool.path, tmp_path / "pool"))
    before = sorted((p.name, p.stat().st_size) for p in (copy / "data").glob("*.parquet"))
    for out in (copy, copy / "inner", tmp_path):
        with pytest.raises(PoolError, match=f"{re.escape(str(out))}: overlaps the pool folder .*; choose another --out"):
            select_pool(load_pool(copy), str(out), SelectFilters(modality="image"), overwrite=True)
    assert sorted((p.name, p.stat().st_size) for p in (copy / "data").glob("*.parquet")) == before


def test_select_refuses_scores_of_a_rewritten_pool(tmp_path, scored_mixed_pool):
    import shutil

    from augment.pool import load_pool
    from augment.select import SelectFilters, select_pool

    copy = Path(shutil.copytree(scored_mixed_pool.path, tmp_path / "rewritten"))
    meta = json.loads((copy / "pool.json").read_text())
    meta["finished"] = "2099-01-01T00:00:00+00:00"  # as if generate had rewritten it since
    (copy / "pool.json").write_text(json.dumps(meta))
    with pytest.raises(PoolError, match=r"data files changed \(rewritten, copied without their times, or exported by augment push\) after it was scored"):
        select_pool(load_pool(copy), str(tmp_path / "out"), SelectFilters(min_alignment=0.0))
    # a data file rewritten in place, pool.json untouched: refused too (its old alignments were used)
    import os

    copy = Path(shutil.copytree(scored_mixed_pool.path, tmp_path / "edited"))
    shard = sorted((copy / "data").glob("*.parquet"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1))
    with pytest.raises(PoolError, match="data files changed"):
        select_pool(load_pool(copy), str(tmp_path / "out2"), SelectFilters(min_alignment=0.0))
    select_pool(load_pool(scored_mixed_pool.path), str(tmp_path / "out3"), SelectFilters(min_alignment=-1.0))


def test_select_refuses_without_scores(tmp_path, train_items, sample_world_dir):
    from augment.select import SelectFilters, select_pool

    pool = _write(tmp_path / "unscored", [_row(train_items[0], 0, 0, "a", "text", caption="a red circle")], sample_world_dir)
    with pytest.raises(PoolError, match="run `augment score"):
        select_pool(pool, str(tmp_path / "out"), SelectFilters(min_alignment=0.1))
    (tmp_path / "unscored" / "scores.json").write_text(json.dumps(
        {"scores_version": 1, "latest": "x", "scorers": {"x": {"scorer": {"name": "tiny-clip", "id": "tiny-clip"},
                                                               "pool": {}, "tables": {"rows": "rows.parquet"}}}}))
    with pytest.raises(PoolError, match="not scored with 'ViT-B-16'"):
        select_pool(pool, str(tmp_path / "out"), SelectFilters(top_k_per_item=1), scorer="ViT-B-16")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_scores_pools_writes_side_tables_plot_and_table_then_selects(tmp_path, train_items, sample_world_dir, capsys,
                                                                            monkeypatch):
    from augment.cli import main
    from augment.pool import load_pool

    for name, index in (("first", 0), ("second", 1)):
        rows = [_row(item, index, 0, name, "text", caption=item["captions"][(index + 1) % 5]) for item in train_items[:8]]
        _write(tmp_path / name, rows, sample_world_dir, method=name)
    table = tmp_path / "compare.md"
    code = main(["score", str(tmp_path / "first"), str(tmp_path / "second"), "--scorer", "tiny-clip",
                 "--bootstrap", "100", "--gap-bootstrap", "10", "--no-progress", "--table", str(table),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| pool | method |" in out and "| first | first |" in out and "| second | second |" in out
    assert table.read_text().startswith("| pool | method |")
    entries = {}
    for name in ("first", "second"):
        document = json.loads((tmp_path / name / "scores.json").read_text())
        entry = entries[name] = document["scorers"][document["latest"]]
        assert document["scores_version"] == 1 and entry["scorer"]["name"] == "tiny-clip"
        assert {"alignment", "clipscore", "diversity", "gap", "source_alignment"} <= set(entry)
        assert (tmp_path / name / entry["tables"]["rows"]).is_file()
        assert (tmp_path / name / entry["tables"]["items"]).is_file()
        assert (tmp_path / name / "scores.png").read_bytes()[:4] == b"\x89PNG"
    # the shared cache: the second pool re-used the source captions and images the first encoded
    assert entries["first"]["encoding"]["encoded"]["image"] == 8
    assert entries["second"]["encoding"]["encoded"]["image"] == 0

    # again, unchanged: the stored scores are served without loading the scorer (a tiny twin is
    # known by its weights file); --force loads it and recomputes
    import augment.commands.score as score_command

    loads = []
    real_load = score_command.load_scorer_or_fail
    monkeypatch.setattr(score_command, "load_scorer_or_fail", lambda args: loads.append(1) or real_load(args))
    again = ["score", str(tmp_path / "first"), str(tmp_path / "second"), "--scorer", "tiny-clip", "--bootstrap", "100",
             "--gap-bootstrap", "10", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(again) == 0
    assert capsys.readouterr().out.count("stored scores reused") == 2 and loads == []
    assert main([*again, "--force"]) == 0
    assert "stored scores reused" not in capsys.readouterr().out and loads == [1]

    code = main(["select", str(tmp_path / "first"), "--out", str(tmp_path / "best"), "--top-k-per-item", "1",
                 "--min-alignment", "-1", "--scorer", "tiny-clip"])
    assert code == 0
    selected = load_pool(tmp_path / "best")
    assert len(selected) == 8 and selected.meta["parent"]["meta"]["method"] == "first"


def test_cli_a_pool_moved_with_its_source_keeps_its_scores(tmp_path, capsys, monkeypatch):
    """`mv` of a folder holding a pool and its source, then `augment score` there: the stored scores
    are reused (the key held the source's path and its images' absolute paths, and the pool was
    encoded again); the entry then records the pool's and the source's new paths."""
    import shutil

    from datasets import Image

    import augment.commands.score as score_command
    from augment.cli import main
    from augment.sources import load_source
    from augment.world.writer import write_sample

    first, moved = tmp_path / "a" / "study", tmp_path / "b" / "study"
    write_sample(first / "world", n=12, seed=0)
    dataset, _ = load_source(str(first / "world"))
    items = [item for item in dataset.cast_column("image", Image(decode=False)) if item["split"] == "train"][:4]
    _write(first / "pool", [_row(item, 0, 0, "own", "text", caption=item["captions"][1]) for item in items],
           first / "world")

    def score(folder) -> str:
        assert main(["score", str(folder / "pool"), "--source", str(folder / "world"), "--scorer", "tiny-clip",
                     "--bootstrap", "20", "--gap-bootstrap", "5", "--no-progress", "--no-plot"]) == 0
        return capsys.readouterr().out

    assert "encoded 20 texts + 4 images" in score(first)  # the pool's captions and its items' source captions and images
    made = json.loads((first / "pool" / "scores.json").read_text())
    moved.parent.mkdir()
    shutil.move(first, moved)
    loads = []
    real_load = score_command.load_scorer_or_fail
    monkeypatch.setattr(score_command, "load_scorer_or_fail", lambda args: loads.append(1) or real_load(args))
    assert "stored scores reused" in score(moved) and loads == []  # no scorer loaded: nothing encoded
    document = json.loads((moved / "pool" / "scores.json").read_text())
    entry, before = document["scorers"][document["latest"]], made["scorers"][made["latest"]]
    assert entry["created"] == before["created"] and entry["alignment"] == before["alignment"]
    assert entry["pool"]["path"] == str(moved / "pool") and entry["source"]["path"] == str(moved / "world")
    assert "stored scores reused" in score(moved)  # and again: the entry it rewrote still holds


def test_cli_select_without_scores_is_one_clear_line(tmp_path, train_items, sample_world_dir, capsys):
    from augment.cli import main

    _write(tmp_path / "pool", [_row(train_items[0], 0, 0, "a", "text", caption="a red circle")], sample_world_dir)
    assert main(["select", str(tmp_path / "pool"), "--out", str(tmp_path / "out"), "--min-alignment", "0.2"]) == 2
    assert "run `augment score" in capsys.readouterr().err
    # --scorer with no filter that reads scores was silently ignored: refused before anything is written
    assert main(["select", str(tmp_path / "pool"), "--out", str(tmp_path / "out"), "--max-per-item", "1",
                 "--scorer", "tiny-clip"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --scorer tiny-clip is read only by --min-alignment, --max-alignment "
                                               "and --top-k-per-item: leave it out or add one of them")
    assert not (tmp_path / "out").exists()


def test_cli_score_refuses_a_source_other_than_the_pools_own(tmp_path, train_items, sample_world_dir, capsys):
    """Sample worlds share image ids: scoring a pool against another world matched every row to
    other images and replaced the scorer's stored entry; it is refused unless asked for."""
    from augment.cli import main
    from augment.pool import write_pool

    write_pool(tmp_path / "pool", [_row(train_items[0], 0, 0, "a", "text", caption="a red circle")],
               {"method": "test", "source": str(sample_world_dir), "source_fingerprint": "0123456789abcdef"})
    argv = ["score", str(tmp_path / "pool"), "--scorer", "tiny-clip", "--bootstrap", "10", "--gap-bootstrap", "0",
            "--no-progress", "--no-plot", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "differs from the one the pool was made from (fingerprint" in err and "--allow-pool-mismatch" in err
    assert not (tmp_path / "pool" / "scores.json").exists()
    assert main([*argv, "--allow-pool-mismatch"]) == 0
    assert "scored anyway (--allow-pool-mismatch)" in capsys.readouterr().err
    assert (tmp_path / "pool" / "scores.json").is_file()


def test_single_blas_thread_limits_scipys_own_blas_too():
    """scipy ships its own OpenBLAS: the gap's sqrtm and trmm run on it. The limit must cover it
    even when no scipy module was loaded before the first limited call (a fresh `augment score`),
    or its second thread spins through every gap (twice the CPU time, measured)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from augment.scoring import measures\n"
        "assert 'scipy.linalg' not in sys.modules, 'scipy loaded already: this test checks nothing'\n"
        "limited = {lib.filepath for lib in measures.threads.threadpool_controller().select(user_api='blas').lib_controllers}\n"
        "import scipy.linalg\n"
        "from threadpoolctl import ThreadpoolController\n"
        "loaded = {lib.filepath for lib in ThreadpoolController().select(user_api='blas').lib_controllers}\n"
        "assert loaded <= limited, sorted(loaded - limited)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr


def test_threads_share_the_resample_blocks_value_budget(monkeypatch):
    """Guards the block size, RESAMPLE_BLOCK_VALUES numbers for all the threads' blocks together: at a budget of
    four resamples' covariances, 2 threads run blocks of 2; sized for one thread each (blocks of 4), the peak
    memory grew with the threads, unseen by the values."""
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(25, 5))  # the covariances' way: 5 x 5 numbers a resample
    counts_x = measures.resample_counts(np.random.default_rng(1), 30, 12)
    counts_y = measures.resample_counts(np.random.default_rng(2), 25, 12)
    monkeypatch.setattr(measures.frechet, "RESAMPLE_BLOCK_VALUES", 4 * 5 * 5)
    told: list[int] = []
    measures.resampled_frechet(x, y, counts_x, counts_y, on_resamples=told.append, threads=2)
    assert told == [2] * 6


def test_resampled_frechet_threads_share_the_blocks_and_give_the_same_values(monkeypatch):
    """`threads` > 1: the blocks of resamples run on that many threads at once (each fits its
    Gaussians on a thread of the pool), the caller hears of them in block order, and every value
    equals the one-thread computation's to the last bit (each call on one BLAS thread)."""
    import threading

    rng = np.random.default_rng(8)
    x, y = _unit(rng.normal(size=(60, 6)) + 0.2), _unit(rng.normal(size=(50, 6)))
    draws = np.random.default_rng(1)
    counts_x, counts_y = measures.resample_counts(draws, 60, 10), measures.resample_counts(draws, 50, 10)
    with measures.threads.threadpool_controller().limit(limits=1, user_api="blas"):
        alone = measures.resampled_frechet(x, y, counts_x, counts_y)
    fitting = measures.weighted_gaussian_fits
    both_running = threading.Barrier(2, timeout=10)  # breaks (an error) unless two blocks run at once
    fitted_on: set[int] = set()
    lock = threading.Lock()

    def fits(samples, counts):
        with lock:  # the first two threads to fit wait for each other once, at their first fit
            first = threading.get_ident() not in fitted_on
            fitted_on.add(threading.get_ident())
            waits = first and len(fitted_on) <= 2
        if waits:
            try:
                both_running.wait()
            except threading.BrokenBarrierError:
                pass
        return fitting(samples, counts)

    monkeypatch.setattr(measures.frechet, "weighted_gaussian_fits", fits)
    told: list[int] = []
    shared = measures.resampled_frechet(x, y, counts_x, counts_y, on_resamples=told.append, threads=3)
    assert not both_running.broken
    assert threading.main_thread().ident not in fitted_on and len(fitted_on) >= 2
    assert told == [4, 4, 2]  # 10 resamples shared by 3 threads: blocks of ceil(10 / 3)
    np.testing.assert_array_equal(shared, alone)


def test_an_interrupted_threaded_bootstrap_does_not_finish_its_blocks_first(monkeypatch):
    """Ctrl-C (here an error from the progress callback) while the threads share the resamples:
    the blocks not yet started are dropped, not all run before the interruption reaches the
    caller (at 768 dimensions that was up to 14 s of waiting)."""
    import threading

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    draws = np.random.default_rng(0)
    counts_x, counts_y = measures.resample_counts(draws, 40, 120), measures.resample_counts(draws, 40, 120)
    monkeypatch.setattr(measures.frechet, "RESAMPLE_BLOCK_VALUES", 16)  # one resample a block: 120 blocks
    fitting, fitted = measures.weighted_gaussian_fits, []
    interrupting = threading.Event()

    def fits(*args):
        fitted.append(1)
        # blocks of 40 x 4 points take microseconds: the threads could run all 120 before the caller
        # hears of the first on a loaded machine, so the blocks after the first two wait for it
        if len(fitted) > 4:
            interrupting.wait(timeout=10)
        return fitting(*args)

    monkeypatch.setattr(measures.frechet, "weighted_gaussian_fits", fits)

    def interrupted(count):
        interrupting.set()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measures.resampled_frechet(x, y, counts_x, counts_y, on_resamples=interrupted, threads=2)
    assert len(fitted) < 2 * 120 // 2  # two fits a block: well under half the blocks ran


def test_gap_shares_its_resamples_among_the_process_threads_from_a_width(monkeypatch):
    """Below RESAMPLE_THREADED_WIDTH the resampled Frechet distances run on one thread (the tiny
    twins' 32 dimensions: threads gained nothing); from it on, on torch's thread count."""
    import torch

    seen = []
    monkeypatch.setattr(measures.gap, "_gap_measures", lambda *args: seen.append(args[-1]) or {})
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for width in (measures.threads.RESAMPLE_THREADED_WIDTH - 1, measures.threads.RESAMPLE_THREADED_WIDTH):
            measures.gap_measures(np.zeros((4, width), dtype=np.float32), np.zeros((4, width), dtype=np.float32))
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 3]


def test_gap_uses_the_process_threads_only_for_wide_embeddings(monkeypatch):
    """Narrow embeddings keep one BLAS thread (more only contend); from GAP_THREADED_WIDTH on
    each resample is width^3-sized work and the gap computes with torch's thread count."""
    import torch

    seen = []

    def record(*args):
        seen.append(max(lib["num_threads"] for lib in measures.threads.threadpool_controller().select(user_api="blas").info()))
        return {}

    monkeypatch.setattr(measures.gap, "_gap_measures", record)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        narrow = np.zeros((4, measures.threads.GAP_THREADED_WIDTH - 1), dtype=np.float32)
        wide = np.zeros((4, measures.threads.GAP_THREADED_WIDTH), dtype=np.float32)
        measures.gap_measures(narrow, narrow)
        measures.gap_measures(wide, wide)
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]


def test_the_plot_without_matplotlib_is_one_install_line(tmp_path, monkeypatch):
    """matplotlib missing (a partial install): a traceback after the scores were stored, with no word of
    --no-plot."""
    import sys

    from augment.errors import MissingDependencyError
    from augment.scoring.report import plot_scores

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="pip install matplotlib .*--no-plot"):
        plot_scores(tmp_path, {})


def test_a_cache_file_of_no_keys_does_not_break_lookups(tmp_path):
    """A valid cache file holding no keys (written by hand or another tool, in a shared --cache-dir) was
    indexed as an empty run of the log-structured key index, and every later lookup failed on it with
    `IndexError: index -1 is out of bounds for axis 0 with size 0` (one sorted array checked for no keys)."""
    from augment.scoring.embeddings import EmbeddingCache

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 256, size=(5, 16), dtype=np.uint8)
    cache = EmbeddingCache(tmp_path, "scorer-a")
    cache.put("text", keys, np.ones((5, 3), dtype=np.float32))
    cache.put("text", np.zeros((0, 16), dtype=np.uint8), np.zeros((0, 3), dtype=np.float32))
    others = rng.integers(0, 256, size=(2, 16), dtype=np.uint8)
    for reader in (cache, EmbeddingCache(tmp_path, "scorer-a")):  # as indexed by the put, and read back
        found, embeddings = reader.lookup("text", np.concatenate([keys[[3]], others]))
        assert found.tolist() == [True, False, False] and embeddings.shape == (1, 3)


def test_score_writes_the_card_of_the_pool_swapped_in_while_it_scored(tmp_path, capsys, monkeypatch):
    """`augment generate --overwrite POOL` swapping its pool in while `augment score POOL` scored the old one:
    score then wrote the old pool's card (its method and row count) over the new pool's, and
    `datasets.load_dataset(POOL)` refused the folder (NonMatchingSplitsSizesError). The card written is the
    one of the pool there now, and the scores are those of the old pool, which select refuses for the new."""
    from datasets import Image, load_dataset

    import augment.scoring.pool_scores as pool_scores
    from augment.cli import main
    from augment.pool import swap_in_replacement, write_pool
    from augment.sources import load_source
    from augment.world.writer import write_sample

    write_sample(tmp_path / "world", n=12, seed=0)
    dataset, _ = load_source(str(tmp_path / "world"))
    items = [item for item in dataset.cast_column("image", Image(decode=False)) if item["split"] == "train"][:4]
    pool = tmp_path / "pool"
    _write(pool, [_row(item, 0, 0, "old", "text", caption=item["captions"][1]) for item in items], tmp_path / "world",
           method="old")
    write_pool(pool / ".replacement", [_row(item, 0, 0, "new", "text", caption=item["captions"][2]) for item in items[:3]],
               {"name": "pool", "method": "new", "source": str(tmp_path / "world")})
    real = pool_scores.score_pool

    def then_swapped(*args, **kwargs):  # the other command's swap, once the old pool is scored
        entry = real(*args, **kwargs)
        swap_in_replacement(pool)
        return entry

    monkeypatch.setattr(pool_scores, "score_pool", then_swapped)
    assert main(["score", str(pool), "--source", str(tmp_path / "world"), "--scorer", "tiny-clip", "--bootstrap", "20",
                 "--gap-bootstrap", "5", "--no-progress", "--no-plot"]) == 0
    assert "method `new`, 3 rows" in (pool / "README.md").read_text()
    assert len(load_dataset(str(pool), split="train")) == 3
    capsys.readouterr()
    assert main(["select", str(pool), "--out", str(tmp_path / "selected"), "--min-alignment", "0"]) == 2
    assert "data files changed" in capsys.readouterr().err
