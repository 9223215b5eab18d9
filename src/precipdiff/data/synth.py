"""A seeded synthetic rain world for the demo and for tests that must not need real data.

Recipe (in the spirit of STEPS / RainFARM stochastic rain models):

1. a Gaussian random field (GRF) with a power-law spectrum ``P(k) ~ k**spectral_slope``
   (radially averaged; observed radar rain has slopes near -3, Seed et al. 2013);
2. intermittency: the ``wet_fraction`` highest GRF values of each frame are wet;
3. intensities: a smooth power of the GRF's excess over the threshold, scaled to the wet
   median ``median_rate`` and starting at ``min_rate``, so heavy cells sit in the GRF's peaks
   and the tail (stretched-exponential) reaches tens of mm/h;
4. time: the GRF's Fourier noise evolves as an AR(1) process whose memory shrinks with scale
   (small cells decay first), and the field is advected by ``velocity`` with a spectral shift.

The field is generated on a domain 25 % larger than asked for and cropped, so the FFT's
periodicity does not show at the edges (rain advected far enough does wrap around).
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from precipdiff.errors import ConfigError

__all__ = ["synthetic_rain", "synthetic_scene", "power_law_filter"]

log = logging.getLogger(__name__)

_PAD = 0.25  # extra domain fraction generated on each axis and cropped away


def power_law_filter(ny: int, nx: int, spectral_slope: float) -> np.ndarray:
    """Amplitude filter ``|k|**(spectral_slope / 2)`` on the ``fft2`` grid (k in cycles/px).

    The mean (k = 0) is removed. Multiplying unit white noise by it gives a power spectrum
    ``~ |k|**spectral_slope``.
    """
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf
    return k ** (spectral_slope / 2.0)


def _standardise(g: np.ndarray) -> np.ndarray:
    s = g.std()
    return (g - g.mean()) / (s if s > 0 else 1.0)


def _to_rain(g: np.ndarray, wet_fraction: float, median_rate: float, tail_exponent: float,
             min_rate: float) -> np.ndarray:
    """Map a standardised GRF frame to rain (mm/h).

    Wet where ``g >= g_t`` (the ``1 - wet_fraction`` quantile); there
    ``R = min_rate + (median_rate - min_rate) * (e / median(e)) ** tail_exponent`` with the
    excess ``e = g - g_t``. Gaussian excesses are near-exponential, so rates get a stretched-
    exponential (Weibull-like, shape ``1/tail_exponent``) tail, and the map stays smooth, which
    keeps the GRF's spectral slope (an exact lognormal by rank would make single-pixel spikes).
    """
    g_t = np.quantile(g, 1.0 - wet_fraction)
    wet = g >= g_t
    excess = np.where(wet, g - g_t, 0.0)
    e_med = np.median(excess[wet]) if wet.any() else 1.0
    e_med = e_med if e_med > 0 else 1.0
    rate = min_rate + (median_rate - min_rate) * (excess / e_med) ** tail_exponent
    return np.where(wet, rate, 0.0)


def synthetic_rain(
    n_time: int,
    ny: int,
    nx: int,
    *,
    rng: np.random.Generator,
    spectral_slope: float = -3.0,
    wet_fraction: float = 0.10,
    median_rate: float = 1.0,
    tail_exponent: float = 2.5,
    min_rate: float = 0.1,
    velocity: tuple[float, float] = (1.0, 3.0),
    evolution_time: float = 60.0,
) -> np.ndarray:
    """Correlated frames of intermittent rain, ``(n_time, ny, nx)`` float32 in mm/h.

    Parameters
    ----------
    spectral_slope : slope of the GRF's radially averaged power spectrum (log-log), < 0.
    wet_fraction : fraction of pixels with rain >= ``min_rate`` in every frame, in (0, 1).
    median_rate : median rate of the wet pixels (mm/h).
    tail_exponent : heaviness of the intensity tail (see ``_to_rain``); the default gives
        99.9th percentiles of the wet pixels of about 20-60 mm/h on 256 x 256 frames.
    min_rate : smallest wet rate (mm/h); dry pixels are exactly 0.
    velocity : advection ``(v_y, v_x)`` in pixels per time step (+y = north, rows ascending).
    evolution_time : e-folding time (steps) of the GRF at the 64-pixel scale; a scale of
        ``L`` pixels keeps its pattern ``evolution_time * L / 64`` steps (infinite = frozen).
    """
    if n_time < 1 or ny < 2 or nx < 2:
        raise ConfigError(f"synthetic_rain needs n_time >= 1 and ny, nx >= 2, "
                          f"found {(n_time, ny, nx)}")
    if not spectral_slope < 0:
        raise ConfigError(f"spectral_slope must be < 0, found {spectral_slope}")
    if not 0 < wet_fraction < 1:
        raise ConfigError(f"wet_fraction must be in (0, 1), found {wet_fraction}")
    if not (tail_exponent > 0 and 0 <= min_rate < median_rate):
        raise ConfigError(f"need tail_exponent > 0 and 0 <= min_rate < median_rate; found "
                          f"{tail_exponent}, {min_rate}, {median_rate}")
    if not evolution_time > 0:
        raise ConfigError(f"evolution_time must be > 0 steps, found {evolution_time}")
    py, px = ny + int(np.ceil(_PAD * ny)), nx + int(np.ceil(_PAD * nx))
    filt = power_law_filter(py, px, spectral_slope)
    ky = np.fft.fftfreq(py)[:, None]
    kx = np.fft.fftfreq(px)[None, :]
    k = np.hypot(ky, kx)
    with np.errstate(divide="ignore"):
        tau = evolution_time * (1.0 / 64.0) / k  # steps; inf at k = 0
    phi = np.exp(-1.0 / tau)
    innov = np.sqrt(1.0 - phi**2)

    noise = np.fft.fft2(rng.standard_normal((py, px)))
    out = np.empty((n_time, ny, nx), dtype=np.float32)
    oy, ox = (py - ny) // 2, (px - nx) // 2
    for t in range(n_time):
        if t > 0:
            noise = phi * noise + innov * np.fft.fft2(rng.standard_normal((py, px)))
        shift = np.exp(-2j * np.pi * (ky * velocity[0] * t + kx * velocity[1] * t))
        g = np.fft.ifft2(noise * filt * shift).real[oy:oy + ny, ox:ox + nx]
        out[t] = _to_rain(_standardise(g), wet_fraction, median_rate, tail_exponent, min_rate)
    log.debug("synthetic_rain: %d frames of %dx%d, max %.1f mm/h", n_time, ny, nx, out.max())
    return out


def synthetic_scene(
    *,
    rng: np.random.Generator,
    n_time: int = 1,
    shape: tuple[int, int] = (256, 256),
    lat0: float = 47.0,
    lon0: float = -122.8,
    res: float = 0.01,
    start: str = "2019-06-10T00:00",
    step_minutes: float = 10.0,
    **rain_kw,
) -> xr.DataArray:
    """Synthetic rain as ``DataArray(time, lat, lon)`` in mm/h (default: Seattle region, 1 km).

    ``lat0``/``lon0`` are the centre of the south-west cell, ``res`` the spacing in degrees;
    the grid is ``precipdiff.grid.Grid(lat0, lon0, res, res, *shape)``. Frames are
    ``step_minutes`` apart from ``start`` (UTC). Extra keywords go to :func:`synthetic_rain`.
    """
    if len(shape) != 2:
        raise ConfigError(f"shape must be (nlat, nlon), found {shape!r}")
    if not res > 0:
        raise ConfigError(f"res must be > 0 degrees, found {res}")
    data = synthetic_rain(n_time, shape[0], shape[1], rng=rng, **rain_kw)
    step = np.timedelta64(int(round(step_minutes * 60)), "s")
    times = np.datetime64(start, "ns") + np.arange(n_time) * step
    return xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={
            "time": times,
            "lat": lat0 + res * np.arange(shape[0]),
            "lon": lon0 + res * np.arange(shape[1]),
        },
        name="precipitation",
        attrs={"units": "mm/h", "long_name": "synthetic precipitation rate",
               "source": "precipdiff.data.synth"},
    )
