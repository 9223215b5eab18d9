"""Where a record's rain moves: one translation per frame step, to carry noise with the rain.

A temporal Stage II's fine detail comes from its starting noise. Noise correlated in time at
fixed pixels (:func:`~precipdiff.pipeline.sequence.sequence_noise` with ``drift=None``) makes
the detail of a fast storm stand still while its rain moves on, so how persistent the members
are at a fixed pixel depends on the storm's speed, not only on the correlation. Carrying the
noise with the rain instead (the noise a frame inherits from an earlier one is moved by the
rain's displacement between them, as STEPS moves its perturbations: Bowler et al. 2006, QJRMS
132, 2127) leaves the correlation to describe how the detail *evolves*, which changes less from
event to event than how fast it passes.

The displacement is one translation for the whole domain per frame step:

    d_t = argmin_d  sum_x ( g_t(x) - g_{t-1}(x - d) )^2,   g = G_1 * log(1 + R)

(``R`` the coarse rate in mm/h, NaN as 0, ``G_1`` a Gaussian of one cell), found by Gauss-Newton
iterations of the global Lucas-Kanade problem (Lucas & Kanade 1981) with bilinear warping,
started from the peak of the phase correlation (Kuglin & Hines 1975) so that moves of several
cells are found too. One translation is what a window of the size the temporal model sees
needs; a domain whose storms move in different directions gets a compromise weighted by where
the field has structure (its gradients), right for none of them.
Written here rather than taken from pysteps' optical flow (an optional dependency) because a
single translation is twenty lines of numpy and the default ``predict`` must not need pysteps.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Gauss-Newton iterations of :func:`frame_shift` (it stops earlier when a step is < 1e-3 cell).
ITERATIONS = 20
#: Largest condition number of the 2x2 structure matrix: above it the pair has too little
#: structure (a dry or uniform field) to fix a translation, and the shift is 0.
MAX_CONDITION = 1e4


def _field(rate: np.ndarray) -> np.ndarray:
    """``G_1 * log(1 + R)`` of a coarse rate field (mm/h; NaN and negatives as 0)."""
    r = np.nan_to_num(np.asarray(rate, np.float64), nan=0.0)
    return ndimage.gaussian_filter(np.log1p(np.maximum(r, 0.0)), 1.0)


def phase_peak(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer translation ``(dy, dx)`` of ``b`` relative to ``a`` (``b(x) ~ a(x - d)``) at the
    peak of their phase correlation (Hann-windowed)."""
    win = np.hanning(a.shape[0])[:, None] * np.hanning(a.shape[1])[None]
    cross = np.fft.fft2(b * win) * np.conj(np.fft.fft2(a * win))
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
    peak = np.array(np.unravel_index(int(np.argmax(corr)), corr.shape), np.float64)
    size = np.array(a.shape, np.float64)
    return np.where(peak > size // 2, peak - size, peak)


def frame_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Translation ``(dy, dx)`` in cells that carries coarse rate field ``a`` (mm/h) onto ``b``
    (the module docstring's ``d_t``); ``(0, 0)`` when the pair has too little structure."""
    ga, gb = _field(a), _field(b)
    if not (ga.any() and gb.any()) or min(ga.shape) < 2:
        return np.zeros(2)
    d = phase_peak(ga, gb)
    for _ in range(ITERATIONS):
        warped = ndimage.shift(ga, d, order=1, mode="nearest")  # a(x - d)
        gy, gx = np.gradient(warped)
        err = gb - warped
        hess = np.array([[np.sum(gy * gy), np.sum(gy * gx)], [np.sum(gy * gx), np.sum(gx * gx)]])
        if not np.isfinite(hess).all() or np.linalg.cond(hess) > MAX_CONDITION:
            return np.zeros(2)
        step = np.linalg.solve(hess, -np.array([np.sum(gy * err), np.sum(gx * err)]))
        d = d + step  # b(x) ~ a(x - d - step) ~ warped(x) - step . grad(warped)
        if np.abs(step).max() < 1e-3:
            break
    return d


def rain_drift(rates: np.ndarray, factor: int) -> np.ndarray:
    """Cumulative displacement ``(N, 2)`` (fine pixels, ``(dy, dx)``, 0 at the first frame) of
    the rain of a coarse record ``rates (N, Y, X)`` mm/h downscaled ``factor`` times: the sum
    of :func:`frame_shift` over the frame steps before each frame, times ``factor``."""
    rates = np.asarray(rates)
    steps = [frame_shift(rates[t - 1], rates[t]) for t in range(1, rates.shape[0])]
    drift = np.zeros((rates.shape[0], 2))
    if steps:
        drift[1:] = np.cumsum(steps, axis=0)
    return drift * float(factor)


def as_track(drift: np.ndarray) -> tuple[tuple[float, float], ...]:
    """``drift (N, 2)`` as the hashable track of
    :class:`~precipdiff.pipeline.sequence.SequenceOptions` (``noise_drift``)."""
    return tuple((float(dy), float(dx)) for dy, dx in np.asarray(drift))
