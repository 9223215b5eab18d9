"""CF-1.8 NetCDF and zarr v3 writers, atomic (temporary sibling + rename).

Precipitation variables get a CF ``standard_name`` from their units: ``mm/h`` →
``lwe_precipitation_rate``, ``kg m-2 s-1`` → ``precipitation_flux``, ``mm`` →
``lwe_thickness_of_precipitation_amount``. Coordinates get ``standard_name``, ``units`` and
``axis``; the file gets ``Conventions``, ``history``, ``source`` and ``precipdiff_version``.
Float variables are zlib-compressed (NetCDF) and use NaN as fill value.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr

import precipdiff
from precipdiff.atomic import atomic_path

log = logging.getLogger(__name__)

STANDARD_NAMES = {
    "mm/h": "lwe_precipitation_rate",
    "kg m-2 s-1": "precipitation_flux",
    "mm": "lwe_thickness_of_precipitation_amount",
}
_COORD_ATTRS = {
    "lat": {"standard_name": "latitude", "units": "degrees_north", "axis": "Y",
            "long_name": "latitude of cell centre"},
    "lon": {"standard_name": "longitude", "units": "degrees_east", "axis": "X",
            "long_name": "longitude of cell centre"},
    "time": {"standard_name": "time", "axis": "T", "long_name": "time"},
    "member": {"long_name": "ensemble member"},
}


def _cf_dataset(obj: xr.Dataset | xr.DataArray, attrs: dict | None) -> xr.Dataset:
    ds = obj.to_dataset(name=obj.name or "precip") if isinstance(obj, xr.DataArray) else obj
    ds = ds.copy()
    for name, coord in ds.coords.items():
        extra = dict(_COORD_ATTRS.get(str(name), {}))
        if name in ("x", "y") and coord.ndim == 1:
            units = "km" if ds.attrs.get("xy_units", "km") == "km" else "m"
            extra = {"standard_name": f"projection_{name}_coordinate", "axis": str(name).upper(),
                     "units": units}
        if coord.ndim == 2 and name in ("lat", "lon"):
            extra.pop("axis", None)
        coord.attrs = {**extra, **{k: v for k, v in coord.attrs.items() if k not in extra}}
    for var in ds.data_vars.values():
        units = str(var.attrs.get("units", ""))
        if units in STANDARD_NAMES and "standard_name" not in var.attrs:
            var.attrs["standard_name"] = STANDARD_NAMES[units]
        var.attrs.setdefault("long_name", "precipitation" if units in STANDARD_NAMES else var.name)
        for k, v in list(var.attrs.items()):  # netCDF attributes: str / number / 1-D array only
            if isinstance(v, dict | list | tuple | bool):
                var.attrs[k] = json.dumps(v) if not isinstance(v, bool) else int(v)
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
    return [k for k, v in ds.data_vars.items() if np.issubdtype(v.dtype, np.floating)]


def write_netcdf(
    obj: xr.Dataset | xr.DataArray, path: str | os.PathLike, *, attrs: dict | None = None
) -> Path:
    """Write a CF-1.8 NetCDF4 file atomically; returns the path.

    ``attrs`` are added to (and override) the global attributes, e.g. ``source``.
    """
    ds = _cf_dataset(obj, attrs)
    encoding: dict = {k: {"zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)}
                      for k in _float_vars(ds)}
    for name in ds.coords:
        if np.issubdtype(ds[name].dtype, np.floating):
            encoding[name] = {"_FillValue": None}
    if "time" in ds.coords and np.issubdtype(ds["time"].dtype, np.datetime64):
        encoding["time"] = {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard",
                            "dtype": "int64"}
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
    if "time" in ds.coords and np.issubdtype(ds["time"].dtype, np.datetime64):
        encoding["time"] = {"units": "seconds since 1970-01-01 00:00:00", "calendar": "standard",
                            "dtype": "int64"}
    target = Path(path)
    with atomic_path(target, is_dir=True) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    log.info("wrote %s", target)
    return target
