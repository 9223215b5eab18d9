"""Generic GRIB1/GRIB2 precipitation (ERA5, ECMWF IFS, GFS, Stage IV) and pressure-level fields.

* ``tp``-like amounts (m, kg m-2) are returned in ``mm`` with an ``accumulation`` attribute
  (``stepRange`` length in hours; ECMWF's ``tp`` coded with one step counts from the forecast
  start). Rates (``tprate``, kg m-2 s-1) are returned in ``mm/h`` (×3600).
* Regular lat/lon grids → (time, lat, lon), lat ascending, lon −180…180.
* Polar-stereographic grids (e.g. NCEP Stage IV on HRAP) → (time, y, x) with ``x``/``y`` in
  metres (cell centres, projection of the file's own sphere, ``xy_units="m"``) and 2-D
  ``lat``/``lon`` coordinates, plus the CRS as the radar readers keep it (``crs`` PROJ string,
  ``crs_wkt``, ``grid_mapping_name``, ``grid_mapping_attrs``; pyproj for the maths). Other
  projections raise :class:`InputFileError`.
* Files whose precipitation messages lie on different grids need ``message=`` (0-based index in
  the file); messages on one grid are stacked along time.
* ``.gz``/``.xz`` files are decompressed to a temporary file first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io import _projected, _stereo
from precipdiff.io._common import (
    BBox,
    bbox_slices,
    check_nonempty_crop,
    content_errors,
    convert_units,
    crop_2d,
    decompressed,
    finalize,
    grib_time,
    lon_to_180,
    one_line,
    require_file,
)
from precipdiff.io._eccodes import eccodes

log = logging.getLogger(__name__)

PRECIP_NAMES = ("tp", "tprate", "prate", "mtpr", "tpr", "apcp", "precip", "pr")
_MISSING = 1.0e20
_GRID_KEYS = ("gridType", "Ni", "Nj", "latitudeOfFirstGridPointInDegrees",
              "longitudeOfFirstGridPointInDegrees")


@dataclass
class _Message:
    index: int
    handle: int
    short_name: str
    grid: tuple
    time: np.datetime64
    level_type: str
    level: int


def _get(h: int, key: str, default=None):
    try:
        return eccodes.codes_get(h, key)
    except eccodes.GribInternalError:
        return default


def _scan(path: os.PathLike, fh) -> list[_Message]:
    msgs: list[_Message] = []
    while True:
        try:
            h = eccodes.codes_grib_new_from_file(fh)
        except eccodes.GribInternalError as exc:
            for m in msgs:
                eccodes.codes_release(m.handle)
            raise InputFileError(path, f"corrupt or truncated GRIB message: {one_line(exc)}"
                                 ) from exc
        if h is None:
            break
        try:
            ymd, hhmm = _get(h, "validityDate", 0), _get(h, "validityTime", 0)
            msgs.append(_Message(
                index=len(msgs), handle=h, short_name=str(_get(h, "shortName", "unknown")),
                grid=tuple(_get(h, k) for k in _GRID_KEYS),
                time=grib_time(ymd, hhmm, path),
                level_type=str(_get(h, "typeOfLevel", "")), level=int(_get(h, "level", 0)),
            ))
        except BaseException:
            for m in [*msgs, None]:
                eccodes.codes_release(h if m is None else m.handle)
            raise
    if not msgs:
        raise InputFileError(path, "no GRIB message found; expected a GRIB1/GRIB2 file")
    return msgs


def _decode(h: int, path: os.PathLike, name: str) -> np.ndarray:
    """Values as float32 (Nj, Ni) with rows south→north and missing as NaN."""
    eccodes.codes_set(h, "missingValue", _MISSING)
    try:
        values = eccodes.codes_get_values(h)
    except eccodes.GribInternalError as exc:
        raise InputFileError(path, f"cannot decode data: {one_line(exc)}", variable=name) from exc
    ni, nj = _get(h, "Ni") or _get(h, "Nx"), _get(h, "Nj") or _get(h, "Ny")
    if not ni or not nj or values.size != ni * nj:
        raise InputFileError(path, f"{values.size} values for a {nj}x{ni} grid; expected "
                             "one value per grid point", variable=name)
    field = values.astype(np.float32).reshape(nj, ni)
    field[values.reshape(nj, ni) >= _MISSING] = np.nan
    if not _get(h, "jScansPositively", 0):
        field = field[::-1]
    if _get(h, "iScansNegatively", 0):
        field = field[:, ::-1]
    return field


def _regular_axes(h: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending latitudes and 0–360-style longitudes (as coded) of a regular_ll grid."""
    ni, nj = _get(h, "Ni"), _get(h, "Nj")
    lat0 = _get(h, "latitudeOfFirstGridPointInDegrees")
    lat1 = _get(h, "latitudeOfLastGridPointInDegrees")
    lon0 = _get(h, "longitudeOfFirstGridPointInDegrees")
    lon1 = _get(h, "longitudeOfLastGridPointInDegrees")
    lat = np.round(np.linspace(min(lat0, lat1), max(lat0, lat1), nj), 6)
    span = (lon1 - lon0) % 360.0 if _get(h, "iScansNegatively", 0) == 0 else (lon0 - lon1) % 360.0
    lon = lon0 + np.linspace(0.0, span, ni) if ni > 1 else np.array([lon0])
    return lat, lon


