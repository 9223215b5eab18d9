"""predict checks the input against the models: declared semantics (areal mean or block
maximum) and grid spacing; every refusal is one stderr line, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from precipdiff.io import write_netcdf

from .conftest import coarse_field, write_tiny_weights


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _field(step: float, n: int = 8, lat0: float = 40.0) -> xr.DataArray:
    """A coarse_field rain pattern on an n x n lat/lon grid of spacing ``step`` degrees."""
    src = coarse_field(ny=n, nx=n, n_time=1)
    return src.assign_coords(lat=lat0 + step * np.arange(n), lon=-100.0 + step * np.arange(n))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("semantics")
    w = {name: write_tiny_weights(root / f"{name}.safetensors", stage, seed=seed, **kw)
         for name, stage, seed, kw in (
             ("mean", "downscale", 2, {}),
             ("max", "downscale", 2, {"pooling": "max"}),
             ("correct_max", "correct", 1, {"pooling": "max"}),
             ("no_note", "downscale", 2, {"coarse_spacing": None}),  # factor 4 x 0.01 deg
         )}
    for name, step, n in (("coarse", 0.1, 8), ("fine", 0.025, 18), ("era", 0.25, 8),
                          ("fine04", 0.04, 8)):
        w[name] = write_netcdf(_field(step, n).rename("precip"), root / f"{name}.nc")
    w["root"] = root
    return w


def _predict(files, inp: str, out: Path, *extra: str, weights: str = "mean",
             correct: str | None = None) -> subprocess.CompletedProcess:
    stages = ["--stages", "correct,downscale", "--weights-correct", str(files[correct])] \
        if correct else ["--stages", "downscale"]
    return run_cli("predict", str(files[inp]), "--output", str(out), *stages,
                   "--weights-downscale", str(files[weights]), "--members", "1", "--steps", "1",
                   "--device", "cpu", *extra)


def _refused(res: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("case, inp, extra, weights, correct, needles", [
    ("areal mean into a max-pooled model", "coarse", (), "max", None,
     ("declared areal_mean", "Stage-II (downscale) model was trained for block_maximum",
      "--input-semantics", "--allow-semantics-mismatch")),
    ("block maxima into a mean-pooled model", "coarse", ("--input-semantics", "block_maximum"),
     "mean", None, ("declared block_maximum", "trained for areal_mean")),
    ("Stage I makes block maxima, Stage II wants areal means", "coarse",
     ("--input-semantics", "block_maximum"), "mean", "correct_max",
     ("Stage-I (correct) model produces block_maximum", "Stage-II (downscale) model was trained "
      "for areal_mean")),
    ("0.025 deg radar into a 0.1 deg model", "fine", (), "mean", None,
     ("grid spacing 0.025 deg x 0.025 deg", "expect 0.1 deg x 0.1 deg (recorded in the weights)",
      "--coarsen 4", "--allow-spacing-mismatch")),
    ("0.25 deg reanalysis into a 0.1 deg model", "era", (), "mean", None,
     ("grid spacing 0.25 deg", "regrid it", "--allow-spacing-mismatch")),
    ("weights without a recorded spacing: factor x 0.01 deg", "coarse", (), "no_note", None,
     ("expect 0.04 deg x 0.04 deg (factor 4 x the 0.01 deg training grid)",)),
    ("unknown semantics", "coarse", ("--input-semantics", "point"), "mean", None,
     ("--input-semantics 'point' is unknown", "areal_mean, block_maximum")),
    ("coarsen 0", "coarse", ("--coarsen", "0"), "mean", None, ("--coarsen must be an integer",)),
])
def test_predict_refuses(files, tmp_path, case, inp, extra, weights, correct, needles) -> None:
    out = tmp_path / "out.nc"
    _refused(_predict(files, inp, out, *extra, weights=weights, correct=correct), out, *needles)


def test_declared_block_maxima_run_on_a_max_pooled_model(files, tmp_path) -> None:
    out = tmp_path / "ok.nc"
    res = _predict(files, "coarse", out, "--input-semantics", "block_maximum", weights="max")
    assert res.returncode == 0, res.stderr
    with xr.open_dataset(out) as ds:
        assert ds.attrs["input_semantics"] == "block_maximum"
        assert "input_semantics_check" not in ds.attrs


def test_overrides_run_and_are_recorded(files, tmp_path) -> None:
    out = tmp_path / "over.nc"
    res = _predict(files, "fine04", out, "--allow-semantics-mismatch",
                   "--allow-spacing-mismatch", weights="max")
    assert res.returncode == 0, res.stderr
    assert "overridden" in res.stdout + res.stderr  # logged as warnings
    with xr.open_dataset(out) as ds:
        assert ds.attrs["input_semantics_check"].startswith("overridden")
        assert ds.attrs["input_spacing_check"].startswith("overridden")


def test_coarsen_pools_a_fine_field_to_the_model_spacing(files, tmp_path) -> None:
    out = tmp_path / "coarsened.nc"
    res = _predict(files, "fine", out, "--coarsen", "4")
    assert res.returncode == 0, res.stderr
    fine = xr.open_dataset(files["fine"])["precip"].isel(lat=slice(0, 16), lon=slice(0, 16))
    with xr.open_dataset(out) as ds:
        assert ds.sizes["lat_lr"] == ds.sizes["lon_lr"] == 4  # 18 cells: 2 cropped, then / 4
        np.testing.assert_allclose(np.diff(ds["lat_lr"].values), 0.1, rtol=1e-9)
        blocks = fine.values[0].reshape(4, 4, 4, 4)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(blocks, axis=(1, 3))  # mean pooling (areal means)
        np.testing.assert_allclose(ds["source_lr"].values[0], mean, rtol=1e-6)
        assert ds.attrs["input_coarsened_by"] == 4


def test_python_api_checks_too(files) -> None:
    """Pipeline.predict refuses the same mismatches once the input is declared (InputFileError
    naming the file); an undeclared input (the library default) is not checked."""
    from precipdiff.errors import InputFileError
    from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage

    pipe = Pipeline(None, Stage.load(files["max"]))
    src = _field(0.1).assign_attrs(source_file="/data/imerg.nc")
    fast = SamplerSettings(sampler="euler", steps=1)
    with pytest.raises(InputFileError, match=r"^/data/imerg.nc .*declared areal_mean"):
        pipe.predict(src, PredictOptions(members=1, downscale=fast, input_semantics="areal_mean"))
    undeclared = pipe.predict(src, PredictOptions(members=1, downscale=fast))  # caller vouches
    assert undeclared.attrs["input_semantics"] == "undeclared (not checked)"
    projected = src.rename(lat="y", lon="x").assign_coords(
        y=1000.0 * np.arange(8), x=1000.0 * np.arange(8)).assign_attrs(xy_units="m")
    with pytest.raises(InputFileError, match=r"grid spacing 1 km x 1 km.*--coarsen 11"):
        pipe.predict(projected, PredictOptions(members=1, downscale=fast,
                                               input_semantics="block_maximum"))
