"""NOAA/NSSL MRMS GRIB2 files (plain or .gz) via ecCodes.

MRMS uses the NSSL local discipline 209, so the product is identified from
``discipline/parameterCategory/parameterNumber`` (see :data:`PRODUCTS`). Negative values are
sentinels (−3 no coverage on CONUS, −999 elsewhere) and become NaN. Rows are stored north→south
on 0–360 longitudes; they are returned with latitude ascending and longitude in −180…180.
Accumulation products (QPE) are returned in ``mm`` with ``accumulation="1h"``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io._common import (
    BBox,
    bbox_slices,
    check_nonempty_crop,
    content_errors,
    finalize,
    grib_time,
    one_line,
    read_bytes,
    require_file,
)
from precipdiff.io._eccodes import eccodes

log = logging.getLogger(__name__)

# (discipline, parameterCategory, parameterNumber) -> (product name, units, accumulation)
PRODUCTS: dict[tuple[int, int, int], tuple[str, str, str | None]] = {
    (209, 6, 1): ("PrecipRate", "mm/h", None),
    (209, 6, 2): ("RadarOnly_QPE_01H", "mm", "1h"),
    (209, 6, 9): ("GaugeCorr_QPE_01H", "mm", "1h"),
    (209, 6, 30): ("MultiSensor_QPE_01H_Pass1", "mm", "1h"),
    (209, 6, 37): ("MultiSensor_QPE_01H_Pass2", "mm", "1h"),
}


def _new_handle(path: os.PathLike) -> int:
    data = read_bytes(path)
    start = data.find(b"GRIB")
    if start < 0:
        raise InputFileError(path, "no GRIB message found; expected an MRMS GRIB2 file")
    edition = data[start + 7] if len(data) > start + 16 else 0
    total = int.from_bytes(data[start + 8:start + 16], "big") if edition == 2 else 0
    if edition != 2 or len(data) - start < total:
        raise InputFileError(path, f"truncated or not GRIB2: {len(data) - start} bytes, GRIB "
                             f"edition {edition}, message length {total}")
    try:
        return eccodes.codes_new_from_message(data[start:])
    except eccodes.GribInternalError as exc:
        raise InputFileError(path, f"corrupt or truncated GRIB message: {one_line(exc)}") from exc


def _grid_axes(h: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """1-D ascending latitudes, 0–360 longitudes, and whether rows are stored north→south."""
    g = lambda k: eccodes.codes_get(h, k)  # noqa: E731
    ni, nj = g("Ni"), g("Nj")
    lat0, lat1 = g("latitudeOfFirstGridPointInDegrees"), g("latitudeOfLastGridPointInDegrees")
    lon0 = g("longitudeOfFirstGridPointInDegrees")
    dlat, dlon = g("jDirectionIncrementInDegrees"), g("iDirectionIncrementInDegrees")
    north_to_south = lat0 > lat1
    lat_south = min(lat0, lat1)
    lat = np.round(lat_south + dlat * np.arange(nj), 6)
    lon = np.round(lon0 + dlon * np.arange(ni), 6)
    return lat, lon, north_to_south


@content_errors("MRMS GRIB2", (eccodes.GribInternalError,))
def read_mrms(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read one MRMS GRIB2 frame as DataArray (time=1, lat, lon), float32.

    Parameters
    ----------
    path : ``.grib2`` or ``.grib2.gz`` file with one MRMS message.
    variable : optional expected product name (e.g. ``"PrecipRate"``); a mismatch raises.
    bbox : (lon_min, lat_min, lon_max, lat_max) in degrees (−180…180); crop while decoding.
    allow_all_nan : accept a (cropped) field with no valid pixel instead of raising.

    Returns mm/h for PrecipRate, mm with ``accumulation="1h"`` for QPE products; time is the
    GRIB validity time (end of the accumulation hour for QPE).
    """
    path = require_file(path)
    h = _new_handle(path)
    try:
        if eccodes.codes_get(h, "gridType") != "regular_ll":
            raise InputFileError(path, "MRMS grid is not regular lat/lon")
        key = tuple(
            int(eccodes.codes_get(h, k))
            for k in ("discipline", "parameterCategory", "parameterNumber")
        )
        if key not in PRODUCTS:
            raise InputFileError(
                path, f"unknown MRMS product discipline/category/number {key}; "
                f"expected one of {sorted(PRODUCTS)}"
            )
        product, units, accumulation = PRODUCTS[key]
        if variable is not None and variable != product:
            raise InputFileError(path, f"file holds {product}, not {variable}", variable=variable)
        lat, lon, north_to_south = _grid_axes(h)
        ymd, hhmm = eccodes.codes_get(h, "validityDate"), eccodes.codes_get(h, "validityTime")
        try:
            values = eccodes.codes_get_values(h)
        except eccodes.GribInternalError as exc:
            raise InputFileError(path, f"cannot decode data section: {one_line(exc)}") from exc
    finally:
        eccodes.codes_release(h)
    if values.size != lat.size * lon.size:
        raise InputFileError(path, f"{values.size} values for a {lat.size}x{lon.size} grid")
    grid = values.reshape(lat.size, lon.size)
    if north_to_south:
        grid = grid[::-1]
    lon180 = np.where(lon > 180.0, lon - 360.0, lon)
    if np.any(np.diff(lon180) <= 0):  # grid crosses the antimeridian: reorder columns
        order = np.argsort(lon180, kind="stable")
        lon180, grid = lon180[order], grid[:, order]
    si, sj = bbox_slices(lat, lon180, bbox)
    field = grid[si, sj].astype(np.float32)
    check_nonempty_crop(field.shape, bbox, path)
    field[field < 0] = np.nan  # −3 (no coverage) and −999 (missing) sentinels
    time = grib_time(ymd, hhmm, path)
    attrs = {"mrms_product": product}
    if accumulation:
        attrs["accumulation"] = accumulation
    log.debug("MRMS %s %s: %s", product, path, field.shape)
    return finalize(
        field[None],
        {"time": [time], "lat": lat[si], "lon": np.round(lon180[sj], 6)},
        ("time", "lat", "lon"),
        path=path,
        variable=product,
        product=f"MRMS {product}",
        units=units,
        attrs=attrs,
        allow_all_nan=allow_all_nan,
    )