def _stack_regular(msgs, path, name, bbox) -> tuple[np.ndarray, dict, tuple]:
    lat, lon = _regular_axes(msgs[0].handle)
    lon180, order = lon_to_180(lon)
    si, sj = bbox_slices(lat, lon180, bbox)
    data = np.stack([_decode(m.handle, path, name)[:, order][si, sj] for m in msgs])
    check_nonempty_crop(data.shape, bbox, path)
    coords = {"time": [m.time for m in msgs], "lat": lat[si], "lon": np.round(lon180[sj], 6)}
    return data, coords, ("time", "lat", "lon")


def _stack_polar(msgs, path, name, bbox) -> tuple[np.ndarray, dict, tuple, dict]:
    h = msgs[0].handle
    nx, ny = _get(h, "Nx"), _get(h, "Ny")
    lon_0, lat_ts = _get(h, "orientationOfTheGridInDegrees"), _get(h, "LaDInDegrees", 60.0)
    radius = float(_get(h, "radius", 6367470.0))
    if _get(h, "projectionCentreFlag", 0) not in (0, None):
        raise InputFileError(path, "south-polar stereographic grid is not supported", variable=name)
    definition = _stereo.proj4(lon_0=lon_0, lat_ts=lat_ts, radius_m=radius)
    crs = _projected.parse_crs(definition, path)
    x0, y0 = _projected.project(crs, _get(h, "longitudeOfFirstGridPointInDegrees"),
                                _get(h, "latitudeOfFirstGridPointInDegrees"))
    dx, dy = float(_get(h, "DxInMetres")), float(_get(h, "DyInMetres"))
    if not (dx > 0 and dy > 0 and nx and ny):
        raise InputFileError(path, f"polar-stereographic grid {nx}x{ny} with cells {dx:g} x "
                             f"{dy:g} m; expected positive sizes", variable=name)
    x_first = x0 - dx * (nx - 1) if _get(h, "iScansNegatively", 0) else x0  # western centre
    y_first = y0 if _get(h, "jScansPositively", 0) else y0 - dy * (ny - 1)  # southern centre
    xy, latlon, attrs = _projected.grid_coords(crs, definition, x0=x_first - dx / 2,
                                               y0=y_first - dy / 2, dx=dx, dy=dy, nx=nx, ny=ny)
    data = np.stack([_decode(m.handle, path, name) for m in msgs])
    coords = {"time": [m.time for m in msgs], **xy, **latlon}
    return data, coords, ("time", "y", "x"), attrs


def _select(msgs: list[_Message], path, variable, message) -> list[_Message]:
    if message is not None:
        if not 0 <= message < len(msgs):
            raise InputFileError(path, f"message={message} but the file has {len(msgs)} messages")
        return [msgs[message]]
    names = {m.short_name for m in msgs}
    wanted = [variable] if variable else [n for n in PRECIP_NAMES if n in names][:1]
    chosen = [m for m in msgs if m.short_name in wanted]
    if not chosen:
        raise InputFileError(
            path, f"no precipitation message; found shortNames {sorted(names)}, expected "
            f"{wanted or list(PRECIP_NAMES)} (MRMS files: use reader='mrms')", variable=variable)
    grids = sorted({m.grid for m in chosen}, key=str)
    if len(grids) > 1:
        desc = "; ".join(
            f"message {m.index}: {m.short_name} {m.grid[1]}x{m.grid[2]} {m.time}" for m in chosen)
        raise InputFileError(path, f"{len(chosen)} messages on {len(grids)} different grids "
                             f"({desc}); pass message=<index> to choose one", variable=variable)
    times = [m.time for m in chosen]
    if len(set(times)) != len(times):
        raise InputFileError(path, "several messages share a valid time (levels or members?); "
                             "pass message=<index>", variable=variable)
    return sorted(chosen, key=lambda m: m.time)


