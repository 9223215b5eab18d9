"""``precipdiff predict`` then ``precipdiff evaluate`` on a projected grid, through the real CLI.

A tiny CF NetCDF on the RADOLAN polar-stereographic CRS (x/y in metres, a ``grid_mapping``
variable): a 4 x 4 source of 10-km cells holding hourly amounts (mm, ``accumulation="1h"``),
and as truth a RADOLAN RW archive of 40 x 40 1-km cells on the same projected grid.
``predict --stages downscale`` with the shipped weights writes ``(member, time, y, x)`` mean
rates with coarse ``(y_lr, x_lr)``, ``time_bnds`` and a ``crs`` variable; ``evaluate`` reads the
truth with the RADOLAN reader, turns its hourly amounts into mean rates, matches it by x/y and
CRS and runs the baselines on the projected coarse grid.
"""

from __future__ import annotations

import io as bytes_io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precipdiff.evaluation.run import NEAREST, OURS_II_ONLY
from precipdiff.io import write_netcdf
from precipdiff.io._stereo import proj4

pytest.importorskip("pyproj")

CRS = proj4(lon_0=10.0, lat_ts=60.0, radius_m=6370040.0)
X0, Y0 = 100_000.0, -4_200_000.0  # outer corner of the south-west cell, metres
TIMES = np.array(["2022-10-18T00:50", "2022-10-18T01:50"], "datetime64[ns]")  # RW: HH:50


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _field(n: int, cell: float, seed: int, *, crs: str = CRS, scale: float = 1.0,
           units: str = "m", accumulation: str | None = None) -> xr.DataArray:
    """Gamma rain on an ``n`` x ``n`` grid of ``cell``-metre cells, x/y in ``units``: mm/h, or
    mm over ``accumulation``."""
    data = np.random.default_rng(seed).gamma(0.6, 3.0, (TIMES.size, n, n)).astype(np.float32)
    data[data < 0.8] = 0.0
    centres = (np.arange(n) + 0.5) * cell
    da = xr.DataArray(data, dims=("time", "y", "x"), name="precip",
                      coords={"time": TIMES, "y": (Y0 + centres) / scale,
                              "x": (X0 + centres) / scale},
                      attrs={"units": "mm/h", "crs": crs, "xy_units": units})
    if accumulation:
        da.attrs.update(units="mm", accumulation=accumulation)
    da["x"].attrs["units"] = da["y"].attrs["units"] = units
    return da


