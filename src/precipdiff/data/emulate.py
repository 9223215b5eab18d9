"""Satellite error emulator: a radar field at high resolution -> an IMERG-like coarse field.

Used to make training pairs where no co-located satellite product exists (MRMS truth +
emulated source). The steps, in order, each with its parameter in :class:`EmulatorParams`:

1. aggregation: mean pooling by ``factor`` (``precipdiff.grid.coarsen``, block centres; a
   satellite sees an area mean, not the max used for the reference);
2. displacement: the whole field shifted by a random sub-pixel offset (geolocation and
   morphing/advection errors of the merged microwave + IR product);
3. smoothing: Gaussian blur (the footprint of microwave sensors and IMERG's morphing);
4. intensity-dependent bias ``b(x) = pivot * (x / pivot) ** exponent``: with exponent < 1 it
   overestimates rates below ``pivot`` (drizzle) and underestimates heavy rain, as IMERG does
   against gauge-corrected radar (e.g. Tan et al. 2016, J. Hydrometeor. 17, 2477);
5. multiplicative lognormal noise with unit mean, spatially correlated;
6. missed light rain and 7. false alarms (IMERG's detection errors);
8. detection threshold and quantisation of the output.

Missing data: the output is NaN exactly where the mean-pooled field is NaN; internally the
missing cells take no part in the smoothing (normalised convolution).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
import xarray as xr

from precipdiff.errors import ConfigError
from precipdiff.grid import coarsen, spatial_dims

__all__ = ["EmulatorParams", "emulate_satellite"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmulatorParams:
    """Parameters of the satellite error model (rates in mm/h, lengths in coarse pixels).

    Attributes
    ----------
    max_missing_fraction : a coarse cell is missing if more than this fraction of its fine
        cells is missing (as in ``grid.coarsen``); dimensionless, in [0, 1].
    displacement_sigma : standard deviation of the random whole-field shift, drawn per time
        step and per axis, in coarse pixels (0.1 deg ~ 10 km each); 0 disables.
    smoothing_sigma : standard deviation of the Gaussian blur, in coarse pixels; 0 disables.
    bias_pivot : rate left unchanged by the bias curve, mm/h.
    bias_exponent : exponent ``b`` of ``pivot * (x / pivot) ** b``; ``b < 1`` inflates rates
        below the pivot (drizzle) and damps those above (heavy rain); 1 disables.
    noise_sigma : standard deviation of the log of the multiplicative noise factor
        ``exp(sigma * z - sigma**2 / 2)`` (unit mean); dimensionless; 0 disables.
    noise_corr_length : Gaussian correlation length of ``z``, coarse pixels; 0 = white.
    miss_threshold : rates below this (mm/h) may be missed (set to 0).
    miss_probability : probability that a pixel with ``0 < rate < miss_threshold`` is missed.
    false_alarm_probability : probability that a dry pixel gets spurious rain.
    false_alarm_rate : mean of the exponential extra rate of a false alarm, mm/h (added to
        ``detection_threshold`` so that false alarms are detected).
    detection_threshold : output rates below this are set to 0, mm/h.
    quantum : output rates are rounded to multiples of this, mm/h; 0 disables.
    """

    max_missing_fraction: float = 0.5
    displacement_sigma: float = 0.5
    smoothing_sigma: float = 0.7
    bias_pivot: float = 2.0
    bias_exponent: float = 0.8
    noise_sigma: float = 0.4
    noise_corr_length: float = 1.5
    miss_threshold: float = 0.5
    miss_probability: float = 0.3
    false_alarm_probability: float = 0.01
    false_alarm_rate: float = 0.2
    detection_threshold: float = 0.02
    quantum: float = 0.01

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"EmulatorParams.{f.name} must be a finite number, found {v!r}")
            if v < 0:
                raise ConfigError(f"EmulatorParams.{f.name} must be >= 0, found {v!r}")
        for name in ("max_missing_fraction", "miss_probability", "false_alarm_probability"):
            if getattr(self, name) > 1:
                raise ConfigError(f"EmulatorParams.{name} is a fraction in [0, 1], "
                                  f"found {getattr(self, name)!r}")
        for name in ("bias_pivot", "bias_exponent"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"EmulatorParams.{name} must be > 0, found {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _smooth(x: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the last two axes that ignores invalid cells (normalised)."""
    if sigma <= 0:
        return x
    s = (0,) * (x.ndim - 2) + (sigma, sigma)
    num = ndi.gaussian_filter(np.where(valid, x, 0.0), s, mode="nearest")
    den = ndi.gaussian_filter(valid.astype(np.float64), s, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6, num / den, 0.0)


