"""The statistics of pool scoring, on unit-normalised embeddings (numpy arrays, one row each).

* `alignment`: cosine of an image and a caption embedding; CLIPScore = 100 * max(cos, 0) per pair
  (Hessel et al. 2021 with w = 100, torchmetrics' weight; a pool's CLIPScore is the mean of its
  pairs' as in Hessel et al., where torchmetrics clips the mean: equal unless a cosine is negative);
* `diversity` of a set: mean pairwise cosine distance, and the Vendi score;
* distribution `gap` between two samples: `frechet` distance of Gaussians fitted to them, and the
  unbiased RBF-kernel `mmd` (MMD^2) with a median-heuristic bandwidth, each on a `reservoir`
  sample of the pool's and the source's rows;
* percentile `bootstrap` confidence intervals (alignment's by items, `bootstrap_item_means`;
  the gap measures' by items too, paired between pool and source, and bias-shifted);
* `threads`: how many BLAS threads those computations use.

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

The names below are the package's interface (what pool scoring calls); the modules hold the
rest. Patch a module's own attribute to change what its functions see.
"""
from augment.scoring.measures.alignment import CLIPSCORE_WEIGHT, clipscore
from augment.scoring.measures.bootstrap import (RESAMPLING, bootstrap_item_means, bootstrap_mean, bootstrap_means,
                                                item_codes, item_numbers, item_resample_counts, percentile_interval,
                                                resample_counts)
from augment.scoring.measures.diversity import (mean_pairwise_cosine_distance, set_diversity, set_diversity_indexed,
                                                vendi_score)
from augment.scoring.measures.frechet import (frechet_between, frechet_distance, frechet_distance_eigh, frechet_route,
                                              gaussian_fit, resampled_frechet, trace_sqrt_products,
                                              weighted_gaussian_fit, weighted_gaussian_fits)
from augment.scoring.measures.gap import gap_measures
from augment.scoring.measures.mmd import (median_heuristic_gamma, mmd2_from_kernels, mmd2_unbiased, rbf_kernel_blocks,
                                          resampled_mmd2, squared_distances)
from augment.scoring.measures.reservoir import Reservoir
from augment.scoring.measures.threads import gap_blas_threads, resample_threads

__all__ = [
    "CLIPSCORE_WEIGHT", "RESAMPLING", "Reservoir", "bootstrap_item_means", "bootstrap_mean", "bootstrap_means",
    "clipscore", "frechet_between", "frechet_distance", "frechet_distance_eigh", "frechet_route", "gap_blas_threads",
    "gap_measures", "gaussian_fit", "item_codes", "item_numbers", "item_resample_counts", "mean_pairwise_cosine_distance",
    "median_heuristic_gamma", "mmd2_from_kernels", "mmd2_unbiased", "percentile_interval", "rbf_kernel_blocks",
    "resample_counts", "resample_threads", "resampled_frechet", "resampled_mmd2", "set_diversity",
    "set_diversity_indexed", "squared_distances", "trace_sqrt_products", "vendi_score", "weighted_gaussian_fit",
    "weighted_gaussian_fits",
]
