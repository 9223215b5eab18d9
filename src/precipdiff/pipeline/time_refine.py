"""Temporal refinement of a coarse record: e.g. 30-min IMERG to 5-min frames before downscaling.

Each input value ``R_i`` is read as the mean rate over ``[t_i, t_{i+1})`` (IMERG's half-hourly
convention, and an accumulation divided by its period). :func:`refine_time` splits every
interval into ``factor`` sub-steps at ``t_i + k dt_i / factor`` (``k = 0 .. factor-1``):

* ``method="motion"`` (default): motion-compensated interpolation. A motion field ``V`` from
  ``R_i`` to ``R_{i+1}`` (pysteps' Proesmans optical flow, coarse pixels per interval) moves
  ``R_i`` forward by ``a V`` and ``R_{i+1}`` backward by ``(1-a) V``; the two are blended with
  weights ``1-a`` and ``a`` (``a = k / factor``), so that a moving storm moves instead of fading
  out in one place and in at another. The last interval has no ``R_{n}``: it is ``R_{n-1}``
  carried on by the previous interval's motion (persistence for a one-step record).
* ``method="linear"``: ``(1-a) R_i + a R_{i+1}`` (no dependency; fades rather than moves).

``conserve=True`` rescales the sub-steps of every interval and cell so that their mean is
``R_i`` exactly (the interval's accumulation is kept): ``s_k (R_i + e) / (mean_k s_k + e)``
scaled to mean ``R_i``, with ``e`` = :data:`CONSERVE_FLOOR` so that a cell the motion left dry
receives ``R_i`` spread evenly rather than a spike. A dry interval stays dry.

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


def _interval(r0: np.ndarray, r1: np.ndarray, factor: int, method: str,
              motion: np.ndarray | None) -> np.ndarray:
    """The ``factor`` sub-steps ``(factor, y, x)`` from ``r0`` toward ``r1``."""
    out = np.empty((factor, *r0.shape), np.float64)
    for k in range(factor):
        a = k / factor
        if method == "linear" or motion is None:
            out[k] = (1 - a) * r0 + a * r1
        else:
            out[k] = (1 - a) * _advect(r0, motion, a) + a * _advect(r1, motion, a - 1)
    return out


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
    frames, new_times, motion = [], [], None
    for i in range(times.size):
        r0 = values[i]
        if i + 1 < times.size:
            motion = _motion(r0, values[i + 1]) if method == "motion" else None
            r1 = values[i + 1]
        else:  # the last interval: carried on by the previous motion
            r1 = _advect(r0, motion, 1.0) if motion is not None else r0
        sub = _interval(r0, r1, factor, method, motion)
        frames.append(conserve_interval(sub, r0) if conserve else sub)
        new_times.extend(times[i] + steps[i] // factor * k for k in range(factor))
    out = np.concatenate(frames).astype(np.float32)
    refined = src.transpose("time", ...).isel(time=np.repeat(np.arange(times.size), factor))
    refined = refined.copy(data=out).assign_coords(time=np.array(new_times))
    refined.attrs["time_factor"] = int(factor)
    refined.attrs["time_refinement"] = REFINE_MEANING.format(
        method=method, conserve=", rescaled to keep each interval's mean" if conserve else "")
    return refined
