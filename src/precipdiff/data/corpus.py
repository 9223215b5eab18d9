"""The corpus store: several radar networks in one zarr v3 group, each on its native grid.

``prepare_corpus(cfg, out)`` reads every network's files one at a time (each file is decoded
once; memory holds one file's field plus one frame's products), crops the region, emulates
the satellite-like coarse source of every frame and writes it into ``networks/<name>/`` of
``<out>.partial``. A per-file ledger records each written frame, so a killed run resumes where
it stopped without rewriting a frame. Last, events are labelled, the splits are made by whole
events (a network's ``held_out`` events are ``test``, its ``validation`` events ``val``, the
rest ``train``), one ``PrecipTransform`` is fitted over every network's train frames, and the
directory is published atomically at ``out``.

Each network group is a paired store in the layout of ``data.store`` (docs/interfaces.md,
"Store layout" and "Corpus"): ``open_store(<out>/networks/<name>)`` opens it, so
``PatchDataset`` and every single-store tool work on one network; projected grids keep their
``y``/``x`` axes in metres (arrays ``y_hr``, ``x_hr``, ``y_lr``, ``x_lr``) and attribute ``crs``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import math
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from precipdiff import __version__
from precipdiff.atomic import atomic_path, replace_dir
from precipdiff.data import pairing
from precipdiff.data.corpus_config import CorpusConfig, SourceConfig, load_corpus_config
from precipdiff.data.store import HR_TILE, STORE_FORMAT, TIME_UNITS, StoreHandle, open_store
from precipdiff.errors import ConfigError, GridError, InputFileError, StoreError

__all__ = ["CORPUS_FORMAT", "CorpusConfig", "CorpusHandle", "load_corpus_config",
           "open_corpus", "prepare_corpus"]

log = logging.getLogger(__name__)

CORPUS_FORMAT = 1  # value of the root attribute ``precipdiff_corpus``
NETWORKS = "networks"
LEDGER_DIR = "_ledger"
KEY_FILE = "_corpus_key.json"
FIT_VALUES = 2_000_000  # most reference values used to fit the transform
CRS_ATTRS = ("crs", "crs_wkt", "proj4", "projdef", "spatial_ref")
SEMANTIC_ATTRS = ("units", "accumulation", "semantics", "product")
ProgressCallback = Callable[[int, int], None]


# ----------------------------------------------------------------------------- reading


def _read(src: SourceConfig, path: str, accumulation: str) -> tuple[xr.DataArray, dict]:
    """One file as (time, y, x) or (time, lat, lon) in mm/h, ascending axes in metres
    (projected) or degrees, cropped to ``src.region``; and the reader's original attrs."""
    from precipdiff import io

    name = src.reader or pairing._call_reader(path, io.detect_reader, None)
    if src.options:
        params = inspect.signature(io.get_reader(name)).parameters
        unknown = sorted(set(src.options) - set(params))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"source {src.network!r}: reader {name!r} has no option(s) "
                              f"{unknown}; it takes {sorted(set(params) - {'path'})}")
    # A region in degrees (every |value| <= 360) is the reader's lon/lat bbox (a lat/lon grid
    # such as MRMS CONUS is then cropped while decoding; a projected reader keeps the rows and
    # columns that hold the box); a region in metres crops the projected grid below.
    degrees = src.region is not None and max(abs(v) for v in src.region) <= 360.0
    da = pairing._call_reader(path, io.read, src.variable, reader=name, variable=src.variable,
                              bbox=src.region if degrees else None, **src.options)
    if "time" not in da.dims or da.ndim != 3:
        raise InputFileError(path, f"expected dims (time, y, x) or (time, lat, lon), found "
                             f"{da.dims}", variable=src.variable)
    original = {k: str(v) for k, v in da.attrs.items()}
    ydim, xdim = da.dims[1], da.dims[2]
    if (ydim, xdim) == ("y", "x"):
        scale = 1000.0 if "km" in (str(da.attrs.get("xy_units", "")),
                                   str(da["x"].attrs.get("units", ""))) else 1.0
        if scale != 1.0:
            da = da.assign_coords(y=da["y"].values * scale, x=da["x"].values * scale)
        if _crs(da) is None:
            raise InputFileError(path, f"projected (y, x) grid without a CRS attribute (one "
                                 f"of {list(CRS_ATTRS)}); expected the reader to keep it")
    elif (ydim, xdim) != ("lat", "lon"):
        raise InputFileError(path, f"spatial dims {(ydim, xdim)}; expected (y, x) or (lat, lon)")
    for d in (ydim, xdim):
        if da.sizes[d] > 1 and da[d].values[1] < da[d].values[0]:
            da = da.isel({d: slice(None, None, -1)})
    if src.region is not None and not (degrees and (ydim, xdim) == ("y", "x")):
        from precipdiff.grid import crop

        try:
            da = crop(da, src.region)
        except GridError as exc:
            raise InputFileError(path, f"region {list(src.region)} of network "
                                 f"{src.network!r}: {exc}") from exc
    da = pairing.to_rate(da, path, accumulation=accumulation)
    return da, original


