"""Incremental CF-NetCDF output for pipeline runs of any domain size.

The file is written band by band while Stage II runs, into a temporary sibling that is renamed
onto the target only when every time step is complete: a crash leaves no partial output, and an
existing output is never half-overwritten.

CF-1.8 content (checked by the IOOS compliance checker in the tests):

* horizontal coordinates ``lat``/``lon`` (``lat_lr``/``lon_lr`` on the coarse grid) or, for
  projected inputs, ``y``/``x`` (``y_lr``/``x_lr``) in the input's units, each with ``bounds``;
  a ``crs`` grid-mapping variable (``latitude_longitude`` for lat/lon grids) with the CF
  parameters and ``crs_wkt``, named by every field's ``grid_mapping``;
* ``member`` with ``standard_name: realization``; ``time`` with ``time_bnds`` when the input is
  an accumulation over a period (the fields are then mean rates, ``cell_methods: "time: mean"``);
* rates in ``mm h-1`` (UDUNITS); ``ensemble_mean``/``ensemble_std`` with ``cell_methods``
  ``realization: mean`` / ``realization: standard_deviation``;
* global ``history`` with an ISO-8601 timestamp, the input file names, the bbox of the grid, the
  models by file name and sha256 (never a local path), pooling, input semantics and the wet/dry
  rule (:mod:`precipdiff.pipeline.dry`).

In memory (and for the readers) rates stay ``mm/h``; only the file spells them ``mm h-1``, which
:func:`precipdiff.io.read` reads back as ``mm/h``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from precipdiff import __version__
from precipdiff.atomic import atomic_path
from precipdiff.grid import Grid, cell_bounds, cf_grid_mapping, grid_crs, spatial_dims, xy_units
from precipdiff.pipeline.inputs import check_input
from precipdiff.pipeline.pipeline import Pipeline, PredictOptions, check_extras, scratch_dir

log = logging.getLogger(__name__)

TIME_UNITS = "seconds since 1970-01-01 00:00:00"
FILL = np.float32(np.nan)
RATE_UNITS = "mm h-1"
GRID_MAPPING = "crs"


def _axis(
    ds: netCDF4.Dataset, name: str, centres: np.ndarray, attrs: dict[str, str]
) -> None:
    """A 1-D coordinate variable with a ``{name}_bnds`` bounds variable."""
    ds.createDimension(name, len(centres))
    v = ds.createVariable(name, "f8", (name,))
    v[:] = centres
    v.setncatts({**attrs, "bounds": f"{name}_bnds"})
    b = ds.createVariable(f"{name}_bnds", "f8", (name, "nv"))
    b[:] = cell_bounds(centres)


def _horizontal_attrs(projected: bool, units: str, coarse: bool) -> tuple[dict, dict]:
    """CF attributes of the (y, x) axes of one grid.

    Only the fine axes carry a ``standard_name``: the grid-mapping check of CF checkers wants
    exactly one variable per standard name (``latitude``, ``projection_x_coordinate``...) in a
    file. CF still identifies coarse lat/lon axes by their units (``degrees_north``/``east``);
    coarse projection axes are described by ``long_name`` and units only.
    """
    which = "coarse" if coarse else "fine"
    if projected:
        y = {"standard_name": "projection_y_coordinate", "units": units, "axis": "Y",
             "long_name": f"y of {which} cell centres (projection coordinate)"}
        x = {"standard_name": "projection_x_coordinate", "units": units, "axis": "X",
             "long_name": f"x of {which} cell centres (projection coordinate)"}
    else:
        y = {"standard_name": "latitude", "units": "degrees_north", "axis": "Y",
             "long_name": f"latitude of {which} cell centres"}
        x = {"standard_name": "longitude", "units": "degrees_east", "axis": "X",
             "long_name": f"longitude of {which} cell centres"}
    if coarse:
        for attrs in (y, x):
            attrs.pop("standard_name")
            if projected:  # an un-named Y/X axis would be guessed to be latitude/longitude
                attrs.pop("axis")
    return y, x


class _Layout:
    """Names and attributes of the file's grids, derived from the (checked) input."""

    def __init__(self, src: xr.DataArray, pipeline: Pipeline):
        self.ydim, self.xdim = spatial_dims(src)
        self.projected = self.ydim == "y"
        self.units = xy_units(src) if self.projected else "degrees"
        self.crs = grid_crs(src)
        self.grid = Grid.from_dataarray(src)
        self.fine = self.grid.refine(pipeline.factor) if pipeline.downscale is not None else None
        self.hours = src.attrs.get("accumulation_hours")
        self.time_end = "start" not in str(src.attrs.get("time_label", "end")).lower()
        time_cm = "time: mean " if self.hours else ""
        self.cell_methods = time_cm.strip()
        self.mean_methods = f"{time_cm}realization: mean"
        self.std_methods = f"{time_cm}realization: standard_deviation"

    @property
    def coarse_dims(self) -> tuple[str, str]:
        return f"{self.ydim}_lr", f"{self.xdim}_lr"

    def field_attrs(self, long_name: str, cell_methods: str | None = None) -> dict[str, str]:
        attrs = {"units": RATE_UNITS, "standard_name": "lwe_precipitation_rate",
                 "long_name": long_name, "grid_mapping": GRID_MAPPING}
        methods = self.cell_methods if cell_methods is None else cell_methods
        if methods:
            attrs["cell_methods"] = methods
        return attrs


