"""The predict NetCDF is CF-complete: checked by the IOOS compliance checker, CRS recoverable."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyproj
import pytest
import xarray as xr

from precipdiff import io
from precipdiff.errors import GridError
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.output import predict_to_file

from .conftest import FACTOR, coarse_field

FAST = SamplerSettings(sampler="euler", steps=2)
OPTS = PredictOptions(members=2, correct=FAST, downscale=FAST, member_batch=2)
STERE = ("+proj=stere +lat_0=90 +lat_ts=60 +lon_0=10 +a=6370040 +b=6370040 +x_0=0 +y_0=0 "
         "+units=m +no_defs")


@pytest.fixture(scope="module")
def pipeline(tiny_weights) -> Pipeline:
    return Pipeline(Stage.load(tiny_weights["correct"]), Stage.load(tiny_weights["downscale"]))


def _projected(units: str) -> xr.DataArray:
    """A RADOLAN-like hourly amount on a polar-stereographic grid (10-km cells)."""
    src = coarse_field(ny=6, nx=8, n_time=2)
    scale = 1.0 if units == "km" else 1000.0
    out = src.rename(lat="y", lon="x").assign_coords(
        y=(-4655.0 + 10.0 * np.arange(6)) * scale, x=(-495.0 + 10.0 * np.arange(8)) * scale
    )
    return out.assign_attrs(units="mm", accumulation="1h", crs=STERE, xy_units=units,
                            source_file="/somewhere/local/RW-20221018.tar.gz")


@pytest.fixture(scope="module")
def outputs(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cf")
    src = coarse_field(ny=6, nx=8, n_time=2).assign_attrs(source_file="/home/me/in/imerg.nc")
    return {
        "latlon": predict_to_file(pipeline, src, root / "latlon.nc", OPTS),
        "km": predict_to_file(pipeline, _projected("km"), root / "km.nc", OPTS),
        "m": predict_to_file(pipeline, _projected("m"), root / "m.nc", OPTS),
    }


def _cf_check(path: Path) -> dict:
    from compliance_checker.runner import CheckSuite

    suite = CheckSuite()
    suite.load_all_available_checkers()
    ds = suite.load_dataset(str(path))
    groups, errors = suite.run_all(ds, ["cf:1.8"], skip_checks=[])["cf:1.8"]
    assert not errors
    return suite.build_structure("cf:1.8", groups, str(path))


@pytest.mark.parametrize("case", ["latlon", "km"])
def test_compliance_checker_finds_no_high_priority_failure(outputs, case: str) -> None:
    result = _cf_check(outputs[case])
    high = [(r.name, r.msgs) for r in result["high_priorities"] if r.msgs]
    assert high == []
    assert result["scored_points"] / result["possible_points"] > 0.97


@pytest.mark.parametrize("case", ["latlon", "km", "m"])
def test_crs_recovered_with_xarray_and_pyproj(outputs, case: str) -> None:
    with xr.open_dataset(outputs[case]) as ds:
        for name in ("precip", "corrected_lr", "source_lr", "ensemble_mean"):
            gm = ds[name].attrs["grid_mapping"]
            crs = pyproj.CRS.from_cf(ds[gm].attrs)
            assert crs == (pyproj.CRS.from_epsg(4326) if case == "latlon" else pyproj.CRS(STERE))


@pytest.mark.parametrize("units", ["km", "m"])
def test_projected_input_keeps_y_x_and_nests(outputs, units: str) -> None:
    """Before: lat = -4655 'degrees_north'. Now y/x in the input's units, nested refinement."""
    src = _projected(units)
    with xr.open_dataset(outputs[units]) as ds:
        assert ds["precip"].dims == ("member", "time", "y", "x")
        assert ds["corrected_lr"].dims == ("member", "time", "y_lr", "x_lr")
        assert "lat" not in ds.variables and "lon" not in ds.variables
        assert ds["x"].attrs["units"] == units and ds["y_lr"].attrs["units"] == units
        assert ds["x"].attrs["standard_name"] == "projection_x_coordinate"
        np.testing.assert_allclose(ds["x_lr"].values, src["x"].values)
        np.testing.assert_allclose(ds["y"].values.reshape(-1, FACTOR).mean(1), src["y"].values)
        edges = ds["x_bnds"].values
        np.testing.assert_allclose(edges[0, 0], src["x"].values[0] - ds["x_lr"].diff("x_lr")[0]
                                   / 2)
        assert 45 < ds.attrs["geospatial_lat_min"] < ds.attrs["geospatial_lat_max"] < 60


