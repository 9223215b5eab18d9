"""ODIM HDF5 Cartesian composites: OPERA CIRRUS/NIMBUS and national ODIM products.

Format: Michelson, D. B. et al. (2021), *EUMETNET OPERA weather radar information model for
implementation with the HDF5 file format* (ODIM_H5), version 2.4. What this reader uses:

- root attribute ``Conventions = "ODIM_H5/V2_x"``; ``/what``: ``object`` (``COMP`` or ``IMAGE``,
  Cartesian), ``date``/``time`` (nominal time, UTC) and ``source`` (``ORG:247`` is the OPERA data
  centre, ``NOD:fi…`` a Finnish radar, …);
- ``/where`` (or ``/datasetN/where``): ``projdef`` (a PROJ string), ``xsize``/``ysize``,
  ``xscale``/``yscale`` (metres) and the corners ``LL_lon/LL_lat``, ``UR_lon/UR_lat`` — the
  *outer* corners of the corner cells (spec §5.2); the first data row is the northern edge;
- ``/datasetN/dataM/what``: ``quantity``, ``gain``, ``offset``, ``nodata``, ``undetect``
  (inherited from ``/datasetN/what`` and ``/what`` when absent there); physical value =
  ``raw · gain + offset``; ``nodata`` (not scanned) → NaN, ``undetect`` (scanned, no echo) → 0;
- ``/datasetN/what``: ``startdate/starttime/enddate/endtime`` (the collection or accumulation
  window).

Quantities: ``RATE`` (mm/h, instantaneous), ``ACRR`` (mm accumulated over the dataset's
start–end window, labelled with its end) and ``DBZH`` (dBZ, converted to mm/h by a Z–R relation,
:mod:`precipdiff.io.reflectivity`; default by the file's ``source``: Marshall–Palmer for OPERA and
unknown origins). The real OPERA CIRRUS files (``radar/opera-cirrus``) hold one DBZH dataset
(``product=MAX``, float64, nodata −9999000, undetect −8888000) on a 3800 × 4400 1-km LAEA grid.

Returned: float32 DataArray (time, y, x) on the file's own grid (x/y cell centres in metres,
ascending), 2-D ``lat``/``lon``, CRS attrs (``crs`` = ``projdef``, ``crs_wkt``, CF
``grid_mapping_attrs``), ``semantics`` (``instantaneous`` or ``accumulation``) and, for DBZH,
the Z–R provenance.
"""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pandas as pd
import xarray as xr

from precipdiff.errors import InputFileError
from precipdiff.io import _projected, reflectivity
from precipdiff.io._common import BBox, content_errors, crop_2d, finalize, require_file

log = logging.getLogger(__name__)

QUANTITIES = ("RATE", "DBZH", "ACRR")  # preference order when no quantity is asked for
CARTESIAN_OBJECTS = ("COMP", "IMAGE", "CVOL")
_CORNER_TOL = 0.5  # cells: corners vs xsize·xscale


def is_odim(h5: h5py.File) -> bool:
    """True for an ODIM_H5 file (``Conventions`` attribute, or the ``what``/``where``/
    ``dataset1`` layout)."""
    conv = _text(h5.attrs.get("Conventions", b""))
    if conv.upper().startswith("ODIM_H5"):
        return True
    return {"what", "where", "dataset1"} <= set(h5.keys())


def _text(value) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("ascii", "replace").strip("\x00 ")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def _attrs(group: h5py.Group | None, name: str = "what") -> dict:
    if group is None or name not in group:
        return {}
    return {k: (_text(v) if isinstance(v, bytes | np.bytes_ | str) else v)
            for k, v in group[name].attrs.items()}


def _datasets(h5: h5py.File) -> list[tuple[str, str]]:
    """(dataset, data) group names in file order, e.g. ('dataset1', 'data1')."""
    def num(name: str, prefix: str) -> int:
        tail = name[len(prefix):]
        return int(tail) if tail.isdigit() else 10**9
    out = []
    for ds in sorted((k for k in h5 if k.startswith("dataset")), key=lambda k: num(k, "dataset")):
        if not isinstance(h5[ds], h5py.Group):
            continue
        for d in sorted((k for k in h5[ds] if k.startswith("data") and k[4:].isdigit()),
                        key=lambda k: num(k, "data")):
            out.append((ds, d))
    return out


def _time(date: str, time: str, path, what: str) -> np.datetime64:
    try:
        return np.datetime64(pd.Timestamp(f"{date}T{time[:2]}:{time[2:4]}:{time[4:6] or '00'}"),
                             "ns")
    except (ValueError, IndexError) as exc:
        raise InputFileError(path, f"{what} date/time {date!r} {time!r} not understood; expected "
                             "YYYYMMDD and HHMMSS") from exc