def _correlated_normal(shape: tuple[int, ...], length: float, rng: np.random.Generator
                       ) -> np.ndarray:
    """Standard normal noise with Gaussian spatial correlation over the last two axes."""
    z = rng.standard_normal(shape)
    if length > 0:
        z = ndi.gaussian_filter(z, (0,) * (len(shape) - 2) + (length, length), mode="wrap")
        z /= max(float(z.std()), 1e-12)
    return z


def emulate_satellite(
    hr: xr.DataArray,
    *,
    factor: int = 10,
    params: EmulatorParams = EmulatorParams(),
    rng: np.random.Generator,
) -> xr.DataArray:
    """An IMERG-like coarse field (mm/h) from a fine radar field ``hr`` (time, lat, lon).

    The result lies on ``grid.coarsen(hr, factor)``'s grid (block centres) and is NaN where
    that mean-pooled field is NaN. All randomness comes from ``rng`` and the number of draws
    does not depend on the data, so a seed reproduces the output exactly.
    """
    if not isinstance(params, EmulatorParams):
        raise ConfigError(f"params must be EmulatorParams, found {type(params).__name__}")
    p = params
    lr = coarsen(hr, factor, method="mean", max_missing_fraction=p.max_missing_fraction)
    ydim, xdim = spatial_dims(lr)
    lr_t = lr.transpose(..., ydim, xdim)
    x = np.asarray(lr_t.values, dtype=np.float64)
    missing = np.isnan(x)
    valid = ~missing
    x = np.where(valid, np.maximum(x, 0.0), 0.0)
    ny, nx = x.shape[-2:]
    frames = x.reshape(-1, ny, nx)

    shifts = rng.normal(0.0, 1.0, size=(frames.shape[0], 2)) * p.displacement_sigma
    if p.displacement_sigma > 0:
        frames = np.stack([ndi.shift(f, s, order=1, mode="nearest")
                           for f, s in zip(frames, shifts, strict=True)])
    y = _smooth(frames.reshape(x.shape), valid, p.smoothing_sigma)
    wet = y > 0
    y = np.where(wet, p.bias_pivot * (np.where(wet, y, 1.0) / p.bias_pivot) ** p.bias_exponent,
                 0.0)
    z = _correlated_normal(x.shape, p.noise_corr_length, rng)
    y *= np.exp(p.noise_sigma * z - p.noise_sigma**2 / 2)

    u_miss = rng.random(x.shape)
    y[(y > 0) & (y < p.miss_threshold) & (u_miss < p.miss_probability)] = 0.0
    u_fa = rng.random(x.shape)
    extra = p.detection_threshold + rng.exponential(1.0, size=x.shape) * p.false_alarm_rate
    fa = (y < p.detection_threshold) & (u_fa < p.false_alarm_probability)
    y[fa] = extra[fa]
    y[y < p.detection_threshold] = 0.0
    if p.quantum > 0:
        y = np.round(y / p.quantum) * p.quantum
    y[missing] = np.nan

    out = lr_t.copy(data=y.astype(np.float32))
    out.attrs = {**hr.attrs, "units": "mm/h", "emulator": json.dumps(p.to_dict()),
                 "emulator_factor": int(factor)}
    log.debug("emulated %s -> %s, shifts %s", hr.shape, out.shape, shifts.tolist())
    return out.transpose(*lr.dims)