def write_radolan_truth(path: Path, n: int = 40, seed: int = 2) -> Path:
    """A RADOLAN RW archive: one ESRI ASCII member per hour, integers in 0.1 mm, north row
    first, lower-left corner (X0, Y0) in metres on the RADOLAN grid."""
    rng = np.random.default_rng(seed)
    buf = bytes_io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for t in TIMES:
            stamp = str(t)[:16].replace("-", "").replace(":", "").replace("T", "-")
            values = rng.integers(0, 60, (n, n))
            content = (f"ncols {n}\nnrows {n}\nxllcorner {X0:.0f}\nyllcorner {Y0:.0f}\n"
                       "cellsize 1000\nNODATA_value -1\n"
                       + "\n".join(" ".join(map(str, row)) for row in values) + "\n").encode()
            info = tarfile.TarInfo(f"RW_{stamp}.asc")
            info.size = len(content)
            tar.addfile(info, bytes_io.BytesIO(content))
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("projected")
    src = write_netcdf(_field(4, 10_000.0, seed=1, accumulation="1h"), root / "src.nc")
    out = root / "pred.nc"
    res = run_cli("predict", str(src), "--output", str(out), "--stages", "downscale",
                  "--members", "2", "--steps", "2", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    return {"root": root, "pred": out}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_prediction_is_projected(predicted):
    with xr.open_dataset(predicted["pred"]) as ds:
        assert ds["precip"].dims == ("member", "time", "y", "x")
        assert ds["precip"].shape == (2, 2, 40, 40)
        assert ds["corrected_lr"].dims[-2:] == ("y_lr", "x_lr")
        assert ds["x"].attrs["units"] == "m" and "time_bnds" in ds
        assert ds[ds["precip"].attrs["grid_mapping"]].attrs["grid_mapping_name"] == (
            "polar_stereographic")


def test_evaluate_against_radolan_truth(predicted, tmp_path):
    """Was 'expected spatial dims (lat, lon) or (y, x)' (exit 2): now a report, exit 0, with the
    baselines (RainFARM too) on the projected coarse grid; RADOLAN's hourly amounts are scored
    as the mean rates the prediction holds."""
    truth = write_radolan_truth(tmp_path / "RW-20221018.tar")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--output", str(out), "--baselines", "nearest,bilinear,rainfarm")
    assert res.returncode == 0, res.stderr
    report = (out / "report.md").read_text()
    for row in (OURS_II_ONLY, NEAREST, "bilinear interpolation", "RainFARM"):
        assert f"| {row} |" in report
    assert (out / "figures" / "maps_four_panel.png").is_file()
    assert not _leftovers(tmp_path)


def test_evaluate_truth_with_xy_in_km(predicted, tmp_path):
    """A CF truth whose x/y are in km is the same grid as the prediction's metres."""
    truth = write_netcdf(_field(40, 1_000.0, seed=2, scale=1000.0, units="km"),
                         tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--output", str(out), "--baselines", "nearest")
    assert res.returncode == 0, res.stderr
    assert f"| {OURS_II_ONLY} |" in (out / "report.md").read_text()
    assert not _leftovers(tmp_path)


def test_truth_accumulated_over_another_period_is_one_line_error(predicted, tmp_path):
    truth = write_netcdf(_field(40, 1_000.0, seed=2, accumulation="3h"), tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--output", str(out))
    line = res.stderr.strip()
    assert res.returncode == 2 and line.count("\n") == 0, res.stderr
    assert "3h accumulation" in line and "mean rates over 1 h" in line
    assert not out.exists() and not _leftovers(tmp_path)


def test_truth_on_another_crs_is_one_line_error(predicted, tmp_path):
    other = CRS.replace("+lon_0=10", "+lon_0=11")
    truth = write_netcdf(_field(40, 1_000.0, seed=2, crs=other), tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--output", str(out))
    line = res.stderr.strip()
    assert res.returncode == 2 and line.count("\n") == 0, res.stderr
    assert "CRS" in line and str(truth) in line
    assert not out.exists() and not _leftovers(tmp_path)


def test_truth_shifted_by_a_cell_is_one_line_error(predicted, tmp_path):
    shifted = _field(40, 1_000.0, seed=2)
    shifted = shifted.assign_coords(x=shifted["x"] + 1_000.0)
    truth = write_netcdf(shifted, tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--output", str(out))
    line = res.stderr.strip()
    assert res.returncode == 2 and line.count("\n") == 0, res.stderr
    assert "x of the truth" in line
    assert not out.exists() and not _leftovers(tmp_path)


def test_latlon_truth_for_projected_prediction_is_one_line_error(predicted, tmp_path):
    ll = _field(40, 1_000.0, seed=2).rename(y="lat", x="lon")
    ll = ll.assign_coords(lat=50.0 + 0.01 * np.arange(40), lon=10.0 + 0.01 * np.arange(40))
    ll.attrs = {"units": "mm/h"}
    truth = write_netcdf(ll, tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--output", str(out))
    line = res.stderr.strip()
    assert res.returncode == 2 and line.count("\n") == 0, res.stderr
    assert "lat/lon grid" in line and "projected" in line
    assert not out.exists() and not _leftovers(tmp_path)


def test_source_accumulated_over_another_period_is_one_line_error(predicted, tmp_path):
    """``--source`` goes through the same rate rule as the truth (was used as it came)."""
    truth = write_radolan_truth(tmp_path / "RW-20221018.tar")
    src = write_netcdf(_field(4, 10_000.0, seed=1, accumulation="3h"), tmp_path / "src3h.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(predicted["pred"]), "--truth", str(truth),
                  "--source", str(src), "--output", str(out))
    line = res.stderr.strip()
    assert res.returncode == 2 and line.count("\n") == 0, res.stderr
    assert "source is a 3h accumulation" in line and str(src) in line
    assert not out.exists() and not _leftovers(tmp_path)


def test_projected_prediction_without_grid_mapping_is_an_input_error(tmp_path):
    """x/y in metres without their CRS cannot be matched to any truth: named, not guessed."""
    from precipdiff.errors import InputFileError
    from precipdiff.evaluation.run import _prediction_crs

    ds = xr.Dataset({"precip": _field(4, 1_000.0, seed=3).expand_dims(member=2)})
    with pytest.raises(InputFileError, match="without a grid_mapping variable"):
        _prediction_crs(ds, tmp_path / "pred.nc")
    ds["crs"] = xr.DataArray(0, attrs={"grid_mapping_name": "no_such_projection"})
    ds["precip"].attrs["grid_mapping"] = "crs"
    with pytest.raises(InputFileError, match="not a readable CRS"):
        _prediction_crs(ds, tmp_path / "pred.nc")
