"""FMI radar reflectivity composites: binary PGM (``P5``) with a text header, usually gzipped.

What the real files hold (``radar/fmi/20170509/YYYYMMDDhhmm_fmi.radar.composite.lowest_FIN_SUOMI1
.pgm.gz``): a Netpbm P5 image (Poskanzer, *pgm — Netpbm grayscale image format*) whose comment
lines carry the metadata — ``# obstime 201705091045``, ``# param CorrectedReflectivity``,
``# metersperpixel_x 999.674053``, ``# metersperpixel_y 999.62859`` and a projection block
``# type stereographic / centrallongitude 25 / centrallatitude 90 / truelatitude 60 /
bottomleft 18.6 57.93 / topright 34.903 69.005`` (degrees) — then ``760 1226`` (width, height),
``255`` (maxval) and one byte per pixel, first row = north.

Values: ``dBZ = 0.5 · value − 32``; ``value = 255`` (maxval) is no data (NaN). Reflectivity is
turned into mm/h with a Z–R relation (default FMI's ``Z = 223 R^1.53``; see
:mod:`precipdiff.io.reflectivity`), below the noise floor → 0.

Projection: polar stereographic with the header's central longitude and true latitude on a
sphere of radius 6 371 288 m. The header gives no figure of the Earth; this radius is the one
with which the header's corner coordinates (outer corners of the corner cells) and pixel sizes
agree: (topright − bottomleft) / 760 = 999.674053 m and / 1226 = 999.62859 m, to 1e-6 m (WGS 84
would give 1003.4 m). x/y are metres from the pole (no false easting/northing).

Returned: float32 DataArray (time, y, x) in mm/h, ``semantics="instantaneous"``, x/y cell centres
in metres (ascending), 2-D ``lat``/``lon``, CRS attrs and the Z–R provenance.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io import _projected, reflectivity
from precipdiff.io._common import (
    BBox,
    content_errors,
    crop_2d,
    finalize,
    read_bytes,
    require_file,
)

log = logging.getLogger(__name__)

PGM_MAGIC = b"P5"
EARTH_RADIUS_M = 6371288.0
DBZ_GAIN, DBZ_OFFSET = 0.5, -32.0
_PROJECTION_KEYS = ("type", "centrallongitude", "centrallatitude", "truelatitude", "bottomleft",
                    "topright", "metersperpixel_x", "metersperpixel_y")


def is_pgm(head: bytes) -> bool:
    """True when (decompressed) bytes start a binary PGM with a comment header."""
    return head[:2] == PGM_MAGIC and head[2:3] in (b"\n", b" ", b"\r", b"\t")


def parse_pgm(data: bytes, path: os.PathLike) -> tuple[dict[str, list[str]], np.ndarray]:
    """(header key → values, image (height, width) uint8, first row = north) of a P5 PGM."""
    if not is_pgm(data[:3]):
        raise InputFileError(path, f"not a binary PGM (starts with {data[:8]!r}); expected 'P5'")
    header: dict[str, list[str]] = {}
    numbers: list[int] = []
    pos = 2
    while len(numbers) < 3:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if pos >= len(data):
            raise InputFileError(path, "PGM header ends before width, height and maxval")
        if data[pos:pos + 1] == b"#":
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end
            words = data[pos + 1:end].decode("latin-1").split()
            if len(words) >= 2:
                header[words[0]] = words[1:]
            pos = end + 1
            continue
        end = pos
        while end < len(data) and not data[end:end + 1].isspace():
            end += 1
        try:
            numbers.append(int(data[pos:end]))
        except ValueError:
            raise InputFileError(path, f"PGM header token {data[pos:end][:20]!r} is not a "
                                 "number; expected width, height, maxval") from None
        pos = end
    width, height, maxval = numbers
    if not (0 < maxval < 256) or width <= 0 or height <= 0:
        raise InputFileError(path, f"PGM {width}x{height} with maxval {maxval}; expected an 8-bit "
                             "image (maxval < 256)")
    pixels = np.frombuffer(data, np.uint8, count=-1, offset=pos + 1)
    if pixels.size < width * height:
        raise InputFileError(path, f"{pixels.size} pixel bytes, expected {width}x{height} = "
                             f"{width * height} (truncated file?)")
    header["maxval"] = [str(maxval)]
    return header, pixels[: width * height].reshape(height, width)


def _floats(header: dict, key: str, n: int, path) -> list[float]:
    try:
        values = [float(v) for v in header[key][:n]]
    except (KeyError, ValueError):
        values = []
    if len(values) != n:
        raise InputFileError(path, f"PGM header {key!r} = {header.get(key)!r}; expected {n} "
                             "number(s)")
    return values


def _grid(header: dict, shape: tuple[int, int], path) -> tuple[dict, dict, dict]:
    missing = [k for k in _PROJECTION_KEYS if k not in header]
    if missing:
        raise InputFileError(path, f"PGM header has no projection ({', '.join(missing)} missing); "
                             "expected the FMI composite header")
    kind = header["type"][0].lower()
    if kind != "stereographic":
        raise InputFileError(path, f"projection type {kind!r} is not supported; expected "
                             "'stereographic'")
    (lon_0,), (lat_0,), (lat_ts,) = (_floats(header, k, 1, path) for k in
                                     ("centrallongitude", "centrallatitude", "truelatitude"))
    definition = (f"+proj=stere +lat_0={lat_0:g} +lat_ts={lat_ts:g} +lon_0={lon_0:g} "
                  f"+R={EARTH_RADIUS_M:.0f} +x_0=0 +y_0=0 +units=m +no_defs")
    crs = _projected.parse_crs(definition, path)
    (lon_ll, lat_ll), (lon_ur, lat_ur) = (_floats(header, k, 2, path)
                                          for k in ("bottomleft", "topright"))
    (dx,), (dy,) = (_floats(header, k, 1, path) for k in ("metersperpixel_x", "metersperpixel_y"))
    (x_ll, x_ur), (y_ll, y_ur) = _projected.project(crs, [lon_ll, lon_ur], [lat_ll, lat_ur])
    ny, nx = shape
    for axis, span, n, d in (("x", x_ur - x_ll, nx, dx), ("y", y_ur - y_ll, ny, dy)):
        if not (np.isfinite(span) and d > 0 and abs(span - n * d) <= 0.5 * d):
            raise InputFileError(path, f"corners span {span:.1f} m in {axis} but {n} pixels of "
                                 f"{d:g} m make {n * d:.1f} m; expected a consistent header")
    return _projected.grid_coords(crs, definition, x0=x_ll, y0=y_ll, dx=dx, dy=dy, nx=nx, ny=ny)


@content_errors("FMI PGM")
def read_fmi(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    zr: str | tuple[float, float] | reflectivity.ZR | None = None,
    noise_floor_dbz: float = reflectivity.DEFAULT_NOISE_FLOOR_DBZ,
    max_dbz: float | None = reflectivity.DEFAULT_MAX_DBZ,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read an FMI PGM reflectivity composite (plain or gzipped) as rain rate in mm/h.

    Parameters
    ----------
    zr : Z–R relation (a name of :data:`reflectivity.NETWORK_ZR` or ``(a, b)``; default ``"fmi"``).
    noise_floor_dbz : reflectivity below this is dry (0 mm/h).
    max_dbz : reflectivity above this is capped (hail cap; ``None``: no cap).
    variable : ignored (one field per file); accepted for a uniform reader signature.
    bbox : (lon_min, lat_min, lon_max, lat_max); crops the rows/columns covering it.
    """
    path = require_file(path)
    header, pixels = parse_pgm(read_bytes(path), path)
    param = " ".join(header.get("param", ["reflectivity"]))
    if "reflectivity" not in param.lower() and "dbz" not in param.lower():
        raise InputFileError(path, f"PGM param {param!r} is not a reflectivity; expected "
                             "dBZ = 0.5 value - 32")
    try:
        time = np.datetime64(pd.to_datetime(header["obstime"][0], format="%Y%m%d%H%M"), "ns")
    except (KeyError, ValueError):
        raise InputFileError(path, f"PGM header obstime {header.get('obstime')!r}; expected "
                             "YYYYMMDDhhmm") from None
    coords, latlon, attrs = _grid(header, pixels.shape, path)
    pixels = pixels[::-1]  # rows south → north
    dbz = pixels.astype(np.float32) * np.float32(DBZ_GAIN) + np.float32(DBZ_OFFSET)
    dbz[pixels == int(header["maxval"][0])] = np.nan
    relation = reflectivity.resolve_zr(zr, "fmi")
    rate = reflectivity.dbz_to_rate(dbz, relation, noise_floor_dbz=noise_floor_dbz,
                                    max_dbz=max_dbz)
    attrs.update(semantics="instantaneous", time_label="observation time (obstime)",
                 fmi_param=param, fmi_product=" ".join(header.get("productname", [])),
                 **reflectivity.zr_attrs(relation, noise_floor_dbz, max_dbz, "reflectivity"))
    da = finalize(rate[None], {"time": [time], **coords}, ("time", "y", "x"), path=path,
                  variable=param, units="mm/h", product="FMI radar composite", attrs=attrs,
                  allow_all_nan=allow_all_nan)
    return crop_2d(_projected.attach_latlon(da, latlon), bbox, path)
