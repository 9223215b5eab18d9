"""Temporal refinement of a coarse record (30-min → sub-steps) before downscaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from precipdiff.errors import ConfigError, PrecipdiffError
from precipdiff.pipeline.time_refine import conserve_interval, refine_time


def _record(n: int = 3, step_min: int = 30, shift: int = 4, size: int = 32) -> xr.DataArray:
    """A square storm moving ``shift`` cells east per interval."""
    values = np.zeros((n, size, size), np.float32)
    for i in range(n):
        values[i, 10:18, 4 + shift * i:12 + shift * i] = 6.0
    times = pd.date_range("2024-07-01T12:00", periods=n, freq=f"{step_min}min")
    return xr.DataArray(values, dims=("time", "lat", "lon"),
                        coords={"time": times, "lat": 40 + 0.1 * np.arange(size),
                                "lon": -100 + 0.1 * np.arange(size)},
                        attrs={"units": "mm/h"})


@pytest.mark.parametrize("method", ["motion", "linear"])
def test_sub_steps_keep_every_interval_mean_and_the_grid(method):
    src = _record()
    out = refine_time(src, 6, method=method, conserve=True)
    assert out.sizes["time"] == 18 and out.attrs["time_factor"] == 6
    step = np.diff(out["time"].values)
    assert (step == np.timedelta64(5, "m")).all()
    assert out["time"].values[0] == src["time"].values[0]
    np.testing.assert_array_equal(out["lat"].values, src["lat"].values)
    means = out.values.reshape(3, 6, 32, 32).mean(axis=1)
    np.testing.assert_allclose(means, src.values, rtol=1e-5, atol=1e-5)
    assert (out.values >= 0).all() and out.attrs["units"] == "mm/h"


def test_motion_moves_the_storm_instead_of_fading_it():
    """Sub-step 1 of 2 in the first interval lies a quarter of the way from its centre to the
    next interval's: the moved storm is 2 cells on, the linear blend two faded copies."""
    src = _record(n=2, shift=8)  # the 8-cell storm moves by its own width
    quarter = {m: refine_time(src, 2, method=m, conserve=False).values[1] for m in
               ("motion", "linear")}
    cols = np.arange(32)
    start = float((src.values[0].sum(axis=0) * cols).sum() / src.values[0].sum())
    moved = quarter["motion"]
    assert 1.0 < float((moved.sum(axis=0) * cols).sum() / moved.sum()) - start < 3.0
    assert moved.max() > 5.0 and (moved > 1).sum() <= 1.25 * 64
    assert quarter["linear"].max() == pytest.approx(4.5) and (quarter["linear"] > 1).sum() == 128


def test_dry_stays_dry_and_missing_stays_missing():
    src = _record()
    src[:, 0, 0] = np.nan
    out = refine_time(src, 3, method="motion")
    assert np.isnan(out.values[:, 0, 0]).all()
    dry = (src.values == 0)
    assert (out.values.reshape(3, 3, 32, 32)[np.broadcast_to(dry[:, None], (3, 3, 32, 32))]
            == 0).all()


def test_conservation_spreads_a_vanished_cell_evenly():
    sub = np.zeros((4, 1, 1))
    out = conserve_interval(sub, np.array([[2.0]]))
    np.testing.assert_allclose(out[:, 0, 0], 2.0)


def test_bad_requests_are_refused_with_the_reason():
    with pytest.raises(PrecipdiffError, match="at least 2 time steps"):
        refine_time(_record(n=1), 6)
    with pytest.raises(ConfigError, match="--time-interp"):
        refine_time(_record(), 2, method="cubic")
    assert refine_time(_record(), 1) is not None


# ----------------------------------------------------------------------------- through the CLI


def test_cli_time_factor_writes_the_sub_steps(tiny_weights, tmp_path):
    import os
    import subprocess
    import sys

    from precipdiff.io import write_netcdf

    from .conftest import coarse_field

    src = write_netcdf(coarse_field(ny=6, nx=8, n_time=2).rename("precip"), tmp_path / "src.nc")
    out = tmp_path / "out.nc"
    cmd = [sys.executable, "-m", "precipdiff", "-q", "predict", str(src), "--output", str(out),
           "--weights-correct", str(tiny_weights["correct"]),
           "--weights-downscale", str(tiny_weights["downscale"]),
           "--members", "2", "--steps", "2", "--device", "cpu", "--time-factor", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    ds = xr.open_dataset(out)
    t0 = np.datetime64("2019-06-10T00:00", "ns")
    assert ds.sizes["time"] == 6 and ds["time"].values[0] == t0
    assert (np.diff(ds["time"].values) == np.timedelta64(10, "m")).all()
    assert ds.attrs["time_factor"] == "3" and "motion" in ds.attrs["time_refinement"]
    src_mean = ds["source_lr"].values.reshape(2, 3, *ds["source_lr"].shape[1:]).mean(axis=1)
    given = xr.open_dataset(src)["precip"].values
    np.testing.assert_allclose(src_mean, given, rtol=1e-4, atol=1e-5)
    res = subprocess.run([*cmd[:-2], "--time-factor", "2", "--time-interp", "cubic"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and "--time-interp 'cubic' is unknown" in res.stderr


@pytest.mark.parametrize("size", [3, 6, 12])
def test_motion_on_small_grids_runs(size):
    """pysteps' Proesmans crashes the process on a pyramid deeper than the field."""
    src = _record(n=2, shift=1, size=32).isel(lat=slice(8, 8 + size), lon=slice(2, 2 + size))
    out = refine_time(src, 2, method="motion")
    assert out.shape == (4, size, size) and np.isfinite(out.values).all()