def test_pipeline_predict_in_memory_keeps_projection(pipeline: Pipeline) -> None:
    ds = pipeline.predict(_projected("km"), OPTS)
    assert ds["precip"].dims == ("member", "time", "y", "x")
    assert pyproj.CRS(ds["precip"].attrs["crs"]) == pyproj.CRS(STERE)


def test_cf_attributes_and_provenance(outputs, tiny_weights) -> None:
    with xr.open_dataset(outputs["latlon"]) as ds:
        assert ds["member"].attrs["standard_name"] == "realization"
        assert ds["ensemble_mean"].attrs["cell_methods"] == "realization: mean"
        assert ds["ensemble_std"].attrs["cell_methods"] == "realization: standard_deviation"
        for name in ("precip", "corrected_lr", "source_lr", "ensemble_mean", "threshold"):
            assert ds[name].attrs["units"] == "mm h-1"
        for name in ("lat", "lon", "lat_lr", "lon_lr"):
            assert ds[name].attrs["bounds"] == f"{name}_bnds"
        assert "time_bnds" not in ds  # rates: no accumulation period
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ precipdiff .* predict imerg\.nc$",
                        ds.attrs["history"])
        assert ds.attrs["downscale_model"] == Path(tiny_weights["downscale"]).name
        assert len(ds.attrs["downscale_weights_sha256"]) == 64
        assert ds.attrs["downscale_pooling"] == "mean" and "input_semantics" in str(ds.attrs)
        assert ds.attrs["input_bbox"] == "-101, 40, -100.2, 40.6"
        assert float(ds.attrs["trace_threshold"]) == 0.1
        for value in ds.attrs.values():  # no local paths in the global attributes
            assert "/" not in str(value) or str(value).startswith("outer"), value


def test_accumulation_gets_time_bounds(outputs) -> None:
    src = _projected("km")
    with xr.open_dataset(outputs["km"]) as ds:
        tb = ds["time_bnds"].values
        np.testing.assert_array_equal(tb[:, 1], src["time"].values)  # period ends at the stamp
        np.testing.assert_array_equal(tb[:, 1] - tb[:, 0], np.timedelta64(1, "h"))
        assert ds["precip"].attrs["cell_methods"] == "time: mean"
        assert ds["ensemble_mean"].attrs["cell_methods"] == "time: mean realization: mean"
        assert ds.attrs["history"].endswith("predict RW-20221018.tar.gz")


def test_own_output_reads_back_in_mm_per_hour(outputs) -> None:
    back = io.read(outputs["latlon"], variable="ensemble_mean")
    assert back.attrs["units"] == "mm/h" and back.dims == ("time", "lat", "lon")
    with xr.open_dataset(outputs["latlon"]) as ds:
        np.testing.assert_array_equal(back.values, ds["ensemble_mean"].values)
    proj = io.read(outputs["km"], variable="ensemble_mean")
    assert proj.dims == ("time", "y", "x") and pyproj.CRS(proj.attrs["crs"]) == pyproj.CRS(STERE)
    assert proj.attrs["xy_units"] == "km"  # the reader keeps the units of x/y (io/netcdf.py)


def test_latlon_extras_on_a_projected_input_are_refused(tiny_weights) -> None:
    from .conftest import write_tiny_weights

    w = write_tiny_weights(Path(tiny_weights["correct"]).parent / "x850.safetensors",
                           "downscale", seed=5, extras=("t850",))
    src = _projected("km").isel(time=[0])
    fine = np.full((1, 1, 6 * FACTOR, 8 * FACTOR), 285.0, np.float32)
    extras = xr.DataArray(fine, dims=("time", "var", "lat", "lon"))
    with pytest.raises(GridError, match="on the output grid"):
        Pipeline(None, Stage.load(w)).predict(src, OPTS, extras=extras)
