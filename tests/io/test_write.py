"""Round-trips through write_netcdf / write_zarr and the readers; CF attributes; atomicity."""

from __future__ import annotations

import netCDF4
import numpy as np
import pyproj
import pytest
import xarray as xr
import zarr

import precipdiff
from precipdiff import io


def test_netcdf_roundtrip_through_reader(field, tmp_path):
    out = io.write_netcdf(field, tmp_path / "out.nc", attrs={"source": "unit test"})
    assert out == tmp_path / "out.nc" and not list(tmp_path.glob(".out.nc.tmp-*"))
    assert io.detect_reader(out) == "netcdf"
    back = io.read(out)
    xr.testing.assert_equal(back.drop_attrs(), field.drop_attrs())
    assert back.dtype == np.float32 and back.attrs["units"] == "mm/h"


def test_netcdf_cf_attributes(field, tmp_path):
    io.write_netcdf(field, tmp_path / "out.nc")
    with netCDF4.Dataset(tmp_path / "out.nc") as nc:
        assert nc.Conventions == "CF-1.8" and nc.precipdiff_version == precipdiff.__version__
        assert "precipdiff" in nc.history and nc.source
        v = nc["precip"]
        assert v.standard_name == "lwe_precipitation_rate" and v.units == "mm h-1"  # UDUNITS
        assert np.isnan(v._FillValue) and v.filters()["zlib"]
        assert nc["lat"].units == "degrees_north" and nc["lat"].axis == "Y"
        assert nc["lon"].standard_name == "longitude" and nc["lon"].axis == "X"
        assert nc["time"].units.startswith("seconds since 1970") and nc["time"].axis == "T"


def test_netcdf_accumulation_and_dataset(field, tmp_path):
    ds = xr.Dataset({"qpe": field.assign_attrs(units="mm", accumulation="1h"),
                     "rate": field.assign_attrs(units="kg m-2 s-1")})
    io.write_netcdf(ds, tmp_path / "ds.nc")
    with netCDF4.Dataset(tmp_path / "ds.nc") as nc:
        assert nc["qpe"].standard_name == "lwe_thickness_of_precipitation_amount"
        assert nc["rate"].standard_name == "precipitation_flux"
    back = io.read(tmp_path / "ds.nc", variable="qpe")
    assert back.attrs["units"] == "mm" and back.attrs["accumulation"] == "1h"


def test_netcdf_ensemble_roundtrip(field, tmp_path):
    ens = xr.concat([field, field * 2], dim="member").assign_coords(member=[0, 1])
    io.write_netcdf(ens, tmp_path / "ens.nc")
    back = xr.open_dataset(tmp_path / "ens.nc")["precip"]
    xr.testing.assert_equal(back.drop_attrs(), ens.drop_attrs())
    back.close()


def test_zarr_roundtrip_through_reader(field, tmp_path):
    out = io.write_zarr(field, tmp_path / "out.zarr", attrs={"source": "unit test"})
    assert (out / "zarr.json").exists()
    assert zarr.open_group(out, mode="r").metadata.zarr_format == 3
    assert io.detect_reader(out) == "netcdf"
    back = io.read(out)
    xr.testing.assert_equal(back.drop_attrs(), field.drop_attrs())
    assert xr.open_zarr(out, consolidated=False).attrs["Conventions"] == "CF-1.8"


def test_projected_roundtrip(rng, tmp_path):
    da = xr.DataArray(
        rng.random((2, 5, 6), dtype=np.float32),
        coords={"time": np.array(["2022-10-18T00:50", "2022-10-18T01:50"], "datetime64[ns]"),
                "y": -4658.0 + np.arange(5.0), "x": -522.0 + np.arange(6.0)},
        dims=("time", "y", "x"), name="precip",
        attrs={"units": "mm", "accumulation": "1h", "crs": "+proj=stere +lat_0=90 +lon_0=10"})
    for writer, name in ((io.write_netcdf, "p.nc"), (io.write_zarr, "p.zarr")):
        back = io.read(writer(da, tmp_path / name))
        assert back.dims == ("time", "y", "x")
        assert pyproj.CRS(back.attrs["crs"]) == pyproj.CRS(da.attrs["crs"])
        np.testing.assert_array_equal(back.values, da.values)


