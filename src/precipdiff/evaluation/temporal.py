"""Verification of time: lag correlation, flicker, difference spectra, accumulation CRPS.

A per-frame ensemble can have perfect per-frame scores and still be wrong in time: its
members flicker (frame-to-frame changes larger than the truth's), decorrelate too fast, and
their hourly sums are under-dispersed (independent frame errors average out). These scores
look at exactly that. Inputs are DataArrays with a ``time`` dim (regular steps) and two
spatial dims, ensembles with ``member``; NaN is ignored.

- lag-``k`` correlation: Pearson correlation of all pairs ``(x_t, x_{t+k})`` (every pixel and
  time pooled), per member; the *error* is ``mean_m |r_m(k) - r_obs(k)|``.
- flicker: ``mean |x_t - x_{t-1}|`` (mm/h); the ratio ``flicker(member) / flicker(obs)``,
  averaged over members, is 1 for a realistic ensemble and > 1 when members flicker.
- difference spectrum: the radially averaged PSD of ``x_t - x_{t-1}``
  (:func:`precipdiff.evaluation.spectra.rapsd`); where the temporal changes sit in scale.
- accumulation CRPS: rates (mm/h) summed over non-overlapping blocks of ``period`` (30 min,
  1 h), ``A = sum_t x_t * step_h`` (mm; rectangle rule, each frame standing for one step),
  then :func:`precipdiff.evaluation.metrics.crps_ensemble` (``ecdf`` or ``fair``).

References
----------
Srivastava et al. (2024), "Precipitation Downscaling with Spatiotemporal Video Diffusion"
(temporal metrics of downscaled sequences); Ferro (2014) fair CRPS; Hersbach (2000).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from precipdiff.evaluation.metrics import crps_ensemble

TIME = "time"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _by_member(da: xr.DataArray, member_dim: str):
    if member_dim in da.dims:
        return [da.isel({member_dim: i}) for i in range(da.sizes[member_dim])]
    return [da]


def lag_correlation(da: xr.DataArray, lag: int = 1, *, member_dim: str = "member"
                    ) -> xr.DataArray:
    """Lag-``lag`` correlation in time, pooled over pixels and times (per member if any)."""
    if lag < 1 or lag >= da.sizes[TIME]:
        raise ValueError(f"lag must be in [1, {da.sizes[TIME] - 1}], got {lag}")
    values = []
    for field in _by_member(da, member_dim):
        x = field.transpose(TIME, ...).values.astype(np.float64)
        values.append(_pearson(x[:-lag].ravel(), x[lag:].ravel()))
    if member_dim in da.dims:
        return xr.DataArray(values, dims=[member_dim], name="lag_correlation",
                            attrs={"lag": lag})
    return xr.DataArray(values[0], name="lag_correlation", attrs={"lag": lag})


def temporal_correlation_error(fcst: xr.DataArray, obs: xr.DataArray, *,
                               lags: Sequence[int] = (1, 3, 6),
                               member_dim: str = "member") -> xr.DataArray:
    """``mean_m |r_m(k) - r_obs(k)|`` for each lag ``k`` (dim ``lag``); 0 is perfect."""
    out = []
    for k in lags:
        r_obs = float(lag_correlation(obs, k, member_dim=member_dim))
        r = lag_correlation(fcst, k, member_dim=member_dim)
        out.append(float(np.nanmean(np.abs(np.atleast_1d(r.values) - r_obs))))
    return xr.DataArray(out, dims=["lag"], coords={"lag": list(lags)},
                        name="temporal_correlation_error")


def flicker(da: xr.DataArray, *, member_dim: str = "member") -> xr.DataArray:
    """Mean absolute frame-to-frame change ``mean |x_t - x_{t-1}|`` (per member if any)."""
    diff = np.abs(da.diff(TIME))
    dims = [d for d in diff.dims if d != member_dim]
    return diff.mean(dims, skipna=True).rename("flicker")


def flicker_ratio(fcst: xr.DataArray, obs: xr.DataArray, *, member_dim: str = "member"
                  ) -> float:
    """``mean_m flicker(member m) / flicker(obs)``: 1 is realistic, > 1 members flicker."""
    f_obs = float(flicker(obs, member_dim=member_dim))
    return float(np.nanmean(np.atleast_1d(flicker(fcst, member_dim=member_dim).values))
                 / f_obs)


def difference_spectrum(da: xr.DataArray, *, spatial_dims: tuple[str, str] | None = None,
                        d: float = 1.0) -> xr.DataArray:
    """Radially averaged PSD of the frame differences ``x_t - x_{t-1}`` (mean over members
    and times; NaN -> 0), dim ``freq``."""
    from precipdiff.evaluation.spectra import rapsd

    dims = spatial_dims or tuple(str(x) for x in da.dims[-2:])
    return rapsd(da.diff(TIME), d=d, spatial_dims=dims).rename("difference_rapsd")


def time_step_hours(da: xr.DataArray) -> float:
    """The regular time step of ``da`` in hours; ValueError when the steps differ."""
    t = np.asarray(da[TIME].values)
    if t.size < 2:
        raise ValueError("a time step needs at least 2 times")
    steps = np.diff(t.astype("datetime64[s]").astype(np.int64))
    if np.any(steps != steps[0]) or steps[0] <= 0:
        raise ValueError(f"time steps must be regular and increasing, got {np.unique(steps)} s")
    return float(steps[0]) / 3600.0


def accumulate(da: xr.DataArray, period_h: float) -> xr.DataArray:
    """Accumulations (mm) of rates (mm/h) over non-overlapping blocks of ``period_h`` hours.

    Blocks start at the first frame; a block holds ``period_h / step_h`` frames and is left
    out when incomplete or when any of its frames is missing (NaN). ``time`` of a block is
    its last frame's; attribute ``accumulation`` names the period.
    """
    step = time_step_hours(da)
    n = period_h / step
    if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise ValueError(f"period {period_h} h is not a whole number of {step * 60:g}-min steps")
    n = int(round(n))
    blocks = da.sizes[TIME] // n
    if blocks == 0:
        raise ValueError(f"{da.sizes[TIME]} frames make no {period_h} h block")
    cut = da.isel({TIME: slice(0, blocks * n)})
    groups = np.repeat(np.arange(blocks), n)
    summed = (cut * step).assign_coords(block=(TIME, groups)).groupby("block").sum(
        TIME, skipna=False)
    ends = cut[TIME].values[n - 1::n]
    out = summed.rename(block=TIME).assign_coords({TIME: ends})
    out.attrs.update({"units": "mm", "accumulation": f"{period_h * 60:g}min"})
    return out.rename("accumulation")


def accumulation_crps(fcst: xr.DataArray, obs: xr.DataArray, period_h: float, *,
                      estimator: str = "fair", member_dim: str = "member") -> float:
    """Mean CRPS (mm) of the ``period_h`` accumulations built from the members."""
    return float(crps_ensemble(accumulate(fcst, period_h), accumulate(obs, period_h),
                               member_dim=member_dim, estimator=estimator))


def temporal_scores(fcst: xr.DataArray, obs: xr.DataArray, *, lags: Sequence[int] = (1, 3),
                    periods_h: Sequence[float] = (0.5, 1.0), member_dim: str = "member"
                    ) -> dict[str, float]:
    """Every scalar score of this module for one ensemble sequence (a metric table row)."""
    out: dict[str, float] = {}
    errors = temporal_correlation_error(fcst, obs, lags=lags, member_dim=member_dim)
    for k, v in zip(errors["lag"].values, errors.values, strict=True):
        out[f"lag{int(k)}_corr_error"] = float(v)
    out["flicker_ratio"] = flicker_ratio(fcst, obs, member_dim=member_dim)
    step = time_step_hours(obs)
    for p in periods_h:
        if p / step >= 1 and obs.sizes[TIME] >= p / step:
            out[f"crps_fair_{p * 60:g}min_accum"] = accumulation_crps(fcst, obs, p,
                                                                      member_dim=member_dim)
    return out
