"""Baselines: interpolation geometry, quantile mapping vs xsdba, seeded RainFARM, registry."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from precipdiff.baselines import QuantileMapping, get_baseline, interpolate
from precipdiff.errors import ConfigError


def _field(values: np.ndarray, *, res: float = 0.1) -> xr.DataArray:
    nt, ny, nx = values.shape
    return xr.DataArray(
        values, dims=("time", "lat", "lon"),
        coords={"time": pd.date_range("2001-01-01", periods=nt, freq="D"),
                "lat": 30.0 + res * np.arange(ny), "lon": -100.0 + res * np.arange(nx)},
        attrs={"units": "mm/h"})


def _gamma_rain(rng, n: int, *, shape: float, scale: float, p_wet: float) -> np.ndarray:
    return np.where(rng.random(n) < p_wet, rng.gamma(shape, scale, n), 0.0)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
def test_interpolation_geometry_and_clipping(rng, method):
    lr = _field(np.where(rng.random((2, 6, 5)) > 0.5, rng.gamma(0.5, 4.0, (2, 6, 5)), 0.0))
    lr[0, 2, 2] = np.nan
    hr = get_baseline(method)(lr, 4)
    assert hr.shape == (2, 24, 20)
    # nested cell centres: fine centres average to the coarse centre
    np.testing.assert_allclose(hr.lat.values.reshape(6, 4).mean(1), lr.lat.values, atol=1e-9)
    assert float(hr.min()) >= 0.0
    assert hr[0, 8:12, 8:12].isnull().all()
    if method == "nearest":
        np.testing.assert_allclose(hr[1, ::4, ::4].values, lr[1].values)


def _xsdba_eqm(ref: np.ndarray, hist: np.ndarray, sim: np.ndarray, nq: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import xsdba

        def series(v):
            t = pd.date_range("2000-01-01", periods=v.size, freq="D")
            return xr.DataArray(v, dims="time", coords={"time": t}, attrs={"units": "mm/d"})

        eqm = xsdba.EmpiricalQuantileMapping.train(series(ref), series(hist), nquantiles=nq,
                                                   group="time", kind="*")
        return eqm.adjust(series(sim), interp="nearest", extrapolation="constant").values


def test_eqm_matches_xsdba_on_gamma_rain(rng):
    pytest.importorskip("xsdba")
    n, nq = 6000, 50
    ref = _gamma_rain(rng, n, shape=0.8, scale=5.0, p_wet=0.4)
    hist = _gamma_rain(rng, n, shape=0.6, scale=3.0, p_wet=0.4)
    sim = _gamma_rain(rng, n, shape=0.6, scale=3.0, p_wet=0.4)
    theirs = _xsdba_eqm(ref, hist, sim, nq)
    qm = QuantileMapping(method="eqm", pooled=True, n_quantiles=nq, wet_threshold=None)
    ours = qm.fit(_field(hist[:, None, None]), _field(ref[:, None, None]))
    ours = ours.apply(_field(sim[:, None, None])).values.ravel()
    # xsdba's factor Q_ref/Q_src is 0/0 = NaN (x = 0 there) or c/0 = inf where a training
    # quantile is 0: tiny sim values next to such a node come out NaN or inf. We skip
    # zero nodes instead. Everywhere else the two agree value by value.
    finite = np.isfinite(theirs)
    assert (sim[np.isnan(theirs)] == 0).all()
    assert np.isinf(theirs).mean() < 0.01 and (sim[np.isinf(theirs)] < 0.01).all()
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-10, atol=1e-12)
    levels = np.linspace(0.65, 0.98, 12)  # interior quantiles of the wet part
    theirs_z = np.where(np.isinf(theirs), sim, np.nan_to_num(theirs))
    np.testing.assert_allclose(np.quantile(ours, levels), np.quantile(theirs_z, levels),
                               rtol=0.02)
    # and both bring the source's quantiles to the reference's
    np.testing.assert_allclose(np.quantile(ours, levels), np.quantile(ref, levels), rtol=0.15)


def test_frequency_adaptation_and_drizzle(rng):
    n = 20000
    ref = _gamma_rain(rng, n, shape=0.8, scale=5.0, p_wet=0.4)
    too_dry = _gamma_rain(rng, n, shape=0.8, scale=3.0, p_wet=0.2)
    qm = QuantileMapping(pooled=True, n_quantiles=100, wet_threshold=0.1)
    out = qm.fit(_field(too_dry[:, None, None]), _field(ref[:, None, None]))
    out = out.apply(_field(too_dry[:, None, None])).values.ravel()
    # a too-dry source: its zeros stay 0 (they cannot be recreated), but the mean and the
    # upper tail move to the reference's
    assert abs(out.mean() - ref.mean()) < 0.5 * abs(too_dry.mean() - ref.mean())
    np.testing.assert_allclose(np.quantile(out, 0.97), np.quantile(ref, 0.97), rtol=0.1)
    drizzly = ref + 0.05 * (ref == 0)  # source with drizzle everywhere
    qm2 = QuantileMapping(pooled=True, wet_threshold=0.1).fit(_field(drizzly[:, None, None]),
                                                              _field(ref[:, None, None]))
    corrected = qm2.apply(_field(drizzly[:, None, None])).values.ravel()
    assert (corrected == 0).mean() == pytest.approx((ref < 0.1).mean(), abs=0.01)


@pytest.mark.parametrize("method", ["eqm", "qdm"])
def test_per_pixel_mapping_corrects_each_pixel(rng, method):
    nt = 400
    scale = np.array([[1.0, 2.0], [4.0, 8.0]])
    ref = rng.gamma(0.7, 3.0, (nt, 2, 2)) * scale
    src = rng.gamma(0.7, 3.0, (nt, 2, 2)) * 0.5
    src[5, 0, 0] = np.nan
    qm = QuantileMapping(method=method, n_quantiles=40, wet_threshold=None)
    out = qm.fit(_field(src), _field(ref)).apply(_field(src))
    ratio = out.mean("time") / _field(ref).mean("time")
    np.testing.assert_allclose(ratio.values, 1.0, rtol=0.15)
    assert np.isnan(out[5, 0, 0])
    with pytest.raises(Exception, match="fitted on"):
        qm.apply(_field(src[:, :1, :]))


def test_rainfarm_seeded_ensemble(rng):
    pytest.importorskip("pysteps")
    lr = _field(rng.gamma(0.6, 3.0, (2, 8, 8)))
    lr[1, 0, 0] = np.nan
    a = get_baseline("rainfarm")(lr, 4, members=3, rng=7)
    b = get_baseline("rainfarm")(lr, 4, members=3, rng=7)
    assert a.dims == ("member", "time", "lat", "lon") and a.shape == (3, 2, 32, 32)
    xr.testing.assert_identical(a, b)
    assert not np.allclose(a[0], a[1], equal_nan=True)
    assert a[:, 1, :4, :4].isnull().all() and float(a.min()) >= 0
    # RainFARM conserves the coarse-cell means
    block = a[0, 0].values.reshape(8, 4, 8, 4).mean((1, 3))
    np.testing.assert_allclose(block, lr[0].values, rtol=1e-4, atol=1e-6)


def test_rainfarm_without_pysteps_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pysteps.downscaling.rainfarm", None)
    with pytest.raises(ConfigError, match=r"\[baselines\]"):
        get_baseline("rainfarm")(_field(np.ones((1, 4, 4))), 2)


def test_unknown_baseline():
    with pytest.raises(ConfigError, match="bilinear"):
        get_baseline("kriging")
    assert interpolate is get_baseline("bilinear").func


def test_pooled_mapping_round_trips_through_json(rng):
    import json

    src = _gamma_rain(rng, 6 * 8 * 8, shape=0.8, scale=2.0, p_wet=0.3).reshape(6, 8, 8)
    ref = _gamma_rain(rng, 6 * 8 * 8, shape=0.8, scale=5.0, p_wet=0.4).reshape(6, 8, 8)
    qm = QuantileMapping(pooled=True, n_quantiles=30).fit(_field(src), _field(ref))
    back = QuantileMapping.from_dict(json.loads(json.dumps(qm.to_dict())))
    new = src[:2] * 1.5
    expected = qm.apply(_field(new)).values  # float64 here, float32 from apply_values
    np.testing.assert_allclose(back.apply_values(new), expected, rtol=1e-6)
    np.testing.assert_allclose(back.apply_values(new[0]), expected[0], rtol=1e-6)
    assert (expected > 0).any() and not np.allclose(expected, new)
    with pytest.raises(ConfigError, match="pooled"):
        QuantileMapping(pooled=False).fit(_field(src), _field(ref)).to_dict()
    bad = {**qm.to_dict(), "q_src": qm.to_dict()["q_src"][::-1]}
    with pytest.raises(ConfigError, match="non-decreasing"):
        QuantileMapping.from_dict(bad)
    with pytest.raises(ConfigError, match="malformed"):
        QuantileMapping.from_dict({"method": "eqm"})


def test_rainfarm_uniform_fields_stay_uniform(rng):
    """A coarse field without structure (dry, or one value everywhere) has no spectral slope:
    pysteps fails on it; the baseline returns the uniform field (its coarse means kept)."""
    pytest.importorskip("pysteps")
    values = np.stack([np.zeros((8, 8)), np.full((8, 8), 2.5), rng.gamma(0.6, 3.0, (8, 8))])
    out = get_baseline("rainfarm")(_field(values), 4, members=2, rng=1)
    assert float(abs(out[:, 0]).max()) == 0.0
    np.testing.assert_allclose(out[:, 1].values, 2.5)
    assert float(out[:, 2].std()) > 0
