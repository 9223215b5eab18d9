"""Input side of ``prepare``: file lists, checked reads, valid-time pairing, grid placement.

Every problem is raised as a one-line :class:`InputFileError` / :class:`GridError` that names the
file and what was found versus expected.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from precipdiff.atomic import atomic_path
from precipdiff.errors import GridError, InputFileError, PrecipdiffError

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]
GRID_TOL = 0.01  # coordinate tolerance, in fine-grid cells
RATE_UNITS = ("mm/h",)
STAGE_MAX_BYTES = 256 * 2**20  # files whose cropped field is larger are read twice instead


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
    """Files named by ``patterns`` (paths or globs), sorted and de-duplicated.

    A literal path that does not exist, or a glob with no match, raises :class:`InputFileError`.
    """
    out: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(glob.glob(pattern, recursive=True))
            if not found:
                raise InputFileError(pattern, f"no {what} file matches this pattern")
            out.extend(found)
        elif not Path(pattern).is_file():
            raise InputFileError(pattern, f"{what} file does not exist")
        else:
            out.append(pattern)
    return list(dict.fromkeys(os.path.abspath(p) for p in out))


def accumulation_hours(text: str, path: str) -> float:
    """Length of an accumulation period such as ``"1h"``, ``"30min"`` or ``"PT3H"``, in hours."""
    try:
        hours = pd.Timedelta(text).total_seconds() / 3600.0
    except (ValueError, TypeError) as exc:
        raise InputFileError(path, f"accumulation period {text!r} not understood") from exc
    if hours <= 0:
        raise InputFileError(path, f"accumulation period {text!r} is not positive")
    return hours


def to_rate(da: xr.DataArray, path: str, *, accumulation: str) -> xr.DataArray:
    """Return ``da`` in mm/h.

    Amounts (``units="mm"`` with attribute ``accumulation``, e.g. a 1-h QPE) are divided by the
    period length in hours when ``accumulation="to_rate"`` (mean rate over the period, labelled
    with the time the reader gives, i.e. the period's end for MRMS QPE); ``accumulation="error"``
    refuses them. Any other units raise.
    """
    units = str(da.attrs.get("units", ""))
    if units in RATE_UNITS:
        return da
    if units == "mm":
        period = da.attrs.get("accumulation")
        if period is None:
            raise InputFileError(path, "units 'mm' without an 'accumulation' period; expected "
                                 "mm/h or mm with accumulation")
        if accumulation == "error":
            raise InputFileError(path, f"{period} accumulation in mm, but accumulation='error' "
                                 "accepts rates (mm/h) only; set accumulation='to_rate'")
        out = da / np.float32(accumulation_hours(str(period), path))
        out.attrs = {**da.attrs, "units": "mm/h", "converted_from": f"mm per {period}"}
        return out.astype(np.float32)
    raise InputFileError(path, f"unknown units {units!r}; expected mm/h (or mm with accumulation)")


def _call_reader(path: str, fn, what: str | None, **kw) -> xr.DataArray:
    """Call an io reader; any failure becomes a one-line :class:`InputFileError` on ``path``."""
    if not Path(path).is_file():
        raise InputFileError(path, "file does not exist")
    try:
        return fn(path, **kw)
    except PrecipdiffError:
        raise
    except Exception as exc:  # readers of corrupt files raise many library-specific types
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise InputFileError(path, f"cannot read ({type(exc).__name__}: {msg[:200]})",
                             variable=what) from exc


def read_checked(path: str, *, reader: str | None, variable: str | None, bbox: BBox | None,
                 accumulation: str = "to_rate", precip: bool = True,
                 variables: Sequence[str] | None = None,
                 levels: Sequence[int] | None = None) -> xr.DataArray:
    """``precipdiff.io.read`` with every failure turned into a one-line error naming ``path``.

    With ``levels`` (extras only): pressure-level ``variables`` via ``io.read_grib_levels``
    (``reader="grib"``) or ``io.read_netcdf_levels``, as (time, var, lat, lon).
    """
    from precipdiff import io

    if levels:
        fn = io.read_grib_levels if reader == "grib" else io.read_netcdf_levels
        da = _call_reader(path, fn, None, variables=list(variables or ()),
                          levels=[int(v) for v in levels], bbox=bbox)
        if da.dims[0] != "time" or da.ndim != 4:
            raise InputFileError(path, f"expected dims (time, var, lat, lon), found {da.dims}")
        return da
    da = _call_reader(path, io.read, variable, reader=reader, variable=variable, bbox=bbox)
    if "time" not in da.dims or da.ndim != 3:
        raise InputFileError(path, f"expected dims (time, lat, lon), found {da.dims}",
                             variable=variable)
    if precip:
        da = to_rate(da, path, accumulation=accumulation)
    return da


def staged_path(stage_dir: str | os.PathLike, path: str, **read_kw: object) -> Path:
    """Where the scan keeps the checked, cropped field of ``path`` read with ``read_kw``
    (keyed by path, size, modification time and read options: a changed file is re-read)."""
    try:
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = []
    key = json.dumps([os.path.abspath(path), stamp,
                      sorted((k, str(v)) for k, v in read_kw.items())])
    return Path(stage_dir) / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".npz")


def save_staged(da: xr.DataArray, target: Path) -> None:
    """Keep a read field on disk (atomically) so the write phase need not decode it again."""
    meta = {"dims": list(da.dims), "attrs": {k: str(v) for k, v in da.attrs.items()},
            "var": [str(v) for v in da["var"].values] if "var" in da.coords else None}
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, values=np.asarray(da.values, np.float32),
                 time=np.asarray(da["time"].values, "datetime64[ns]").astype(np.int64),
                 y=np.asarray(da[da.dims[-2]].values), x=np.asarray(da[da.dims[-1]].values),
                 meta=np.array(json.dumps(meta)))


def load_staged(target: Path) -> xr.DataArray | None:
    """The field saved by :func:`save_staged`, or None if absent/unreadable."""
    try:
        with np.load(target) as z:
            meta = json.loads(str(z["meta"]))
            dims = meta["dims"]
            coords = {"time": z["time"].astype("datetime64[ns]"), dims[-2]: z["y"],
                      dims[-1]: z["x"]}
            if meta.get("var") is not None:
                coords["var"] = meta["var"]
            return xr.DataArray(z["values"], dims=dims, attrs=meta["attrs"], coords=coords)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


@dataclass(frozen=True)
class FileScan:
    """What ``prepare`` needs to know of one file: its valid times and grid."""

    path: str
    times: tuple[int, ...]  # ns since 1970
    grid: tuple[float, float, float, float, int, int]  # lat0, lon0, dlat, dlon, nlat, nlon
    accumulation: str | None


def lattice_offset(c0: float, d: float, factor: int) -> int:
    """Fine cells to skip so that coarse blocks start on multiples of ``factor * d`` from the
    origin (0 deg or 0 m): a 0.01 deg grid then coarsens onto the 0.1 deg IMERG cells.

    ``c0`` is the first cell centre, ``d`` the spacing; 0 when the grid is not on a lattice
    of ``d`` from the origin (cell edges off multiples of ``d`` by more than 1e-3 of a cell).
    """
    q = (c0 - d / 2) / d
    return int((-round(q)) % factor) if abs(q - round(q)) < 1e-3 else 0


def grid_tuple(da: xr.DataArray, path: str) -> tuple[float, float, float, float, int, int]:
    """Regular-grid description ``(lat0, lon0, dlat, dlon, nlat, nlon)`` of ``da``."""
    dims = da.dims[-2:]
    lat, lon = np.asarray(da[dims[0]], dtype=np.float64), np.asarray(da[dims[1]], np.float64)
    d = []
    for name, c in (("latitude", lat), ("longitude", lon)):
        if c.size < 2:
            raise GridError(f"{path}: only {c.size} {name} cell(s) in the region; expected >= 2")
        step = np.diff(c)
        if np.any(np.abs(step - step[0]) > GRID_TOL * abs(step[0])) or step[0] <= 0:
            raise GridError(f"{path}: {name} is not regular ascending; expected a regular grid")
        d.append(float((c[-1] - c[0]) / (c.size - 1)))
    return float(lat[0]), float(lon[0]), d[0], d[1], int(lat.size), int(lon.size)


def extra_read_kw(spec: dict, bbox: BBox | None, accumulation: str) -> dict:
    """Read options of an extra field (the same in the scan and the write phase)."""
    return dict(reader=spec.get("reader"), variable=spec.get("variable"), bbox=bbox,
                accumulation=accumulation, precip=False, variables=spec.get("variables"),
                levels=spec.get("levels"))


def scan_file(path: str, *, stage_dir: str | None = None, **read_kw) -> FileScan:
    """Read ``path`` with :func:`read_checked` (checking it fully) and keep its times and
    grid; with ``stage_dir`` also the field itself (see :func:`staged_path`) when it is at
    most ``STAGE_MAX_BYTES``."""
    kw = {"precip": True, **read_kw}
    da = read_checked(path, **kw)
    if tuple(da.dims[-2:]) != ("lat", "lon"):
        raise InputFileError(path, f"dims {da.dims}: prepare needs a regular (lat, lon) grid; "
                             "projected (y, x) fields are not supported yet")
    if stage_dir is not None and da.nbytes <= STAGE_MAX_BYTES:
        save_staged(da, staged_path(stage_dir, path, **kw))
    times = tuple(int(t) for t in np.asarray(da["time"].values, dtype="datetime64[ns]")
                  .astype("int64"))
    acc = da.attrs.get("accumulation")
    return FileScan(path=path, times=times, grid=grid_tuple(da, path),
                    accumulation=str(acc) if acc else None)


def _iso(ns: int) -> str:
    return str(np.datetime64(ns, "ns").astype("datetime64[s]"))


def frames_of(scans: Sequence[FileScan], what: str) -> list[tuple[int, str, int]]:
    """Sorted ``(time_ns, path, index_in_file)``; duplicate or overlapping times raise."""
    frames = sorted((t, s.path, k) for s in scans for k, t in enumerate(s.times))
    for (t0, p0, _), (t1, p1, _) in pairwise(frames):
        if t0 == t1:
            raise InputFileError(p1, f"duplicate {what} valid time {_iso(t1)} (also in {p0})")
    periods = {s.path: s.accumulation for s in scans if s.accumulation}
    for (t0, p0, _), (t1, p1, _) in pairwise(frames):
        if p1 in periods:
            period = accumulation_hours(periods[p1], p1) * 3600e9
            if t1 - t0 < period - 1e6:
                raise InputFileError(p1, f"{what} accumulation period ending {_iso(t1)} overlaps "
                                     f"the one ending {_iso(t0)} in {p0}")
    return frames


def pair_frames(ref: list[tuple[int, str, int]], src: list[tuple[int, str, int]] | None,
                tolerance_s: float, *, ref_desc: str, src_desc: str
                ) -> list[tuple[tuple[int, str, int], tuple[int, str, int] | None]]:
    """Match every reference frame to the nearest source frame within ``tolerance_s``.

    Reference frames without a source match are dropped (logged). ``src=None`` (emulated
    source) keeps every reference frame. No pair at all raises :class:`InputFileError`.
    """
    if src is None:
        return [(r, None) for r in ref]
    src_t = np.array([s[0] for s in src], dtype=np.int64)
    tol = int(round(tolerance_s * 1e9))
    pairs = []
    for r in ref:
        k = int(np.argmin(np.abs(src_t - r[0])))
        if abs(int(src_t[k]) - r[0]) <= tol:
            pairs.append((r, src[k]))
    if not pairs:
        raise InputFileError(
            src_desc, f"no source time within {tolerance_s:g} s of any reference time: source "
            f"{_iso(src[0][0])}..{_iso(src[-1][0])} ({len(src)} frames), reference "
            f"{_iso(ref[0][0])}..{_iso(ref[-1][0])} ({len(ref)} frames) in {ref_desc}")
    if len(pairs) < len(ref):
        log.info("%d of %d reference frames have no source within %g s; dropped",
                 len(ref) - len(pairs), len(ref), tolerance_s)
    return pairs
