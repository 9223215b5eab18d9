"""Distribution and structure metrics: EMD, percentile errors, spatial autocorrelation error.

These compare the *climatology* of two fields (pooled over all valid pixels), not
pixel-by-pixel agreement, so a sharp, realistic ensemble member is not penalised for a
displaced cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import xarray as xr

__all__ = [
    "autocorrelation_sums",
    "autocorrelation_from_sums",
    "earth_movers_distance",
    "percentile_errors",
    "spatial_autocorrelation",
    "spatial_autocorrelation_error",
]

DEFAULT_PERCENTILES = (99.0, 99.9, 99.99)


def _finite(values: xr.DataArray | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def earth_movers_distance(fcst: xr.DataArray, obs: xr.DataArray) -> float:
    """1-Wasserstein distance between the pooled intensity distributions (mm/h).

    ``EMD = integral |F_f(x) - F_o(x)| dx`` between the empirical CDFs of all valid forecast
    values (all members, if any) and all valid observed values
    (``scipy.stats.wasserstein_distance``). Zero for identical distributions.
    """
    a, b = _finite(fcst), _finite(obs)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(scipy.stats.wasserstein_distance(a, b))


def percentile_errors(fcst: xr.DataArray, obs: xr.DataArray, *,
                      percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict[float, float]:
    """``q_p(fcst) - q_p(obs)`` for each percentile ``p`` of the pooled valid values (mm/h).

    Positive = the forecast's tail is too heavy. Quantiles use numpy's default (linear)
    interpolation. The 99.99th percentile needs >= 10^4 valid values to mean anything.
    """
    a, b = _finite(fcst), _finite(obs)
    if a.size == 0 or b.size == 0:
        return {float(p): float("nan") for p in percentiles}
    qa = np.percentile(a, percentiles)
    qb = np.percentile(b, percentiles)
    return {float(p): float(x - y) for p, x, y in zip(percentiles, qa, qb, strict=True)}


def autocorrelation_sums(field: np.ndarray, *, max_lag: int) -> np.ndarray:
    """Sums for the lag-``h`` spatial autocorrelation, ``h = 1..max_lag``, both axes pooled.

    ``field`` is ``(..., ny, nx)``; pairs ``(a, b)`` are pixels ``h`` apart along y and along
    x, both valid. Returns ``(max_lag, 6)``: ``n, sum a, sum b, sum a^2, sum b^2, sum ab``.
    Sums add across fields, so the estimate streams.
    """
    x = np.asarray(field, dtype=np.float64)
    out = np.zeros((max_lag, 6))
    for h in range(1, max_lag + 1):
        for a, b in ((x[..., :-h, :], x[..., h:, :]), (x[..., :, :-h], x[..., :, h:])):
            ok = np.isfinite(a) & np.isfinite(b)
            av, bv = a[ok], b[ok]
            out[h - 1] += (av.size, av.sum(), bv.sum(), (av**2).sum(), (bv**2).sum(),
                           (av * bv).sum())
    return out


def autocorrelation_from_sums(sums: np.ndarray) -> np.ndarray:
    """Pearson correlation per lag from :func:`autocorrelation_sums` output."""
    n, sa, sb, saa, sbb, sab = np.moveaxis(np.asarray(sums, dtype=np.float64), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sab / n - (sa / n) * (sb / n)
        va = saa / n - (sa / n) ** 2
        vb = sbb / n - (sb / n) ** 2
        return cov / np.sqrt(va * vb)


def spatial_autocorrelation(field: xr.DataArray | np.ndarray, *, max_lag: int = 8) -> np.ndarray:
    """Spatial autocorrelation function ``rho(h)``, ``h = 1..max_lag`` pixels.

    ``rho(h)`` is the Pearson correlation of all valid pixel pairs ``h`` pixels apart along
    either grid axis (lat or lon), pooled over all fields (time steps, members).
    """
    if isinstance(field, xr.DataArray) and {"lat", "lon"} <= set(field.dims):
        field = field.transpose(..., "lat", "lon")
    return autocorrelation_from_sums(autocorrelation_sums(np.asarray(field), max_lag=max_lag))


def spatial_autocorrelation_error(fcst: xr.DataArray, obs: xr.DataArray, *,
                                  max_lag: int = 8) -> float:
    """Mean absolute difference of the spatial autocorrelation functions, lags 1..max_lag.

    ``SACE = (1/K) sum_{h=1..K} |rho_f(h) - rho_o(h)|`` with ``rho`` from
    :func:`spatial_autocorrelation` and ``K = max_lag``. 0 = the forecast has the observed
    spatial coherence; a too-smooth field (interpolation) has ``rho_f > rho_o``, a noisy one
    ``rho_f < rho_o``. Range 0..2.
    """
    rf = spatial_autocorrelation(fcst, max_lag=max_lag)
    ro = spatial_autocorrelation(obs, max_lag=max_lag)
    return float(np.nanmean(np.abs(rf - ro)))
