"""Generic NetCDF conventions (ERA5, projected) and pressure-level extras on synthetic files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from precipdiff import io
from precipdiff.errors import InputFileError
from precipdiff.io._eccodes import eccodes


def _era5_like(rng, name="tp", units="m") -> xr.Dataset:
    lat = np.arange(60.0, 39.0, -0.25)  # descending, as ERA5
    lon = np.arange(0.0, 360.0, 2.5)  # 0-360
    vals = rng.gamma(0.3, 1e-3, size=(2, lat.size, lon.size)).astype(np.float32)
    times = pd.date_range("2020-01-01", periods=2, freq="h").values
    return xr.Dataset({name: (("valid_time", "latitude", "longitude"), vals, {"units": units})},
                      coords={"valid_time": times, "latitude": lat, "longitude": lon})


def test_era5_netcdf_conventions(rng, tmp_path):
    ds = _era5_like(rng)
    ds.to_netcdf(tmp_path / "era5.nc")
    da = io.read(tmp_path / "era5.nc")
    assert da.dims == ("time", "lat", "lon") and da.attrs["units"] == "mm"
    assert da.attrs["accumulation"] == "1h"
    assert np.all(np.diff(da.lat) > 0) and float(da.lon.min()) == -180.0
    # value at (60N, 10E) in metres -> mm
    ref = float(ds.tp.isel(valid_time=1).sel(latitude=60.0, longitude=10.0)) * 1000
    assert float(da.isel(time=1).sel(lat=60.0, lon=10.0)) == pytest.approx(ref, rel=1e-6)
    crop = io.read(tmp_path / "era5.nc", bbox=(-10.0, 45.0, 10.0, 50.0))
    assert float(crop.lon.min()) == -10.0 and crop.sizes["lat"] == 21


def test_rate_units_converted(rng, tmp_path):
    ds = _era5_like(rng, name="mtpr", units="kg m**-2 s**-1")
    ds.to_netcdf(tmp_path / "rate.nc")
    da = io.read(tmp_path / "rate.nc")
    assert da.attrs["units"] == "mm/h" and "accumulation" not in da.attrs
    assert float(da.max()) == pytest.approx(float(ds.mtpr.max()) * 3600, rel=1e-6)


def test_choose_by_standard_name(rng, tmp_path):
    ds = _era5_like(rng, name="weird", units="mm/h")
    ds["weird"].attrs["standard_name"] = "lwe_precipitation_rate"
    ds["other"] = ds["weird"].copy().assign_attrs(standard_name="air_temperature", units="K")
    ds.to_netcdf(tmp_path / "w.nc")
    assert io.read(tmp_path / "w.nc").attrs["variable"] == "weird"


def test_projected_without_crs_raises(rng, tmp_path):
    da = xr.DataArray(rng.random((1, 4, 5), dtype=np.float32), dims=("time", "y", "x"),
                      coords={"time": [np.datetime64("2020-01-01", "ns")], "y": np.arange(4.0),
                              "x": np.arange(5.0)}, name="precip", attrs={"units": "mm/h"})
    da.to_netcdf(tmp_path / "p.nc")
    with pytest.raises(InputFileError, match="without a CRS"):
        io.read(tmp_path / "p.nc")
    ds = da.to_dataset()
    ds["precip"].attrs["grid_mapping"] = "crs"
    ds["crs"] = xr.DataArray(0, attrs={"grid_mapping_name": "polar_stereographic",
                                       "crs_wkt": "PROJCS[...]"})
    ds.to_netcdf(tmp_path / "q.nc")
    out = io.read(tmp_path / "q.nc")
    assert out.dims == ("time", "y", "x") and out.attrs["crs"] == "PROJCS[...]"


def test_netcdf_pressure_levels(rng, tmp_path):
    lat, lon = np.arange(50.0, 39.0, -1.0), np.arange(0.0, 20.0, 1.0)
    shape = (2, 3, lat.size, lon.size)
    ds = xr.Dataset(
        {v: (("valid_time", "pressure_level", "latitude", "longitude"),
             rng.normal(size=shape).astype(np.float32), {"units": u})
         for v, u in [("u", "m s**-1"), ("t", "K")]},
        coords={"valid_time": pd.date_range("2020-01-01", periods=2, freq="h").values,
                "pressure_level": [1000, 850, 500], "latitude": lat, "longitude": lon})
    ds.to_netcdf(tmp_path / "pl.nc")
    out = io.read_netcdf_levels(tmp_path / "pl.nc", variables=("u", "t"), levels=(850, 500))
    assert out.dims == ("time", "var", "lat", "lon") and list(out["var"].values) == [
        "u850", "u500", "t850", "t500"]
    assert out.attrs["var_units"] == ["m s**-1", "m s**-1", "K", "K"]
    ref = float(ds.t.isel(valid_time=0).sel(pressure_level=500, latitude=40.0, longitude=3.0))
    assert float(out.sel(var="t500").isel(time=0).sel(lat=40.0, lon=3.0)) == pytest.approx(ref)
    with pytest.raises(InputFileError, match="level 700"):
        io.read_netcdf_levels(tmp_path / "pl.nc", variables=("u",), levels=(700,))


def _grib_pl(path, rng):
    """Write u/t at 850/500 hPa for two times with ecCodes' regular_ll_pl_grib2 sample."""
    truth = {}
    with open(path, "wb") as fh:
        for hour in (0, 6):
            for var in ("u", "t"):
                for level in (850, 500):
                    h = eccodes.codes_grib_new_from_samples("regular_ll_pl_grib2")
                    eccodes.codes_set(h, "dataDate", 20200101)
                    eccodes.codes_set(h, "dataTime", hour * 100)
                    eccodes.codes_set(h, "shortName", var)
                    eccodes.codes_set(h, "level", level)
                    vals = rng.normal(size=16 * 31)
                    eccodes.codes_set_values(h, vals)
                    truth[(hour, var, level)] = eccodes.codes_get_values(h).reshape(31, 16)
                    eccodes.codes_write(h, fh)
                    eccodes.codes_release(h)
    return truth


def test_grib_pressure_levels(rng, tmp_path):
    truth = _grib_pl(tmp_path / "pl.grib2", rng)
    assert io.detect_reader(tmp_path / "pl.grib2") == "grib"
    out = io.read_grib_levels(tmp_path / "pl.grib2", variables=("u", "t"), levels=(850, 500))
    assert out.shape == (2, 4, 31, 16) and out.dtype == np.float32
    assert list(out["var"].values) == ["u850", "u500", "t850", "t500"]
    assert np.all(np.diff(out.lat) > 0) and float(out.lat[0]) == 0.0
    # sample grid: 60N -> 0N rows; flipped to ascending latitude
    np.testing.assert_allclose(out.sel(var="t500").values[1], truth[(6, "t", 500)][::-1],
                               rtol=1e-5)
    with pytest.raises(InputFileError, match="r at 850"):
        io.read_grib_levels(tmp_path / "pl.grib2", variables=("r",), levels=(850,))
    with pytest.raises(InputFileError, match="no precipitation message"):
        io.read(tmp_path / "pl.grib2")
