"""The paired training store (zarr v3): layout constants, creation, frame writes and validation.

Layout (docs/interfaces.md, "Store layout"): arrays ``src_lr``, ``ref_lr`` (time, Y, X),
``ref_hr`` (time, y, x), optional ``extra_hr`` (time, var, y, x), ``time`` (int64 seconds since
1970-01-01 UTC) and the 1-D cell centres ``lat_hr``, ``lon_hr``, ``lat_lr``, ``lon_lr`` — or, on
a projected grid (a corpus network, ``data.corpus``), ``y_hr``, ``x_hr``, ``y_lr``, ``x_lr`` in
metres with the CRS in attribute ``crs``.
All fields are float32 mm/h with NaN for missing, one time step per chunk (the fine grid is
additionally tiled in ``HR_TILE`` x ``HR_TILE`` chunks so that a patch reads only its window).
Every array carries zarr v3 ``dimension_names``, so ``xarray.open_zarr`` opens the store too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from precipdiff.errors import StoreError

log = logging.getLogger(__name__)

STORE_FORMAT = 1  # value of the ``precipdiff_store`` attribute this code writes and reads
HR_TILE = 256  # spatial chunk edge of the fine-grid arrays (cells)
FIELDS_LR = ("src_lr", "ref_lr")
TIME_UNITS = "seconds since 1970-01-01T00:00:00Z"


def create_store(
    path: Path,
    *,
    times: np.ndarray,
    lat_hr: np.ndarray,
    lon_hr: np.ndarray,
    lat_lr: np.ndarray,
    lon_lr: np.ndarray,
    extra_names: tuple[str, ...] = (),
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Create the group and empty arrays in the (new or empty) directory ``path``.

    ``times``: datetime64. Other files already in ``path`` (the scan's staging) are kept.
    """
    g = zarr.open_group(str(path), mode="a", zarr_format=3)
    nt, ny, nx, nY, nX = len(times), len(lat_hr), len(lon_hr), len(lat_lr), len(lon_lr)
    lr_dims, hr_dims = ("time", "lat_lr", "lon_lr"), ("time", "lat_hr", "lon_hr")
    for name in FIELDS_LR:
        a = g.create_array(name, shape=(nt, nY, nX), chunks=(1, nY, nX), dtype="float32",
                           fill_value=np.nan, dimension_names=lr_dims)
        a.attrs.update({"units": "mm/h"})
    tile_y, tile_x = min(ny, HR_TILE), min(nx, HR_TILE)
    a = g.create_array("ref_hr", shape=(nt, ny, nx), chunks=(1, tile_y, tile_x), dtype="float32",
                       fill_value=np.nan, dimension_names=hr_dims)
    a.attrs.update({"units": "mm/h"})
    if extra_names:
        g.create_array("extra_hr", shape=(nt, len(extra_names), ny, nx),
                       chunks=(1, len(extra_names), tile_y, tile_x), dtype="float32",
                       fill_value=np.nan, dimension_names=("time", "var", "lat_hr", "lon_hr"))
    seconds = times.astype("datetime64[s]").astype("int64")
    t = g.create_array("time", shape=(nt,), dtype="int64", dimension_names=("time",))
    t[:] = seconds
    t.attrs.update({"units": TIME_UNITS, "calendar": "proleptic_gregorian"})
    for name, values, dim in (("lat_hr", lat_hr, "lat_hr"), ("lon_hr", lon_hr, "lon_hr"),
                              ("lat_lr", lat_lr, "lat_lr"), ("lon_lr", lon_lr, "lon_lr")):
        c = g.create_array(name, shape=(len(values),), dtype="float64", dimension_names=(dim,))
        c[:] = np.asarray(values, dtype=np.float64)
        kind = "latitude" if name.startswith("lat") else "longitude"
        c.attrs.update({"units": f"degrees_{'north' if kind == 'latitude' else 'east'}",
                        "standard_name": kind})
    g.attrs.update(dict(attrs or {}))


def write_frame(path: Path, index: int, *, src_lr: np.ndarray, ref_lr: np.ndarray,
                ref_hr: np.ndarray, extra_hr: np.ndarray | None = None) -> None:
    """Write the arrays of time step ``index`` into the (existing) store at ``path``."""
    g = zarr.open_group(str(path), mode="r+")
    g["src_lr"][index] = src_lr.astype(np.float32, copy=False)
    g["ref_lr"][index] = ref_lr.astype(np.float32, copy=False)
    g["ref_hr"][index] = ref_hr.astype(np.float32, copy=False)
    if extra_hr is not None:
        g["extra_hr"][index] = extra_hr.astype(np.float32, copy=False)


