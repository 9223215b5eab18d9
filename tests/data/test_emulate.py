"""Tests for precipdiff.data.emulate: determinism, nesting, bias direction, missing data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

from precipdiff import grid
from precipdiff.data import synth
from precipdiff.data.emulate import EmulatorParams, emulate_satellite
from precipdiff.errors import ConfigError

QUIET = dict(displacement_sigma=0.0, noise_sigma=0.0, miss_probability=0.0,
             false_alarm_probability=0.0, smoothing_sigma=0.0, quantum=0.0,
             detection_threshold=0.0)


@pytest.fixture(scope="module")
def scene() -> xr.DataArray:
    return synth.synthetic_scene(rng=np.random.default_rng(11), n_time=2, shape=(120, 160))


def test_seeded_determinism(scene):
    a = emulate_satellite(scene, rng=np.random.default_rng(1))
    b = emulate_satellite(scene, rng=np.random.default_rng(1))
    c = emulate_satellite(scene, rng=np.random.default_rng(2))
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a.values, c.values)


def test_grid_nests_with_coarsen(scene):
    out = emulate_satellite(scene, factor=10, rng=np.random.default_rng(0))
    ref = grid.coarsen(scene, 10, method="mean")
    assert out.dims == scene.dims and out.shape == (2, 12, 16)
    for d in out.dims:
        np.testing.assert_array_equal(out[d].values, ref[d].values)
    assert out.attrs["units"] == "mm/h" and out.dtype == np.float32
    assert (out.values >= 0).all()
    with pytest.raises(Exception, match="factor 7"):
        emulate_satellite(scene, factor=7, rng=np.random.default_rng(0))


def test_bias_direction_drizzle_over_heavy_under(scene):
    params = EmulatorParams(**QUIET)  # bias only
    out = emulate_satellite(scene, factor=4, params=params, rng=np.random.default_rng(0))
    ref = grid.coarsen(scene, 4, method="mean").values
    light = (ref > 0.05) & (ref < 0.5 * params.bias_pivot)
    heavy = ref > 3 * params.bias_pivot
    assert light.sum() > 20 and heavy.sum() > 20
    assert (out.values[light] > ref[light]).all()
    assert (out.values[heavy] < ref[heavy]).all()
    # with default (noisy) parameters the direction holds on average
    noisy = emulate_satellite(scene, factor=4, rng=np.random.default_rng(0)).values
    assert noisy[light].mean() > ref[light].mean() and noisy[heavy].mean() < ref[heavy].mean()


def test_identity_parameters_give_mean_pooling(scene):
    params = EmulatorParams(**QUIET, bias_exponent=1.0)
    out = emulate_satellite(scene, factor=8, params=params, rng=np.random.default_rng(0))
    np.testing.assert_allclose(out.values, grid.coarsen(scene, 8, method="mean").values,
                               rtol=1e-6)


def test_missing_stays_missing(scene):
    hr = scene.copy()
    hr[:, :30, :40] = np.nan  # exactly coarse cells [0:3, 0:4]
    out = emulate_satellite(hr, factor=10, rng=np.random.default_rng(3)).values
    expected = np.zeros(out.shape, dtype=bool)
    expected[:, :3, :4] = True
    np.testing.assert_array_equal(np.isnan(out), expected)


def test_params_validation_and_fields():
    with pytest.raises(ConfigError, match="miss_probability"):
        EmulatorParams(miss_probability=1.5)
    with pytest.raises(ConfigError, match="bias_exponent"):
        EmulatorParams(bias_exponent=0)
    with pytest.raises(ConfigError, match="smoothing_sigma"):
        EmulatorParams(smoothing_sigma=float("nan"))
    d = EmulatorParams().to_dict()
    assert EmulatorParams(**d) == EmulatorParams()
    assert all(f.name in (EmulatorParams.__doc__ or "") for f in dataclasses.fields(EmulatorParams))
