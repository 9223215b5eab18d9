"""NASA GPM IMERG half-hourly files (HDF5 / NetCDF4) via h5py.

Handles V06 (``precipitationCal``) and V07 (``precipitation``), the original ``/Grid`` layout and
the GES DISC subsetter layout (datasets at the root). IMERG stores fields as (time, lon, lat);
they are returned as (time, lat, lon) in mm/h with fill values (−9999.9) as NaN. Times are read
from the ``units`` attribute: seconds since 1970-01-01 (V06) or since the GPS epoch 1980-01-06
(V07). The time label is the start of the half-hour interval, as in the file.
"""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io._common import (
    BBox,
    bbox_slices,
    check_nonempty_crop,
    content_errors,
    convert_units,
    finalize,
    one_line,
    require_file,
    to_datetime64,
)

log = logging.getLogger(__name__)

VARIABLES = ("precipitation", "precipitationCal")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def _group(h5: h5py.File) -> h5py.Group:
    return h5["Grid"] if "Grid" in h5 else h5


def is_imerg(h5: h5py.File) -> bool:
    """True when an open HDF5 file has an IMERG precipitation field."""
    g = _group(h5)
    return any(v in g for v in VARIABLES) and "lat" in g and "lon" in g


@content_errors("IMERG HDF5")
def read_imerg(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read one IMERG file as DataArray (time, lat, lon), float32, mm/h.

    Parameters
    ----------
    path : IMERG HDF5 (or NetCDF4) file.
    variable : field name; default ``precipitation`` (V07) or ``precipitationCal`` (V06).
    bbox : (lon_min, lat_min, lon_max, lat_max) in degrees; only that part is read from disk.
    allow_all_nan : accept a field that is entirely fill (e.g. polar cuts) instead of raising.
    """
    path = require_file(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(path, f"not a readable HDF5 file (truncated?): {one_line(exc)}"
                             ) from exc
    with h5:
        g = _group(h5)
        name = variable or next((v for v in VARIABLES if v in g), None)
        if name is None or name not in g:
            found = sorted(k for k in g if isinstance(g[k], h5py.Dataset))
            raise InputFileError(
                path,
                f"no IMERG field; found datasets {found}, expected one of {list(VARIABLES)}",
                variable=variable,
            )
        try:
            return _read_group(g, name, path, bbox, allow_all_nan)
        except (OSError, KeyError) as exc:
            raise InputFileError(path, f"cannot read data (corrupt file?): {one_line(exc)}",
                                 variable=name) from exc


def _read_group(
    g: h5py.Group, name: str, path: os.PathLike, bbox: BBox | None, allow_all_nan: bool
) -> xr.DataArray:
    ds = g[name]
    dims = _text(ds.attrs.get("DimensionNames", "time,lon,lat")).split(",")
    if ds.ndim != 3 or dims[0] != "time" or set(dims[1:]) != {"lat", "lon"}:
        raise InputFileError(
            path, f"dimensions {dims} / shape {ds.shape}; expected (time, lon, lat)", variable=name
        )
    lat = g["lat"][:].astype(np.float64)
    lon = g["lon"][:].astype(np.float64)
    if np.any(np.diff(lat) <= 0) or np.any(np.diff(lon) <= 0):
        raise InputFileError(path, "lat/lon are not strictly ascending", variable=name)
    si, sj = bbox_slices(lat, lon, bbox)
    sel = (slice(None), sj, si) if dims[1] == "lon" else (slice(None), si, sj)
    data = ds[sel].astype(np.float32)
    if dims[1] == "lon":
        data = data.transpose(0, 2, 1)
    check_nonempty_crop(data.shape, bbox, path)
    fill = ds.attrs.get("_FillValue", ds.attrs.get("CodeMissingValue", -9999.9))
    fill = np.float32(float(_text(fill)))
    data = np.where(np.isclose(data, fill) | (data <= -9999.0), np.float32(np.nan), data)
    units = _text(ds.attrs.get("units", "mm/hr"))
    data, units, _ = convert_units(data, units, path, name)
    time_units = _text(g["time"].attrs.get("units", "seconds since 1970-01-01 00:00:00 UTC"))
    time = to_datetime64(g["time"][:], time_units, path)
    version = "V07" if name == "precipitation" else "V06"
    log.debug("IMERG %s %s: %s", version, path, data.shape)
    return finalize(
        data,
        {"time": time, "lat": lat[si], "lon": lon[sj]},
        ("time", "lat", "lon"),
        path=path,
        variable=name,
        product=f"IMERG {version} {name}",
        units=units,
        attrs={"variable": name, "time_label": "interval start (30 min)"},
        allow_all_nan=allow_all_nan,
    )
