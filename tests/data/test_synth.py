"""Tests for precipdiff.data.synth: reproducibility, intermittency, spectrum, time correlation."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.data import synth
from precipdiff.errors import ConfigError
from precipdiff.grid import Grid


def rapsd_slope(f: np.ndarray, kmin: float = 1 / 64, kmax: float = 1 / 4) -> float:
    """Log-log slope of the radially averaged power spectrum between kmin and kmax (cyc/px)."""
    ny, nx = f.shape
    power = np.abs(np.fft.fft2(f - f.mean())) ** 2
    k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]).ravel()
    bins = np.arange(1, min(ny, nx) // 2) / max(ny, nx)
    idx = np.digitize(k, bins)
    n = np.maximum(np.bincount(idx), 1)
    ps, kc = np.bincount(idx, power.ravel()) / n, np.bincount(idx, k) / n
    sel = (kc > kmin) & (kc < kmax) & (ps > 0)
    return float(np.polyfit(np.log(kc[sel]), np.log(ps[sel]), 1)[0])


def test_seed_reproducible_and_nonnegative():
    a = synth.synthetic_rain(3, 64, 80, rng=np.random.default_rng(7))
    b = synth.synthetic_rain(3, 64, 80, rng=np.random.default_rng(7))
    c = synth.synthetic_rain(3, 64, 80, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (3, 64, 80) and a.dtype == np.float32 and (a >= 0).all()


@pytest.mark.parametrize("wet", [0.05, 0.15])
def test_wet_fraction_and_intensities(wet):
    r = synth.synthetic_rain(2, 128, 128, rng=np.random.default_rng(1), wet_fraction=wet)
    np.testing.assert_allclose((r >= 0.1).mean(axis=(1, 2)), wet, atol=0.005)
    assert ((r == 0) | (r >= 0.1)).all()
    np.testing.assert_allclose(np.median(r[r > 0]), 1.0, rtol=0.05)
    assert 10 < r.max() < 300  # tens of mm/h in heavy cells


def test_spectral_slope_close_to_configured():
    for slope in (-2.5, -3.0, -3.5):
        r = synth.synthetic_rain(4, 256, 256, rng=np.random.default_rng(2), spectral_slope=slope,
                                 evolution_time=1.0)  # nearly independent frames
        measured = np.mean([rapsd_slope(f) for f in r])
        assert abs(measured - slope) < 0.6, (slope, measured)


def test_advected_frames_are_correlated():
    v = (1.0, 3.0)
    r = synth.synthetic_rain(4, 128, 128, rng=np.random.default_rng(3), velocity=v)
    t = 2
    back = np.roll(r[0], (round(v[0] * t), round(v[1] * t)), axis=(0, 1))[16:-16, 16:-16]
    now = r[t][16:-16, 16:-16]
    lagrangian = np.corrcoef(back.ravel(), now.ravel())[0, 1]
    eulerian = np.corrcoef(r[0][16:-16, 16:-16].ravel(), now.ravel())[0, 1]
    assert lagrangian > 0.5 and lagrangian > eulerian + 0.1, (lagrangian, eulerian)


def test_scene_coords_units_times():
    da = synth.synthetic_scene(rng=np.random.default_rng(0), n_time=3, shape=(40, 50))
    assert da.dims == ("time", "lat", "lon") and da.shape == (3, 40, 50)
    assert da.attrs["units"] == "mm/h"
    g = Grid.from_dataarray(da)
    assert g.is_close(Grid(47.0, -122.8, 0.01, 0.01, 40, 50))
    assert (np.diff(da.time.values) == np.timedelta64(10, "m")).all()
    assert str(da.time.values[0]).startswith("2019-06-10T00:00")


def test_bad_parameters():
    with pytest.raises(ConfigError, match="wet_fraction"):
        synth.synthetic_rain(1, 32, 32, rng=np.random.default_rng(0), wet_fraction=1.5)
    with pytest.raises(ConfigError, match="spectral_slope"):
        synth.synthetic_rain(1, 32, 32, rng=np.random.default_rng(0), spectral_slope=1.0)
