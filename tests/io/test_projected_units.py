"""RADOLAN and polar-stereographic GRIB keep x/y in metres with their CRS, like the radar readers.

One unit for every projected grid (docs: DESIGN §3): cell centres in metres, a PROJ string with
``+units=m``, the WKT and CF ``grid_mapping`` attributes, and 2-D lat/lon from pyproj.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest

from precipdiff import io
from precipdiff.errors import InputFileError
from precipdiff.grid import grid_crs, xy_units

HEADER = ("ncols 7\nnrows 5\nxllcorner -523462\nyllcorner -4658645\ncellsize {cell}\n"
          "NODATA_value -1\n")


def _asc(path: Path, cell: str = "1000") -> Path:
    values = np.arange(35).reshape(5, 7) % 9 - 1  # includes -1 (NODATA)
    body = "\n".join(" ".join(str(v) for v in row) for row in values)
    path.write_text(HEADER.format(cell=cell) + body + "\n")
    return path


def test_radolan_grid_in_metres_with_crs(tmp_path):
    da = io.read(_asc(tmp_path / "RW_20221018-0050.asc"))
    assert da.dims == ("time", "y", "x") and da.shape == (1, 5, 7)
    np.testing.assert_allclose(da.x.values, -523462 + 500 + 1000 * np.arange(7))
    np.testing.assert_allclose(da.y.values, -4658645 + 500 + 1000 * np.arange(5))
    assert da.attrs["xy_units"] == "m" and xy_units(da) == "m"
    assert "+units=m" in da.attrs["crs"] and da.attrs["grid_mapping_name"] == "polar_stereographic"
    gm = da.attrs["grid_mapping_attrs"]
    assert gm["grid_mapping_name"] == "polar_stereographic"
    assert gm["straight_vertical_longitude_from_pole"] == pytest.approx(10.0)
    assert gm["standard_parallel"] == pytest.approx(60.0)
    # lat/lon of the cell centres are the CRS's inverse of x/y (metres, not km)
    crs = grid_crs(da)
    lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        *np.meshgrid(da.x.values, da.y.values))
    np.testing.assert_allclose(da.lat.values, lat, atol=1e-4)
    np.testing.assert_allclose(da.lon.values, lon, atol=1e-4)
    # DWD's documented lower-left corner of the national grid: 46.9526 N, 3.5889 E
    assert float(da.lat[0, 0]) == pytest.approx(46.9526, abs=0.01)
    assert float(da.lon[0, 0]) == pytest.approx(3.5889, abs=0.01)
    # the north row of the file is the last y row; values in 0.1 mm, -1 missing
    assert float(da.values[0, -1, 2]) == pytest.approx(0.1)
    assert np.isnan(da.values[0, -1, 0])


def test_radolan_bbox_crop_keeps_metres(tmp_path):
    full = io.read(_asc(tmp_path / "RW_20221018-0050.asc"))
    lat, lon = full.lat.values, full.lon.values
    crop = io.read(tmp_path / "RW_20221018-0050.asc",
                   bbox=(float(lon[1, 1]) - 1e-3, float(lat[1, 1]) - 1e-3,
                         float(lon[3, 4]) + 1e-3, float(lat[3, 4]) + 1e-3))
    assert crop.attrs["xy_units"] == "m"
    np.testing.assert_array_equal(crop.values, full.sel(y=crop.y, x=crop.x).values)


@pytest.mark.parametrize("cell", ["0", "-1000"])
def test_radolan_nonpositive_cellsize_is_an_input_error(tmp_path, cell):
    with pytest.raises(InputFileError, match="cellsize"):
        io.read(_asc(tmp_path / "RW_20221018-0050.asc", cell=cell))


def test_radolan_round_trip_through_cf_netcdf(tmp_path):
    """Written with the CF writer and read back: same metres, same CRS, a grid_mapping variable."""
    import xarray as xr

    da = io.read(_asc(tmp_path / "RW_20221018-0050.asc"))
    out = io.write_netcdf(da.rename("precip"), tmp_path / "rw.nc")
    with xr.open_dataset(out) as ds:
        gm = ds[ds["precip"].attrs["grid_mapping"]]
        assert gm.attrs["grid_mapping_name"] == "polar_stereographic"
        assert ds["x"].attrs["units"] == "m" and ds["x"].attrs["standard_name"] == (
            "projection_x_coordinate")
    back = io.read(out)
    np.testing.assert_allclose(back.x.values, da.x.values)
    assert xy_units(back) == "m"
    assert grid_crs(back).equals(grid_crs(da))


def _polar_grib(path: Path, *, north_first: bool, values: np.ndarray) -> Path:
    """A Stage-IV-like polar-stereographic GRIB2 (HRAP sphere, 4763-m cells, 1-h ``tp`` in m).

    ``north_first``: rows stored north → south (jScansPositively=0), the first grid point then
    being the north-west cell; else south → north from the south-west cell."""
    import pyproj

    from precipdiff.io._eccodes import eccodes

    ny, nx = values.shape
    crs = pyproj.CRS.from_user_input(
        "+proj=stere +lat_0=90 +lat_ts=60 +lon_0=-105 +a=6371200 +b=6371200 +units=m")
    fwd = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    inv = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    x0, y0 = fwd.transform(-119.023, 23.117)  # Stage IV's south-west cell centre
    lon1, lat1 = inv.transform(x0, y0 + 4763.0 * (ny - 1)) if north_first else (-119.023, 23.117)
    h = eccodes.codes_grib_new_from_samples("polar_stereographic_sfc_grib2")
    try:
        for key, val in [("shapeOfTheEarth", 1), ("scaleFactorOfRadiusOfSphericalEarth", 0),
                         ("scaledValueOfRadiusOfSphericalEarth", 6371200), ("Nx", nx),
                         ("Ny", ny), ("latitudeOfFirstGridPointInDegrees", float(lat1)),
                         ("longitudeOfFirstGridPointInDegrees", float(lon1) % 360.0),
                         ("LaDInDegrees", 60.0), ("orientationOfTheGridInDegrees", 255.0),
                         ("DxInMetres", 4763.0), ("DyInMetres", 4763.0),
                         ("iScansNegatively", 0), ("jScansPositively", 0 if north_first else 1),
                         ("shortName", "tp"), ("dataDate", 20190610), ("dataTime", 0),
                         ("stepType", "accum"), ("startStep", 0), ("endStep", 1)]:
            eccodes.codes_set(h, key, val)
        eccodes.codes_set_values(h, (values[::-1] if north_first else values).ravel())
        with open(path, "wb") as fh:
            eccodes.codes_write(h, fh)
    finally:
        eccodes.codes_release(h)
    return path


def test_polar_stereographic_grib_in_metres(tmp_path):
    values = np.arange(30, dtype=np.float64).reshape(5, 6) * 1e-3  # m of water, south row first
    south = io.read(_polar_grib(tmp_path / "s.grib2", north_first=False, values=values))
    north = io.read(_polar_grib(tmp_path / "n.grib2", north_first=True, values=values))
    for da in (south, north):
        assert da.dims == ("time", "y", "x") and da.attrs["xy_units"] == "m"
        assert "+units=m" in da.attrs["crs"] and da.attrs["grid_mapping_name"] == (
            "polar_stereographic")
        np.testing.assert_allclose(np.diff(da.x.values), 4763.0)
        np.testing.assert_allclose(np.diff(da.y.values), 4763.0)
        assert float(da.lat[0, 0]) == pytest.approx(23.117, abs=1e-4)
        assert float(da.lon[0, 0]) == pytest.approx(-119.023, abs=1e-4)
        np.testing.assert_allclose(da.values[0], values * 1000.0, atol=1e-3)  # mm, south first
    crs = grid_crs(south)
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
        -119.023, 23.117)
    assert (float(south.x[0]), float(south.y[0])) == pytest.approx((x0, y0), abs=0.01)
    np.testing.assert_allclose(north.x.values, south.x.values, atol=0.01)
    np.testing.assert_allclose(north.y.values, south.y.values, atol=0.01)
