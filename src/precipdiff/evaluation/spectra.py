"""Radially averaged power spectral density (RAPSD), log-spectral distance, spectral slope.

Normalisation and frequencies follow ``pysteps.utils.spectral.rapsd`` (Ruzanski & Chandrasekar
2011): ``P(k) = |FFT2(x)|**2 / (ny * nx)`` with the zero frequency centred, averaged over the
annuli ``round(sqrt(kx**2 + ky**2)) == r`` for ``r = 0 .. L//2 - 1`` (``L = max(ny, nx)``
even) or ``0 .. L//2`` (odd); the frequency of annulus ``r`` is ``r / (L d)`` cycles per unit
of the grid spacing ``d``.

References
----------
Ruzanski, E., Chandrasekar, V. (2011): Scale filtering for improved nowcasting performance in a
high-resolution X-band radar network. IEEE TGRS 49, 2296-2307.
Harris, D., Foufoula-Georgiou, E., Droegemeier, K. K., Levit, J. J. (2001): Multiscale
statistical properties of a high-resolution precipitation forecast. J. Hydrometeor. 2, 406-418.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

__all__ = ["log_spectral_distance", "psd_of_field", "rapsd", "spectral_slope"]

log = logging.getLogger(__name__)


def _radius_index(ny: int, nx: int) -> tuple[np.ndarray, int]:
    """Rounded radius of every centred wavenumber (pysteps' centred coordinates)."""
    yc = np.arange(-(ny // 2), ny - ny // 2)[:, None]
    xc = np.arange(-(nx // 2), nx - nx // 2)[None, :]
    r = np.sqrt(xc * xc + yc * yc).round().astype(np.int64)
    size = max(ny, nx)
    n_bins = size // 2 + 1 if size % 2 == 1 else size // 2
    return r, n_bins


def psd_of_field(fields: np.ndarray) -> np.ndarray:
    """RAPSD of each 2-D field in ``(..., ny, nx)``; returns ``(..., n_bins)`` (no NaN allowed)."""
    x = np.asarray(fields, dtype=np.float64)
    ny, nx = x.shape[-2:]
    spec = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    power = np.abs(spec) ** 2 / (ny * nx)
    r, n_bins = _radius_index(ny, nx)
    flat_r = r.ravel()
    keep = flat_r < n_bins
    counts = np.bincount(flat_r[keep], minlength=n_bins)
    lead = power.shape[:-2]
    p2 = power.reshape(-1, ny * nx)[:, keep]
    out = np.stack([np.bincount(flat_r[keep], weights=row, minlength=n_bins) for row in p2])
    return (out / counts).reshape(*lead, n_bins)


def rapsd(field: xr.DataArray | np.ndarray, *, d: float = 1.0, nan_fill: float | None = 0.0,
          spatial_dims: tuple[str, str] = ("lat", "lon"), normalize: bool = False) -> xr.DataArray:
    """Radially averaged PSD, averaged over all leading dims (time, member), dim ``freq``.

    ``field``: a 2-D array, or a DataArray with ``spatial_dims`` (other dims are averaged:
    the mean PSD of the fields, not the PSD of the mean field). Missing pixels are set to
    ``nan_fill`` (0 = no rain) before the FFT; ``nan_fill=None`` raises on NaN. ``d`` is the
    grid spacing (the frequency unit is cycles per ``d``). ``normalize`` makes it sum to one.
    For a single 2-D field equals ``pysteps.utils.spectral.rapsd(field, fft_method=np.fft,
    return_freq=True, d=d)``.
    """
    if isinstance(field, xr.DataArray):
        arr = field.transpose(..., *spatial_dims).values
    else:
        arr = np.asarray(field)
    arr = np.asarray(arr, dtype=np.float64)
    if np.isnan(arr).any():
        if nan_fill is None:
            raise ValueError("rapsd: the field has NaN and nan_fill=None")
        log.debug("rapsd: filling %d NaN with %s", int(np.isnan(arr).sum()), nan_fill)
        arr = np.where(np.isnan(arr), nan_fill, arr)
    psd = psd_of_field(arr)
    mean = psd.reshape(-1, psd.shape[-1]).mean(0)
    if normalize:
        mean = mean / mean.sum()
    size = max(arr.shape[-2:])
    freq = np.fft.fftfreq(size, d=d)[: mean.size]
    return xr.DataArray(mean, dims=["freq"], coords={"freq": freq}, name="rapsd",
                        attrs={"long_name": "radially averaged power spectral density"})


def log_spectral_distance(psd_a: xr.DataArray | np.ndarray,
                          psd_b: xr.DataArray | np.ndarray) -> float:
    """Log-spectral distance in dB: ``sqrt(mean_k (10 log10(P_a(k) / P_b(k)))**2)``.

    The mean runs over the non-zero frequencies (``k >= 1``; the zero frequency is the
    squared field mean, a bias rather than a structure) where both spectra are positive.
    """
    a = np.asarray(psd_a, dtype=np.float64)[1:]
    b = np.asarray(psd_b, dtype=np.float64)[1:]
    ok = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(np.mean((10.0 * np.log10(a[ok] / b[ok])) ** 2)))


def spectral_slope(psd: xr.DataArray, *, fmin: float | None = None,
                   fmax: float | None = None) -> float:
    """Least-squares slope ``beta`` of ``log10 P = beta log10 f + c`` over ``fmin <= f <= fmax``.

    ``psd`` is the output of :func:`rapsd` (needs the ``freq`` coordinate); the zero
    frequency is always excluded. Rain fields typically have ``beta`` near -2 to -3
    (Harris et al. 2001); a smoother field has a steeper (more negative) slope.
    """
    f = np.asarray(psd["freq"], dtype=np.float64)
    p = np.asarray(psd, dtype=np.float64)
    ok = (f > 0) & (p > 0) & np.isfinite(p)
    if fmin is not None:
        ok &= f >= fmin
    if fmax is not None:
        ok &= f <= fmax
    if ok.sum() < 2:
        return float("nan")
    beta, _ = np.polyfit(np.log10(f[ok]), np.log10(p[ok]), 1)
    return float(beta)
