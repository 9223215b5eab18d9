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
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from precipdiff.data.pairing import accumulation_hours
from precipdiff.errors import InputFileError
from precipdiff.grid import spatial_dims

log = logging.getLogger(__name__)

#: Largest credible precipitation rate (mm/h), or mean rate over an accumulation period.
MAX_RATE_MM_H = 500.0
_RATE_UNITS = ("mm/h", "mm h-1")


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