def _define_time(ds: netCDF4.Dataset, layout: _Layout, times: np.ndarray) -> None:
    ds.createDimension("time", len(times))
    tv = ds.createVariable("time", "f8", ("time",))
    tv.setncatts(
        {"units": TIME_UNITS, "calendar": "standard", "standard_name": "time", "axis": "T",
         "long_name": "time" + (" (end of the accumulation period)" if layout.hours else "")}
    )
    seconds = times.astype("datetime64[s]").astype(np.int64).astype(np.float64)
    tv[:] = seconds
    if layout.hours:
        tv.bounds = "time_bnds"
        period = float(layout.hours) * 3600.0
        start = seconds - period if layout.time_end else seconds
        tb = ds.createVariable("time_bnds", "f8", ("time", "nv"))
        tb[:] = np.stack([start, start + period], axis=-1)


def _define(
    ds: netCDF4.Dataset,
    layout: _Layout,
    members: int,
    thresholds: Sequence[float],
    times: np.ndarray,
) -> None:
    ds.createDimension("nv", 2)
    ds.createDimension("member", members)
    mv = ds.createVariable("member", "i4", ("member",))
    mv[:] = np.arange(members)
    mv.setncatts({"standard_name": "realization", "long_name": "ensemble member", "units": "1"})
    _define_time(ds, layout, times)
    gm = ds.createVariable(GRID_MAPPING, "i4", ())
    gm.setncatts(cf_grid_mapping(layout.crs))
    ylr, xlr = layout.coarse_dims
    yattrs, xattrs = _horizontal_attrs(layout.projected, layout.units, coarse=True)
    _axis(ds, ylr, layout.grid.lat, yattrs)
    _axis(ds, xlr, layout.grid.lon, xattrs)
    comp = {"zlib": True, "complevel": 1, "fill_value": FILL}
    v = ds.createVariable("source_lr", "f4", ("time", ylr, xlr), **comp)
    v.setncatts(layout.field_attrs("input (biased coarse) precipitation rate"))
    v = ds.createVariable("corrected_lr", "f4", ("member", "time", ylr, xlr), **comp)
    v.setncatts(layout.field_attrs("Stage-I bias-corrected precipitation rate (coarse grid)"))
    fine = layout.fine
    if fine is None:
        return
    yattrs, xattrs = _horizontal_attrs(layout.projected, layout.units, coarse=False)
    _axis(ds, layout.ydim, fine.lat, yattrs)
    _axis(ds, layout.xdim, fine.lon, xattrs)
    chunk = (1, 1, min(256, fine.nlat), min(256, fine.nlon))
    dims = ("member", "time", layout.ydim, layout.xdim)
    v = ds.createVariable("precip", "f4", dims, chunksizes=chunk, **comp)
    v.setncatts(layout.field_attrs("downscaled precipitation rate, ensemble members"))
    for name, long, methods in (
        ("ensemble_mean", "ensemble mean", layout.mean_methods),
        ("ensemble_std", "ensemble standard deviation", layout.std_methods),
    ):
        v = ds.createVariable(name, "f4", dims[1:], chunksizes=chunk[1:], **comp)
        v.setncatts(layout.field_attrs(f"downscaled precipitation rate, {long}", methods))
    if thresholds:
        ds.createDimension("threshold", len(thresholds))
        tv = ds.createVariable("threshold", "f4", ("threshold",))
        tv[:] = np.asarray(thresholds, np.float32)
        tv.setncatts(
            {"units": RATE_UNITS, "standard_name": "lwe_precipitation_rate",
             "long_name": "exceedance threshold (value >= threshold)"}
        )
        v = ds.createVariable(
            "exceedance_probability", "f4", ("threshold",) + dims[1:],
            chunksizes=(1,) + chunk[1:], **comp,
        )
        v.setncatts(
            {"units": "1", "grid_mapping": GRID_MAPPING,
             "long_name": "fraction of members with precipitation rate >= threshold"}
        )


