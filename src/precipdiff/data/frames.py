"""Worker side of ``prepare``: build and write the arrays of one time step.

A task is a list of frames that share a reference file (read once). Each frame is written
into the unfinished store and then marked done by an empty file ``_done/<index>``, so a
rerun after a crash skips exactly the frames that were written completely.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from precipdiff.data.pairing import (
    GRID_TOL,
    BBox,
    extra_read_kw,
    grid_tuple,
    load_staged,
    read_checked,
    staged_path,
)
from precipdiff.data.store import write_frame
from precipdiff.errors import GridError, InputFileError

log = logging.getLogger(__name__)

DONE_DIR = "_done"
STAGE_DIR = "_staged"  # fields kept by the scan phase (removed when the store is published)
SOURCE_PAD_DEG = 1.0  # source reads extend the bbox by this much, for regridding at the edges


def done_marker(partial: Path, index: int) -> Path:
    return partial / DONE_DIR / str(index)


def padded(bbox: BBox | None, pad: float = SOURCE_PAD_DEG) -> BBox | None:
    if bbox is None:
        return None
    return (bbox[0] - pad, bbox[1] - pad, bbox[2] + pad, bbox[3] + pad)


def _near_int(x: float, tol: float = GRID_TOL) -> bool:
    return abs(x - round(x)) <= tol


def _nested_index(src: tuple, hr: tuple, k_lat: int, k_lon: int) -> tuple[float, float]:
    """Offsets (in source cells) of the first fine ``k x k`` block centre in the source grid."""
    lat0, lon0, dlat, dlon = hr[:4]
    blat0 = lat0 + (k_lat - 1) / 2 * dlat
    blon0 = lon0 + (k_lon - 1) / 2 * dlon
    return (blat0 - src[0]) / (k_lat * dlat), (blon0 - src[1]) / (k_lon * dlon)


def place_on_lr(da: xr.DataArray, path: str, *, hr: tuple, factor: int, pooling: str,
                max_missing_fraction: float, regrid_method: str) -> np.ndarray:
    """Put a one-time source field on the coarse grid (the fine grid ``hr`` pooled by ``factor``).

    A source whose cells nest in the fine grid at a ratio ``k`` that divides ``factor`` (``k =
    factor``: already on the coarse grid; ``k = 1``: on the fine grid) is cut and pooled by
    ``factor // k`` with ``pooling``. Anything else is regridded with ``regrid_method``
    (``"bilinear"``/``"conservative"``), or raises :class:`GridError` when that is ``"none"``.
    """
    from precipdiff.grid import Grid, coarsen, regrid

    src = grid_tuple(da, path)
    r_lat, r_lon = src[2] / hr[2], src[3] / hr[3]
    reason = None
    if _near_int(r_lat, 1e-3) and _near_int(r_lon, 1e-3):
        k_lat, k_lon = round(r_lat), round(r_lon)
        if factor % k_lat or factor % k_lon:
            reason = (f"factor {factor} is not divisible by the source/reference resolution "
                      f"ratio {k_lat}x{k_lon}")
        else:
            oi, oj = _nested_index(src, hr, k_lat, k_lon)
            if _near_int(oi) and _near_int(oj):
                i, j = round(oi), round(oj)
                ny, nx = hr[4] // k_lat, hr[5] // k_lon
                if i < 0 or j < 0 or i + ny > src[4] or j + nx > src[5]:
                    raise InputFileError(path, f"source grid {src[:4]} ({src[4]}x{src[5]}) does "
                                         "not cover the reference region")
                cut = da.isel(lat=slice(i, i + ny), lon=slice(j, j + nx))
                if factor // k_lat > 1 or factor // k_lon > 1:
                    if k_lat != k_lon:
                        reason = "anisotropic nesting ratio"
                    else:
                        cut = coarsen(cut, factor // k_lat, method=pooling,
                                      max_missing_fraction=max_missing_fraction)
                if reason is None:
                    return np.asarray(cut.values[0], dtype=np.float32)
            else:
                reason = (f"source cell centres are offset by ({oi:.3f}, {oj:.3f}) source cells "
                          "from the nested coarse grid")
    else:
        reason = (f"source spacing {src[2]:g}x{src[3]:g} deg is not an integer multiple of the "
                  f"reference spacing {hr[2]:g}x{hr[3]:g} deg")
    if regrid_method == "none":
        raise GridError(f"{path}: grids do not nest: {reason}; set regrid to 'bilinear' or "
                        "'conservative' to regrid the source")
    lr = Grid(*hr[:4], hr[4], hr[5]).coarsen(factor)
    out = regrid(da, lr, method=regrid_method, max_missing_fraction=max_missing_fraction)
    return np.asarray(out.values[0], dtype=np.float32)


def _on_hr(da: xr.DataArray, path: str, hr: tuple, what: str) -> np.ndarray:
    """Cut a one-time field to the fine grid ``hr`` (exact match required), as (..., y, x)."""
    g = grid_tuple(da, path)
    oi, oj = (hr[0] - g[0]) / hr[2], (hr[1] - g[1]) / hr[3]
    if not (math.isclose(g[2], hr[2], rel_tol=1e-3) and math.isclose(g[3], hr[3], rel_tol=1e-3)
            and _near_int(oi) and _near_int(oj)):
        raise GridError(f"{path}: {what} grid {g[:4]} differs from the first reference file's "
                        f"grid {hr[:4]} (lat0, lon0, dlat, dlon)")
    i, j = round(oi), round(oj)
    if i < 0 or j < 0 or i + hr[4] > g[4] or j + hr[5] > g[5]:
        raise GridError(f"{path}: {what} covers {g[4]}x{g[5]} cells, not the region {hr}")
    return np.asarray(da.values[0, ..., i:i + hr[4], j:j + hr[5]], dtype=np.float32)


def _extra_on_hr(da: xr.DataArray, path: str, hr: tuple) -> np.ndarray:
    from precipdiff.grid import Grid, regrid

    try:
        return _on_hr(da, path, hr, "extra")
    except GridError:
        out = regrid(da, Grid(*hr[:4], hr[4], hr[5]), method="bilinear")
        return np.asarray(out.values[0], dtype=np.float32)


class _FileCache:
    """Keeps the last file read (tasks group frames by reference file); uses staged copies."""

    def __init__(self, stage_dir: Path) -> None:
        self.stage_dir = stage_dir
        self.key: tuple | None = None
        self.da: xr.DataArray | None = None

    def read(self, path: str, **kw: Any) -> xr.DataArray:
        key = (path, tuple(sorted((k, str(v)) for k, v in kw.items())))
        if key != self.key:
            kw.setdefault("precip", True)
            da = load_staged(staged_path(self.stage_dir, path, **kw))
            self.da, self.key = (read_checked(path, **kw) if da is None else da), key
        return self.da


def run_task(partial: str, cfg: dict, geo: dict, frames: list[dict]) -> list[int]:
    """Build and write ``frames`` (dicts with ``index``, ``ref``, ``src``, ``extras``)."""
    from precipdiff.grid import coarsen

    hr, f = tuple(geo["grid_hr"]), int(cfg["factor"])
    bbox = tuple(cfg["bbox"]) if cfg.get("bbox") else None
    mmf = float(cfg["max_missing_fraction"])
    stage = Path(partial) / STAGE_DIR
    ref_cache, src_cache, extra_cache = _FileCache(stage), _FileCache(stage), _FileCache(stage)
    written = []
    for fr in frames:
        index = int(fr["index"])
        ref_path, k = fr["ref"]
        da = ref_cache.read(ref_path, reader=cfg["reference_reader"],
                            variable=cfg["reference_variable"], bbox=bbox,
                            accumulation=cfg["accumulation"]).isel(time=[k])
        ref_hr = _on_hr(da, ref_path, hr, "reference")
        ref_da = xr.DataArray(ref_hr[None], dims=("time", "lat", "lon"),
                              coords={"time": da["time"].values, "lat": hr[0] + hr[2] *
                                      np.arange(hr[4]), "lon": hr[1] + hr[3] * np.arange(hr[5])},
                              attrs=dict(da.attrs))
        if not np.isfinite(ref_hr).any():
            raise InputFileError(ref_path, f"all reference values are missing in the region at "
                                 f"time index {k}")
        ref_lr = coarsen(ref_da, f, method=cfg["pooling"], max_missing_fraction=mmf)
        ref_lr = np.asarray(ref_lr.values[0], dtype=np.float32)
        place = dict(hr=hr, factor=f, max_missing_fraction=mmf, regrid_method=cfg["regrid"],
                     pooling=cfg["source_pooling"] or cfg["pooling"])
        if fr["src"] is None:
            from precipdiff.data.emulate import EmulatorParams, emulate_satellite

            params = EmulatorParams(**cfg["emulator"])
            rng = np.random.default_rng([int(cfg["seed"]), index])
            src = emulate_satellite(ref_da, factor=f, params=params, rng=rng)
            src_path = f"emulated from {ref_path}"
        else:
            src_path, ks = fr["src"]
            src = src_cache.read(src_path, reader=cfg["source_reader"],
                                 variable=cfg["source_variable"], bbox=padded(bbox),
                                 accumulation=cfg["accumulation"]).isel(time=[ks])
        src_lr = place_on_lr(src, src_path, **place)
        if not np.isfinite(src_lr).any():
            raise InputFileError(src_path, "all source values are missing on the coarse grid")
        extra = None
        if fr["extras"]:
            layers = []
            for spec, (p, ke) in zip(cfg["extras"], fr["extras"], strict=True):
                kw = extra_read_kw(spec, padded(bbox), cfg["accumulation"])
                e = extra_cache.read(p, **kw).isel(time=[ke])
                layers.append(_extra_on_hr(e, p, hr).reshape(-1, hr[4], hr[5]))
            extra = np.concatenate(layers)
        write_frame(Path(partial), index, src_lr=src_lr, ref_lr=ref_lr, ref_hr=ref_hr,
                    extra_hr=extra)
        done_marker(Path(partial), index).touch()
        written.append(index)
        log.debug("frame %d written (%s)", index, ref_path)
    return written
