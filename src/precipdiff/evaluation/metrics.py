"""Deterministic and ensemble verification metrics (NaN-aware, xarray in, xarray out).

Conventions (``scores`` style): every metric takes ``fcst`` and ``obs`` DataArrays and the
keyword-only ``reduce_dims`` / ``preserve_dims``; with neither, all dims are reduced and a
0-d DataArray is returned (``float(result)`` gives the number). Ensembles carry the dim
``member_dim`` (default ``"member"``) on ``fcst`` only. Pixels missing (NaN) in either input
are ignored.

References
----------
Hersbach, H. (2000): Decomposition of the continuous ranked probability score for ensemble
prediction systems. Wea. Forecasting 15, 559-570.
Ferro, C. A. T. (2014): Fair scores for ensemble forecasts. Q. J. R. Meteorol. Soc. 140, 1917-1923.
Fortin, V., Abaza, M., Anctil, F., Turcotte, R. (2014): Why should ensemble spread match the RMSE
of the ensemble mean? J. Hydrometeor. 15, 1708-1713.
Hamill, T. M. (2001): Interpretation of rank histograms for verifying ensemble forecasts.
Mon. Wea. Rev. 129, 550-560.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
import xarray as xr

from ._dims import Dims, align_exact, dims_to_reduce, paired

__all__ = [
    "crps_ensemble",
    "crps_ensemble_pointwise",
    "mae",
    "mean_bias",
    "multiplicative_bias",
    "pearson",
    "rank_histogram",
    "rmse",
    "spearman",
    "spread_skill_ratio",
]


# ----------------------------------------------------------------------------- deterministic
def rmse(fcst: xr.DataArray, obs: xr.DataArray, *, reduce_dims: Dims = None,
         preserve_dims: Dims = None) -> xr.DataArray:
    """Root-mean-square error ``sqrt(mean((f - o)**2))`` over the reduced dims."""
    f, o = paired(fcst, obs)
    dims = dims_to_reduce(f, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    return np.sqrt(((f - o) ** 2).mean(dims)).rename("rmse")


def mae(fcst: xr.DataArray, obs: xr.DataArray, *, reduce_dims: Dims = None,
        preserve_dims: Dims = None) -> xr.DataArray:
    """Mean absolute error ``mean(|f - o|)``."""
    f, o = paired(fcst, obs)
    dims = dims_to_reduce(f, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    return abs(f - o).mean(dims).rename("mae")


def mean_bias(fcst: xr.DataArray, obs: xr.DataArray, *, reduce_dims: Dims = None,
              preserve_dims: Dims = None) -> xr.DataArray:
    """Additive bias ``mean(f - o)`` (positive = forecast too wet)."""
    f, o = paired(fcst, obs)
    dims = dims_to_reduce(f, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    return (f - o).mean(dims).rename("mean_bias")


def multiplicative_bias(fcst: xr.DataArray, obs: xr.DataArray, *, reduce_dims: Dims = None,
                        preserve_dims: Dims = None) -> xr.DataArray:
    """Multiplicative bias ``mean(f) / mean(o)`` over commonly valid pixels (1 = unbiased)."""
    f, o = paired(fcst, obs)
    dims = dims_to_reduce(f, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    return (f.mean(dims) / o.mean(dims)).rename("multiplicative_bias")


def pearson(fcst: xr.DataArray, obs: xr.DataArray, *, reduce_dims: Dims = None,
            preserve_dims: Dims = None) -> xr.DataArray:
    """Pearson correlation ``cov(f, o) / (std(f) std(o))`` over commonly valid pixels."""
    f, o = paired(fcst, obs)
    dims = dims_to_reduce(f, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    fa = f - f.mean(dims)
    oa = o - o.mean(dims)
    cov = (fa * oa).mean(dims)
    return (cov / np.sqrt((fa**2).mean(dims) * (oa**2).mean(dims))).rename("pearson")


def _spearman_1d(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return np.nan
    return float(scipy.stats.spearmanr(a[ok], b[ok]).statistic)


def spearman(fcst: xr.DataArray, obs: xr.DataArray, *, reduce_dims: Dims = None,
             preserve_dims: Dims = None) -> xr.DataArray:
    """Spearman rank correlation: Pearson correlation of the (average-tie) ranks.

    Ties (e.g. the many dry zeros) get their average rank, as in ``scipy.stats.spearmanr``.
    """
    f, o = paired(fcst, obs)
    dims = dims_to_reduce(f, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    f = f.stack(_sample=dims)
    o = o.stack(_sample=dims)
    out = xr.apply_ufunc(_spearman_1d, f, o, input_core_dims=[["_sample"], ["_sample"]],
                         vectorize=True)
    return out.rename("spearman")


# ----------------------------------------------------------------------------- ensemble
def crps_ensemble_pointwise(fcst: np.ndarray, obs: np.ndarray, *, axis: int = 0,
                            estimator: str = "ecdf") -> np.ndarray:
    """CRPS of an ensemble at every point (numpy), ``O(M log M)`` via sorted members.

    With members sorted ``x_(1) <= ... <= x_(M)``::

        CRPS = (1/M) sum_i |x_i - y| - S
        sum_i sum_j |x_i - x_j| = 2 sum_i (2 i - M - 1) x_(i)
        ecdf: S = 1/(2 M**2)     sum_ij |x_i - x_j| = 1/M**2      sum_i (2i-M-1) x_(i)
        fair: S = 1/(2 M (M-1))  sum_ij |x_i - x_j| = 1/(M (M-1)) sum_i (2i-M-1) x_(i)

    ``ecdf`` is the CRPS of the empirical CDF of the members (Hersbach 2000); ``fair`` is
    Ferro's (2014) unbiased estimator of the CRPS of the distribution the members are
    drawn from. A point with a missing member or observation is NaN.
    """
    if estimator not in ("ecdf", "fair"):
        raise ValueError(f"estimator must be 'ecdf' or 'fair', got {estimator!r}")
    x = np.sort(np.moveaxis(np.asarray(fcst, dtype=np.float64), axis, -1), axis=-1)
    y = np.asarray(obs, dtype=np.float64)[..., None]
    m = x.shape[-1]
    if estimator == "fair" and m < 2:
        raise ValueError("the fair CRPS needs at least 2 members")
    skill = np.abs(x - y).mean(-1)
    weights = 2.0 * np.arange(1, m + 1) - m - 1
    spread_sum = (x * weights).sum(-1)
    spread = spread_sum / (m * m) if estimator == "ecdf" else spread_sum / (m * (m - 1))
    return skill - spread


def crps_ensemble(fcst: xr.DataArray, obs: xr.DataArray, *, member_dim: str = "member",
                  estimator: str = "ecdf", reduce_dims: Dims = None,
                  preserve_dims: Dims = None) -> xr.DataArray:
    """Mean continuous ranked probability score of an ensemble (lower is better).

    ``estimator="ecdf"`` (standard, Hersbach 2000) or ``"fair"`` (Ferro 2014); formulas in
    :func:`crps_ensemble_pointwise`. Hand check: members [0, 1, 3], obs 2 give
    ecdf 2/3 and fair 1/3. Points with a missing member or observation are ignored.
    """
    f, o = align_exact(fcst, obs)
    pointwise = xr.apply_ufunc(
        crps_ensemble_pointwise, f, o, input_core_dims=[[member_dim], []],
        kwargs={"axis": -1, "estimator": estimator}, dask="parallelized",
        output_dtypes=[np.float64],
    )
    dims = dims_to_reduce(pointwise, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    return pointwise.mean(dims).rename(f"crps_{estimator}")


def spread_skill_ratio(fcst: xr.DataArray, obs: xr.DataArray, *, member_dim: str = "member",
                       reduce_dims: Dims = None, preserve_dims: Dims = None) -> xr.DataArray:
    """Spread-skill ratio with the finite-ensemble correction of Fortin et al. (2014).

    ``SSR = sqrt((M + 1) / M) * sqrt(mean(s**2)) / sqrt(mean((xbar - y)**2))`` where ``s**2``
    is the unbiased (ddof=1) member variance and ``xbar`` the ensemble mean at each point;
    means run over the reduced dims. For a statistically consistent ensemble
    ``E[(xbar - y)**2] = (1 + 1/M) E[s**2]``, so SSR -> 1; SSR < 1 is under-dispersive.
    """
    f, o = align_exact(fcst, obs)
    m = f.sizes[member_dim]
    if m < 2:
        raise ValueError("the spread-skill ratio needs at least 2 members")
    var = f.var(member_dim, ddof=1, skipna=False)
    err2 = (f.mean(member_dim, skipna=False) - o) ** 2
    valid = var.notnull() & err2.notnull()
    var, err2 = var.where(valid), err2.where(valid)
    dims = dims_to_reduce(var, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    ratio = np.sqrt((m + 1) / m) * np.sqrt(var.mean(dims) / err2.mean(dims))
    return ratio.rename("spread_skill_ratio")


def rank_counts(fcst: np.ndarray, obs: np.ndarray, *, rng: np.random.Generator,
                axis: int = 0) -> np.ndarray:
    """Counts (length ``M + 1``) of the observation's rank among the members (numpy).

    ``rank = #{x_i < y} + U`` with ``U`` uniform on ``0..#{x_i == y}``: ties (e.g. an
    observed zero among dry members) are broken at random (Hamill 2001), so a dry
    ensemble verified by a dry observation does not pile up in the lowest bin.
    """
    x = np.moveaxis(np.asarray(fcst, dtype=np.float64), axis, -1)
    y = np.asarray(obs, dtype=np.float64)
    m = x.shape[-1]
    ok = np.isfinite(y) & np.isfinite(x).all(-1)
    x, y = x[ok], y[ok][:, None]
    below = (x < y).sum(-1)
    ties = (x == y).sum(-1)
    rank = below + np.floor(rng.random(below.shape) * (ties + 1)).astype(np.int64)
    return np.bincount(rank, minlength=m + 1)


def rank_histogram(fcst: xr.DataArray, obs: xr.DataArray, *, member_dim: str = "member",
                   rng: np.random.Generator | int | None = 0,
                   normalize: bool = True) -> xr.DataArray:
    """Rank histogram over all points, dim ``rank`` = 0..M, random tie-breaking (seeded).

    Returns relative frequencies (``normalize=True``; flat = 1/(M+1)) or counts.
    """
    f, o = align_exact(fcst, obs)
    f = f.transpose(member_dim, *o.dims)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    counts = rank_counts(f.values, o.values, rng=gen, axis=0)
    out = xr.DataArray(counts.astype(np.float64), dims=["rank"],
                       coords={"rank": np.arange(counts.size)}, name="rank_histogram")
    if normalize:
        out = out / max(counts.sum(), 1)
    return out


# Spatial, categorical and distribution scores live in their own modules; re-exported here
# so that ``precipdiff.evaluation.metrics`` is the one place to look.
from .distribution import (  # noqa: E402
    earth_movers_distance,
    percentile_errors,
    spatial_autocorrelation,
    spatial_autocorrelation_error,
)
from .spatial import categorical_scores, contingency_table, fss, scores_from_table  # noqa: E402

__all__ += [
    "categorical_scores",
    "contingency_table",
    "earth_movers_distance",
    "fss",
    "percentile_errors",
    "scores_from_table",
    "spatial_autocorrelation",
    "spatial_autocorrelation_error",
]