def _accumulation(h: int) -> str:
    start, end = int(_get(h, "startStep", 0)), int(_get(h, "endStep", 0))
    return f"{end - start if end > start else end}h"


@content_errors("GRIB", (eccodes.GribInternalError,))
def read_grib(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    message: int | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read precipitation from a GRIB1/GRIB2 file (optionally .gz/.xz compressed).

    Parameters
    ----------
    variable : GRIB ``shortName`` (default: the first of :data:`PRECIP_NAMES` present).
    bbox : (lon_min, lat_min, lon_max, lat_max), degrees.
    message : 0-based index of the message to read (needed when grids differ).
    """
    path = require_file(path)
    with decompressed(path) as plain, open(plain, "rb") as fh:
        msgs = _scan(path, fh)
        try:
            chosen = _select(msgs, path, variable, message)
            h = chosen[0].handle
            name = chosen[0].short_name
            grid_type = _get(h, "gridType")
            attrs: dict = {"grib_shortName": name}
            if grid_type == "regular_ll":
                data, coords, dims = _stack_regular(chosen, path, name, bbox)
            elif grid_type == "polar_stereographic":
                data, coords, dims, more = _stack_polar(chosen, path, name, bbox)
                attrs.update(more)
            else:
                raise InputFileError(path, f"grid type {grid_type!r} not supported; expected "
                                     "regular_ll or polar_stereographic", variable=name)
            data, units, is_amount = convert_units(data, _get(h, "units"), path, name)
            if is_amount:
                attrs["accumulation"] = _accumulation(h)
        finally:
            for m in msgs:
                eccodes.codes_release(m.handle)
    da = finalize(data, coords, dims, path=path, variable=name, units=units,
                  product=f"GRIB {name}", attrs=attrs, allow_all_nan=allow_all_nan)
    return crop_2d(da, bbox, path) if dims[1] == "y" else da


@content_errors("GRIB", (eccodes.GribInternalError,))
def read_grib_levels(
    path: str | os.PathLike,
    *,
    variables: Sequence[str] = ("u", "v", "t", "r", "z"),
    levels: Sequence[int] = (850, 500),
    bbox: BBox | None = None,
) -> xr.DataArray:
    """Read pressure-level fields as extra conditioning channels.

    Returns a float32 DataArray (time, var, lat, lon) with ``var`` labels ``f"{name}{level}"``
    (e.g. ``"u850"``), in the file's native units (listed in attr ``var_units``, aligned with
    ``var``). A missing variable/level raises :class:`InputFileError`.
    """
    path = require_file(path)
    with decompressed(path) as plain, open(plain, "rb") as fh:
        msgs = _scan(path, fh)
        try:
            pl = [m for m in msgs if m.level_type == "isobaricInhPa"]
            times = sorted({m.time for m in pl})
            channels, names, units = [], [], []
            for var in variables:
                for lev in levels:
                    sel = [m for m in pl if m.short_name == var and m.level == lev]
                    if len(sel) != len(times) or not times:
                        raise InputFileError(path, f"{len(sel)} messages for {var} at {lev} hPa; "
                                             f"expected one per time ({len(times)})", variable=var)
                    data, coords, _ = _stack_regular(sorted(sel, key=lambda m: m.time),
                                                     path, var, bbox)
                    channels.append(data)
                    names.append(f"{var}{lev}")
                    units.append(str(_get(sel[0].handle, "units", "")))
        finally:
            for m in msgs:
                eccodes.codes_release(m.handle)
    return xr.DataArray(
        np.stack(channels, axis=1).astype(np.float32),
        coords={"time": coords["time"], "var": names, "lat": coords["lat"], "lon": coords["lon"]},
        dims=("time", "var", "lat", "lon"), name="extras",
        attrs={"var_units": units, "source_file": str(path), "product": "GRIB pressure levels"},
    )
