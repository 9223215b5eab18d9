"""DWD RADOLAN RW (gauge-adjusted hourly precipitation) in ESRI ASCII grid format.

What the real files hold (RW-20221018.tar.gz, 24 members ``RW_YYYYMMDD-HH50.asc``): a six-line
header ``ncols 900 / nrows 900 / xllcorner -523462 / yllcorner -4658645 / cellsize 1000 /
NODATA_value -1`` followed by 900 rows of integers, first row = northernmost. The integers are
hourly amounts in 0.1 mm (largest values ~140, i.e. 14 mm in one hour); −1 is NODATA. The corner
is in metres on the RADOLAN polar-stereographic projection (sphere R = 6370.04 km, true scale at
60° N, central meridian 10° E); the file name's time is the end of the hour (HH:50 UTC).

Returned: float32 DataArray (time, y, x), ``units="mm"``, ``accumulation="1h"``, ``x``/``y`` cell
centres in metres ascending (``xy_units="m"``), 2-D ``lat``/``lon`` coordinates and the CRS as the
radar readers keep it (:func:`precipdiff.io._projected.grid_coords`: ``crs`` PROJ string,
``crs_wkt``, ``grid_mapping_name``, ``grid_mapping_attrs``).
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
from collections.abc import Sequence

import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io import _projected, _stereo
from precipdiff.io._common import (
    GZIP_MAGIC,
    BBox,
    content_errors,
    crop_2d,
    finalize,
    one_line,
    require_file,
)

log = logging.getLogger(__name__)

PROJECTION = {"lon_0": 10.0, "lat_ts": 60.0, "radius_m": 6370040.0}
VALUE_SCALE = 0.1  # mm per file unit
_HEADER_KEYS = ("ncols", "nrows", "xllcorner", "yllcorner", "cellsize", "nodata_value")
_TIME_RE = re.compile(r"(\d{8})-(\d{4})")


def is_esri_ascii(head: bytes) -> bool:
    """True when bytes start with an ESRI ASCII grid header."""
    return head.lstrip()[:5].lower() == b"ncols"


def parse_asc(text: bytes, source: str) -> tuple[dict[str, float], np.ndarray]:
    """Parse one ESRI ASCII grid → (header, values (nrows, ncols) float32, north row first)."""
    lines = text.split(b"\n", 6)
    header: dict[str, float] = {}
    for line in lines[:6]:
        parts = line.split()
        if len(parts) == 2:
            header[parts[0].decode("ascii", "replace").lower()] = float(parts[1])
    if any(k not in header for k in _HEADER_KEYS) or len(lines) < 7:
        raise InputFileError(source, f"ESRI ASCII header incomplete: found {sorted(header)}, "
                             f"expected {list(_HEADER_KEYS)}")
    try:
        values = np.loadtxt(io.BytesIO(lines[6]), dtype=np.float32).ravel()
    except ValueError as exc:
        raise InputFileError(source, f"malformed grid values: {one_line(exc)}") from exc
    nrows, ncols = int(header["nrows"]), int(header["ncols"])
    if values.size != nrows * ncols:
        raise InputFileError(source, f"{values.size} values, expected {nrows}x{ncols} "
                             "(truncated file?)")
    return header, values.reshape(nrows, ncols)


def _time_from_name(name: str) -> np.datetime64:
    m = _TIME_RE.search(os.path.basename(name))
    if not m:
        raise InputFileError(name, "cannot find the time (YYYYMMDD-HHMM) in the file name")
    d, t = m.groups()
    return np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:]}", "ns")


def _members(path: os.PathLike, members: Sequence[str] | None) -> list[tuple[str, bytes]]:
    """(name, content) of .asc members of a tar(.gz) archive, sorted by name."""
    try:
        with tarfile.open(path, "r:*") as tar:
            names = sorted(m.name for m in tar.getmembers() if m.name.endswith(".asc"))
            if members is not None:
                missing = [n for n in members if n not in names]
                if missing:
                    raise InputFileError(path, f"members {missing} not in archive ({len(names)} "
                                         f".asc members, e.g. {names[:2]})")
                names = [n for n in names if n in set(members)]
            return [(n, tar.extractfile(n).read()) for n in names]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputFileError(path, f"truncated or corrupt tar archive: {one_line(exc)}") from exc


@content_errors("RADOLAN ESRI ASCII")
def read_radolan(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    members: Sequence[str] | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read a RADOLAN RW ``.asc`` file, or .asc members straight out of a tar(.gz) archive.

    Parameters
    ----------
    members : archive member names to read (default: all ``.asc`` members).
    bbox : (lon_min, lat_min, lon_max, lat_max); crops the rows/columns covering it.
    variable : ignored (the file has one field); accepted for a uniform reader signature.
    """
    path = require_file(path)
    with open(path, "rb") as fh:
        compressed = fh.read(2) == GZIP_MAGIC
    if compressed or tarfile.is_tarfile(path):
        items = _members(path, members)
        if not items:
            raise InputFileError(path, "archive has no .asc member")
    else:
        items = [(os.path.basename(path), path.read_bytes())]
    frames, times, header = [], [], None
    for name, text in items:
        hdr, values = parse_asc(text, f"{path}:{name}" if len(items) > 1 else str(path))
        if header is not None and hdr != header:
            raise InputFileError(path, f"member {name} has grid {hdr}, expected {header}")
        header = hdr
        frames.append(values[::-1])  # rows south → north
        times.append(_time_from_name(name))
    data = np.stack(frames)
    data[data == np.float32(header["nodata_value"])] = np.nan
    data *= np.float32(VALUE_SCALE)
    definition = _stereo.proj4(**PROJECTION)
    cell = header["cellsize"]
    if not cell > 0:
        raise InputFileError(path, f"cellsize {cell:g} in the ESRI ASCII header; expected a "
                             "positive cell size in metres")
    coords, latlon, grid_attrs = _projected.grid_coords(
        _projected.parse_crs(definition, path), definition, x0=header["xllcorner"],
        y0=header["yllcorner"], dx=cell, dy=cell, nx=int(header["ncols"]),
        ny=int(header["nrows"]))
    da = finalize(data, {"time": times, **coords}, ("time", "y", "x"), path=path, variable="RW",
                  units="mm", product="RADOLAN RW", allow_all_nan=allow_all_nan,
                  attrs={"accumulation": "1h",
                         "time_label": "end of the hourly accumulation", **grid_attrs})
    da = _projected.attach_latlon(da, latlon)
    return crop_2d(da, bbox, path)
