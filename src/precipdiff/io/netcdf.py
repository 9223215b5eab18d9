"""Generic CF NetCDF / zarr precipitation, ERA5 NetCDF conventions and pressure-level extras.

The precipitation variable is ``variable=`` or, failing that, the only data variable with a
precipitation ``standard_name``, else a known name (:data:`PRECIP_NAMES`), else the only one with
precipitation units. ERA5 names are normalised (``valid_time`` → ``time``, ``latitude`` →
``lat``, ``longitude`` → ``lon``); latitude is made ascending and 0–360 longitudes are wrapped to
−180…180. Projected grids with ``x``/``y`` dimensions are returned as (time, y, x) and must carry a
CRS (a ``grid_mapping`` variable or a ``crs`` attribute), copied to attr ``crs``.
Units: mm/h kept, kg m-2 s-1 ×3600 → mm/h, m ×1000 → mm (with ``accumulation``); other units raise.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io._common import (
    UNITS,
    BBox,
    content_errors,
    convert_units,
    crop_2d,
    finalize,
    one_line,
    require_file,
)

log = logging.getLogger(__name__)

PRECIP_STANDARD_NAMES = (
    "lwe_precipitation_rate", "precipitation_flux", "precipitation_amount",
    "lwe_thickness_of_precipitation_amount", "rainfall_rate", "rainfall_flux",
)
PRECIP_NAMES = ("precip", "precipitation", "precipitationCal", "tp", "tprate", "mtpr", "pr",
                "cmorph", "rain", "rr", "prcp", "RR", "precip_rate", "rainrate")
_RENAME = {"valid_time": "time", "latitude": "lat", "longitude": "lon",
           "projection_x_coordinate": "x", "projection_y_coordinate": "y"}
_LEVEL_DIMS = ("pressure_level", "level", "isobaricInhPa", "plev")


def open_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Open a NetCDF file or zarr store lazily; unreadable content raises InputFileError."""
    path = require_file(path)
    try:
        if Path(path).is_dir():
            return xr.open_zarr(path, consolidated=False)
        return xr.open_dataset(path)
    except Exception as exc:  # netCDF4/h5py/zarr raise a zoo of exception types
        raise InputFileError(path, f"cannot open as NetCDF/zarr (truncated or corrupt?): "
                             f"{type(exc).__name__}: {one_line(exc)}") from exc


