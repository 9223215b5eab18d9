"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precipdiff.demo import run_demo
from precipdiff.io import write_netcdf

from .conftest import coarse_field, write_tiny_weights


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "precipdiff", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    src = coarse_field(ny=6, nx=8, n_time=1)
    paths = {"src": write_netcdf(src.rename("precip"), root / "src.nc")}
    later = src.assign_coords(time=src["time"] + np.timedelta64(1, "h"))
    paths["src2"] = write_netcdf(later.rename("precip"), root / "src2.nc")
    bad = root / "bad.nc"
    bad.write_bytes(paths["src"].read_bytes()[:300])  # truncated
    paths["bad"] = bad
    paths["root"] = root
    return paths


def _predict_args(tiny_weights, out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        *extra,
        "--output",
        str(out),
        "--weights-correct",
        str(tiny_weights["correct"]),
        "--weights-downscale",
        str(tiny_weights["downscale"]),
        "--members",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]


def test_info() -> None:
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    assert "precipdiff" in res.stdout and "mrms" in res.stdout and "device cpu" in res.stdout


def test_predict_then_evaluate(tiny_weights, inputs, tmp_path) -> None:
    out = tmp_path / "pred.nc"
    res = run_cli(*_predict_args(tiny_weights, out, str(inputs["src"])))
    assert res.returncode == 0, res.stderr
    ds = xr.open_dataset(out)
    assert ds["precip"].shape == (2, 1, 24, 32) and ds.attrs["members"] == 2
    assert ds.attrs["mass_consistent"] == 1  # the default for areal-mean weights
    # truth on the same fine grid: any field of the right shape works for the plumbing
    truth = ds["precip"].isel(member=0).rename("precip") * 1.1
    truth_path = write_netcdf(truth, tmp_path / "truth.nc")
    res = run_cli(
        "evaluate",
        "--prediction",
        str(out),
        "--truth",
        str(truth_path),
        "--output",
        str(tmp_path / "report"),
    )
    assert res.returncode == 0, res.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "precipdiff Stage I+II" in report and "bilinear interpolation" in report
    # a truth on another grid is a one-line error, not a silent misalignment
    shifted = truth.assign_coords(lon=truth["lon"] + 0.5)
    res = run_cli(
        "evaluate",
        "--prediction",
        str(out),
        "--truth",
        str(write_netcdf(shifted, tmp_path / "shifted.nc")),
        "--output",
        str(tmp_path / "r2"),
    )
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr


def test_missing_input_is_one_line_error(tiny_weights, tmp_path) -> None:
    out = tmp_path / "pred.nc"
    res = run_cli(*_predict_args(tiny_weights, out, str(tmp_path / "nope.nc")))
    assert res.returncode == 2
    assert "nope.nc" in res.stderr and res.stderr.strip().count("\n") == 0
    assert not out.exists()


def test_wrong_stage_weights_refused(tiny_weights, inputs, tmp_path) -> None:
    out = tmp_path / "pred.nc"
    args = _predict_args(tiny_weights, out, str(inputs["src"]))
    args[args.index("--weights-downscale") + 1] = str(tiny_weights["correct"])
    res = run_cli(*args)
    assert res.returncode == 2 and "Stage II needs" in res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_archive_mode_skips_bad_and_done(tiny_weights, inputs, tmp_path) -> None:
    out = tmp_path / "archive"
    files = [str(inputs["src"]), str(inputs["bad"]), str(inputs["src2"])]
    res = run_cli(*_predict_args(tiny_weights, out, "--archive", *files))
    assert res.returncode == 2 and "bad.nc" in res.stderr
    assert "input files" in res.stdout and "3/3" in res.stdout  # the progress bar, at its end
    written = sorted(p.name for p in out.iterdir())
    assert written == ["report.json", "src.nc.precipdiff.nc", "src2.nc.precipdiff.nc"]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "inputs_skipped" and report["format"] == "netcdf"
    assert sorted(report["inputs"]["done"]) == files[::2]
    assert [s["input"] for s in report["inputs"]["skipped"]] == [files[1]]
    assert report["time_steps"] == {"written": 2, "already_present": 0}
    assert report["workers"] == 1 and report["scheduler"] == "embedded"
    stamp = (out / "src.nc.precipdiff.nc").stat().st_mtime_ns
    res = run_cli(*_predict_args(tiny_weights, out, "--archive", str(inputs["src"])))
    assert res.returncode == 0 and (out / "src.nc.precipdiff.nc").stat().st_mtime_ns == stamp
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["inputs"]["done"] == []
    assert report["inputs"]["complete_before"] == [files[0]]
    assert report["time_steps"] == {"written": 0, "already_present": 1}