def _network(source: str) -> str:
    """Z–R network default from ODIM ``/what/source`` (``ORG:`` WMO centre, ``NOD:`` radar)."""
    items = dict(part.split(":", 1) for part in source.split(",") if ":" in part)
    org, nod = items.get("ORG", "").strip(), items.get("NOD", "").strip().lower()
    if org == "86" or nod.startswith("fi"):
        return "fmi"
    if org == "215" or nod.startswith("ch"):
        return "meteoswiss"
    return "opera"


def _choose(h5: h5py.File, path, variable: str | None) -> tuple[str, str, str]:
    """(dataset, data, quantity) of the field to read."""
    found: dict[str, tuple[str, str]] = {}
    for ds, d in _datasets(h5):
        what = {**_attrs(h5), **_attrs(h5[ds]), **_attrs(h5[ds][d])}
        qty = str(what.get("quantity", "")).upper()
        if qty and "data" in h5[ds][d]:
            found.setdefault(qty, (ds, d))
    if not found:
        raise InputFileError(path, "ODIM file has no /datasetN/dataM with a quantity and data; "
                             "expected an ODIM_H5 Cartesian product")
    if variable is not None:
        qty = variable.upper()
        if qty not in QUANTITIES:
            raise InputFileError(path, f"ODIM quantity {variable!r} is not supported; expected one "
                                 f"of {list(QUANTITIES)}", variable=variable)
        if qty not in found:
            raise InputFileError(path, f"ODIM quantity {qty!r} not in the file; found "
                                 f"{sorted(found)}", variable=variable)
        return (*found[qty], qty)
    for qty in QUANTITIES:
        if qty in found:
            return (*found[qty], qty)
    raise InputFileError(path, f"unsupported ODIM quantity {sorted(found)}; expected one of "
                         f"{list(QUANTITIES)} (precipitation rate, accumulation or reflectivity)")


def _grid(h5: h5py.File, ds: str, shape: tuple[int, int], path) -> tuple[dict, dict, dict]:
    where = {**_attrs(h5, "where"), **_attrs(h5[ds], "where")}
    missing = [k for k in ("projdef", "LL_lon", "LL_lat", "UR_lon", "UR_lat") if k not in where]
    if missing:
        raise InputFileError(path, f"ODIM /where lacks {missing}; expected the projection "
                             "(projdef) and corner coordinates of a Cartesian product")
    definition = str(where["projdef"]).strip()
    crs = _projected.parse_crs(definition, path)
    ny, nx = shape
    size = (int(where.get("ysize", ny)), int(where.get("xsize", nx)))
    if size != shape:
        raise InputFileError(path, f"data shape {shape} but /where ysize, xsize = {size}")
    (x_ll, x_ur), (y_ll, y_ur) = _projected.project(
        crs, [float(where["LL_lon"]), float(where["UR_lon"])],
        [float(where["LL_lat"]), float(where["UR_lat"])])
    dx = float(where.get("xscale", (x_ur - x_ll) / nx))
    dy = float(where.get("yscale", (y_ur - y_ll) / ny))
    for axis, span, n, d in (("x", x_ur - x_ll, nx, dx), ("y", y_ur - y_ll, ny, dy)):
        if not (np.isfinite(span) and d > 0 and abs(span - n * d) <= _CORNER_TOL * d):
            raise InputFileError(path, f"corners span {span:.1f} m in {axis} but {n} cells of "
                                 f"{d:g} m make {n * d:.1f} m; expected consistent /where corners")
    # centre the grid on the corners' midpoint: rounding of the corner degrees splits evenly
    x0 = (x_ll + x_ur) / 2 - nx * dx / 2
    y0 = (y_ll + y_ur) / 2 - ny * dy / 2
    return _projected.grid_coords(crs, definition, x0=x0, y0=y0, dx=dx, dy=dy, nx=nx, ny=ny)


def _decode(raw: np.ndarray, what: dict, path, qty: str) -> tuple[np.ndarray, np.ndarray]:
    """Physical values (float32, C-contiguous even for a flipped view) and the undetect mask;
    nodata → NaN."""
    gain, offset = float(what.get("gain", 1.0)), float(what.get("offset", 0.0))
    nodata_mask = raw == what["nodata"] if "nodata" in what else np.zeros(raw.shape, bool)
    undetect = raw == what["undetect"] if "undetect" in what else np.zeros(raw.shape, bool)
    values = raw.astype(np.float32)
    if gain != 1.0:
        values *= np.float32(gain)
    if offset != 0.0:
        values += np.float32(offset)
    values[nodata_mask] = np.nan
    if np.issubdtype(raw.dtype, np.floating):
        values[~np.isfinite(raw)] = np.nan
    log.debug("%s %s: %d nodata, %d undetect", path, qty, nodata_mask.sum(), undetect.sum())
    return values, undetect


