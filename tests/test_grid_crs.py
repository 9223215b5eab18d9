"""CRS and cell bounds of grids: projected fields keep their CRS, lat/lon grids are WGS 84."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
import xarray as xr

from precipdiff.errors import GridError
from precipdiff.grid import Grid, cell_bounds, cf_grid_mapping, grid_crs, xy_units

STERE = "+proj=stere +lat_0=90 +lat_ts=60 +lon_0=10 +a=6370040 +b=6370040 +units=m +no_defs"


def _yx(**attrs) -> xr.DataArray:
    return xr.DataArray(np.zeros((3, 4), np.float32), dims=("y", "x"),
                        coords={"y": np.arange(3.0), "x": np.arange(4.0)}, attrs=attrs)


def test_latlon_grid_is_wgs84() -> None:
    da = Grid(40.05, -100.95, 0.1, 0.1, 3, 4).to_dataarray(np.zeros((3, 4)))
    crs = grid_crs(da)
    assert crs == pyproj.CRS.from_epsg(4326)
    assert cf_grid_mapping(crs)["grid_mapping_name"] == "latitude_longitude"


@pytest.mark.parametrize("form", ["proj4", "wkt", "cf-json"])
def test_projected_crs_from_any_form_round_trips_through_cf(form: str) -> None:
    crs = pyproj.CRS(STERE)
    text = {"proj4": STERE, "wkt": crs.to_wkt(), "cf-json": json.dumps(crs.to_cf())}[form]
    attrs = cf_grid_mapping(grid_crs(_yx(crs=text)))
    assert attrs["grid_mapping_name"] == "polar_stereographic"
    assert attrs["latitude_of_projection_origin"] == 90.0  # required by CF, not written by pyproj
    assert pyproj.CRS.from_cf(attrs) == crs


def test_projected_without_or_with_bad_crs_is_an_error() -> None:
    with pytest.raises(GridError, match="no 'crs' attribute"):
        grid_crs(_yx())
    with pytest.raises(GridError, match="cannot read its CRS"):
        grid_crs(_yx(crs="+proj=nonsense"))


def test_xy_units_from_coordinate_attribute_or_default_metres() -> None:
    assert xy_units(_yx()) == "m"
    assert xy_units(_yx(xy_units="km")) == "km"
    da = _yx()
    da["x"].attrs["units"] = "metre"
    assert xy_units(da) == "m"


def test_cell_bounds_are_edges_between_centres() -> None:
    b = cell_bounds(np.array([0.5, 1.5, 2.5]))
    np.testing.assert_allclose(b, [[0, 1], [1, 2], [2, 3]])
    with pytest.raises(GridError):
        cell_bounds(np.array([0.0, 1.0, 3.0]))