def _input_names(src: xr.DataArray) -> str:
    files = str(src.attrs.get("source_file", "input")).split(";")
    return ";".join(Path(f).name for f in files)


def _global_attrs(
    pipeline: Pipeline, src: xr.DataArray, layout: _Layout, opts: PredictOptions
) -> dict:
    """Global attributes: CF/ACDD identification, history, provenance, grid extent."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    names = _input_names(src)
    bbox = layout.grid.bbox
    attrs: dict = {
        "Conventions": "CF-1.8",
        "title": "precipdiff bias-corrected and downscaled precipitation ensemble",
        "institution": "precipdiff",
        "source": f"precipdiff {__version__}",
        "history": f"{stamp} precipdiff {__version__} predict {names}",
        "date_created": stamp,
        "input_files": names,
        "input_variable": str(src.attrs.get("variable") or src.name or "precip"),
        "input_quantity": (
            f"accumulation over {layout.hours:g} h, used as its mean rate (mm h-1)"
            if layout.hours else "precipitation rate (mm h-1)"
        ),
        "input_bbox": ", ".join(f"{v:.10g}" for v in bbox),
        "input_bbox_meaning": (
            f"outer cell edges x_min, y_min, x_max, y_max in {layout.units} ({GRID_MAPPING})"
            if layout.projected else "outer cell edges lon_min, lat_min, lon_max, lat_max"
        ),
        **pipeline.provenance(opts),
    }
    lon_min, lat_min, lon_max, lat_max = _latlon_bbox(layout)
    attrs.update(
        geospatial_lat_min=lat_min, geospatial_lat_max=lat_max,
        geospatial_lon_min=lon_min, geospatial_lon_max=lon_max,
    )
    return attrs


def _latlon_bbox(layout: _Layout) -> tuple[float, float, float, float]:
    """The grid's extent in degrees (transformed with pyproj for projected grids)."""
    x0, y0, x1, y1 = layout.grid.bbox
    if not layout.projected:
        return x0, y0, x1, y1
    from pyproj import Transformer

    scale = {"km": 1000.0}.get(layout.units, 1.0)
    to_lonlat = Transformer.from_crs(layout.crs, "EPSG:4326", always_xy=True)
    lon0, lat0, lon1, lat1 = to_lonlat.transform_bounds(
        x0 * scale, y0 * scale, x1 * scale, y1 * scale, densify_pts=21
    )
    return float(lon0), float(lat0), float(lon1), float(lat1)


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
    lat_lr, lon_lr); ``y``/``x`` names for projected inputs. Missing input cells stay missing
    (NaN) in every variable. The input is checked before any work
    (:func:`~precipdiff.pipeline.inputs.check_input`).
    """
    src = check_input(src)
    layout = _Layout(src, pipeline)
    fine = layout.fine
    if fine is not None:
        check_extras(src, extras, fine)
    times = src["time"].values
    tally = pipeline.new_tally()
    record = pipeline.temporal
    with atomic_path(path) as tmp, scratch_dir() as scratch:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.setncatts({**_global_attrs(pipeline, src, layout, opts), **(attrs or {})})
            thresholds = thresholds if fine else ()
            _define(ds, layout, opts.members, thresholds, times)
            for t in range(len(times)):
                field = src.isel(time=t).values
                ds["source_lr"][t] = field
                corrected = pipeline.correct_step(field, t, opts, tally)
                ds["corrected_lr"][:, t] = corrected
                if fine is None or record:
                    continue
                ext = None if extras is None else extras.isel(time=t).values
                bands = pipeline.downscale_step(
                    corrected, t, opts, extras=ext, scratch=Path(scratch), on_window=on_window,
                    tally=tally,
                )
                for y0, y1, hr in bands:
                    _write_band(ds, t, y0, y1, hr, thresholds)
                log.info("time step %d/%d written", t + 1, len(times))
            if fine is not None and record:
                _write_record(ds, pipeline, times, opts, extras, thresholds, tally, on_window,
                              Path(scratch))
            ds.setncatts(tally.attrs())
    return Path(path)


def band_summaries(hr: np.ndarray, thresholds: Sequence[float]
                   ) -> tuple[np.ndarray, np.ndarray | float, list[np.ndarray]]:
    """Ensemble mean, std (0 for one member) and the probability of ``>= thr`` for each
    threshold (NaN where the field is missing) of members ``hr`` (M, h, W) mm/h."""
    std = hr.std(axis=0, ddof=1) if hr.shape[0] > 1 else 0.0
    probs = []
    for thr in thresholds:
        prob = (hr >= thr).mean(axis=0).astype(np.float32)
        prob[np.isnan(hr[0])] = np.nan
        probs.append(prob)
    return hr.mean(axis=0), std, probs


def _write_band(ds: netCDF4.Dataset, t: int, y0: int, y1: int, hr: np.ndarray,
                thresholds: Sequence[float]) -> None:
    """Fine rows ``[y0, y1)`` of time step ``t``: members (M, h, W) mm/h and their summaries."""
    ds["precip"][:, t, y0:y1] = hr
    mean, std, probs = band_summaries(hr, thresholds)
    ds["ensemble_mean"][t, y0:y1] = mean
    ds["ensemble_std"][t, y0:y1] = std
    for k, prob in enumerate(probs):
        ds["exceedance_probability"][k, t, y0:y1] = prob


def _write_record(ds: netCDF4.Dataset, pipeline: Pipeline, times: np.ndarray,
                  opts: PredictOptions, extras: xr.DataArray | None,
                  thresholds: Sequence[float], tally, on_window, scratch: Path) -> None:
    """A temporal Stage II over the whole record (:mod:`precipdiff.pipeline.record`), from the
    corrected members already in the file."""
    from precipdiff.pipeline.record import downscale_record

    corrected = np.asarray(np.ma.filled(ds["corrected_lr"][:], np.nan), np.float32)
    ext = None if extras is None else np.asarray(extras.values, np.float32)
    for t, bands in downscale_record(pipeline, corrected, times, opts, extras=ext,
                                     tally=tally, on_window=on_window, scratch=scratch):
        for y0, y1, hr in bands:
            _write_band(ds, t, y0, y1, hr, thresholds)
        log.info("time step %d/%d written", t + 1, len(times))
