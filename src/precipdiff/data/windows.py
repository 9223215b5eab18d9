"""Windows of a paired store cut around the rain (for benchmarks and calibration)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class RainCrop(NamedTuple):
    """Coarse ``lr`` (time, size, size) and fine ``hr`` (time, size*f, size*f) reference of a
    window whose top-left coarse cell is ``(y0, x0)``."""

    lr: np.ndarray
    hr: np.ndarray
    y0: int
    x0: int
    size: int


def rain_window(ref_lr: np.ndarray, size: int, max_missing: float = 0.0) -> tuple[int, int]:
    """Top-left coarse cell of the ``size`` x ``size`` window with the most rain summed over
    the frames ``ref_lr`` (time, Y, X), among windows whose fraction of cells missing in some
    frame is at most ``max_missing`` (the first window if none qualifies)."""
    rain = np.nan_to_num(ref_lr, nan=0.0).sum(axis=0)
    nan = np.isnan(ref_lr).any(axis=0).astype(np.float64)

    def box(a: np.ndarray) -> np.ndarray:
        c = np.pad(a.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]

    total = np.where(box(nan) / size**2 > max_missing, -np.inf, box(rain))
    y, x = np.unravel_index(int(np.argmax(total)), total.shape)
    return int(y), int(x)


def crop_around_rain(store: Any, frames: np.ndarray, crop: int, *,
                     max_missing: float = 0.0) -> RainCrop:
    """The frames ``frames`` of a paired store (``ref_lr``, ``ref_hr``, ``factor``) cut to the
    window of at most ``crop`` fine pixels with the most coarse rain (:func:`rain_window`)."""
    f = store.factor
    lr = np.asarray(store["ref_lr"].oindex[frames], np.float32)
    size = min(crop // f, lr.shape[1], lr.shape[2])
    y0, x0 = rain_window(lr, size, max_missing)
    hr = np.asarray(store["ref_hr"].oindex[frames, y0 * f:(y0 + size) * f,
                                           x0 * f:(x0 + size) * f], np.float32)
    return RainCrop(lr[:, y0:y0 + size, x0:x0 + size], hr, y0, x0, size)
