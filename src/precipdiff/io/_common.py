"""Helpers shared by the readers: checks, units, longitude wrapping, cropping, decompression."""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import lzma
import os
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import xarray as xr

from precipdiff.errors import InputFileError, PrecipdiffError

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]  # (lon_min, lat_min, lon_max, lat_max), degrees

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"

# units spelling -> (factor to the output unit, output unit, is accumulation)
_RATE = ("mm/h", False)
_AMOUNT = ("mm", True)
UNITS: dict[str, tuple[float, tuple[str, bool]]] = {}
for _names, _factor, _out in [
    (("mm/h", "mm/hr", "mm h-1", "mm hr-1", "mm h**-1", "mm/hour", "mm.h-1"), 1.0, _RATE),
    (("kg m-2 s-1", "kg m**-2 s**-1", "kg/m2/s", "kg m^-2 s^-1", "mm/s", "mm s-1"), 3600.0, _RATE),
    (("m/s", "m s-1", "m s**-1"), 3.6e6, _RATE),
    (("mm", "kg m-2", "kg m**-2", "kg/m2", "kg m^-2"), 1.0, _AMOUNT),
    (("m",), 1000.0, _AMOUNT),
]:
    for _n in _names:
        UNITS[_n] = (_factor, _out)

# Packing noise tolerated below zero (mm or mm/h) before values count as negative.
NEGATIVE_TOLERANCE = 1e-4


# What a library raises on malformed content: h5py/netCDF4 (OSError, KeyError, RuntimeError,
# ValueError), ecCodes (GribInternalError, added by the GRIB readers), zlib/lzma/tar, numpy
# (ValueError on reshape, MemoryError for absurd sizes read from a header), struct unpacking.
CONTENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, KeyError, IndexError, TypeError, RuntimeError,
    ArithmeticError, MemoryError, struct.error, zlib.error, lzma.LZMAError, tarfile.TarError,
)

F = TypeVar("F", bound=Callable[..., xr.DataArray])


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one line of at most ``limit`` characters (library messages span lines)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def content_errors(kind: str, extra: tuple[type[BaseException], ...] = ()) -> Callable[[F], F]:
    """Decorate a reader ``f(path, ...)`` so that a library error raised by malformed content
    becomes an :class:`InputFileError` naming the file (``PrecipdiffError`` passes through).

    ``kind`` names the expected format in the message; ``extra`` adds library exception types.
    """
    caught = CONTENT_ERRORS + tuple(extra)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def reader(path, *args, **kwargs):
            try:
                return func(path, *args, **kwargs)
            except PrecipdiffError:
                raise
            except caught as exc:
                detail = one_line(exc) or type(exc).__name__
                raise InputFileError(
                    path, f"cannot read as {kind} (corrupt, truncated or not {kind}?): "
                    f"{type(exc).__name__}: {detail}"
                ) from exc

        return reader  # type: ignore[return-value]

    return decorate


def require_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path; raise :class:`InputFileError` if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, "file does not exist")
    return p


def convert_units(
    values: np.ndarray, units: str | None, path: str | os.PathLike, variable: str | None
) -> tuple[np.ndarray, str, bool]:
    """Scale ``values`` to mm/h (rates) or mm (amounts).

    Returns ``(values, units, is_accumulation)``; unknown units raise :class:`InputFileError`.
    """
    key = " ".join(str(units or "").strip().split())
    if key not in UNITS:
        raise InputFileError(
            path,
            f"unknown precipitation units {units!r}; expected one of mm/h, mm, m, kg m-2 s-1, "
            "kg m-2, m s-1",
            variable=variable,
        )
    factor, (out, accum) = UNITS[key]
    if factor != 1.0:
        values = values * np.float32(factor)
    return values, out, accum


