"""``--time START/END``: parsing, inclusive ends at the precision written, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from precipdiff.errors import ConfigError
from precipdiff.io import write_netcdf
from precipdiff.pipeline.timesel import (
    EmptySelectionError,
    TimeRange,
    as_time_range,
    parse_time_range,
)

from .conftest import coarse_field

TIMES = np.array(["2019-06-10T00:00", "2019-06-10T00:10", "2019-06-10T00:59:30",
                  "2019-06-10T01:00", "2019-06-11T00:00"], "datetime64[ns]")


@pytest.mark.parametrize(("text", "kept"), [
    ("2019-06-10T00:10/", [1, 2, 3, 4]),
    ("/2019-06-10T01:00", [0, 1, 2, 3]),
    ("2019-06-10T00:10/2019-06-10T00:59", [1, 2]),   # the end minute is kept whole
    ("/2019-06-10", [0, 1, 2, 3]),                     # a date alone: its whole day
    ("2019-06-10T00:10:00Z/2019-06-10T01", [1, 2, 3]),
    ("2019-06/2019-06", [0, 1, 2, 3, 4]),
    (" 2019-06-10 00:10 / ", [1, 2, 3, 4]),
])
def test_parse_and_mask(text: str, kept: list[int]) -> None:
    rng = parse_time_range(text)
    assert np.flatnonzero(rng.mask(TIMES)).tolist() == kept


@pytest.mark.parametrize(("text", "message"), [
    ("2019-06-10", "must be START/END"),
    ("a/b/c", "must be START/END"),
    ("/", "selects nothing"),
    ("yesterday/", "'yesterday' is not an ISO 8601 date-time"),
    ("2019-13-01/", "not a valid date-time"),
    ("2019-06-10T00:10+02:00/", "has a UTC offset"),
    ("2019-06-11/2019-06-10", "START 2019-06-11 is after END 2019-06-10"),
])
def test_malformed_values(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_time_range(text)
    assert "\n" not in str(err.value) and str(err.value).startswith("--time")


def test_select_records_and_empty_selection_names_the_file() -> None:
    src = coarse_field(ny=4, nx=4, n_time=2)   # 00:00 and 00:30
    one = parse_time_range("2019-06-10T00:30/").select(src, "a.nc")
    assert one["time"].values.tolist() == src["time"].values[1:].tolist()
    assert one.attrs["time_selection"] == "2019-06-10T00:30/"
    with pytest.raises(EmptySelectionError) as err:
        parse_time_range("2019-06-10T05:00/").select(src, "a.nc")
    assert str(err.value) == ("--time 2019-06-10T05:00/: no time step of a.nc in "
                              "[2019-06-10T05:00, ..]; the file covers "
                              "2019-06-10T00:00..2019-06-10T00:30")


def test_as_time_range_from_slices() -> None:
    assert as_time_range(None) is None
    rng = as_time_range(slice("2019-06-10T00:10", None))
    assert isinstance(rng, TimeRange) and rng.text == "2019-06-10T00:10/"
    rng = as_time_range(slice(None, np.datetime64("2019-06-10T01:00")))
    assert np.flatnonzero(rng.mask(TIMES)).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="without a step"):
        as_time_range(slice("2019", "2020", 2))
    with pytest.raises(ConfigError, match="expected 'START/END'"):
        as_time_range(5)


# ----------------------------------------------------------------------------- through the CLI


def _cli(tiny_weights, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "precipdiff", "-q", "predict", *args,
           "--weights-correct", str(tiny_weights["correct"]),
           "--weights-downscale", str(tiny_weights["downscale"]),
           "--members", "2", "--steps", "2", "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_single_file(tiny_weights, tmp_path) -> None:
    src = write_netcdf(coarse_field(ny=6, nx=8, n_time=2).rename("precip"), tmp_path / "src.nc")
    out = tmp_path / "out.nc"
    res = _cli(tiny_weights, str(src), "--output", str(out), "--time", "2019-06-10T00:30/")
    assert res.returncode == 0, res.stderr
    ds = xr.open_dataset(out)
    assert ds["time"].values.tolist() == [np.datetime64("2019-06-10T00:30", "ns").tolist()]
    assert ds.attrs["time_selection"] == "2019-06-10T00:30/"
    out.unlink()
    res = _cli(tiny_weights, str(src), "--output", str(out), "--time", "2019-06-10T05:00/")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert ("no time step of src.nc in [2019-06-10T05:00, ..]; the file covers "
            "2019-06-10T00:00..2019-06-10T00:30") in res.stderr
    res = _cli(tiny_weights, str(src), "--output", str(out), "--time", "tomorrow/")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "'tomorrow' is not an ISO 8601 date-time" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.nc"]


def test_cli_archive_skips_inputs_outside(tiny_weights, tmp_path) -> None:
    """Archive mode: an input with no step in --time is skipped (no output, not an error);
    a selection that leaves no step of any input is a one-line error leaving nothing."""
    field = coarse_field(ny=6, nx=8, n_time=1).rename("precip")
    files = [write_netcdf(field.assign_coords(time=field["time"] + np.timedelta64(k, "h")),
                          tmp_path / f"f{k}.nc") for k in range(2)]
    out = tmp_path / "arch"
    res = _cli(tiny_weights, *map(str, files), "--archive", "--output", str(out),
               "--time", "/2019-06-10T00:30")
    assert res.returncode == 0, res.stderr
    written = sorted(p.name for p in out.glob("*.precipdiff.nc"))
    assert written == ["f0.nc.precipdiff.nc"]
    assert xr.open_dataset(out / written[0]).attrs["time_selection"] == "/2019-06-10T00:30"
    res = _cli(tiny_weights, *map(str, files), "--archive", "--output", str(tmp_path / "none"),
               "--time", "2019-06-11/")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "--time 2019-06-11/: no time step of any of the 2 input(s)" in res.stderr
    assert not (tmp_path / "none").exists()
