"""Tests for precipdiff.data.transforms: round trip, clipping, monotonicity, types, config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from precipdiff.data.transforms import PrecipTransform
from precipdiff.errors import ConfigError

params = st.builds(
    PrecipTransform,
    scale=st.floats(0.01, 10.0),
    sigma=st.floats(0.1, 5.0),
)
rain = arrays(np.float64, st.integers(1, 50), elements=st.floats(0.0, 500.0))
reals = arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3))


@settings(max_examples=60, deadline=None)
@given(t=params, x=rain)
def test_roundtrip(t, x):
    np.testing.assert_allclose(t.inverse(t.forward(x)), x, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(t=params, y=reals)
def test_inverse_never_negative(t, y):
    out = t.inverse(y)
    assert (out >= 0).all()
    assert (t.forward(out) >= 0).all()


@settings(max_examples=60, deadline=None)
@given(t=params, x=rain)
def test_monotonic(t, x):
    xs = np.sort(x)
    assert (np.diff(t.forward(xs)) >= 0).all()
    ys = np.sort(t.forward(xs))
    assert (np.diff(t.inverse(ys)) >= 0).all()


def test_types_kept_and_nan_passes():
    t = PrecipTransform(scale=0.5, sigma=1.3)
    x = np.array([0.0, 1.0, np.nan, 20.0, -1.0], dtype="f4")
    y = t.forward(x)
    assert y.dtype == np.float32 and np.isnan(y[2]) and y[4] == 0
    ten = t.forward(torch.from_numpy(x))
    assert isinstance(ten, torch.Tensor) and ten.dtype == torch.float32
    np.testing.assert_allclose(ten.numpy(), y, rtol=1e-6)
    assert torch.isnan(t.inverse(ten)[2])
    da = xr.DataArray(x, dims="lat", coords={"lat": np.arange(5.0)}, attrs={"units": "mm/h"})
    yd = t.forward(da)
    assert isinstance(yd, xr.DataArray) and yd.attrs["units"] == "1" and "lat" in yd.coords
    back = t.inverse(yd)
    assert back.attrs["units"] == "mm/h"
    np.testing.assert_allclose(back.values, np.where(x < 0, 0, x), rtol=1e-6)
    assert isinstance(t.forward(2.0), float | np.floating)


def test_dict_roundtrip_and_validation():
    t = PrecipTransform(scale=0.1, sigma=1.7)
    d = json.loads(json.dumps(t.to_dict()))
    assert PrecipTransform.from_dict(d) == t
    assert PrecipTransform.from_dict({"scale": 1, "sigma": 2}) == PrecipTransform(1.0, 2.0)
    for bad in (
        {"scale": 1.0, "sigma": 1.0, "offset": 0},
        {"scale": 1.0},
        {"kind": "sqrt", "scale": 1.0, "sigma": 1.0},
        {"scale": -1.0, "sigma": 1.0},
        {"scale": "1", "sigma": 1.0},
        {"scale": 1.0, "sigma": float("nan")},
        [1.0, 1.0],
    ):
        with pytest.raises(ConfigError):
            PrecipTransform.from_dict(bad)


def test_fit(rng):
    x = rng.gamma(0.2, 5.0, size=(50, 50))
    x[0, 0] = np.nan
    t = PrecipTransform.fit(x, scale=0.5)
    assert t.scale == 0.5
    np.testing.assert_allclose(t.sigma, np.nanstd(np.log1p(x / 0.5)))
    assert PrecipTransform.fit(torch.from_numpy(x)) == PrecipTransform.fit(xr.DataArray(x))
    with pytest.raises(ConfigError, match="zero spread"):
        PrecipTransform.fit(np.zeros(10))
    with pytest.raises(ConfigError, match="no finite"):
        PrecipTransform.fit(np.full(3, np.nan))
