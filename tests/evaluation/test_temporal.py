"""Temporal verification on synthetic sequences whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from precipdiff.evaluation.temporal import (
    accumulate,
    accumulation_crps,
    difference_spectrum,
    flicker,
    flicker_ratio,
    lag_correlation,
    temporal_correlation_error,
    temporal_scores,
)

TIMES = np.datetime64("2020-01-01T00:00") + np.arange(48) * np.timedelta64(5, "m")


def ar1(rho: float, *, members: int | None = None, n: int = 48, size: int = 40,
        seed: int = 0) -> xr.DataArray:
    """Gaussian AR(1) in time per pixel: ``x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t``."""
    rng = np.random.default_rng(seed)
    lead = () if members is None else (members,)
    x = np.empty((*lead, n, size, size))
    x[..., 0, :, :] = rng.standard_normal((*lead, size, size))
    for t in range(1, n):
        x[..., t, :, :] = rho * x[..., t - 1, :, :] + np.sqrt(1 - rho**2) * rng.standard_normal(
            (*lead, size, size))
    dims = ("time", "y", "x") if members is None else ("member", "time", "y", "x")
    return xr.DataArray(x, dims=dims, coords={"time": TIMES[:n]})


def test_lag_correlation_of_an_ar1_process():
    da = ar1(0.8)
    assert float(lag_correlation(da, 1)) == pytest.approx(0.8, abs=0.02)
    assert float(lag_correlation(da, 3)) == pytest.approx(0.8**3, abs=0.03)
    err = temporal_correlation_error(ar1(0.5, members=3, seed=1), da, lags=(1, 2))
    assert err.sel(lag=1) == pytest.approx(0.3, abs=0.03)
    assert err.sel(lag=2) == pytest.approx(0.64 - 0.25, abs=0.04)
    assert float(temporal_correlation_error(ar1(0.8, members=2, seed=2), da).max()) < 0.05
    with pytest.raises(ValueError, match="lag must be"):
        lag_correlation(da, 0)


def test_flicker_of_known_processes():
    """E|x_t - x_{t-1}| = 2 sqrt((1 - rho) / pi) for a unit-variance AR(1)."""
    for rho in (0.0, 0.9):
        assert float(flicker(ar1(rho))) == pytest.approx(2 * np.sqrt((1 - rho) / np.pi),
                                                         rel=0.03)
    ratio = flicker_ratio(ar1(0.0, members=2, seed=3), ar1(0.9))
    assert ratio == pytest.approx(np.sqrt(1 / 0.1), rel=0.05)
    assert flicker(ar1(0.5, members=3)).dims == ("member",)


def test_accumulation_and_its_crps_hand_values():
    """Members accumulating to 0, 1 and 3 mm against 2 mm: ecdf 2/3, fair 1/3 (hand check)."""
    n = 12  # one hour of 5-min frames
    totals = np.array([0.0, 1.0, 3.0])
    rates = totals[:, None, None, None] * np.ones((3, n, 2, 2))  # mm/h held for the hour
    fc = xr.DataArray(rates, dims=("member", "time", "y", "x"), coords={"time": TIMES[:n]})
    ob = xr.DataArray(2.0 * np.ones((n, 2, 2)), dims=("time", "y", "x"),
                      coords={"time": TIMES[:n]})
    acc = accumulate(fc, 1.0)
    assert acc.sizes["time"] == 1 and acc.attrs["units"] == "mm"
    np.testing.assert_allclose(acc.isel(time=0, y=0, x=0).values, totals)
    assert acc["time"].values[0] == TIMES[n - 1]
    assert accumulation_crps(fc, ob, 1.0, estimator="ecdf") == pytest.approx(2 / 3)
    assert accumulation_crps(fc, ob, 1.0) == pytest.approx(1 / 3)
    half = accumulate(ob, 0.5)
    assert half.sizes["time"] == 2 and float(half.max()) == pytest.approx(1.0)
    ob_gap = ob.copy()
    ob_gap[3, 0, 0] = np.nan  # a missing frame spoils its block only there
    assert np.isnan(accumulate(ob_gap, 0.5).values[0, 0, 0])
    with pytest.raises(ValueError, match="whole number"):
        accumulate(ob, 7 / 60)


def test_per_frame_ensemble_is_underdispersed_in_hourly_sums():
    """Truth and trajectory members share the AR(1, 0.9) law; per-frame members have the right
    marginals but independent frames: their hourly sums are too narrow, so a worse CRPS."""
    truth = ar1(0.9, seed=10)
    trajectories = ar1(0.9, members=8, seed=11)
    per_frame = ar1(0.0, members=8, seed=12)
    crps_traj = accumulation_crps(trajectories, truth, 1.0)
    crps_frame = accumulation_crps(per_frame, truth, 1.0)
    assert crps_traj < 0.92 * crps_frame  # theory (Gaussian sums, sd 0.74 vs 0.29): ~0.87
    spread = {name: float(accumulate(e, 1.0).std("member").mean())
              for name, e in (("traj", trajectories), ("frame", per_frame))}
    assert spread["frame"] < 0.5 * spread["traj"]
    scores = temporal_scores(per_frame, truth)
    assert scores["flicker_ratio"] > 2 and scores["lag1_corr_error"] > 0.8
    assert set(scores) >= {"crps_fair_30min_accum", "crps_fair_60min_accum", "lag3_corr_error"}


def test_difference_spectrum_sees_where_changes_are():
    """Frame changes at the finest scale only put their power at high wavenumbers."""
    rng = np.random.default_rng(0)
    static = np.cumsum(np.cumsum(rng.standard_normal((32, 32)), 0), 1)  # smooth field
    frames = static[None] + 0.1 * rng.standard_normal((6, 32, 32))  # white-noise changes
    da = xr.DataArray(frames, dims=("time", "y", "x"), coords={"time": TIMES[:6]})
    spec = difference_spectrum(da)
    assert spec.dims == ("freq",)
    assert float(spec[-3:].mean()) == pytest.approx(float(spec[1:4].mean()), rel=0.5)
    full = difference_spectrum(xr.DataArray(np.cumsum(frames, 0), dims=da.dims,
                                            coords=da.coords))
    assert float(full.sum()) > float(spec.sum())
