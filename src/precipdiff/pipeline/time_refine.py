"""Temporal refinement of a coarse record: e.g. 30-min IMERG to 5-min frames before downscaling.

Each input value ``R_i`` is read as the mean rate over ``[t_i, t_{i+1})`` (IMERG's half-hourly
convention, and an accumulation divided by its period). :func:`refine_time` splits every
interval into ``factor`` sub-steps at ``t_i + k dt_i / factor`` (``k = 0 .. factor-1``):

* ``method="motion"`` (default): motion-compensated interpolation between interval centres
  (an interval mean stands for the middle of its interval). Sub-step ``k`` lies ``c = (k +
  1/2) / factor - 1/2`` intervals from the centre of its interval, between ``R_i`` and the
  neighbour on that side; a motion field ``V`` between the two (pysteps' Proesmans optical
  flow, coarse pixels per interval) moves the earlier one forward and the later one backward
  to that time before they are blended linearly. At the ends of the record ``R_i`` is moved
  along the nearest motion alone.
* ``method="linear"``: the same blend without motion (fades rather than moves; the ends hold).

``conserve=True`` rescales the sub-steps of every interval and cell so that their mean is
``R_i`` exactly (the interval's accumulation is kept): ``(s_k + e) R_i / (mean_k s_k + e)``,
with ``e`` = :data:`CONSERVE_FLOOR` so that a cell the motion left dry receives ``R_i`` spread
evenly rather than a spike. A dry interval stays dry.

Reference for motion-compensated interpolation of radar rain: e.g. the pysteps optical-flow
methods (Pulkkinen et al. 2019, GMD 12, 4185) and Proesmans et al. (1994, ECCV).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import xarray as xr

from precipdiff.errors import ConfigError, PrecipdiffError

#: Rate (mm/h) added to the sub-steps' weights by ``conserve``: bounds the rescaling of a cell
#: whose interpolated sub-steps are nearly dry (see the module docstring).
CONSERVE_FLOOR = 0.1
METHODS = ("motion", "linear")
MIN_MOTION_SIDE = 8
REFINE_MEANING = ("each input value is the mean rate over [t, next t); every interval is split "
                  "into time_factor sub-steps by {method} interpolation{conserve}")


def refinement_meaning(method: str, conserve: bool) -> str:
    """The ``time_refinement`` attribute of a refined record (and of its outputs)."""
    return REFINE_MEANING.format(
        method=method, conserve=", rescaled to keep each interval's mean" if conserve else "")


def _motion(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Motion field ``(2, y, x)`` (x then y, coarse pixels per interval) from ``a`` to ``b``.

    Proesmans' pyramid has at most ``log2`` of the shorter side levels (pysteps' C code
    crashes on a pyramid deeper than the field); fields under :data:`MIN_MOTION_SIDE` cells a
    side are padded with zeros first."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints on import
            from pysteps.motion import get_method
    except ImportError as exc:
        raise ConfigError("--time-interp motion needs pysteps (pip install 'precipdiff"
                          "[baselines]'); or use --time-interp linear") from exc
    pair = np.nan_to_num(np.stack([a, b]).astype(np.float64), nan=0.0)
    if not (pair > 0).any(axis=(1, 2)).all():  # a dry frame has no motion to find
        return np.zeros((2, *a.shape))
    ny, nx = a.shape
    py, px = max(MIN_MOTION_SIDE - ny, 0), max(MIN_MOTION_SIDE - nx, 0)
    pair = np.pad(pair, ((0, 0), (0, py), (0, px)))
    levels = int(min(6, max(1, np.floor(np.log2(min(pair.shape[1:]))))))
    v = get_method("proesmans")(pair, num_levels=levels, verbose=False)
    return np.asarray(v, np.float64)[:, :ny, :nx]


def _advect(field: np.ndarray, motion: np.ndarray, fraction: float) -> np.ndarray:
    """``field`` moved by ``fraction * motion`` (semi-Lagrangian: each cell takes the value
    ``fraction * V`` upstream of it, bilinear); NaN cells stay NaN where they land."""
    from scipy.ndimage import map_coordinates

    if fraction == 0 or not motion.any():
        return field
    yy, xx = np.mgrid[0:field.shape[0], 0:field.shape[1]].astype(np.float64)
    coords = np.stack([yy - fraction * motion[1], xx - fraction * motion[0]])
    valid = np.isfinite(field)
    out = map_coordinates(np.where(valid, field, 0.0), coords, order=1, mode="nearest")
    hit = map_coordinates(valid.astype(np.float64), coords, order=0, mode="nearest") > 0.5
    return np.where(hit, np.maximum(out, 0.0), np.nan)


def _sub_step(values: np.ndarray, motions: list[np.ndarray | None], i: int, c: float
              ) -> np.ndarray:
    """The field at ``c`` intervals from the centre of interval ``i`` (``-0.5 < c < 0.5``):
    blended between ``R_i`` and its neighbour on that side, each moved along the motion
    between them; at the ends of the record ``R_i`` alone, moved along the nearest motion."""
    n = values.shape[0]
    j = i - 1 if c < 0 else i + 1
    if c == 0:
        return values[i]
    if not 0 <= j < n:  # an end of the record (n >= 2): R_i moved along its one motion
        v = motions[i - 1] if c > 0 else motions[i]
        return values[i] if v is None else _advect(values[i], v, c)
    a, b, frac = (j, i, 1 + c) if c < 0 else (i, j, c)  # from R_a to R_b, frac of the way
    v = motions[a]
    if v is None:
        return (1 - frac) * values[a] + frac * values[b]
    return (1 - frac) * _advect(values[a], v, frac) + frac * _advect(values[b], v, frac - 1)


def conserve_interval(sub: np.ndarray, mean: np.ndarray, floor: float = CONSERVE_FLOOR
                      ) -> np.ndarray:
    """Rescale sub-steps ``(k, y, x)`` so that their mean over ``k`` is ``mean`` (mm/h)."""
    w = np.nan_to_num(sub, nan=0.0) + floor
    out = w * (mean / w.mean(axis=0))[None]
    return np.where(np.isfinite(mean)[None], out, np.nan)


def refine_time(src: xr.DataArray, factor: int, *, method: str = "motion",
                conserve: bool = True, name: str = "the input") -> xr.DataArray:
    """``src`` ``(time, y, x)`` mm/h with every interval split into ``factor`` sub-steps."""
    if method not in METHODS:
        raise ConfigError(f"--time-interp must be one of {', '.join(METHODS)}, got {method!r}")
    if factor == 1:
        return src
    times = np.asarray(src["time"].values, "datetime64[ns]")
    if times.size < 2:
        raise PrecipdiffError(f"{name}: --time-factor {factor} needs at least 2 time steps "
                              f"(the interval length comes from them), found {times.size}")
    steps = np.diff(times)
    if (steps <= np.timedelta64(0)).any():
        raise PrecipdiffError(f"{name}: --time-factor needs increasing times, found {times}")
    steps = np.append(steps, steps[-1])  # the last interval as long as the one before
    if (steps.astype(np.int64) % factor).any():
        raise PrecipdiffError(f"{name}: an interval of {steps.max()} does not split into "
                              f"{factor} whole-nanosecond sub-steps")
    values = np.asarray(src.transpose("time", ...).values, np.float64)
    motions = [_motion(values[i], values[i + 1]) if method == "motion" else None
               for i in range(times.size - 1)]
    frames, new_times = [], []
    for i in range(times.size):
        sub = np.stack([_sub_step(values, motions, i, (k + 0.5) / factor - 0.5)
                        for k in range(factor)])
        frames.append(conserve_interval(sub, values[i]) if conserve else sub)
        new_times.extend(times[i] + steps[i] // factor * k for k in range(factor))
    out = np.concatenate(frames).astype(np.float32)
    refined = src.transpose("time", ...).isel(time=np.repeat(np.arange(times.size), factor))
    refined = refined.copy(data=out).assign_coords(time=np.array(new_times))
    refined.attrs["time_factor"] = int(factor)
    refined.attrs["time_refinement"] = refinement_meaning(method, conserve)
    return refined