def test_demo_end_to_end(tmp_path) -> None:
    """The demo with tiny random weights: every output is written and the tables have every row."""
    c = write_tiny_weights(tmp_path / "c.safetensors", "correct", factor=10, seed=1)
    d = write_tiny_weights(tmp_path / "d.safetensors", "downscale", factor=10, seed=2)
    out = run_demo(
        tmp_path / "demo",
        members=2,
        steps=2,
        weights_correct=c,
        weights_downscale=d,
        progress=False,
    )
    for name in ("demo_prediction.nc", "demo_truth.nc", "demo_source.nc", "report.md"):
        assert (out / name).is_file()
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"maps_four_panel.png", "psd_stage2.png", "rank_histogram.png", "fss_1mmh.png"} <= figs
    report = (out / "report.md").read_text()
    for row in (
        "raw input",
        "quantile mapping",
        "bicubic interpolation",
        "precipdiff Stage I",
        "precipdiff Stage I+II",
        "quantile mapping + bilinear",
    ):
        assert f"| {row} |" in report


def test_archive_workers_match_serial(tiny_weights, inputs, tmp_path) -> None:
    """Two processes across files write the same ensembles as one (seeds do not depend on order)."""
    files = [str(inputs["src"]), str(inputs["src2"])]
    for name, workers in (("serial", "1"), ("parallel", "2")):
        res = run_cli(
            *_predict_args(tiny_weights, tmp_path / name, "--archive", "--workers", workers, *files)
        )
        assert res.returncode == 0, res.stderr
    for f in ("src.nc.precipdiff.nc", "src2.nc.precipdiff.nc"):
        a = xr.open_dataset(tmp_path / "serial" / f)["precip"].values
        b = xr.open_dataset(tmp_path / "parallel" / f)["precip"].values
        np.testing.assert_array_equal(a, b)


def test_predict_with_extras_file(inputs, tmp_path) -> None:
    """A Stage-II model trained with t850 takes it from an ERA5-style file on a coarser grid."""
    from .conftest import write_tiny_weights

    w = write_tiny_weights(tmp_path / "x.safetensors", "downscale", seed=5, extras=("t850",))
    src = xr.open_dataset(inputs["src"])
    lat, lon = np.arange(39.0, 42.01, 0.25), np.arange(-102.0, -98.99, 0.25)
    t = xr.DataArray(
        np.full((1, 2, lat.size, lon.size), 280.0, np.float32),
        dims=("valid_time", "pressure_level", "latitude", "longitude"),
        coords={
            "valid_time": src["time"].values,
            "pressure_level": [500, 850],
            "latitude": lat,
            "longitude": lon,
        },
        attrs={"units": "K"},
    )
    era5 = tmp_path / "era5.nc"
    xr.Dataset({"t": t}).to_netcdf(era5)
    base = [
        "predict",
        str(inputs["src"]),
        "--stages",
        "downscale",
        "--weights-downscale",
        str(w),
        "--members",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    res = run_cli(*base, "--output", str(tmp_path / "a.nc"), "--extras", str(era5))
    assert res.returncode == 0, res.stderr
    assert np.isfinite(xr.open_dataset(tmp_path / "a.nc")["precip"].values).any()
    res = run_cli(*base, "--output", str(tmp_path / "b.nc"))
    assert res.returncode == 2 and "--extras" in res.stderr