@content_errors("ODIM HDF5")
def read_odim(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    zr: str | tuple[float, float] | reflectivity.ZR | None = None,
    noise_floor_dbz: float = reflectivity.DEFAULT_NOISE_FLOOR_DBZ,
    max_dbz: float | None = reflectivity.DEFAULT_MAX_DBZ,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read one quantity of an ODIM HDF5 Cartesian composite.

    Parameters
    ----------
    variable : ODIM quantity ``RATE`` | ``DBZH`` | ``ACRR`` (default: the first of these found).
    zr : Z–R relation for DBZH (a name of :data:`reflectivity.NETWORK_ZR` or ``(a, b)``);
        default by the file's ``/what/source``.
    noise_floor_dbz : reflectivity below this is dry (0 mm/h).
    max_dbz : reflectivity above this is capped (hail cap; ``None``: no cap).
    bbox : (lon_min, lat_min, lon_max, lat_max); crops the rows/columns covering it.
    """
    path = require_file(path)
    try:
        with h5py.File(path, "r") as h5:
            da = _read_open(h5, path, variable, (zr, noise_floor_dbz, max_dbz), allow_all_nan)
    except OSError as exc:
        raise InputFileError(path, f"unreadable HDF5 (truncated or corrupt?): "
                             f"{' '.join(str(exc).split())[:160]}") from exc
    except KeyError as exc:
        raise InputFileError(path, f"ODIM structure incomplete: {exc}") from exc
    return crop_2d(da, bbox, path)


def _read_open(h5, path, variable, conversion, allow_all_nan) -> xr.DataArray:
    zr, noise_floor_dbz, max_dbz = conversion
    root = _attrs(h5)
    obj = str(root.get("object", "COMP")).upper()
    if obj not in CARTESIAN_OBJECTS:
        raise InputFileError(path, f"ODIM object {obj!r} is not a Cartesian product; expected "
                             f"one of {list(CARTESIAN_OBJECTS)} (polar scans are not supported)")
    ds, d, qty = _choose(h5, path, variable)
    what = {**root, **_attrs(h5[ds]), **_attrs(h5[ds][d])}
    raw = h5[ds][d]["data"][...]
    if raw.ndim != 2:
        raise InputFileError(path, f"{ds}/{d}/data has shape {raw.shape}; expected 2-D")
    values, undetect = _decode(raw[::-1], what, path, qty)  # rows south → north
    window = None
    dsw = _attrs(h5[ds])
    if all(k in dsw for k in ("startdate", "starttime", "enddate", "endtime")):
        window = (_time(dsw["startdate"], dsw["starttime"], path, "start"),
                  _time(dsw["enddate"], dsw["endtime"], path, "end"))
    attrs = {"odim_quantity": qty, "odim_field": f"/{ds}/{d}",
             "odim_product": str(dsw.get("product", "")),
             "odim_source": str(root.get("source", ""))}
    if window is not None:
        attrs["observation_window"] = f"{window[0]} to {window[1]}"
    if qty == "ACRR":
        if window is None:
            raise InputFileError(path, f"ACRR in /{ds} without startdate/starttime/enddate/"
                                 "endtime; cannot tell the accumulation period", variable=qty)
        # ODIM windows often start one second after the previous one ends (…0501 → …1000)
        seconds = round((window[1] - window[0]) / np.timedelta64(1, "s") / 60.0) * 60
        if seconds <= 0:
            raise InputFileError(path, f"ACRR window {window[0]} to {window[1]} is not positive",
                                 variable=qty)
        period = f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}min"
        values[undetect] = 0.0
        time, units = window[1], "mm"
        attrs.update(accumulation=period, semantics="accumulation",
                     time_label="end of the accumulation period")
    else:
        if "date" not in root or "time" not in root:
            if window is None:
                raise InputFileError(path, "no /what date/time and no dataset window; cannot "
                                     "tell the valid time")
            time = window[1]
        else:
            time = _time(root["date"], root["time"], path, "/what")
        units = "mm/h"
        attrs.update(semantics="instantaneous", time_label="nominal time of the composite")
        if qty == "DBZH":
            relation = reflectivity.resolve_zr(zr, _network(attrs["odim_source"]))
            values[undetect] = -np.inf
            values = reflectivity.dbz_to_rate(values, relation, noise_floor_dbz=noise_floor_dbz,
                                              max_dbz=max_dbz)
            attrs.update(reflectivity.zr_attrs(relation, noise_floor_dbz, max_dbz, qty))
        else:
            values[undetect] = 0.0
    coords, latlon, grid_attrs = _grid(h5, ds, values.shape, path)
    attrs.update(grid_attrs)
    product = f"ODIM {qty}" + (f" ({attrs['odim_product']})" if attrs["odim_product"] else "")
    da = finalize(values[None], {"time": [time], **coords}, ("time", "y", "x"), path=path,
                  variable=qty, units=units, product=product, attrs=attrs,
                  allow_all_nan=allow_all_nan)
    return _projected.attach_latlon(da, latlon)
