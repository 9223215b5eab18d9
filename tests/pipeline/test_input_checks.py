"""Inputs are checked before any work: garbage is refused in one line, safe fixes are logged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io import write_netcdf
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.inputs import MAX_RATE_MM_H, check_input
from precipdiff.pipeline.output import predict_to_file

from .conftest import coarse_field

FAST = SamplerSettings(sampler="euler", steps=2)
OPTS = PredictOptions(members=2, correct=FAST, downscale=FAST, member_batch=2)


def _named(da: xr.DataArray, **attrs) -> xr.DataArray:
    return da.assign_attrs(source_file="/data/in.nc", variable="precip", **attrs)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.inf, "infinite"),
        (-np.inf, "infinite"),
        (1e6, "above 500 mm/h"),
        (-5.0, "negative values"),
    ],
)
def test_impossible_values_are_refused(value: float, match: str) -> None:
    src = _named(coarse_field(n_time=1))
    src.values[0, 5, 5] = value
    with pytest.raises(InputFileError, match=match) as err:
        check_input(src)
    assert "/data/in.nc" in str(err.value) and "'precip'" in str(err.value)


def test_accumulations_are_bounded_by_their_mean_rate() -> None:
    """3-h amounts: 1400 mm is a mean of 467 mm/h (kept, as a rate), 1600 mm is refused."""
    src = _named(coarse_field(n_time=1), units="mm", accumulation="3h")
    src.values[0, 0, 0] = 1400.0
    rate = check_input(src)
    assert rate.attrs["units"] == "mm/h" and rate.attrs["accumulation_hours"] == 3.0
    np.testing.assert_allclose(rate.values[0, 0, 0], 1400.0 / 3, rtol=1e-6)
    src.values[0, 0, 0] = 1600.0
    with pytest.raises(InputFileError, match="3-h accumulation above 500"):
        check_input(src)
    assert MAX_RATE_MM_H == 500.0


def test_amount_without_period_and_unknown_units_are_refused() -> None:
    with pytest.raises(InputFileError, match="without an 'accumulation' period"):
        check_input(_named(coarse_field(n_time=1), units="mm"))
    with pytest.raises(InputFileError, match="units 'K'"):
        check_input(_named(coarse_field(n_time=1), units="K"))


def test_duplicated_times_refused_unsorted_sorted(caplog: pytest.LogCaptureFixture) -> None:
    src = _named(coarse_field(n_time=2))
    dup = src.assign_coords(time=[src["time"].values[0]] * 2)
    with pytest.raises(InputFileError, match="repeated time"):
        check_input(dup)
    backwards = src.isel(time=[1, 0])
    with caplog.at_level(logging.WARNING):
        fixed = check_input(backwards)
    assert (np.diff(fixed["time"].values) > np.timedelta64(0)).all()
    np.testing.assert_array_equal(fixed.values, src.values)
    assert "out of order" in caplog.text


def test_pipeline_refuses_before_any_work(tiny_weights, tmp_path: Path) -> None:
    """Before the checks, 1e6 mm/h went through the models into a 1e6 mm/h output."""
    pipe = Pipeline(Stage.load(tiny_weights["correct"]), Stage.load(tiny_weights["downscale"]))
    src = _named(coarse_field(ny=6, nx=8, n_time=1))
    src.values[0, 1, 1] = 1e6
    with pytest.raises(InputFileError, match="physically impossible"):
        pipe.predict(src, OPTS)
    with pytest.raises(InputFileError, match="physically impossible"):
        predict_to_file(pipe, src, tmp_path / "out.nc", OPTS)
    assert list(tmp_path.iterdir()) == []


def test_unsorted_input_gives_monotonic_output(tiny_weights, tmp_path: Path) -> None:
    pipe = Pipeline(None, Stage.load(tiny_weights["downscale"]))
    src = _named(coarse_field(ny=6, nx=8, n_time=2)).isel(time=[1, 0])
    path = predict_to_file(pipe, src, tmp_path / "out.nc", OPTS, thresholds=())
    with xr.open_dataset(path) as ds:
        assert (np.diff(ds["time"].values) > np.timedelta64(0)).all()
        np.testing.assert_array_equal(ds["source_lr"].values, src.sortby("time").values)


# ------------------------------------------------------------------ through the real CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("case", ["inf", "huge", "duplicate"])
def test_cli_refuses_bad_input_in_one_line(case: str, tiny_weights, tmp_path: Path) -> None:
    src = coarse_field(ny=6, nx=8, n_time=2)
    if case == "inf":
        src.values[0, 1, 1] = np.inf
    elif case == "huge":
        src.values[0, 1, 1] = 1e6
    else:
        src = src.assign_coords(time=[src["time"].values[0]] * 2)
    path = write_netcdf(src.rename("precip"), tmp_path / f"{case}.nc")
    out = tmp_path / "out"
    res = _cli("predict", str(path), "--output", str(out / "pred.nc"),
               "--weights-correct", str(tiny_weights["correct"]),
               "--weights-downscale", str(tiny_weights["downscale"]),
               "--members", "2", "--steps", "2", "--device", "cpu")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"{case}.nc" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.nc"]
