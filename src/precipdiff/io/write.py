"""CF-1.8 NetCDF and zarr v3 writers, atomic (temporary sibling + rename).

Precipitation variables get a CF ``standard_name`` from their units: ``mm/h`` →
``lwe_precipitation_rate``, ``kg m-2 s-1`` → ``precipitation_flux``, ``mm`` →
``lwe_thickness_of_precipitation_amount``. In the file, rates are spelt in UDUNITS as
``mm h-1`` (in memory the package says ``mm/h``; the readers accept both). Coordinates get
``standard_name``, ``units``, ``axis`` and, on regular 1-D axes, ``bounds``; ``member`` is a
CF ``realization``. Every gridded variable names a ``crs`` grid-mapping variable
(``latitude_longitude`` for lat/lon grids; the field's CRS for projected ``(y, x)`` grids, whose
coordinates keep their units). Amounts with an ``accumulation`` period get ``time_bnds``
(period ending at the time stamp) and ``cell_methods: "time: sum"``. The file gets
``Conventions``, ``history`` (ISO-8601 timestamp), ``source`` and ``precipdiff_version``.
Float variables are zlib-compressed (NetCDF) and use NaN as fill value.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

import precipdiff
from precipdiff.atomic import atomic_path
from precipdiff.errors import GridError
from precipdiff.grid import cell_bounds, cf_grid_mapping, grid_crs, spatial_dims, xy_units

log = logging.getLogger(__name__)

STANDARD_NAMES = {
    "mm/h": "lwe_precipitation_rate",
    "mm h-1": "lwe_precipitation_rate",
    "kg m-2 s-1": "precipitation_flux",
    "mm": "lwe_thickness_of_precipitation_amount",
}
#: In-memory unit spellings replaced by their UDUNITS form in files.
FILE_UNITS = {"mm/h": "mm h-1"}
GRID_MAPPING = "crs"
_COORD_ATTRS = {
    "lat": {"standard_name": "latitude", "units": "degrees_north", "axis": "Y",
            "long_name": "latitude of cell centre"},
    "lon": {"standard_name": "longitude", "units": "degrees_east", "axis": "X",
            "long_name": "longitude of cell centre"},
    "time": {"standard_name": "time", "axis": "T", "long_name": "time"},
    "member": {"standard_name": "realization", "long_name": "ensemble member", "units": "1"},
}


def _regular(values: np.ndarray) -> bool:
    try:
        cell_bounds(values)
    except GridError:
        return False
    return True


def _add_bounds(ds: xr.Dataset) -> xr.Dataset:
    """``{dim}_bnds`` (dim, nv) for regular 1-D spatial coordinates."""
    for name in ("lat", "lon", "y", "x"):
        if name in ds.dims and name in ds.coords and ds[name].ndim == 1 and ds.sizes[name] > 1:
            if _regular(ds[name].values):
                ds[f"{name}_bnds"] = ((name, "nv"), cell_bounds(ds[name].values))
                ds[name].attrs["bounds"] = f"{name}_bnds"
    return ds


def _add_time_bounds(ds: xr.Dataset) -> xr.Dataset:
    """``time_bnds`` and ``cell_methods`` for variables accumulated over a known period."""
    periods = set()
    for var in ds.data_vars.values():
        if "time" in var.dims and "accumulation" in var.attrs:
            try:
                periods.add(pd.Timedelta(str(var.attrs["accumulation"])))
            except (ValueError, TypeError):
                continue
            amount = str(var.attrs.get("units")) == "mm"
            var.attrs.setdefault("cell_methods", "time: sum" if amount else "time: mean")
    if len(periods) == 1 and "time" in ds.coords and np.issubdtype(ds["time"].dtype,
                                                                    np.datetime64):
        end = ds["time"].values
        ds["time_bnds"] = (("time", "nv"), np.stack([end - periods.pop().to_timedelta64(), end],
                                                    axis=-1))
        ds["time"].attrs["bounds"] = "time_bnds"
    return ds


def _add_grid_mapping(ds: xr.Dataset, fields: list[str]) -> xr.Dataset:
    """A ``crs`` grid-mapping variable named by every gridded variable (when its CRS is known)."""
    gridded = []
    for name in fields:
        try:
            spatial_dims(ds[name])
        except GridError:
            continue
        gridded.append(name)
    if not gridded or GRID_MAPPING in ds.variables:
        return ds
    try:
        crs = grid_crs(ds[gridded[0]])
    except GridError as exc:
        log.warning("no grid_mapping written: %s", exc)
        return ds
    ds[GRID_MAPPING] = xr.DataArray(np.int32(0), attrs=cf_grid_mapping(crs))
    for name in gridded:
        ds[name].attrs["grid_mapping"] = GRID_MAPPING
    return ds


def _cf_dataset(obj: xr.Dataset | xr.DataArray, attrs: dict | None) -> xr.Dataset:
    ds = obj.to_dataset(name=obj.name or "precip") if isinstance(obj, xr.DataArray) else obj
    ds = ds.copy()
    fields = list(ds.data_vars)
    projected = any({"y", "x"} <= set(ds[k].dims) for k in fields)
    for name, coord in ds.coords.items():
        extra = dict(_COORD_ATTRS.get(str(name), {}))
        if name in ("x", "y") and coord.ndim == 1:
            units = xy_units(ds[fields[0]]) if projected and fields else "m"
            extra = {"standard_name": f"projection_{name}_coordinate", "axis": str(name).upper(),
                     "units": units}
        if coord.ndim == 2 and name in ("lat", "lon"):
            extra.pop("axis", None)
        coord.attrs = {**extra, **{k: v for k, v in coord.attrs.items() if k not in extra}}
    for var in ds.data_vars.values():
        var.attrs = dict(var.attrs)
        units = str(var.attrs.get("units", ""))
        if units in STANDARD_NAMES and "standard_name" not in var.attrs:
            var.attrs["standard_name"] = STANDARD_NAMES[units]
        var.attrs.setdefault("long_name", "precipitation" if units in STANDARD_NAMES else var.name)
        if units in FILE_UNITS:
            var.attrs["units"] = FILE_UNITS[units]
        for k, v in list(var.attrs.items()):  # netCDF attributes: str / number / 1-D array only
            if isinstance(v, dict | list | tuple | bool):
                var.attrs[k] = json.dumps(v) if not isinstance(v, bool) else int(v)
    ds = _add_grid_mapping(_add_time_bounds(_add_bounds(ds)), fields)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = f"{stamp} written by precipdiff {precipdiff.__version__}"
    ds.attrs = {
        **ds.attrs,
        "Conventions": "CF-1.8",
        "history": (f"{ds.attrs['history']}\n" if ds.attrs.get("history") else "") + history,
        "source": ds.attrs.get("source", "precipdiff"),
        "precipdiff_version": precipdiff.__version__,
        **(attrs or {}),
    }
    return ds


def _float_vars(ds: xr.Dataset) -> list[str]:
    """Float data variables (bounds excluded: CF bounds carry no fill value)."""
    return [k for k, v in ds.data_vars.items()
            if np.issubdtype(v.dtype, np.floating) and not str(k).endswith("_bnds")]


def _time_encoding(ds: xr.Dataset) -> dict:
    enc = {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard", "dtype": "int64"}
    out = {}
    for name in ("time", "time_bnds"):
        if name in ds.variables and np.issubdtype(ds[name].dtype, np.datetime64):
            out[name] = dict(enc)
    return out


def write_netcdf(
    obj: xr.Dataset | xr.DataArray, path: str | os.PathLike, *, attrs: dict | None = None
) -> Path:
    """Write a CF-1.8 NetCDF4 file atomically; returns the path.

    ``attrs`` are added to (and override) the global attributes, e.g. ``source``.
    """
    ds = _cf_dataset(obj, attrs)
    encoding: dict = {k: {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)}
                      for k in _float_vars(ds)}
    for name in ds.variables:
        if np.issubdtype(ds[name].dtype, np.floating) and name not in encoding:
            encoding[name] = {"_FillValue": None}
    encoding.update(_time_encoding(ds))
    target = Path(path)
    with atomic_path(target) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
    log.info("wrote %s", target)
    return target


def write_zarr(
    obj: xr.Dataset | xr.DataArray, path: str | os.PathLike, *, attrs: dict | None = None
) -> Path:
    """Write a zarr v3 store atomically (the directory appears complete or not at all)."""
    ds = _cf_dataset(obj, attrs)
    encoding: dict = {k: {"fill_value": np.nan} for k in _float_vars(ds)}
    encoding.update(_time_encoding(ds))
    target = Path(path)
    with atomic_path(target, is_dir=True) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    log.info("wrote %s", target)
    return target
