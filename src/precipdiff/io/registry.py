"""Reader registry, detection from file content, and the ``read`` / ``read_many`` entry points."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError, UnknownMethodError
from precipdiff.io import fmi, grib, imerg, meteoswiss, mrms, netcdf, odim, radolan
from precipdiff.io._common import BBox, one_line, require_file, sniff

log = logging.getLogger(__name__)

READERS: dict[str, Callable[..., xr.DataArray]] = {
    "imerg": imerg.read_imerg,
    "mrms": mrms.read_mrms,
    "grib": grib.read_grib,
    "netcdf": netcdf.read_netcdf,
    "radolan": radolan.read_radolan,
    "odim": odim.read_odim,
    "meteoswiss": meteoswiss.read_meteoswiss,
    "fmi": fmi.read_fmi,
}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05")


def get_reader(name: str) -> Callable[..., xr.DataArray]:
    """Reader function by name: ``imerg | mrms | grib | netcdf | radolan``."""
    try:
        return READERS[name.lower()]
    except (KeyError, AttributeError):
        raise UnknownMethodError("reader", name, READERS) from None


def detect_reader(path: str | os.PathLike) -> str:
    """Name of the reader for ``path``, decided from its content (magic bytes, groups).

    HDF5 → ``imerg`` when it holds an IMERG field, else ``netcdf``; netCDF-3 and zarr
    directories → ``netcdf``; GRIB (plain, .gz, .xz) → ``mrms`` for discipline 209, else
    ``grib``; ESRI ASCII grids and tar archives of them → ``radolan``; ODIM_H5 (HDF5) →
    ``odim``; GIF → ``meteoswiss``; binary PGM (plain, .gz) → ``fmi``.
    """
    path = require_file(path)
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return "netcdf"
        raise InputFileError(path, "directory is not a zarr store (no zarr.json/.zgroup)")
    head = sniff(path, 1024)
    if head.startswith(HDF5_MAGIC):
        try:
            with h5py.File(path, "r") as h5:
                if odim.is_odim(h5):
                    return "odim"
                return "imerg" if imerg.is_imerg(h5) else "netcdf"
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise InputFileError(path, f"HDF5 signature but unreadable (truncated?): "
                                 f"{one_line(exc)}") from exc
    if head.startswith(NETCDF3_MAGIC):
        return "netcdf"
    pos = head.find(b"GRIB")
    if 0 <= pos < 128 and len(head) >= pos + 8:
        edition = head[pos + 7]
        return "mrms" if edition == 2 and head[pos + 6] == 209 else "grib"
    if radolan.is_esri_ascii(head) or head[257:262] == b"ustar":
        return "radolan"
    if head[:6] in meteoswiss.GIF_MAGIC:
        return "meteoswiss"
    if fmi.is_pgm(head):
        return "fmi"
    raise InputFileError(path, f"unrecognised file content (starts with {head[:8]!r}); expected "
                         "HDF5/NetCDF/ODIM, zarr, GRIB (optionally .gz/.xz), ESRI ASCII, GIF "
                         "or PGM")


def read(
    path: str | os.PathLike,
    *,
    reader: str | None = None,
    variable: str | None = None,
    bbox: BBox | None = None,
    **kw,
) -> xr.DataArray:
    """Read one file with ``reader`` (default: detected from content).

    Returns float32 DataArray (time, lat, lon) or (time, y, x), units mm/h (or mm with an
    ``accumulation`` attribute), NaN for missing; ``bbox = (lon_min, lat_min, lon_max, lat_max)``.
    Extra keywords go to the reader (e.g. ``message=`` for GRIB, ``members=`` for RADOLAN tar).
    """
    name = reader or detect_reader(path)
    log.debug("reading %s with %s", path, name)
    return get_reader(name)(path, variable=variable, bbox=bbox, **kw)


def read_many(paths: Iterable[str | os.PathLike], **kw) -> xr.DataArray:
    """Read several files and concatenate them along time, sorted; duplicate times raise.

    All files must share one grid and one unit (``xarray.concat`` with ``join="exact"``).
    """
    arrays = [read(p, **kw) for p in paths]
    if not arrays:
        raise ValueError("read_many needs at least one path")
    seen: dict[np.datetime64, str] = {}
    for da in arrays:
        for t in da["time"].values:
            if t in seen:
                raise InputFileError(da.attrs["source_file"], f"time {t} already read from "
                                     f"{seen[t]}; expected unique times")
            seen[t] = da.attrs["source_file"]
    units = {da.attrs["units"] for da in arrays}
    if len(units) > 1:
        raise InputFileError(arrays[0].attrs["source_file"], f"mixed units {sorted(units)}")
    try:
        out = xr.concat(arrays, dim="time", join="exact", combine_attrs="drop_conflicts")
    except ValueError as exc:
        raise InputFileError(arrays[0].attrs["source_file"],
                             f"files are on different grids: {exc}") from exc
    out = out.sortby("time")
    out.attrs["source_file"] = ";".join(str(Path(da.attrs["source_file"]).name) for da in arrays)
    return out
