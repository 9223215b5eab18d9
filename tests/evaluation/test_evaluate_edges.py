"""``precipdiff evaluate`` at its edges: float-noise coordinates, downscale-only predictions,
one-line errors, and never an empty or half-written report folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precipdiff.baselines import interpolate
from precipdiff.errors import GridError
from precipdiff.evaluation import run as evaluation_run
from precipdiff.evaluation.run import NEAREST, OURS_I, OURS_II_ONLY, VerificationInputs, verify
from precipdiff.io import write_netcdf

FACTOR = 4


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "precipdiff", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


def _source(rng: np.random.Generator) -> xr.DataArray:
    data = rng.gamma(0.6, 2.0, (1, 6, 8)).astype(np.float32)
    data[data < 0.8] = 0.0
    return xr.DataArray(
        data, dims=("time", "lat", "lon"),
        coords={"time": np.array(["2019-06-10T00:00"], "datetime64[ns]"),
                "lat": 40.05 + 0.1 * np.arange(6), "lon": -100.95 + 0.1 * np.arange(8)},
        attrs={"units": "mm/h"},
    )


def write_prediction(path: Path, src: xr.DataArray, *, stage1: bool, members: int = 3,
                     seed: int = 0) -> Path:
    """A file shaped like ``predict``'s output (downscale-only: the source copied per member)."""
    rng = np.random.default_rng(seed)
    up = interpolate(src, FACTOR, method="bilinear")
    precip = (up.expand_dims(member=members) * rng.lognormal(0, 0.4, (members, *up.shape)))
    corrected = src.expand_dims(member=members)
    if stage1:
        corrected = corrected * rng.lognormal(0, 0.2, (members, *src.shape))
    ds = xr.Dataset(
        {
            "precip": precip.astype(np.float32),
            "corrected_lr": corrected.rename(lat="lat_lr", lon="lon_lr").astype(np.float32),
            "source_lr": src.rename(lat="lat_lr", lon="lon_lr"),
        },
        attrs={"correct_model": "c.safetensors" if stage1 else "none"},
    )
    ds.to_netcdf(path)
    return path


@pytest.fixture
def case(tmp_path, rng) -> dict[str, Path]:
    src = _source(rng)
    truth = interpolate(src, FACTOR, method="nearest")  # max-pools back to the source exactly
    return {
        "src": src,
        "truth": truth,
        "downscale_only": write_prediction(tmp_path / "ds_only.nc", src, stage1=False),
        "both": write_prediction(tmp_path / "both.nc", src, stage1=True),
    }


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_downscale_only_prediction_is_scored(case, tmp_path):
    """Was a ZeroDivisionError (spread-skill of members equal to the pooled truth) leaving an
    empty ``figures/``; now the Stage-II table without a fake Stage-I row."""
    truth = write_netcdf(case["truth"].rename("precip"), tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(case["downscale_only"]), "--truth", str(truth),
                  "--output", str(out))
    assert res.returncode == 0, res.stderr
    report = (out / "report.md").read_text()
    assert f"| {OURS_II_ONLY} |" in report and f"| {OURS_I} |" not in report
    assert f"| {NEAREST} |" in report
    assert (out / "figures" / "maps_four_panel.png").is_file()
    _no_leftovers(tmp_path)


def test_truth_with_float_noise_in_coordinates_is_accepted(case, tmp_path):
    """MRMS axes differ from an exact 0.01-degree grid by ~1e-6 degrees: not a grid mismatch."""
    noisy = case["truth"].assign_coords(lat=case["truth"].lat + 1e-6,
                                        lon=case["truth"].lon - 2e-6)
    truth = write_netcdf(noisy.rename("precip"), tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(case["both"]), "--truth", str(truth),
                  "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert f"| {OURS_I} |" in (out / "report.md").read_text()


def test_shifted_truth_is_one_line_error_with_distinct_ranges(case, tmp_path):
    shifted = case["truth"].assign_coords(lon=case["truth"].lon + 0.005)  # a fifth of a cell
    truth = write_netcdf(shifted.rename("precip"), tmp_path / "truth.nc")
    out = tmp_path / "report"
    res = run_cli("evaluate", "--prediction", str(case["both"]), "--truth", str(truth),
                  "--output", str(out))
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and "lon of the truth" in line and "largest difference 0.005" in line
    ranges = [part.split("(")[1].split(")")[0] for part in line.split(" does not match ")]
    assert ranges[0] != ranges[1]
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_stage1_only_prediction_is_one_line_error(case, tmp_path):
    ds = xr.open_dataset(case["both"]).drop_vars("precip").load()
    pred = tmp_path / "stage1.nc"
    ds.to_netcdf(pred)
    truth = write_netcdf(case["truth"].rename("precip"), tmp_path / "truth.nc")
    res = run_cli("evaluate", "--prediction", str(pred), "--truth", str(truth),
                  "--output", str(tmp_path / "report"))
    assert res.returncode == 2 and "Stage-I-only" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and not (tmp_path / "report").exists()


def _inputs(case) -> VerificationInputs:
    ds = xr.open_dataset(case["both"]).load()
    return VerificationInputs(truth_hr=case["truth"], src_lr=case["src"], factor=FACTOR,
                              corrected_lr=ds["corrected_lr"], downscaled=ds["precip"])


def test_failure_while_writing_leaves_no_folder(case, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evaluation_run.plots, "psd_curves", broken)
    out = tmp_path / "report"
    with pytest.raises(RuntimeError, match="disk full"):
        verify(_inputs(case), out, baselines=("bilinear",))
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_report_replaces_its_own_files_and_keeps_others(case, tmp_path):
    out = tmp_path / "demo"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_bytes(b"old")
    (out / "demo_prediction.nc").write_bytes(b"keep me")
    report, rows = verify(_inputs(case), out, baselines=("bilinear",))
    assert report == out / "report.md" and report.is_file()
    assert (out / "demo_prediction.nc").read_bytes() == b"keep me"
    assert not (out / "figures" / "stale.png").exists()
    assert (out / "figures" / "maps_four_panel.png").is_file()
    assert NEAREST in rows["stage2"] and "raw input" in rows["stage1"]
    _no_leftovers(tmp_path)
    _no_leftovers(out)


def test_grid_error_names_both_axes(case):
    inp = _inputs(case)
    bad = inp.downscaled.assign_coords(lat=inp.downscaled.lat + 0.01)
    with pytest.raises(GridError, match=r"lat of the prediction \(24 cells, 40\.0225"):
        evaluation_run._align_to(bad, inp.truth_hr)
