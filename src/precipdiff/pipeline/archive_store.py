"""The zarr v3 store of ``predict --archive --format zarr``: layout, checks and run attributes.

One store for every input (:mod:`precipdiff.pipeline.archive` writes its regions): laid out up
front from the inputs' valid times and grid (:func:`create_store`), checked against a rerun's
settings (:func:`open_store`, :func:`run_settings`), and given the run-level attributes once
every time step is done (:func:`finish_store`). The layout is described in
:mod:`precipdiff.pipeline.archive` and ``docs/interfaces.md``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from precipdiff.errors import ConfigError, GridError

if TYPE_CHECKING:
    import xarray as xr

    from precipdiff.pipeline.pipeline import Pipeline, PredictOptions
    from precipdiff.pipeline.run import PredictRequest

#: Largest spatial chunk of the zarr store's fine fields (pixels per side).
SPATIAL_CHUNK = 512


@dataclass(frozen=True)
class InputInfo:
    """What the parent needs from one input to lay out the store: its valid times and grid."""

    path: Path
    times: np.ndarray
    dims: tuple[str, str]
    y: np.ndarray
    x: np.ndarray


def store_times(root) -> np.ndarray:
    """The store's time axis as datetime64[ns] (CF seconds since 1970)."""
    seconds = np.asarray(root["time"][:], np.float64)
    return (seconds * 1e9).round().astype("int64").astype("datetime64[ns]")


def volume_attrs(meaning: str) -> dict[str, dict[str, str]]:
    """Attributes of the per-step ``volume_error`` and of the two sums it is made of."""
    return {
        "volume_error": {
            "long_name": "domain volume error of the downscaled ensemble at this time step",
            "units": "1", "comment": meaning.replace("all members and times",
                                                     "all members, this time step"),
        },
        "fine_volume": {
            "long_name": "downscaled rates summed over the members and the valid fine pixels, "
                         "divided by factor**2 (numerator of volume_error)", "units": "mm h-1",
        },
        "coarse_volume": {
            "long_name": "corrected coarse rates summed over the members and the cells that were "
                         "downscaled (denominator of volume_error)", "units": "mm h-1",
        },
    }


def finish_store(store: Path, pipeline: Pipeline) -> np.ndarray:
    """Run-level attributes once every step is done: ``volume_error`` (all members and time
    steps: the sums of the steps' ``fine_volume`` / ``coarse_volume``) and its meaning; they are
    removed while steps are missing. Metadata consolidated again. Returns ``step_done``."""
    import zarr

    root = zarr.open_group(store, mode="r+", use_consolidated=False)
    done = np.asarray(root["step_done"][:])
    if "volume_error" not in root:
        return done
    tally = pipeline.new_tally()
    if (done == 1).all():
        tally.volume = True
        tally.fine_sum = float(np.nansum(root["fine_volume"][:]))
        tally.coarse_sum = float(np.nansum(root["coarse_volume"][:]))
        root.attrs.update(tally.attrs())
    else:
        for name in ("volume_error", "volume_error_meaning"):
            root.attrs.pop(name, None)  # not computable: steps missing
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(store)
    return done


def run_settings(req: PredictRequest, key: tuple) -> str:
    """What decides a store's contents besides the inputs (JSON), checked on a rerun; with
    ``--time`` also the interval (the seed of a step depends on the steps selected)."""
    settings = {
        "weights": [list(p) for p in key[1]], "members": req.members, "sampler": req.sampler,
        "steps": req.steps, "seed": req.seed, "window": req.window,
        "member_batch": req.member_batch, "mass_consistent": req.mass_consistent,
        "precision": req.precision, "thresholds": list(req.thresholds),
    }
    if req.time is not None:
        settings["time"] = req.time.text
    if req.time_factor > 1:
        settings["time_factor"] = [req.time_factor, req.time_interp, req.time_conserve]
    return json.dumps(settings, sort_keys=True)


def check_one_grid(infos: Sequence[InputInfo]) -> None:
    """All inputs on one grid; :class:`GridError` naming the first one that differs."""
    first = infos[0]
    for info in infos[1:]:
        same = (info.dims == first.dims and info.y.shape == first.y.shape
                and info.x.shape == first.x.shape and np.allclose(info.y, first.y, atol=1e-6)
                and np.allclose(info.x, first.x, atol=1e-6))
        if not same:
            raise GridError(
                f"--format zarr: {info.path} is on another grid ({info.dims[0]} {len(info.y)} x "
                f"{info.dims[1]} {len(info.x)}) than {first.path} ({first.dims[0]} "
                f"{len(first.y)} x {first.dims[1]} {len(first.x)}); one store needs one grid: "
                "crop with --bbox or use --format netcdf"
            )


def all_times(infos: Sequence[InputInfo]) -> np.ndarray:
    """The sorted valid times of all inputs; :class:`ConfigError` when two inputs share one."""
    times = np.concatenate([i.times for i in infos])
    order = np.argsort(times, kind="stable")
    times = times[order]
    dup = np.flatnonzero(times[1:] == times[:-1])
    if dup.size:
        owners = np.concatenate([[i.path] * len(i.times) for i in infos])[order]
        raise ConfigError(
            f"--format zarr: {owners[dup[0]]} and {owners[dup[0] + 1]} both hold the time "
            f"{times[dup[0]]}; one store holds each time once"
        )
    return times