def _normalise(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.rename({k: v for k, v in _RENAME.items() if k in ds.variables or k in ds.dims})
    if "time" not in ds.dims and "time" in ds.coords:
        ds = ds.expand_dims("time")
    return ds


def choose_variable(ds: xr.Dataset, variable: str | None, path: os.PathLike) -> str:
    """Name of the precipitation variable (see module docstring)."""
    fields = [k for k, v in ds.data_vars.items() if v.ndim >= 2]
    if variable is not None:
        if variable not in ds.data_vars:
            raise InputFileError(path, f"variable not found; the file has {fields}",
                                 variable=variable)
        return variable
    for rule in (
        lambda k: ds[k].attrs.get("standard_name") in PRECIP_STANDARD_NAMES,
        lambda k: k in PRECIP_NAMES,
        lambda k: " ".join(str(ds[k].attrs.get("units", "")).split()) in UNITS,
    ):
        hits = [k for k in fields if rule(k)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputFileError(path, f"several precipitation candidates {hits}; pass variable=")
    raise InputFileError(path, f"no precipitation variable among {fields}; pass variable=")


def _crs(ds: xr.Dataset, da: xr.DataArray) -> str | None:
    gm = da.attrs.get("grid_mapping")
    if gm and gm in ds.variables:
        a = ds[gm].attrs
        plain = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in a.items()}
        return str(a.get("crs_wkt") or a.get("spatial_ref") or a.get("proj4") or json.dumps(plain))
    return da.attrs.get("crs") or ds.attrs.get("crs")


def _accumulation(ds: xr.Dataset, da: xr.DataArray, name: str) -> str:
    if "accumulation" in da.attrs:
        return str(da.attrs["accumulation"])
    if name == "tp" and "time" in ds.dims:  # ERA5 tp: hourly accumulation
        return "1h"
    if da.sizes.get("time", 0) > 1:
        step = np.unique(np.diff(da["time"].values).astype("timedelta64[m]"))
        if step.size == 1:
            return f"{int(step[0].astype(int)) / 60:g}h"
    log.warning("%s: accumulation period of %s unknown", da.encoding.get("source", ""), name)
    return "unknown"


@content_errors("NetCDF/zarr")
def read_netcdf(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read precipitation from CF NetCDF or zarr as (time, lat, lon) or (time, y, x), float32."""
    path = require_file(path)
    with open_dataset(path) as raw:
        ds = _normalise(raw)
        name = choose_variable(ds, variable, path)
        da = ds[name].squeeze([d for d in ds[name].dims
                               if ds[name].sizes[d] == 1 and d not in ("time", "lat", "lon",
                                                                       "y", "x")])
        if "time" not in da.dims:
            da = da.expand_dims(time=[np.datetime64("NaT", "ns")])
        projected = {"y", "x"} <= set(da.dims)
        spatial = ("y", "x") if projected else ("lat", "lon")
        if not set(spatial) <= set(da.dims) or da.ndim != 3:
            raise InputFileError(path, f"dimensions {da.dims}; expected (time, lat, lon) or "
                                 "(time, y, x)", variable=name)
        da = da.transpose("time", *spatial)
        attrs: dict = {"variable": name}
        if projected:
            crs = _crs(ds, da)
            if crs is None:
                raise InputFileError(path, "projected x/y grid without a CRS (no grid_mapping "
                                     "variable or crs attribute)", variable=name)
            attrs["crs"] = crs
            attrs["xy_units"] = str(da["x"].attrs.get("units", "m"))
            da = da.sortby("y")
        else:
            lon = da["lon"].values
            if lon.max() > 180.0:
                da = da.assign_coords(lon=((lon + 180.0) % 360.0) - 180.0)
            da = da.sortby("lat").sortby("lon")
            if bbox is not None:
                lon_min, lat_min, lon_max, lat_max = bbox
                da = da.sel(lat=slice(lat_min, lat_max), lon=slice(lon_min, lon_max))
                if 0 in da.shape:
                    raise InputFileError(path, f"bbox {bbox} does not overlap the grid")
        if projected and bbox is not None and "lat" in da.coords:
            da = crop_2d(da, bbox, path)
        try:
            values = da.values.astype(np.float32)
        except Exception as exc:
            raise InputFileError(path, f"cannot read data: {one_line(exc)}", variable=name) from exc
        values, units, is_amount = convert_units(values, da.attrs.get("units"), path, name)
        if is_amount:
            attrs["accumulation"] = _accumulation(ds, da, name)
        coords = {k: (c.dims, c.values) for k, c in da.coords.items()
                  if set(c.dims) <= set(da.dims)}
    return finalize(values, coords, da.dims, path=path, variable=name, units=units,
                    product=f"NetCDF {name}", attrs=attrs, allow_all_nan=allow_all_nan)


@content_errors("NetCDF/zarr")
def read_netcdf_levels(
    path: str | os.PathLike,
    *,
    variables: Sequence[str] = ("u", "v", "t", "r", "z"),
    levels: Sequence[int] = (850, 500),
    bbox: BBox | None = None,
) -> xr.DataArray:
    """ERA5-style pressure-level NetCDF → float32 DataArray (time, var, lat, lon).

    ``var`` labels are ``f"{name}{level}"`` (e.g. ``"t500"``); native units in attr ``var_units``.
    """
    path = require_file(path)
    with open_dataset(path) as raw:
        ds = _normalise(raw)
        lev = next((d for d in _LEVEL_DIMS if d in ds.dims), None)
        if lev is None:
            raise InputFileError(path, f"no pressure-level dimension; expected one of "
                                 f"{_LEVEL_DIMS}")
        chans, names, units = [], [], []
        for var in variables:
            if var not in ds.data_vars:
                raise InputFileError(path, f"variable not found; the file has {list(ds.data_vars)}",
                                     variable=var)
            for level in levels:
                if level not in ds[lev].values:
                    raise InputFileError(path, f"level {level} hPa not found; the file has "
                                         f"{ds[lev].values.tolist()}", variable=var)
                chans.append(ds[var].sel({lev: level}).transpose("time", "lat", "lon"))
                names.append(f"{var}{level}")
                units.append(str(ds[var].attrs.get("units", "")))
        out = xr.concat(chans, dim=xr.DataArray(names, dims="var", name="var"))
        out = out.transpose("time", "var", "lat", "lon").drop_vars(lev, errors="ignore")
        if out["lon"].max() > 180.0:
            out = out.assign_coords(lon=((out["lon"].values + 180.0) % 360.0) - 180.0)
        out = out.sortby("lat").sortby("lon")
        if bbox is not None:
            out = out.sel(lat=slice(bbox[1], bbox[3]), lon=slice(bbox[0], bbox[2]))
        out = out.astype(np.float32).load()
    out.name = "extras"
    out.attrs = {"var_units": units, "source_file": str(path), "product": "NetCDF pressure levels"}
    return out
