"""Checks on a coarse input before any inference work: refuse garbage, normalise what is safe.

Refused with :class:`~precipdiff.errors.InputFileError` (naming the file and variable):

* non-finite values other than NaN (``+inf``/``-inf``); NaN is the missing-data marker;
* negative values (readers turn their fill values into NaN before this point, so any value
  below zero left here is not a known missing sentinel);
* physically impossible intensities: a rate above :data:`MAX_RATE_MM_H` (500 mm/h), or an
  accumulation whose mean rate over its period exceeds it (e.g. > 500 mm in 1 h, > 1500 mm in
  3 h). 500 mm/h lies above the largest hourly point totals ever observed (305 mm in 42 min at
  Holt, Missouri, 1947; about 400 mm in 1 h in Henan, 1975 and 2021); radar and satellite rates
  beyond it are hail, clutter or decoding errors, not rain;
* repeated time stamps.

Normalised (and logged): time steps out of order are sorted, so the output's time axis is
monotonic; an accumulation (``units="mm"`` with an ``accumulation`` period) becomes the mean rate
over its period in mm/h, which is what the models are trained on (a 1-h amount in mm *is* its
mean rate in mm/h). The period is kept in the attribute ``accumulation_hours`` so that the output
can carry ``time_bnds`` and ``cell_methods: "time: mean"``.

Compatibility with the models (:func:`check_semantics`, :func:`check_spacing`; run by
``predict`` before any work, :meth:`precipdiff.pipeline.Pipeline.prepare_input`):

* **Input semantics.** A coarse value is an *areal mean* of the rain over its cell (satellites,
  reanalyses, gauge analyses, radar composites averaged onto a coarse grid: the default) or a
  *block maximum* (PrecipDiff's max pooling, arXiv:2501.07447). The weights record which one
  they were trained for (``semantics`` / ``pooling``, :mod:`precipdiff.release`); the first stage
  that runs must expect the declared semantics, and Stage II must expect what Stage I produces.
  A mismatch is refused unless explicitly allowed.
* **Grid spacing.** The models were trained at one coarse spacing: the release's
  ``coarse_spacing`` note (``{"y", "x", "units"}``) where it carries one, else ``factor`` times
  the fine grid of the training data, :data:`FINE_SPACING` (0.01 deg MRMS for lat/lon models,
  1 km for projected ones). An input whose spacing differs from it by more than
  :data:`SPACING_TOLERANCE` (relative, either axis) is refused: a 0.01 deg radar field would
  otherwise be "downscaled" to 0.001 deg, a 0.25 deg reanalysis to 0.025 deg. A fine field can be
  pooled first (:func:`coarsen_input`, ``--coarsen N``). Degrees and metres are compared through
  the north-south spacing (1 deg = 111.195 km).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr

from precipdiff.data.pairing import accumulation_hours
from precipdiff.errors import InputFileError
from precipdiff.grid import Grid, coarsen, spatial_dims, xy_units

log = logging.getLogger(__name__)

#: Largest credible precipitation rate (mm/h), or mean rate over an accumulation period.
MAX_RATE_MM_H = 500.0
_RATE_UNITS = ("mm/h", "mm h-1")
#: What a coarse input value can mean (``--input-semantics``).
AGGREGATIONS = ("areal_mean", "block_maximum")
#: Pooling that makes each aggregation (``--coarsen``).
POOLING_OF = {"areal_mean": "mean", "block_maximum": "max"}
#: Fine grid of the training data when the weights do not record their coarse spacing.
FINE_SPACING = {"degrees": 0.01, "m": 1000.0}
#: Largest accepted relative difference between the input's and the models' coarse spacing.
SPACING_TOLERANCE = 0.25
METRES_PER_DEGREE = 111_195.0


def _where(src: xr.DataArray) -> tuple[str, str]:
    path = str(src.attrs.get("source_file", "input"))
    variable = str(src.attrs.get("variable") or src.name or "precip")
    return path, variable


def _as_rate(src: xr.DataArray) -> xr.DataArray:
    """``src`` in mm/h: rates kept, accumulations divided by their period (hours)."""
    path, variable = _where(src)
    units = str(src.attrs.get("units", "mm/h"))
    if units in _RATE_UNITS:
        return src
    if units != "mm":
        raise InputFileError(
            path, f"units {units!r}; expected a rate in mm/h or an amount in mm", variable=variable
        )
    period = src.attrs.get("accumulation")
    if period is None:
        raise InputFileError(
            path, "units 'mm' without an 'accumulation' period; expected mm/h, or mm with a "
            "period such as '1h' (the models need a rate: the mean mm/h over the period)",
            variable=variable,
        )
    hours = accumulation_hours(str(period), path)
    rate = (src / np.float32(hours)).astype(np.float32)
    rate.attrs = {**src.attrs, "units": "mm/h", "accumulation_hours": hours}
    if hours != 1.0:
        log.info("%s: %s accumulation converted to its mean rate (mm/h)", path, period)
    return rate


def _check_values(values: np.ndarray, path: str, variable: str, *, hours: float | None) -> None:
    bad = np.isinf(values)
    if bad.any():
        raise InputFileError(
            path,
            f"{int(bad.sum())} infinite values; expected finite precipitation (NaN = missing)",
            variable=variable,
        )
    finite = np.isfinite(values)
    if not finite.any():
        return
    vmin = float(values[finite].min())
    if vmin < 0:
        n = int(np.count_nonzero(values < 0))
        raise InputFileError(
            path,
            f"{n} negative values (min {vmin:g}) that are not a missing-data marker; expected "
            "precipitation >= 0 with NaN for missing",
            variable=variable,
        )
    vmax = float(values[finite].max())
    if vmax > MAX_RATE_MM_H:
        n = int(np.count_nonzero(values > MAX_RATE_MM_H))
        what = (
            f"mean rate over a {hours:g}-h accumulation" if hours is not None else "rate"
        )
        raise InputFileError(
            path,
            f"{n} values with a {what} above {MAX_RATE_MM_H:g} mm/h (max {vmax:g} mm/h); "
            "physically impossible precipitation (wrong units or corrupt data?)",
            variable=variable,
        )


def _check_times(src: xr.DataArray, path: str, variable: str) -> xr.DataArray:
    if "time" not in src.dims:
        raise InputFileError(path, f"dimensions {src.dims}; expected a time dimension",
                             variable=variable)
    times = src["time"].values
    uniq, counts = np.unique(times, return_counts=True)
    if (counts > 1).any():
        dups = [str(t) for t in uniq[counts > 1][:3]]
        raise InputFileError(
            path, f"repeated time(s) {dups}; expected each time step once", variable=variable
        )
    if times.size > 1 and not (np.diff(times.astype("datetime64[ns]").astype(np.int64)) > 0).all():
        log.warning("%s: time steps out of order; sorted", path)
        src = src.sortby("time")
    return src


def check_input(src: xr.DataArray) -> xr.DataArray:
    """Validate a coarse input (see the module docstring) and return it in mm/h, time-sorted.

    Raises :class:`InputFileError` naming ``src.attrs["source_file"]`` and the variable.
    """
    path, variable = _where(src)
    spatial_dims(src)
    src = _as_rate(src)
    src = _check_times(src, path, variable)
    hours = src.attrs.get("accumulation_hours")
    _check_values(np.asarray(src.values), path, variable, hours=hours)
    return src


# ----------------------------------------------------------------------------- compatibility
def coarsen_input(src: xr.DataArray, factor: int, aggregation: str = "areal_mean"
                  ) -> xr.DataArray:
    """Pool a fine input by ``factor`` (mean pooling for ``areal_mean``, max for
    ``block_maximum``; :func:`precipdiff.grid.coarsen`), after cropping trailing rows/columns
    so that both sizes are multiples of ``factor`` (logged). ``factor`` 1 returns ``src``."""
    if factor == 1:
        return src
    path, variable = _where(src)
    ydim, xdim = spatial_dims(src)
    ny, nx = src.sizes[ydim], src.sizes[xdim]
    if ny < factor or nx < factor:
        raise InputFileError(path, f"grid of {ny} x {nx} cells is smaller than --coarsen "
                             f"{factor}; expected at least {factor} cells per axis",
                             variable=variable)
    keep = {ydim: slice(0, ny - ny % factor), xdim: slice(0, nx - nx % factor)}
    if ny % factor or nx % factor:
        log.warning("%s: %d row(s) and %d column(s) at the end cropped for --coarsen %d",
                    path, ny % factor, nx % factor, factor)
    out = coarsen(src.isel(keep), factor, method=POOLING_OF[aggregation])
    out.attrs = {**src.attrs, "coarsened_by": int(factor)}
    return out


def input_spacing(src: xr.DataArray) -> tuple[float, float, str]:
    """``(dy, dx, units)`` of the input grid: degrees for lat/lon, metres for projected."""
    grid = Grid.from_dataarray(src)
    if spatial_dims(src) == ("y", "x"):
        scale = {"km": 1000.0}.get(xy_units(src), 1.0)
        return grid.dlat * scale, grid.dlon * scale, "m"
    return grid.dlat, grid.dlon, "degrees"


def model_spacing(metadata: dict[str, str], units: str) -> tuple[float, float, str, str]:
    """``(dy, dx, units, where from)``: the coarse spacing a stage was trained at.

    From the weights' ``coarse_spacing`` note if present, else ``factor`` x :data:`FINE_SPACING`
    in ``units`` (the input's kind of grid).
    """
    note = metadata.get("coarse_spacing")
    if note:
        try:
            d = json.loads(note)
            dy, dx, u = float(d["y"]), float(d["x"]), str(d["units"])
            if u in FINE_SPACING and dy > 0 and dx > 0:
                return dy, dx, u, "recorded in the weights"
        except (TypeError, ValueError, KeyError):
            pass
        log.warning("weights note coarse_spacing %r is unreadable; using factor x fine grid",
                    note[:80])
    factor = int(metadata.get("factor", "1"))
    step = factor * FINE_SPACING[units]
    fine = "0.01 deg" if units == "degrees" else "1 km"
    return step, step, units, f"factor {factor} x the {fine} training grid"


def _fmt(value: float, units: str) -> str:
    return f"{value:g} deg" if units == "degrees" else f"{value / 1000:g} km"


def check_spacing(src: xr.DataArray, metadata: dict[str, str], *, allow: bool = False) -> None:
    """Refuse an input whose grid spacing is not the models' coarse spacing (module docstring).

    With ``allow`` a mismatch is logged instead of raised (the output's provenance records the
    override).
    """
    path, variable = _where(src)
    dy, dx, units = input_spacing(src)
    my, mx, munits, origin = model_spacing(metadata, units)
    if munits == units:
        ratios = (dy / my, dx / mx)
    else:  # degrees against metres: compare the north-south spacing
        to_m = {"degrees": METRES_PER_DEGREE, "m": 1.0}
        ratios = (dy * to_m[units] / (my * to_m[munits]),)
    if all(abs(r - 1.0) <= SPACING_TOLERANCE for r in ratios):
        return
    ratio = ratios[0]
    hint = (f"pool it first with --coarsen {round(1 / ratio)}" if 1 / ratio >= 1.5
            else "regrid it to the models' spacing")
    message = (f"grid spacing {_fmt(dy, units)} x {_fmt(dx, units)}, the models expect "
               f"{_fmt(my, munits)} x {_fmt(mx, munits)} ({origin}) "
               f"(within {SPACING_TOLERANCE:.0%}); {hint}, or "
               "override with --allow-spacing-mismatch")
    if not allow:
        raise InputFileError(path, message, variable=variable)
    log.warning("%s: %s (overridden)", path, message)


def check_semantics(src: xr.DataArray, declared: str, stages: Iterable[tuple[str, Any]], *,
                    allow: bool = False) -> None:
    """Refuse a declared input semantics the models were not trained for (module docstring).

    ``stages`` are ``(name, semantics)`` pairs in the order they run (``semantics`` an
    :class:`~precipdiff.release.InputSemantics`); each stage must expect what the one before
    produces (the declared input for the first). With ``allow`` a mismatch is logged instead of
    raised (the output's provenance records the override).
    """
    path, variable = _where(src)
    if declared not in AGGREGATIONS:
        raise InputFileError(path, f"--input-semantics {declared!r}; expected one of "
                             f"{', '.join(AGGREGATIONS)}", variable=variable)
    have, what = declared, f"the input is declared {declared}"
    for name, semantics in stages:
        if semantics.aggregation != have:
            message = (f"{what} but the {name} model was trained for "
                       f"{semantics.aggregation} inputs; declare the input with "
                       "--input-semantics or override with --allow-semantics-mismatch")
            if not allow:
                raise InputFileError(path, message, variable=variable)
            log.warning("%s: %s (overridden)", path, message)
            return
        have, what = semantics.aggregation, f"the {name} model produces {have}"