def create_store(store: Path, pipeline: Pipeline, src: xr.DataArray, opts: PredictOptions,
                 times: np.ndarray, thresholds: Sequence[float], settings: str,
                 extra_attrs: dict | None = None) -> None:
    """Lay out the whole store (coordinates, CF attributes, empty fields) atomically;
    ``extra_attrs`` are added to the global attributes."""
    import dask.array as da
    import xarray as xr

    from precipdiff.atomic import atomic_path
    from precipdiff.grid import cell_bounds, cf_grid_mapping
    from precipdiff.pipeline.output import (
        FILL,
        GRID_MAPPING,
        TIME_UNITS,
        _global_attrs,
        _horizontal_attrs,
        _Layout,
    )

    layout = _Layout(src, pipeline)
    nt, members = len(times), opts.members
    ylr, xlr = layout.coarse_dims
    coords: dict = {"time": ("time", times, {"standard_name": "time", "axis": "T"}),
                    "member": ("member", np.arange(members, dtype=np.int32),
                               {"standard_name": "realization", "units": "1",
                                "long_name": "ensemble member"})}
    data: dict = {GRID_MAPPING: ((), np.int32(0), cf_grid_mapping(layout.crs))}
    enc: dict = {"time": {"units": TIME_UNITS, "calendar": "standard", "dtype": "f8"}}

    def axes(ydim, xdim, grid, coarse):
        yattrs, xattrs = _horizontal_attrs(layout.projected, layout.units, coarse=coarse)
        for dim, centres, attrs in ((ydim, grid.lat, yattrs), (xdim, grid.lon, xattrs)):
            coords[dim] = (dim, centres, {**attrs, "bounds": f"{dim}_bnds"})
            data[f"{dim}_bnds"] = ((dim, "nv"), cell_bounds(centres), {})

    def field(name, dims, shape, chunks, attrs):
        data[name] = (dims, da.full(shape, np.nan, np.float32, chunks=chunks), attrs)
        enc[name] = {"chunks": chunks, "fill_value": FILL}

    axes(ylr, xlr, layout.grid, True)
    field("source_lr", ("time", ylr, xlr), (nt, *layout.grid.shape), (1, *layout.grid.shape),
          layout.field_attrs("input (biased coarse) precipitation rate"))
    field("corrected_lr", ("time", "member", ylr, xlr), (nt, members, *layout.grid.shape),
          (1, members, *layout.grid.shape),
          layout.field_attrs("Stage-I bias-corrected precipitation rate (coarse grid)"))
    fine = layout.fine
    if fine is not None:
        axes(layout.ydim, layout.xdim, fine, False)
        cy, cx = (min(SPATIAL_CHUNK, n) for n in fine.shape)
        dims = (layout.ydim, layout.xdim)
        field("precip", ("time", "member", *dims), (nt, members, *fine.shape),
              (1, members, cy, cx),
              layout.field_attrs("downscaled precipitation rate, ensemble members"))
        for name, long, methods in (
            ("ensemble_mean", "ensemble mean", layout.mean_methods),
            ("ensemble_std", "ensemble standard deviation", layout.std_methods),
        ):
            field(name, ("time", *dims), (nt, *fine.shape), (1, cy, cx),
                  layout.field_attrs(f"downscaled precipitation rate, {long}", methods))
        if thresholds:
            coords["threshold"] = ("threshold", np.asarray(thresholds, np.float32),
                                   {"units": "mm h-1", "standard_name": "lwe_precipitation_rate",
                                    "long_name": "exceedance threshold (value >= threshold)"})
            field("exceedance_probability", ("time", "threshold", *dims),
                  (nt, len(thresholds), *fine.shape), (1, len(thresholds), cy, cx),
                  {"units": "1", "grid_mapping": GRID_MAPPING,
                   "long_name": "fraction of members with precipitation rate >= threshold"})
    if fine is not None:
        meaning = pipeline.new_tally()
        meaning.volume = True
        for name, attrs in volume_attrs(meaning.attrs()["volume_error_meaning"]).items():
            data[name] = (("time",), da.full(nt, np.nan, np.float64, chunks=1), attrs)
            enc[name] = {"chunks": (1,), "fill_value": np.nan}
    for name, dtype, long in (
        ("step_done", np.int8, "1 once every field of this time step is written"),
        ("input_id", np.int64, "input file identity: sha256 of its absolute path (63 bits)"),
        ("seed", np.int64, "seed of the input file's ensemble (predict FILE --seed)"),
    ):
        data[name] = (("time",), da.zeros(nt, dtype, chunks=1), {"long_name": long})
        enc[name] = {"chunks": (1,), "fill_value": 0}
    attrs = _global_attrs(pipeline, src, layout, opts)
    attrs.update(input_files=f"{nt} time steps", precipdiff_run=settings,
                 history=f"{attrs['date_created']} {attrs['source']} predict --archive "
                 f"--format zarr ({nt} time steps)")
    attrs.pop("seed", None)
    attrs["archive_base_seed"] = int(opts.seed)
    attrs.update(extra_attrs or {})
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    with atomic_path(store, is_dir=True) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(tmp, mode="w", compute=False, zarr_format=3, consolidated=True,
                   encoding=enc)


def open_store(store: Path, settings: str, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check an existing store against this run; return its time axis and ``step_done``."""
    import zarr

    try:
        root = zarr.open_group(store, mode="r")
        made_with = root.attrs.get("precipdiff_run")
        axis = store_times(root)
        done = np.asarray(root["step_done"][:])
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"--format zarr: {store} exists but is not a precipdiff archive store "
                          f"({exc}); move it away or write another store") from None
    if made_with != settings:
        raise ConfigError(f"--format zarr: {store} was made with other settings ({made_with}), "
                          f"not {settings}; write another store")
    missing = np.setdiff1d(times, axis)
    if missing.size:
        raise ConfigError(f"--format zarr: {store} has no time step {missing[0]} "
                          f"({missing.size} input time(s) missing); write another store")
    return axis, done
