"""Incremental CF-NetCDF output for pipeline runs of any domain size.

The file is written band by band while Stage II runs, into a temporary sibling that is renamed
onto the target only when every time step is complete: a crash leaves no partial output, and an
existing output is never half-overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from precipdiff import __version__
from precipdiff.atomic import atomic_path
from precipdiff.grid import Grid
from precipdiff.pipeline.pipeline import Pipeline, PredictOptions, scratch_dir

log = logging.getLogger(__name__)

TIME_UNITS = "seconds since 1970-01-01 00:00:00"
FILL = np.float32(np.nan)


def _coord(ds: netCDF4.Dataset, name: str, values: np.ndarray, **attrs: str) -> None:
    ds.createDimension(name, len(values))
    v = ds.createVariable(name, "f8", (name,))
    v[:] = values
    v.setncatts(attrs)


def _define(
    ds: netCDF4.Dataset,
    grid: Grid,
    fine: Grid | None,
    members: int,
    n_time: int,
    thresholds: Sequence[float],
    times: np.ndarray,
) -> None:
    ds.createDimension("member", members)
    ds.createVariable("member", "i4", ("member",))[:] = np.arange(members)
    ds.createDimension("time", n_time)
    tv = ds.createVariable("time", "f8", ("time",))
    tv.setncatts(
        {"units": TIME_UNITS, "calendar": "standard", "standard_name": "time", "axis": "T"}
    )
    tv[:] = (times.astype("datetime64[s]").astype(np.int64)).astype(np.float64)
    _coord(
        ds,
        "lat_lr",
        grid.lat,
        units="degrees_north",
        standard_name="latitude",
        long_name="latitude of coarse cell centres",
    )
    _coord(
        ds,
        "lon_lr",
        grid.lon,
        units="degrees_east",
        standard_name="longitude",
        long_name="longitude of coarse cell centres",
    )
    rate = {"units": "mm h-1", "standard_name": "lwe_precipitation_rate"}
    v = ds.createVariable(
        "source_lr", "f4", ("time", "lat_lr", "lon_lr"), zlib=True, complevel=1, fill_value=FILL
    )
    v.setncatts({**rate, "long_name": "input (biased coarse) precipitation rate"})
    v = ds.createVariable(
        "corrected_lr",
        "f4",
        ("member", "time", "lat_lr", "lon_lr"),
        zlib=True,
        complevel=1,
        fill_value=FILL,
    )
    v.setncatts({**rate, "long_name": "Stage-I bias-corrected precipitation rate (coarse grid)"})
    if fine is None:
        return
    _coord(ds, "lat", fine.lat, units="degrees_north", standard_name="latitude", axis="Y")
    _coord(ds, "lon", fine.lon, units="degrees_east", standard_name="longitude", axis="X")
    chunk = (1, 1, min(256, fine.nlat), min(256, fine.nlon))
    dims = ("member", "time", "lat", "lon")
    v = ds.createVariable(
        "precip", "f4", dims, zlib=True, complevel=1, chunksizes=chunk, fill_value=FILL
    )
    v.setncatts({**rate, "long_name": "downscaled precipitation rate, ensemble members"})
    for name, long in (
        ("ensemble_mean", "ensemble mean"),
        ("ensemble_std", "ensemble standard deviation"),
    ):
        v = ds.createVariable(
            name, "f4", dims[1:], zlib=True, complevel=1, chunksizes=chunk[1:], fill_value=FILL
        )
        v.setncatts({**rate, "long_name": f"downscaled precipitation rate, {long}"})
    if thresholds:
        ds.createDimension("threshold", len(thresholds))
        tv = ds.createVariable("threshold", "f4", ("threshold",))
        tv[:] = np.asarray(thresholds, np.float32)
        tv.setncatts({"units": "mm h-1", "long_name": "exceedance threshold (value >= threshold)"})
        v = ds.createVariable(
            "exceedance_probability",
            "f4",
            ("threshold",) + dims[1:],
            zlib=True,
            complevel=1,
            chunksizes=(1,) + chunk[1:],
            fill_value=FILL,
        )
        v.setncatts(
            {"units": "1", "long_name": "fraction of members with precipitation >= threshold"}
        )


def predict_to_file(
    pipeline: Pipeline,
    src: xr.DataArray,
    path: str | Path,
    opts: PredictOptions = PredictOptions(),
    *,
    extras: xr.DataArray | None = None,
    thresholds: Sequence[float] = (1.0, 5.0, 10.0),
    attrs: dict[str, str] | None = None,
    on_window: Callable[[], None] | None = None,
) -> Path:
    """Run ``pipeline`` on ``src`` (time, lat, lon) mm/h and write CF-NetCDF to ``path`` atomically.

    Variables: ``precip`` (member, time, lat, lon), ``ensemble_mean``/``ensemble_std`` (time, lat,
    lon), ``exceedance_probability`` (threshold, time, lat, lon) and ``corrected_lr`` (member, time,
    lat_lr, lon_lr). Missing input cells stay missing (NaN) in every variable.
    """
    grid = Grid.from_dataarray(src)
    fine = grid.refine(pipeline.factor) if pipeline.downscale is not None else None
    times = src["time"].values
    with atomic_path(path) as tmp, scratch_dir() as scratch:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.setncatts(
                {
                    "Conventions": "CF-1.8",
                    "title": "precipdiff bias-corrected and downscaled precipitation ensemble",
                    "institution": "precipdiff",
                    "source": f"precipdiff {__version__}",
                    "history": f"precipdiff predict on {src.attrs.get('source_file', 'input')}",
                    **{k: v for k, v in pipeline.provenance(opts).items()},
                    **(attrs or {}),
                }
            )
            _define(ds, grid, fine, opts.members, len(times), thresholds if fine else (), times)
            for t in range(len(times)):
                field = src.isel(time=t).values
                ds["source_lr"][t] = field
                corrected = pipeline.correct_step(field, t, opts)
                ds["corrected_lr"][:, t] = corrected
                if fine is None:
                    continue
                ext = None if extras is None else extras.isel(time=t).values
                bands = pipeline.downscale_step(
                    corrected, t, opts, extras=ext, scratch=Path(scratch), on_window=on_window
                )
                for y0, y1, hr in bands:
                    ds["precip"][:, t, y0:y1] = hr
                    ds["ensemble_mean"][t, y0:y1] = hr.mean(axis=0)
                    ds["ensemble_std"][t, y0:y1] = (
                        hr.std(axis=0, ddof=1) if hr.shape[0] > 1 else 0.0
                    )
                    for k, thr in enumerate(thresholds):
                        prob = (hr >= thr).mean(axis=0).astype(np.float32)
                        prob[np.isnan(hr[0])] = np.nan
                        ds["exceedance_probability"][k, t, y0:y1] = prob
                log.info("time step %d/%d written", t + 1, len(times))
    return Path(path)
