"""Build the paired training store (zarr v3) from source and reference files.

``prepare_store(cfg, out)`` scans every file (checking it, and keeping the cropped field in
``<out>.partial/_staged`` so that it is decoded only once), pairs source and reference by valid
time, fixes the fine grid (bbox crop trimmed to whole coarse blocks) and the split, then writes
frame by frame — as dask.distributed tasks when ``workers > 1`` — into ``<out>.partial``. Each
written frame is marked done, so a rerun after a crash skips it. Last, the ``PrecipTransform`` is
fitted on the train split's fine-grid reference, ``complete=True`` is set and the directory is
renamed atomically to ``out``. Store layout: docs/interfaces.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from precipdiff import __version__
from precipdiff.atomic import atomic_path, replace_dir
from precipdiff.data import pairing
from precipdiff.data.frames import DONE_DIR, STAGE_DIR, done_marker, padded, run_task
from precipdiff.data.prepare_config import PrepareConfig, apply_overrides, load_prepare_config
from precipdiff.data.store import STORE_FORMAT, StoreHandle, create_store, open_store
from precipdiff.errors import ConfigError, GridError, InputFileError, PrecipdiffError
from precipdiff.interrupts import check_terminated

__all__ = ["PrepareConfig", "ProgressCallback", "apply_overrides", "load_prepare_config",
           "open_store", "prepare_store", "recipe_emulated", "recipe_real_pairs", "StoreHandle"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (steps done, steps total): scans + frames
PLAN_FILE = "_plan.json"
FIT_VALUES = 2_000_000  # most reference values used to fit the transform


def recipe_real_pairs(reference: Sequence[str] | str, source: Sequence[str] | str, *,
                      bbox: tuple[float, float, float, float] | None = None, factor: int = 10,
                      pooling: str = "max", split: str = "space", regrid: str = "conservative",
                      **overrides: Any) -> PrepareConfig:
    """Real source/reference pairs (e.g. MRMS radar-only -> gauge-corrected, IMERG -> MRMS).

    A source on the fine grid is pooled like the reference; a source on another grid is
    regridded conservatively unless it nests. Default split: disjoint column bands.
    """
    return PrepareConfig.from_dict(dict(reference=reference, source=source, bbox=bbox,
                                        factor=factor, pooling=pooling, split=split,
                                        regrid=regrid, **overrides))


def recipe_emulated(reference: Sequence[str] | str, *,
                    bbox: tuple[float, float, float, float] | None = None, factor: int = 10,
                    pooling: str = "max", emulator: dict[str, Any] | None = None, seed: int = 0,
                    split: str = "space", **overrides: Any) -> PrepareConfig:
    """Emulated pairs: fine-grid truth (e.g. MRMS) + IMERG-like source from the emulator."""
    return PrepareConfig.from_dict(dict(reference=reference, emulate=True, emulator=emulator or {},
                                        seed=seed, bbox=bbox, factor=factor, pooling=pooling,
                                        split=split, **overrides))


# ----------------------------------------------------------------------------- planning


def _geometry(scans: list[pairing.FileScan], f: int) -> dict[str, list]:
    first = scans[0]
    for s in scans[1:]:
        a, b = np.array(s.grid[:4]), np.array(first.grid[:4])
        if s.grid[4:] != first.grid[4:] or np.any(np.abs(a - b) > 1e-3 * b[2]):
            raise GridError(f"{s.path}: reference grid {s.grid} differs from {first.path} "
                            f"{first.grid} (lat0, lon0, dlat, dlon, nlat, nlon)")
    lat0, lon0, dlat, dlon, nlat, nlon = first.grid
    i0, j0 = pairing.lattice_offset(lat0, dlat, f), pairing.lattice_offset(lon0, dlon, f)
    ny, nx = (nlat - i0) // f * f, (nlon - j0) // f * f
    if ny < f or nx < f:
        raise GridError(f"{first.path}: the region has {nlat}x{nlon} fine cells, too few for "
                        f"one {f}x{f} coarse block; enlarge the bbox or lower the factor")
    hr = [lat0 + i0 * dlat, lon0 + j0 * dlon, dlat, dlon, ny, nx]
    lr = [hr[0] + (f - 1) / 2 * dlat, hr[1] + (f - 1) / 2 * dlon, dlat * f, dlon * f,
          ny // f, nx // f]
    return {"grid_hr": hr, "grid_lr": lr}


def make_splits(kind: str, fractions: dict[str, float], n_time: int, n_x: int,
                gap: int = 0) -> dict[str, dict[str, list[int]]]:
    """Contiguous, disjoint parts: blocks of time indices or bands of coarse columns."""
    parts = [(k, v) for k, v in fractions.items() if v > 0]
    n = n_time if kind == "time" else n_x
    usable = n - gap * (len(parts) - 1)
    w = np.array([v for _, v in parts], dtype=np.float64)
    edges = np.round(np.concatenate([[0], np.cumsum(w / w.sum())]) * usable).astype(int)
    out, start = {}, 0
    for (name, _), size in zip(parts, np.diff(edges), strict=True):
        if size < 1:
            unit = "time steps" if kind == "time" else "coarse columns"
            raise ConfigError(f"split {kind!r}: part {name!r} gets no {unit} of {n} (gap {gap}); "
                              f"{'use split: space or ' if kind == 'time' else ''}change fractions")
        a, b = start, start + int(size)
        if kind == "time":
            out[name] = {"time": list(range(a, b)), "x_lr": [0, n_x]}
        else:
            out[name] = {"time": list(range(n_time)), "x_lr": [a, b]}
        start = b + gap
    return out


def _portable(fn: Callable, *args: Any) -> Any:
    """Run ``fn`` returning ``("ok", result)`` or a picklable description of a user error."""
    try:
        return ("ok", fn(*args))
    except InputFileError as exc:
        return ("input", exc.path, exc.problem, exc.variable)
    except PrecipdiffError as exc:
        return ("other", type(exc).__name__, str(exc))


def _unwrap(result: tuple) -> Any:
    import precipdiff.errors as errors

    if result[0] == "ok":
        return result[1]
    if result[0] == "input":
        raise InputFileError(result[1], result[2], variable=result[3])
    raise getattr(errors, result[1], PrecipdiffError)(result[2])


def _scan(path: str, kw: dict) -> pairing.FileScan:
    return pairing.scan_file(path, **kw)


def _map(pool: cf.Executor | None, fn: Callable, jobs: list[tuple],
         on_done: Callable[[Any], None] | None = None) -> list[Any]:
    """Run ``fn(*job)`` for every job (in ``pool`` if given), in order; user errors re-raised."""
    if pool is None:
        out = []
        for job in jobs:
            out.append(fn(*job))
            if on_done:
                on_done(out[-1])
        return out
    futures = [pool.submit(_portable, fn, *job) for job in jobs]
    try:
        for fut in cf.as_completed(futures):
            value = _unwrap(fut.result())
            if on_done:
                on_done(value)
        return [_unwrap(fut.result()) for fut in futures]
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


class _Steps:
    """Drives ``progress(done, total)`` over files scanned plus frames written."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback, self.done, self.total = callback, 0, 0

    def set(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self._emit()

    def add(self, n: int = 1) -> None:
        check_terminated()  # a SIGTERM raised inside zarr's I/O wait may have been swallowed
        self.done += n
        self._emit()

    def _emit(self) -> None:
        if self.callback:
            self.callback(self.done, self.total)


def _scan_all(cfg: PrepareConfig, pool: cf.Executor | None, stage_dir: str,
              steps: _Steps) -> tuple[list, list, list]:
    common = {"bbox": cfg.bbox, "accumulation": cfg.accumulation, "stage_dir": stage_dir}
    ref_kw = {**common, "reader": cfg.reference_reader, "variable": cfg.reference_variable}
    jobs = [[(p, ref_kw) for p in pairing.expand_files(cfg.reference, "reference")]]
    if not cfg.emulate:
        src_kw = {**common, "bbox": padded(cfg.bbox), "reader": cfg.source_reader,
                  "variable": cfg.source_variable}
        jobs.append([(p, src_kw) for p in pairing.expand_files(cfg.source, "source")])
    for e in cfg.extras:
        kw = {**pairing.extra_read_kw(e, padded(cfg.bbox), cfg.accumulation),
              "stage_dir": stage_dir}
        jobs.append([(p, kw) for p in pairing.expand_files(e["files"], f"extra {e['name']}")])
    n_scan = sum(len(j) for j in jobs)
    steps.set(0, n_scan + len(jobs[0]))  # frames estimated as one per reference file
    scans = [_map(pool, _scan, j, lambda _: steps.add()) for j in jobs]
    refs, rest = scans[0], scans[1:]
    srcs = None if cfg.emulate else rest.pop(0)
    return refs, srcs, rest


def _match_extra(t: int, frames: list, tol_s: float, name: str, files: list[str]) -> list:
    times = np.array([x[0] for x in frames], dtype=np.int64)
    k = int(np.argmin(np.abs(times - t)))
    if abs(int(times[k]) - t) > tol_s * 1e9:
        when = np.datetime64(t, "ns").astype("datetime64[s]")
        raise InputFileError(", ".join(files), f"no extra {name!r} field within "
                             f"{tol_s:g} s of reference time {when}")
    return [frames[k][1], frames[k][2]]


def _make_plan(cfg: PrepareConfig, pool: cf.Executor | None, stage_dir: str,
               steps: _Steps) -> dict[str, Any]:
    refs, srcs, extras = _scan_all(cfg, pool, stage_dir, steps)
    ref_frames = pairing.frames_of(refs, "reference")
    src_frames = None if srcs is None else pairing.frames_of(srcs, "source")
    pairs = pairing.pair_frames(ref_frames, src_frames, cfg.time_tolerance_s,
                                ref_desc=", ".join(cfg.reference), src_desc=", ".join(cfg.source))
    extra_frames = [pairing.frames_of(s, f"extra {e['name']}")
                    for e, s in zip(cfg.extras, extras, strict=True)]
    frames = []
    for i, (r, s) in enumerate(pairs):
        ex = [_match_extra(r[0], fr, cfg.time_tolerance_s, e["name"], e["files"])
              for e, fr in zip(cfg.extras, extra_frames, strict=True)]
        frames.append({"index": i, "time": r[0], "ref": [r[1], r[2]],
                       "src": None if s is None else [s[1], s[2]], "extras": ex})
    geo = _geometry(refs, cfg.factor)
    splits = make_splits(cfg.split, dict(cfg.fractions), len(frames), geo["grid_lr"][5],
                         cfg.split_gap)
    return {"config": cfg.to_dict(), "geometry": geo, "frames": frames, "splits": splits,
            "n_scan": steps.done}


def _describe(cfg: PrepareConfig) -> tuple[str, str]:
    ref = f"{', '.join(cfg.reference)} (reader {cfg.reference_reader or 'auto'})"
    if cfg.emulate:
        src = f"emulated IMERG-like from the reference (seed {cfg.seed}, params {cfg.emulator})"
    else:
        src = f"{', '.join(cfg.source)} (reader {cfg.source_reader or 'auto'})"
    return src, ref


def _create(partial: Path, cfg: PrepareConfig, plan: dict[str, Any]) -> None:
    hr, lr = plan["geometry"]["grid_hr"], plan["geometry"]["grid_lr"]
    axis = lambda g, k: np.round(g[k] + g[k + 2] * np.arange(g[k + 4]), 10)  # noqa: E731
    src, ref = _describe(cfg)
    attrs = {"precipdiff_store": STORE_FORMAT, "complete": False, "factor": cfg.factor,
             "pooling": cfg.pooling, "source": src, "reference": ref, "splits": plan["splits"],
             "extra_names": cfg.extra_channel_names(), "units": "mm/h",
             "version": __version__, "config": plan["config"], "grid_hr": hr, "grid_lr": lr}
    times = np.array([fr["time"] for fr in plan["frames"]], dtype="datetime64[ns]")
    create_store(partial, times=times, lat_hr=axis(hr, 0), lon_hr=axis(hr, 1),
                 lat_lr=axis(lr, 0), lon_lr=axis(lr, 1),
                 extra_names=tuple(attrs["extra_names"]), attrs=attrs)
    (partial / DONE_DIR).mkdir(exist_ok=True)
    with atomic_path(partial / PLAN_FILE) as tmp:
        tmp.write_text(json.dumps(plan))


def _load_plan(partial: Path, cfg_dict: dict) -> dict[str, Any] | None:
    try:
        plan = json.loads((partial / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return plan if plan.get("config") == cfg_dict else None


# ----------------------------------------------------------------------------- finishing


def _finish_attrs(partial: Path, cfg: PrepareConfig, plan: dict[str, Any]) -> None:
    from precipdiff.data.transforms import PrecipTransform

    g = zarr.open_group(str(partial), mode="r+")
    train = plan["splits"]["train"]
    f = cfg.factor
    x0, x1 = train["x_lr"][0] * f, train["x_lr"][1] * f
    budget = max(1, FIT_VALUES // max(1, len(train["time"])))
    values, extra_sums = [], []
    names = cfg.extra_channel_names()
    for t in train["time"]:
        a = np.asarray(g["ref_hr"][t, :, x0:x1])
        v = a[np.isfinite(a)]
        values.append(v[:: max(1, math.ceil(v.size / budget))])
        if names:
            e = np.asarray(g["extra_hr"][t, :, :, x0:x1], dtype=np.float64)
            ok = np.isfinite(e)
            extra_sums.append(np.stack([ok.sum((1, 2)), np.where(ok, e, 0).sum((1, 2)),
                                        np.where(ok, e * e, 0).sum((1, 2))]))
    transform = PrecipTransform.fit(np.concatenate(values), scale=cfg.transform_scale)
    attrs: dict[str, Any] = {"transform": transform.to_dict(),
                             "created": dt.datetime.now(dt.timezone.utc).isoformat()}
    if names:
        n, s1, s2 = np.sum(extra_sums, axis=0)
        mean = s1 / np.maximum(n, 1)
        std = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean**2, 0))
        attrs["extra_stats"] = {k: {"mean": float(m), "std": float(max(s, 1e-12))}
                                for k, m, s in zip(names, mean, std, strict=True)}
    g.attrs.update(attrs)


def _publish(partial: Path, out: Path) -> None:
    """Mark complete (last attribute written) and rename ``partial`` onto ``out`` atomically."""
    shutil.rmtree(partial / DONE_DIR, ignore_errors=True)
    shutil.rmtree(partial / STAGE_DIR, ignore_errors=True)
    (partial / PLAN_FILE).unlink(missing_ok=True)
    zarr.open_group(str(partial), mode="r+").attrs.update({"complete": True})
    replace_dir(partial, out)


def _write_frames(cfg: PrepareConfig, partial: Path, pool: cf.Executor | None,
                  steps: _Steps) -> dict[str, Any]:
    """Plan (or resume) ``partial`` and write every frame not yet written; returns the plan."""
    plan = _load_plan(partial, cfg.to_dict())
    if plan is None:
        if partial.exists():
            log.warning("discarding %s: written with another config or unfinished setup",
                        partial)
            shutil.rmtree(partial)
        try:
            (partial / STAGE_DIR).mkdir(parents=True)
            plan = _make_plan(cfg, pool, str(partial / STAGE_DIR), steps)
            _create(partial, cfg, plan)
        except BaseException:
            # without a plan nothing is resumable (a rerun discards it): leave no .partial
            shutil.rmtree(partial, ignore_errors=True)
            raise
    total = len(plan["frames"])
    todo = [fr for fr in plan["frames"] if not done_marker(partial, fr["index"]).exists()]
    done = total - len(todo)
    if done:
        log.info("resuming %s: %d of %d frames already written, skipped", partial, done, total)
    steps.set(plan["n_scan"] + done, plan["n_scan"] + total)
    tasks: dict[str, list[dict]] = {}
    for fr in todo:
        tasks.setdefault(fr["ref"][0], []).append(fr)
    cfg_d, geo = plan["config"], plan["geometry"]
    _map(pool, run_task, [(str(partial), cfg_d, geo, frs) for frs in tasks.values()],
         lambda written: steps.add(len(written)))
    return plan


def prepare_store(cfg: PrepareConfig, out: str | os.PathLike, *, workers: int = 1,
                  progress: ProgressCallback | None = None,
                  scheduler: str | None = None) -> Path:
    """Write the paired store for ``cfg`` at ``out`` and return ``out``.

    Resumable: an unfinished ``<out>.partial`` with the same config is continued (written
    frames are skipped); one with another config is discarded. A run that stops before its
    plan is written (a config or input error found while scanning, an interrupt) or whose
    finishing step fails with a user error leaves no ``<out>.partial``: there is nothing a rerun
    could resume. ``workers > 1`` scans and writes as tasks on an embedded dask.distributed
    ``LocalCluster`` of that many one-thread processes; ``scheduler`` (an address) uses an
    existing cluster instead (:func:`precipdiff.cluster.dask_client`; the store's path must be
    reachable from its workers). ``progress(done, total)`` is called as files are scanned
    and frames written (``total`` = files to scan + frames; a resumed run starts at the
    steps already done).
    """
    if int(workers) < 1:
        raise ConfigError(f"workers must be >= 1, found {workers}")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1 or scheduler:
            from precipdiff.cluster import dask_client

            pool = stack.enter_context(dask_client(int(workers), scheduler)).get_executor()
        plan = _write_frames(cfg, partial, pool, _Steps(progress))
    total = len(plan["frames"])
    try:
        _finish_attrs(partial, cfg, plan)
    except PrecipdiffError:
        # the frames are complete, so a rerun would fail the same way: leave no .partial
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _publish(partial, out)
    log.info("store written: %s (%d frames)", out, total)
    return out