def _crs(da: xr.DataArray) -> str | None:
    return next((str(da.attrs[k]) for k in CRS_ATTRS if da.attrs.get(k)), None)


def _geometry(da: xr.DataArray, f: int, path: str) -> dict[str, Any]:
    """Fine and coarse grids ``[y0, x0, dy, dx, ny, nx]`` (cell centres) of the first file."""
    g = pairing.grid_tuple(da, path)
    i0, j0 = pairing.lattice_offset(g[0], g[2], f), pairing.lattice_offset(g[1], g[3], f)
    ny, nx = (g[4] - i0) // f * f, (g[5] - j0) // f * f
    if ny < f or nx < f:
        raise GridError(f"{path}: the region has {g[4]}x{g[5]} fine cells, too few for one "
                        f"{f}x{f} coarse block; enlarge the region or lower the factor")
    hr = [g[0] + i0 * g[2], g[1] + j0 * g[3], g[2], g[3], ny, nx]
    lr = [hr[0] + (f - 1) / 2 * g[2], hr[1] + (f - 1) / 2 * g[3], g[2] * f, g[3] * f,
          ny // f, nx // f]
    return {"grid_hr": hr, "grid_lr": lr, "dims": list(da.dims[1:]), "crs": _crs(da)}


def _cut(da: xr.DataArray, geo: dict, path: str) -> np.ndarray:
    """The fine grid's window of ``da`` as (time, ny, nx) float32; GridError if off-grid."""
    hr = geo["grid_hr"]
    if list(da.dims[1:]) != geo["dims"]:
        raise GridError(f"{path}: dims {da.dims[1:]} differ from the network's first file "
                        f"{tuple(geo['dims'])}")
    g = pairing.grid_tuple(da, path)
    oi, oj = (hr[0] - g[0]) / hr[2], (hr[1] - g[1]) / hr[3]
    i, j = round(oi), round(oj)
    if not (math.isclose(g[2], hr[2], rel_tol=1e-3) and math.isclose(g[3], hr[3], rel_tol=1e-3)
            and abs(oi - i) < 0.01 and abs(oj - j) < 0.01 and i >= 0 and j >= 0
            and i + hr[4] <= g[4] and j + hr[5] <= g[5]):
        raise GridError(f"{path}: grid {[round(v, 6) for v in g[:4]]} ({g[4]}x{g[5]}) does "
                        f"not hold the network's fine grid {[round(v, 6) for v in hr]} "
                        "(y0, x0, dy, dx, ny, nx) of its first file")
    return np.asarray(da.values[:, i:i + hr[4], j:j + hr[5]], dtype=np.float32)


# ----------------------------------------------------------------------------- writing


def _axis(g: list, k: int) -> np.ndarray:
    return np.round(g[k] + g[k + 2] * np.arange(g[k + 4]), 10)


def _create_network(root: Path, src: SourceConfig, cfg: CorpusConfig, geo: dict,
                    semantics: dict, reader_attrs: dict) -> None:
    """The (empty, zero-length) paired arrays of one network, in the ``data.store`` layout."""
    g = zarr.open_group(str(root / NETWORKS / src.network), mode="w", zarr_format=3)
    hr, lr = geo["grid_hr"], geo["grid_lr"]
    projected = geo["dims"] == ["y", "x"]
    yn, xn = ("y", "x") if projected else ("lat", "lon")
    lr_dims, hr_dims = ("time", f"{yn}_lr", f"{xn}_lr"), ("time", f"{yn}_hr", f"{xn}_hr")
    for name in ("src_lr", "ref_lr"):
        a = g.create_array(name, shape=(0, lr[4], lr[5]), chunks=(1, lr[4], lr[5]),
                           dtype="float32", fill_value=np.nan, dimension_names=lr_dims)
        a.attrs.update({"units": "mm/h"})
    a = g.create_array("ref_hr", shape=(0, hr[4], hr[5]),
                       chunks=(1, min(hr[4], HR_TILE), min(hr[5], HR_TILE)), dtype="float32",
                       fill_value=np.nan, dimension_names=hr_dims)
    a.attrs.update({"units": "mm/h"})
    t = g.create_array("time", shape=(0,), chunks=(4096,), dtype="int64",
                       dimension_names=("time",))
    t.attrs.update({"units": TIME_UNITS, "calendar": "proleptic_gregorian"})
    for grid, suffix in ((hr, "hr"), (lr, "lr")):
        for k, n in ((0, yn), (1, xn)):
            c = g.create_array(f"{n}_{suffix}", shape=(grid[k + 4],), dtype="float64",
                               dimension_names=(f"{n}_{suffix}",))
            c[:] = _axis(grid, k)
            c.attrs.update({"units": "m", "standard_name": f"projection_{n}_coordinate"}
                           if projected else
                           {"units": f"degrees_{'north' if n == 'lat' else 'east'}",
                            "standard_name": "latitude" if n == "lat" else "longitude"})
    g.attrs.update({
        "precipdiff_store": STORE_FORMAT, "complete": False, "network": src.network,
        "factor": cfg.factor, "pooling": cfg.pooling, "units": "mm/h", "extra_names": [],
        "grid_hr": hr, "grid_lr": lr, "grid_kind": "projected" if projected else "latlon",
        "crs": geo["crs"], "input_semantics": semantics, "reader_attrs": reader_attrs,
        "reference": f"{src.network}: {', '.join(src.files)} (reader {src.reader or 'auto'})",
        "source": f"emulated satellite-like from the reference (seed {cfg.seed}, params "
                  f"{cfg.emulator})",
        "config": json.loads(json.dumps(src.write_key())), "version": __version__})


class _Ledger:
    """What has been written of one network: one JSON record per input file, rewritten
    atomically after every frame: ``{"path", "complete", "frames": {k: [index, time_s]}}``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.records: dict[int, dict] = {}
        for p in folder.glob("*.json"):
            try:
                self.records[int(p.stem)] = json.loads(p.read_text())
            except (ValueError, OSError):
                log.warning("ignoring unreadable ledger record %s", p)

    @property
    def n_frames(self) -> int:
        return sum(len(r["frames"]) for r in self.records.values())

    def record(self, i: int, path: str) -> dict:
        return self.records.setdefault(i, {"path": path, "complete": False, "frames": {}})

    def save(self, i: int) -> None:
        with atomic_path(self.folder / f"{i}.json") as tmp:
            tmp.write_text(json.dumps(self.records[i]))


def _window_event(t: np.datetime64, events: dict | None) -> bool:
    """Whether a frame at ``t`` is kept: inside an event window (or no windows given)."""
    if events is None:
        return True
    return any(np.datetime64(a) <= t <= np.datetime64(b) for a, b in events.values())


def _write_frame(g: zarr.Group, index: int, t_s: int, ref_hr: np.ndarray, geo: dict,
                 cfg: CorpusConfig, network: str) -> None:
    from precipdiff.data.emulate import EmulatorParams, emulate_satellite
    from precipdiff.grid import coarsen

    hr = geo["grid_hr"]
    dims = ("time", *geo["dims"])
    da = xr.DataArray(ref_hr[None], dims=dims,
                      coords={dims[1]: _axis(hr, 0), dims[2]: _axis(hr, 1)})
    ref_lr = coarsen(da, cfg.factor, method=cfg.pooling,
                     max_missing_fraction=cfg.max_missing_fraction).values[0]
    rng = np.random.default_rng([cfg.seed, zlib.crc32(network.encode()), t_s])
    src_lr = emulate_satellite(da, factor=cfg.factor, params=EmulatorParams(**cfg.emulator),
                               rng=rng).values[0]
    if g["time"].shape[0] <= index:
        for name in ("src_lr", "ref_lr", "ref_hr", "time"):
            g[name].resize((index + 1, *g[name].shape[1:]))
    g["ref_hr"][index] = ref_hr
    g["ref_lr"][index] = ref_lr.astype(np.float32)
    g["src_lr"][index] = src_lr.astype(np.float32)
    g["time"][index] = t_s


def _resume_geometry(gpath: Path, ledger: _Ledger) -> dict | None:
    """The grid of a network written in part by an earlier run, or None if its group cannot
    be read back (arrays shorter than the ledger's frames, damaged metadata)."""
    try:
        g = zarr.open_group(str(gpath), mode="r")
        a = g.attrs
        if any(g[n].shape[0] < ledger.n_frames for n in ("src_lr", "ref_lr", "ref_hr", "time")):
            return None
        return {"grid_hr": a["grid_hr"], "grid_lr": a["grid_lr"], "crs": a["crs"],
                "dims": ["y", "x"] if a["grid_kind"] == "projected" else ["lat", "lon"],
                "semantics": a["input_semantics"]}
    except Exception:  # zarr raises several types for damaged metadata
        return None


def _write_network(partial: Path, cfg: CorpusConfig, src: SourceConfig, files: list[str],
                   steps: Callable[[], None]) -> None:
    """Read ``files`` one at a time and write their frames (skipping those already written)."""
    ledger = _Ledger(partial / LEDGER_DIR / src.network)
    gpath = partial / NETWORKS / src.network
    geo = _resume_geometry(gpath, ledger) if ledger.records else None
    if geo is None and ledger.records:
        log.warning("%s: the unfinished network group is unreadable (killed while writing its "
                    "metadata?); writing network %s again", gpath, src.network)
        shutil.rmtree(ledger.folder)
        ledger = _Ledger(partial / LEDGER_DIR / src.network)
    skipped = 0
    for i, path in enumerate(files):
        rec = ledger.records.get(i)
        if rec is not None and rec["complete"]:
            steps()
            continue
        da, original = _read(src, path, cfg.accumulation)
        semantics = {k: original.get(k) for k in SEMANTIC_ATTRS}
        if geo is None:
            geo = _geometry(da, cfg.factor, path)
            geo["semantics"] = semantics
            _create_network(partial, src, cfg, geo, semantics, original)
        elif semantics != geo["semantics"]:
            raise InputFileError(path, f"product {semantics} differs from the network "
                                 f"{src.network!r}'s first file {geo['semantics']}; one network "
                                 "holds one product (make two sources to mix them)")
        field = _cut(da, geo, path)
        times = np.asarray(da["time"].values).astype("datetime64[s]")
        del da
        g = zarr.open_group(str(gpath), mode="r+")
        rec = ledger.record(i, path)
        for k, t in enumerate(times):
            if str(k) in rec["frames"] or not _window_event(t, src.events):
                continue
            if not np.isfinite(field[k]).any():
                log.warning("%s: frame %s has no valid reference value in the region; left out",
                            path, t)
                skipped += 1
                continue
            index = ledger.n_frames
            t_s = int(t.astype("int64"))
            _write_frame(g, index, t_s, field[k], geo, cfg, src.network)
            rec["frames"][str(k)] = [index, t_s]
            ledger.save(i)
        rec["complete"] = True
        ledger.save(i)
        steps()
    if geo is None or ledger.n_frames == 0:
        raise InputFileError(", ".join(src.files), f"network {src.network!r}: no frame inside "
                             f"its events {list(src.events or {})} with valid data")
    if skipped:
        log.info("network %s: %d frames without valid data left out", src.network, skipped)


# ----------------------------------------------------------------------------- finishing


def label_events(times_s: np.ndarray, src: SourceConfig, gap_s: float
                 ) -> tuple[list[str], np.ndarray]:
    """Event names and each frame's event index: the configured windows, or unbroken sequences
    (gaps up to ``gap_s``) named by their first time."""
    t = np.asarray(times_s, dtype=np.int64)
    if src.events is not None:
        names = list(src.events)
        label = np.full(t.size, -1, dtype=np.int16)
        for e, (a, b) in enumerate(src.events.values()):
            lo, hi = (int(np.datetime64(v, "s").astype("int64")) for v in (a, b))
            label[(t >= lo) & (t <= hi)] = e
        return names, label
    order = np.argsort(t, kind="stable")
    starts = np.concatenate([[True], np.diff(t[order]) > gap_s])
    seq = np.cumsum(starts) - 1
    first = t[order][starts]
    names = [str(np.datetime64(int(s), "s"))[:16] for s in first]
    label = np.empty(t.size, dtype=np.int16)
    label[order] = seq
    return names, label


def _splits(src: SourceConfig, names: list[str], label: np.ndarray, n_x: int
            ) -> tuple[dict, dict]:
    unknown = [e for e in src.held_out + src.validation if e not in names]
    if unknown:
        raise ConfigError(f"source {src.network!r}: held_out/validation name unknown event(s) "
                          f"{unknown}; the network's events are {names}")
    parts = {"test": list(src.held_out), "val": list(src.validation)}
    parts["train"] = [e for e in names if e not in src.held_out + src.validation]
    splits, events = {}, {}
    for split in ("train", "val", "test"):
        ids = [names.index(e) for e in parts[split]]
        frames = np.flatnonzero(np.isin(label, ids)).tolist()
        if frames:
            splits[split] = {"time": frames, "x_lr": [0, n_x]}
            events[split] = parts[split]
    return splits, events


def _check_times(g: zarr.Group, ledger: _Ledger, network: str) -> None:
    """Duplicate valid times within one network raise, naming both files."""
    seen: dict[int, str] = {}
    for rec in ledger.records.values():
        for _, t in rec["frames"].values():
            if t in seen:
                raise InputFileError(rec["path"], f"network {network!r}: duplicate valid time "
                                     f"{np.datetime64(t, 's')} (also in {seen[t]})")
            seen[t] = rec["path"]


def _finish(partial: Path, cfg: CorpusConfig) -> dict[str, Any]:
    """Label events, make the splits, fit the transform, write every attribute but
    ``complete``; return the root attributes."""
    from precipdiff.data.transforms import PrecipTransform

    groups, info = {}, {}
    for src in cfg.sources:
        g = zarr.open_group(str(partial / NETWORKS / src.network), mode="r+")
        ledger = _Ledger(partial / LEDGER_DIR / src.network)
        n = ledger.n_frames
        for name in ("src_lr", "ref_lr", "ref_hr", "time"):  # drop frames of a crashed file
            if g[name].shape[0] != n:
                g[name].resize((n, *g[name].shape[1:]))
        _check_times(g, ledger, src.network)
        names, label = label_events(np.asarray(g["time"][:]), src, cfg.event_gap_s)
        ev = g.create_array("event", shape=(n,), dtype="int16", dimension_names=("time",),
                            overwrite=True)
        ev[:] = label
        ev.attrs.update({"long_name": "event index", "event_names": names})
        splits, events = _splits(src, names, label, int(g["ref_lr"].shape[2]))
        groups[src.network] = (g, splits)
        info[src.network] = {"events": names, "splits": events,
                             "frames": {k: len(v["time"]) for k, v in splits.items()}}
    train = [(g, s["train"]["time"]) for g, s in groups.values() if "train" in s]
    if not train:
        raise ConfigError("corpus config: no network has a train frame (every event is held "
                          "out or validation)")
    n_train = sum(len(t) for _, t in train)
    budget = max(1, FIT_VALUES // n_train)
    values = []
    for g, times in train:
        for t in times:
            a = np.asarray(g["ref_hr"][t])
            v = a[np.isfinite(a)]
            values.append(v[:: max(1, math.ceil(v.size / budget))].copy())  # not a view: it
            # would keep the frame's whole array alive (memory ~ every train frame)
    transform = PrecipTransform.fit(np.concatenate(values), scale=cfg.transform_scale).to_dict()
    created = dt.datetime.now(dt.timezone.utc).isoformat()
    for g, splits in groups.values():
        g.attrs.update({"transform": transform, "splits": splits, "created": created,
                        "events": info[g.attrs["network"]]["events"]})
    return {"precipdiff_corpus": CORPUS_FORMAT, "complete": False,
            "networks": [s.network for s in cfg.sources], "factor": cfg.factor,
            "pooling": cfg.pooling, "transform": transform, "units": "mm/h",
            "events": {k: v["events"] for k, v in info.items()},
            "splits": {k: v["splits"] for k, v in info.items()},
            "frames": {k: v["frames"] for k, v in info.items()},
            "event_ids": [f"{k}/{e}" for k, v in info.items() for e in v["events"]],
            "config": cfg.to_dict(), "created": created, "version": __version__}


def prepare_corpus(cfg: CorpusConfig, out: str | os.PathLike, *,
                   progress: ProgressCallback | None = None) -> Path:
    """Write the corpus store for ``cfg`` at ``out`` and return ``out``.

    Resumable: an unfinished ``<out>.partial`` written with the same sources, files and
    emulator settings is continued (its frames are not rewritten); one written otherwise is
    discarded. Changing only the splits (``held_out``, ``validation``) or ``transform_scale``
    keeps every written frame. ``progress(done, total)`` counts input files.
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    files = {s.network: pairing.expand_files(s.files, f"network {s.network!r}")
             for s in cfg.sources}
    key = {"config": cfg.write_key(), "files": files}
    try:
        same = json.loads((partial / KEY_FILE).read_text()) == key
    except (OSError, ValueError):
        same = False
    if not same:
        if partial.exists():
            log.warning("discarding %s: written with another config or file list", partial)
            shutil.rmtree(partial)
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            zarr.open_group(str(partial), mode="w", zarr_format=3).attrs.update(
                {"precipdiff_corpus": CORPUS_FORMAT, "complete": False})
        except OSError as exc:
            raise StoreError(f"{out}: cannot write the store here ({exc.strerror or exc})") \
                from exc
        with atomic_path(partial / KEY_FILE) as tmp:
            tmp.write_text(json.dumps(key))
    total, done = sum(len(f) for f in files.values()), 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    for src in cfg.sources:
        _write_network(partial, cfg, src, files[src.network], step)
    root = _finish(partial, cfg)
    shutil.rmtree(partial / LEDGER_DIR, ignore_errors=True)
    (partial / KEY_FILE).unlink(missing_ok=True)
    for src in cfg.sources:
        zarr.open_group(str(partial / NETWORKS / src.network), mode="r+").attrs.update(
            {"complete": True})
    g = zarr.open_group(str(partial), mode="r+")
    g.attrs.update(root)
    g.attrs.update({"complete": True})
    replace_dir(partial, out)
    log.info("corpus written: %s (%s)", out,
             ", ".join(f"{k} {sum(v.values())} frames" for k, v in root["frames"].items()))
    return out


# ----------------------------------------------------------------------------- reading back


@dataclass
class CorpusHandle:
    """An opened, validated corpus store; ``open(network)`` gives its paired store."""

    path: Path
    attrs: dict[str, Any]

    @property
    def networks(self) -> list[str]:
        return list(self.attrs["networks"])

    @property
    def events(self) -> dict[str, list[str]]:
        """Event names of every network (index = the ``event`` array's value)."""
        return {k: list(v) for k, v in self.attrs["events"].items()}

    @property
    def event_ids(self) -> list[str]:
        """Corpus-wide event ids ``"network/event"`` (the samples' ``event`` indexes them)."""
        return list(self.attrs["event_ids"])

    @property
    def splits(self) -> dict[str, dict[str, list[str]]]:
        """``{network: {split: [event names]}}``."""
        return {k: {s: list(e) for s, e in v.items()} for k, v in self.attrs["splits"].items()}

    @property
    def factor(self) -> int:
        return int(self.attrs["factor"])

    @property
    def pooling(self) -> str:
        return str(self.attrs["pooling"])

    @property
    def transform(self):
        from precipdiff.data.transforms import PrecipTransform

        return PrecipTransform.from_dict(dict(self.attrs["transform"]))

    def network_path(self, network: str) -> Path:
        if network not in self.attrs["networks"]:
            raise StoreError(f"{self.path}: no network {network!r}; the corpus has "
                             f"{self.networks}")
        return self.path / NETWORKS / network

    def open(self, network: str) -> StoreHandle:
        """The network's paired store (``data.store.open_store``)."""
        return open_store(self.network_path(network))


def is_corpus(path: str | os.PathLike) -> bool:
    """True when ``path`` is a zarr group written by :func:`prepare_corpus` (complete or not)."""
    try:
        return "precipdiff_corpus" in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # missing or foreign directory
        return False


def open_corpus(path: str | os.PathLike) -> CorpusHandle:
    """Open and validate a completed corpus store; :class:`StoreError` naming the path if not."""
    p = Path(path)
    if not (p / "zarr.json").is_file():
        partial = p.with_name(p.name + ".partial")
        hint = f" (an unfinished {partial} exists: rerun prepare)" if partial.exists() else ""
        raise StoreError(f"{p}: no corpus store here (no zarr.json){hint}")
    try:
        attrs = dict(zarr.open_group(str(p), mode="r").attrs)
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise StoreError(f"{p}: cannot open as a zarr v3 group: {exc}") from exc
    if "precipdiff_corpus" not in attrs:
        raise StoreError(f"{p}: not a corpus store (no 'precipdiff_corpus' attribute)")
    if attrs["precipdiff_corpus"] != CORPUS_FORMAT:
        raise StoreError(f"{p}: corpus format {attrs['precipdiff_corpus']!r}, this version "
                         f"reads format {CORPUS_FORMAT}; rerun prepare")
    if attrs.get("complete") is not True:
        raise StoreError(f"{p}: incomplete corpus store (complete is not true); rerun prepare")
    missing = [k for k in ("networks", "events", "splits", "transform", "factor", "event_ids")
               if k not in attrs]
    missing += [f"group {NETWORKS}/{n}" for n in attrs.get("networks", ())
                if not (p / NETWORKS / n / "zarr.json").is_file()]
    if missing:
        raise StoreError(f"{p}: damaged corpus store, missing {', '.join(missing)}")
    return CorpusHandle(path=p, attrs=attrs)