def test_atomic_write_leaves_nothing_on_failure(field, tmp_path, monkeypatch):
    target = tmp_path / "keep.nc"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", boom)
    with pytest.raises(RuntimeError):
        io.write_netcdf(field, target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.nc"]


def test_netcdf_grid_mapping_bounds_and_realization(field, tmp_path):
    """CF: a latitude_longitude grid mapping, cell bounds, member as realization; the
    in-memory units stay mm/h."""
    ens = xr.concat([field, field * 2], dim="member").assign_coords(member=[0, 1])
    io.write_netcdf(ens, tmp_path / "ens.nc")
    assert ens.attrs["units"] == "mm/h" and "grid_mapping" not in ens.attrs
    ds = xr.open_dataset(tmp_path / "ens.nc")
    assert ds["member"].attrs["standard_name"] == "realization"
    gm = ds[ds["precip"].attrs["grid_mapping"]].attrs
    assert gm["grid_mapping_name"] == "latitude_longitude"
    assert pyproj.CRS.from_cf(gm) == pyproj.CRS.from_epsg(4326)
    lat_b = ds[ds["lat"].attrs["bounds"]].values
    np.testing.assert_allclose(lat_b[:, 1] - lat_b[:, 0], 0.1, atol=1e-9)
    np.testing.assert_allclose(lat_b.mean(axis=1), field["lat"].values, atol=1e-9)
    assert ds.attrs["history"][:20].count("-") == 2 and "T" in ds.attrs["history"][:20]
    ds.close()


def test_netcdf_projected_units_crs_and_time_bounds(rng, tmp_path):
    """x/y keep their units (metres unless said otherwise), the CRS is a grid_mapping that
    pyproj recovers, and an hourly amount gets time_bnds ending at the time stamp."""
    crs = "+proj=stere +lat_0=90 +lat_ts=60 +lon_0=10 +a=6370040 +b=6370040 +units=m"
    da = xr.DataArray(
        rng.random((2, 4, 5), dtype=np.float32),
        coords={"time": np.array(["2022-10-18T00:50", "2022-10-18T01:50"], "datetime64[ns]"),
                "y": -4658500.0 + 1000 * np.arange(4.0), "x": -522500.0 + 1000 * np.arange(5.0)},
        dims=("time", "y", "x"), name="precip", attrs={"units": "mm", "accumulation": "1h",
                                                       "crs": crs})
    io.write_netcdf(da, tmp_path / "p.nc")
    ds = xr.open_dataset(tmp_path / "p.nc")
    assert ds["x"].attrs["units"] == "m" and ds["x"].attrs["standard_name"] == (
        "projection_x_coordinate")
    gm = ds[ds["precip"].attrs["grid_mapping"]].attrs
    assert gm["grid_mapping_name"] == "polar_stereographic"
    assert pyproj.CRS.from_cf(gm) == pyproj.CRS(crs)
    assert ds["precip"].attrs["cell_methods"] == "time: sum"
    tb = ds["time_bnds"].values
    np.testing.assert_array_equal(tb[:, 1], da["time"].values)
    np.testing.assert_array_equal(tb[:, 1] - tb[:, 0], np.timedelta64(1, "h"))
    ds.close()
    km = da.assign_coords(y=da["y"] / 1000, x=da["x"] / 1000).assign_attrs(xy_units="km")
    io.write_netcdf(km, tmp_path / "km.nc")
    with netCDF4.Dataset(tmp_path / "km.nc") as nc:
        assert nc["x"].units == "km" and nc["y"].units == "km"
