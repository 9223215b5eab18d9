"""Coordinates and CRS attrs of a regular grid on a projected CRS (radar composites), via pyproj.

The readers of projected radar files describe their grid by its CRS, the outer corner of the
south-west cell and the cell size; this module turns that into the package's (y, x) convention:
``x``/``y`` cell centres in metres, ascending, 2-D ``lat``/``lon`` of the centres (WGS 84
degrees, lon −180…180) and the CRS as a PROJ string, WKT and CF ``grid_mapping`` attributes.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import pyproj
import xarray as xr

from precipdiff.errors import InputFileError


def parse_crs(definition: str, path: str | os.PathLike) -> pyproj.CRS:
    """A :class:`pyproj.CRS` from a PROJ string / EPSG code; unusable ones raise
    :class:`InputFileError` naming ``path``."""
    try:
        crs = pyproj.CRS.from_user_input(definition)
    except pyproj.exceptions.CRSError as exc:
        raise InputFileError(path, f"projection {definition!r} not understood by PROJ: "
                             f"{' '.join(str(exc).split())[:160]}") from exc
    if not crs.is_projected:
        raise InputFileError(path, f"projection {definition!r} is not a projected CRS; expected "
                             "x/y in metres")
    return crs


def project(crs: pyproj.CRS, lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """WGS 84 degrees → projected x, y (metres) on ``crs``."""
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return tr.transform(lon, lat)


@functools.lru_cache(maxsize=4)
def _latlon(crs_wkt: str, x0: float, y0: float, dx: float, dy: float, nx: int, ny: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """2-D float32 (lat, lon) of the cell centres; cached, since a series of frames shares them."""
    tr = pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)
    x = x0 + dx * (np.arange(nx) + 0.5)
    y = y0 + dy * (np.arange(ny) + 0.5)
    lat = np.empty((ny, nx), np.float32)
    lon = np.empty((ny, nx), np.float32)
    for i in range(0, ny, 256):  # row blocks: bounded float64 temporaries
        xx, yy = np.meshgrid(x, y[i:i + 256])
        lo, la = tr.transform(xx, yy)
        lat[i:i + 256], lon[i:i + 256] = la, ((lo + 180.0) % 360.0) - 180.0
    lat.flags.writeable = False
    lon.flags.writeable = False
    return lat, lon


def grid_coords(
    crs: pyproj.CRS, definition: str, *, x0: float, y0: float, dx: float, dy: float, nx: int,
    ny: int,
) -> tuple[dict, dict, dict]:
    """Coordinates and attrs of an ``ny`` × ``nx`` grid whose south-west cell's outer corner is
    (``x0``, ``y0``) metres and whose cells are ``dx`` × ``dy`` metres.

    Returns ``(coords, latlon, attrs)``: ``coords`` has ``y``, ``x`` (centres, metres, ascending,
    rounded to 1 mm); ``latlon`` the 2-D ``lat``/``lon`` (read-only arrays shared by all frames on
    the grid: attach them with :func:`attach_latlon`, which does not copy them); ``attrs`` has
    ``crs`` (``definition``: the file's PROJ string or an EPSG code), ``crs_wkt``,
    ``grid_mapping_name``, ``grid_mapping_attrs`` (the CF ``grid_mapping`` variable's attributes,
    a dict) and ``xy_units="m"``.
    """
    x = np.round(x0 + dx * (np.arange(nx) + 0.5), 3)
    y = np.round(y0 + dy * (np.arange(ny) + 0.5), 3)
    wkt = crs.to_wkt()
    lat, lon = _latlon(wkt, float(x0), float(y0), float(dx), float(dy), int(nx), int(ny))
    coords = {"y": y, "x": x}
    latlon = {"lat": (("y", "x"), lat), "lon": (("y", "x"), lon)}
    with warnings.catch_warnings():  # e.g. oblique Mercator: a parameter CF has no name for
        warnings.simplefilter("ignore", UserWarning)
        cf = {k: (float(v) if isinstance(v, np.floating) else v) for k, v in crs.to_cf().items()
              if k != "crs_wkt"}
    attrs = {"crs": definition, "crs_wkt": wkt,
             "grid_mapping_name": str(cf.get("grid_mapping_name", "unknown")),
             "grid_mapping_attrs": cf, "xy_units": "m"}
    return coords, latlon, attrs


def attach_latlon(da: xr.DataArray, latlon: dict) -> xr.DataArray:
    """``da`` with the 2-D ``lat``/``lon`` coordinates of :func:`grid_coords`.

    ``assign_coords`` keeps the cached arrays as they are; passing them to the ``DataArray``
    constructor would deep-copy them (2 × 67 MB for the OPERA grid, per frame).
    """
    return da.assign_coords(latlon)