def finalize(
    values: np.ndarray,
    coords: dict,
    dims: tuple[str, ...],
    *,
    path: str | os.PathLike,
    variable: str | None,
    product: str,
    units: str,
    attrs: dict | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Build the float32 DataArray every reader returns, after the value checks.

    Raises :class:`InputFileError` for an all-NaN field (unless ``allow_all_nan``) and for
    negative values beyond packing noise (fill values must already be NaN).
    """
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    any_finite = bool(finite.any())
    if not any_finite and not allow_all_nan:
        raise InputFileError(
            path,
            f"field is entirely missing (all {values.size} values NaN/fill); expected some valid "
            "data (pass allow_all_nan=True to accept it)",
            variable=variable,
        )
    if any_finite:
        vmin = float(np.min(values, where=finite, initial=np.inf))
        if vmin < -NEGATIVE_TOLERANCE:
            n = int(np.count_nonzero(values < -NEGATIVE_TOLERANCE))
            raise InputFileError(
                path,
                f"{n} negative values (min {vmin:g} {units}) that are not a known fill value; "
                "expected precipitation >= 0",
                variable=variable,
            )
        if vmin < 0:
            np.maximum(values, 0, out=values, where=finite)
    out_attrs = {"units": units, "source_file": str(path), "product": product}
    out_attrs.update(attrs or {})
    da = xr.DataArray(values, coords=coords, dims=dims, name="precip", attrs=out_attrs)
    return da


def to_datetime64(values: np.ndarray, units: str, path: str | os.PathLike) -> np.ndarray:
    """Convert numeric CF-style times ``"<unit> since <epoch>"`` to ``datetime64[ns]``."""
    parts = units.split(" since ")
    step = {"seconds": "s", "second": "s", "minutes": "m", "hours": "h", "days": "D"}.get(
        parts[0].strip().lower()
    )
    if len(parts) != 2 or step is None:
        raise InputFileError(path, f"time units {units!r} not understood", variable="time")
    epoch_txt = parts[1].strip().replace(" UTC", "").replace("Z", "").strip()
    epoch = np.datetime64(epoch_txt.replace(" ", "T"), "ns")
    scale = {"s": 1e9, "m": 60e9, "h": 3600e9, "D": 86400e9}[step]
    offset = np.round(np.asarray(values, dtype=np.float64) * scale).astype("int64")
    return epoch + offset.astype("timedelta64[ns]")


def grib_time(ymd: int, hhmm: int, path: str | os.PathLike | None = None) -> np.datetime64:
    """``datetime64[ns]`` from GRIB ``validityDate`` (YYYYMMDD) and ``validityTime`` (HHMM)."""
    ymd, hhmm = int(ymd), int(hhmm)
    date = f"{ymd // 10000:04d}-{ymd // 100 % 100:02d}-{ymd % 100:02d}"
    try:
        return np.datetime64(f"{date}T{hhmm // 100:02d}:{hhmm % 100:02d}", "ns")
    except ValueError:
        raise InputFileError(path or "GRIB message", f"invalid validity date/time {ymd} "
                             f"{hhmm:04d}; expected YYYYMMDD and HHMM", variable="time") from None


def lon_to_180(lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wrap longitudes to −180…180 and return ``(lon_sorted, order)`` for re-indexing columns."""
    wrapped = ((np.asarray(lon, dtype=np.float64) + 180.0) % 360.0) - 180.0
    order = np.argsort(wrapped, kind="stable")
    return wrapped[order], order


def bbox_slices(lat: np.ndarray, lon: np.ndarray, bbox: BBox | None) -> tuple[slice, slice]:
    """Index slices of ascending 1-D ``lat``/``lon`` whose centres fall inside ``bbox``."""
    if bbox is None:
        return slice(None), slice(None)
    lon_min, lat_min, lon_max, lat_max = bbox
    if lon_min >= lon_max or lat_min >= lat_max:
        raise ValueError(f"bbox {bbox} must be (lon_min, lat_min, lon_max, lat_max)")
    i0, i1 = np.searchsorted(lat, lat_min, "left"), np.searchsorted(lat, lat_max, "right")
    j0, j1 = np.searchsorted(lon, lon_min, "left"), np.searchsorted(lon, lon_max, "right")
    return slice(int(i0), int(i1)), slice(int(j0), int(j1))


def check_nonempty_crop(shape: tuple[int, ...], bbox: BBox | None, path: str | os.PathLike) -> None:
    """Raise if a bbox crop selected no grid cell."""
    if bbox is not None and 0 in shape:
        raise InputFileError(path, f"bbox {bbox} does not overlap the file's grid")


def crop_2d(da: xr.DataArray, bbox: BBox | None, path: str | os.PathLike) -> xr.DataArray:
    """Crop a projected (…, y, x) DataArray with 2-D ``lat``/``lon`` coords to the rectangle of
    rows/columns that holds every cell centre inside ``bbox``."""
    if bbox is None:
        return da
    lon_min, lat_min, lon_max, lat_max = bbox
    lat, lon = np.asarray(da["lat"]), np.asarray(da["lon"])
    inside = (lat >= lat_min) & (lat <= lat_max) & (lon >= lon_min) & (lon <= lon_max)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise InputFileError(path, f"bbox {bbox} does not overlap the file's grid")
    return da.isel(y=slice(rows[0], rows[-1] + 1), x=slice(cols[0], cols[-1] + 1))


def sniff(path: str | os.PathLike, n: int = 512) -> bytes:
    """First ``n`` bytes of a file, decompressed when it is gzip or xz."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    opener = gzip.open if head[:2] == GZIP_MAGIC else lzma.open if head == XZ_MAGIC else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise InputFileError(path, f"cannot decompress: {one_line(exc)}") from exc


def read_bytes(path: str | os.PathLike) -> bytes:
    """Whole file content, transparently decompressing gzip/xz; corrupt archives raise."""
    data = Path(path).read_bytes()
    try:
        if data[:2] == GZIP_MAGIC:
            return gzip.decompress(data)
        if data[:6] == XZ_MAGIC:
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise InputFileError(path, f"truncated or corrupt compressed file: {one_line(exc)}"
                             ) from exc
    return data


@contextlib.contextmanager
def decompressed(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a plain-file path: ``path`` itself, or a temporary decompressed copy (gz/xz)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:2] != GZIP_MAGIC and head != XZ_MAGIC:
        yield Path(path)
        return
    fd, tmp = tempfile.mkstemp(prefix="precipdiff-", suffix=".grib")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(read_bytes(path))
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