@dataclass
class StoreHandle:
    """An opened, validated store. Arrays are zarr arrays (lazy); small metadata is plain Python.

    Do not pickle a handle into DataLoader workers: keep ``path`` and call :func:`open_store`
    inside the worker.
    """

    path: Path
    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def __getitem__(self, name: str) -> zarr.Array:
        return self.group[name]

    @property
    def factor(self) -> int:
        return int(self.group.attrs["factor"])

    @property
    def pooling(self) -> str:
        return str(self.group.attrs["pooling"])

    @property
    def splits(self) -> dict[str, dict[str, list[int]]]:
        return {k: {"time": list(v["time"]), "x_lr": list(v["x_lr"])}
                for k, v in self.group.attrs["splits"].items()}

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(self.group.attrs.get("extra_names", ()))

    @cached_property
    def times(self) -> np.ndarray:
        """Valid times as ``datetime64[s]``."""
        return np.asarray(self.group["time"][:], dtype="int64").astype("datetime64[s]")

    @cached_property
    def transform(self):
        """The :class:`PrecipTransform` fitted on the train split."""
        from precipdiff.data.transforms import PrecipTransform

        return PrecipTransform.from_dict(dict(self.group.attrs["transform"]))

    @property
    def crs(self) -> str | None:
        """CRS (PROJ string or WKT) of a projected store (axes ``y_*``/``x_*`` in metres);
        None for a lat/lon store."""
        return self.group.attrs.get("crs") if "y_hr" in self.group else None

    def _grid(self, suffix: str):
        """Grid of ``lat_*``/``lon_*`` (degrees) or, in a projected store, ``y_*``/``x_*``."""
        from precipdiff.grid import Grid

        y, x = ("y", "x") if "y_hr" in self.group else ("lat", "lon")
        lat = np.asarray(self.group[f"{y}_{suffix}"][:])
        lon = np.asarray(self.group[f"{x}_{suffix}"][:])
        dlat = float((lat[-1] - lat[0]) / (lat.size - 1)) if lat.size > 1 else float("nan")
        dlon = float((lon[-1] - lon[0]) / (lon.size - 1)) if lon.size > 1 else float("nan")
        return Grid(lat0=float(lat[0]), lon0=float(lon[0]), dlat=dlat, dlon=dlon,
                    nlat=int(lat.size), nlon=int(lon.size))

    @cached_property
    def grid_hr(self):
        """:class:`precipdiff.grid.Grid` of the fine (reference) grid."""
        return self._grid("hr")

    @cached_property
    def grid_lr(self):
        """:class:`precipdiff.grid.Grid` of the coarse grid (blocks of ``factor`` fine cells)."""
        return self._grid("lr")


def open_store(path: str | os.PathLike) -> StoreHandle:
    """Open and validate a completed store; raise :class:`StoreError` naming the path if not."""
    p = Path(path)
    if not p.exists():
        partial = p.with_name(p.name + ".partial")
        hint = f" (an unfinished {partial} exists: rerun prepare to complete it)" \
            if partial.exists() else ""
        raise StoreError(f"{p}: store does not exist{hint}")
    if not (p / "zarr.json").is_file():
        raise StoreError(f"{p}: not a zarr v3 group (no zarr.json); expected a precipdiff store")
    try:
        g = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise StoreError(f"{p}: cannot open as a zarr v3 group: {exc}") from exc
    attrs = g.attrs
    if "precipdiff_corpus" in attrs:
        raise StoreError(f"{p}: a corpus store of several networks; open one network's store "
                         f"{p}/networks/<name> or use data.corpus_dataset.CorpusPatchDataset")
    if "precipdiff_store" not in attrs:
        raise StoreError(f"{p}: not a precipdiff store (no 'precipdiff_store' attribute)")
    if attrs["precipdiff_store"] != STORE_FORMAT:
        raise StoreError(f"{p}: store format {attrs['precipdiff_store']!r}, this version reads "
                         f"format {STORE_FORMAT}; rerun prepare")
    if attrs.get("complete") is not True:
        raise StoreError(f"{p}: incomplete store (attribute complete is not true); rerun prepare")
    axes = ("y_hr", "x_hr", "y_lr", "x_lr") if "y_hr" in g else ("lat_hr", "lon_hr", "lat_lr",
                                                                     "lon_lr")  # projected
    missing = [n for n in ("src_lr", "ref_lr", "ref_hr", "time", *axes) if n not in g]
    for key in ("factor", "pooling", "transform", "splits"):
        if key not in attrs:
            missing.append(f"attribute {key}")
    if missing:
        raise StoreError(f"{p}: damaged store, missing {', '.join(missing)}")
    return StoreHandle(path=p, group=g)
