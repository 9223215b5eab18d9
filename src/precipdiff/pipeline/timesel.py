"""``--time START/END``: the time steps of an input within an inclusive UTC interval.

``START`` and ``END`` are ISO 8601 date-times in UTC (``2019-06-10``, ``2019-06-10T00:10``,
``2019-06-10T00:10:30Z``; a ``T`` or a space between date and time; no other offset than ``Z``);
either may be left empty (``2019-06-10T00:10/`` or ``/2019-06-10T01:00``). Both ends are
inclusive, and an end written with less precision covers its whole period, as pandas and xarray
label slicing do: ``/2019-06-30`` keeps every step of 30 June, ``/2019-06-10T01:00`` every step
before 01:01.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import xarray as xr

from precipdiff.errors import ConfigError

#: An ISO 8601 date-time from the year down to fractional seconds, optionally ending in ``Z``.
_ISO = re.compile(r"^\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?)?)?)?Z?$")
#: What the ``time_selection`` output attribute means.
TIME_SELECTION_MEANING = "valid times kept: START/END in UTC, ISO 8601, both ends inclusive"


class EmptySelectionError(ConfigError):
    """No time step of an input lies in the ``--time`` interval."""


@dataclass(frozen=True)
class TimeRange:
    """An inclusive UTC interval of valid times; ``None`` ends are open.

    ``start`` is the first instant kept; ``stop`` the first instant after the end (the end plus
    one unit of the precision it was written with). ``text`` is the interval as given
    (``START/END``), recorded in outputs as ``time_selection``.
    """

    start: np.datetime64 | None
    stop: np.datetime64 | None
    text: str

    def mask(self, times: np.ndarray) -> np.ndarray:
        """Boolean mask of ``times`` (datetime64) inside the interval."""
        t = np.asarray(times, "datetime64[ns]")
        keep = np.ones(t.shape, bool)
        if self.start is not None:
            keep &= t >= self.start
        if self.stop is not None:
            keep &= t < self.stop
        return keep

    def select(self, da: xr.DataArray, source: object, *, noun: str = "the file") -> xr.DataArray:
        """The steps of ``da`` inside the interval; :class:`EmptySelectionError` naming
        ``source`` (a file name) and the times ``noun`` covers when none is."""
        times = np.asarray(da["time"].values, "datetime64[ns]")
        keep = np.flatnonzero(self.mask(times))
        if keep.size == 0:
            covers = f"{_iso(times.min())}..{_iso(times.max())}" if times.size else "no time"
            raise EmptySelectionError(
                f"--time {self.text}: no time step of {source} in {self.describe()}; "
                f"{noun} covers {covers}"
            )
        out = da.isel(time=keep)
        return out.assign_attrs(time_selection=self.text)

    def describe(self) -> str:
        """``[START, END]`` with open ends shown as ``..``."""
        start, _, end = self.text.partition("/")
        return f"[{start or '..'}, {end or '..'}]"


def parse_time_range(text: str) -> TimeRange:
    """``START/END`` (see the module docstring) -> :class:`TimeRange`; :class:`ConfigError`
    in one line for a malformed value, an offset other than ``Z`` or ``START`` after ``END``."""
    if text.count("/") != 1:
        raise ConfigError(f"--time must be START/END (ISO 8601 UTC, either may be empty), "
                          f"got {text!r}")
    first, last = (part.strip() for part in text.split("/"))
    if not first and not last:
        raise ConfigError(f"--time {text!r} selects nothing: give START, END or both")
    start = _instant(first, text) if first else None
    end = _instant(last, text) if last else None
    if start is not None and end is not None and start > end:
        raise ConfigError(f"--time {text!r}: START {first} is after END {last}")
    stop = None if end is None else _as_ns(end + np.timedelta64(1, np.datetime_data(end.dtype)[0]))
    return TimeRange(None if start is None else _as_ns(start), stop, f"{first}/{last}")


def as_time_range(value: TimeRange | str | slice | None) -> TimeRange | None:
    """A :class:`TimeRange` from ``START/END`` text, a ``slice(start, end)`` of ISO strings or
    datetimes (inclusive, as ``DataArray.sel``), or one already built; ``None`` stays ``None``."""
    if value is None or isinstance(value, TimeRange):
        return value
    if isinstance(value, slice):
        if value.step is not None:
            raise ConfigError(f"time: a slice of start and end, without a step, got {value!r}")
        ends = ["" if v is None else _iso_text(v) for v in (value.start, value.stop)]
        return parse_time_range("/".join(ends))
    if isinstance(value, str):
        return parse_time_range(value)
    raise ConfigError(f"time: expected 'START/END' or slice(START, END), got {value!r}")


def _instant(part: str, text: str) -> np.datetime64:
    if not _ISO.match(part):
        if re.search(r"[+-]\d{2}:?\d{2}$", part) and "T" in part:
            raise ConfigError(f"--time {text!r}: {part!r} has a UTC offset; give UTC times "
                              "(no offset, or Z)")
        raise ConfigError(f"--time {text!r}: {part!r} is not an ISO 8601 date-time "
                          "(e.g. 2019-06-10 or 2019-06-10T00:10)")
    try:
        return np.datetime64(part.rstrip("Z").replace(" ", "T"))
    except ValueError as exc:
        raise ConfigError(f"--time {text!r}: {part!r} is not a valid date-time ({exc})") from None


def _as_ns(value: np.datetime64) -> np.datetime64:
    return value.astype("datetime64[ns]")


def _iso(value: np.datetime64) -> str:
    """A valid time as ``YYYY-MM-DDTHH:MM`` (seconds only when not zero)."""
    text = str(np.datetime64(value, "s"))
    return text[:-3] if text.endswith(":00") else text


def _iso_text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(np.datetime64(value))  # datetime, pandas.Timestamp, numpy datetime64
    except (TypeError, ValueError):
        raise ConfigError(f"time: {value!r} is not a date-time") from None
