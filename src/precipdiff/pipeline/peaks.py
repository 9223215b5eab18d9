"""Physical bounds on 1-km peaks: how far a pixel may exceed its coarse cell's mean.

A Stage II trained on areal means, with mass consistency, can put the rain of a heavy,
uniform coarse cell into a few pixels: on MRMS's held-out event a 64 mm/h cell became a
485 mm/h peak where the radar's maximum in it was 137 mm/h. In radar data, heavy cells are
uniform: over the corpus's training frames the largest ratio of a 10 x 10 km block's maximum to
its mean is 100 (all rain in one pixel) for light blocks but 7.5 for blocks of at least 20 mm/h
and 3.0 for 50 mm/h.

A :class:`PeakEnvelope` records that bound, ``R(c)`` = the largest max/mean ratio of the
training blocks whose mean is at least the highest edge at or below ``c`` (a non-increasing
step function: every training block lies within it), and :func:`cap_peaks` holds every fine
block of mean ``c`` below ``c R(c)``: the excess is spread over the block's other wet pixels
in proportion to their rain (water filling), so the block keeps its mean exactly and no dry
pixel gets wet. Only if the block's wet pixels cannot hold its rain below the bound do they
end up equal.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

#: Block-mean edges (mm/h) of a fitted envelope.
EDGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)


@dataclass(frozen=True)
class PeakEnvelope:
    """``ratio[i]``: the largest block max / block mean over training blocks with mean >=
    ``edges[i]`` mm/h (non-increasing; edges without such blocks take the last ratio)."""

    edges: tuple[float, ...]
    ratio: tuple[float, ...]

    def __post_init__(self) -> None:
        e, r = np.asarray(self.edges, float), np.asarray(self.ratio, float)
        if e.ndim != 1 or e.size < 1 or e.size != r.size or np.any(np.diff(e) <= 0) \
                or np.any(e <= 0) or not np.all(np.isfinite(r)) or np.any(r < 1) \
                or np.any(np.diff(r) > 0):
            raise ValueError(f"a peak envelope needs increasing positive edges and "
                             f"non-increasing ratios >= 1 of the same length, got edges "
                             f"{self.edges!r}, ratio {self.ratio!r}")

    @classmethod
    def fit(cls, means: np.ndarray, maxima: np.ndarray, edges: tuple[float, ...] = EDGES,
            ) -> PeakEnvelope:
        """The envelope of blocks with these means and maxima (mm/h); at least one block must
        reach the first edge."""
        m, x = np.asarray(means, float).ravel(), np.asarray(maxima, float).ravel()
        ok = np.isfinite(m) & np.isfinite(x) & (m >= edges[0])
        if not ok.any():
            raise ValueError(f"no block with a mean of at least {edges[0]} mm/h to fit a "
                             "peak envelope on")
        m, r = m[ok], x[ok] / m[ok]
        ratio, last = [], float(r.max())
        for e in edges:
            sel = m >= e
            last = float(r[sel].max()) if sel.any() else last
            ratio.append(last)
        return cls(tuple(float(e) for e in edges), tuple(ratio))

    @classmethod
    def from_note(cls, note: str) -> PeakEnvelope:
        """The envelope of a weights' ``peak_envelope`` note (parsed once per note)."""
        return _parse_note(note)

    def to_note(self) -> str:
        return json.dumps({"edges_mm_h": list(self.edges), "max_over_mean": list(self.ratio)})

    def bound(self, mean: np.ndarray) -> np.ndarray:
        """The largest allowed pixel value (mm/h) in blocks of ``mean`` mm/h: ``mean R(mean)``
        with ``R`` the ratio of the highest edge at or below ``mean`` (the first below the
        edges): every training block lies within it."""
        c = np.asarray(mean, float)
        i = np.clip(np.searchsorted(self.edges, c, side="right") - 1, 0, len(self.edges) - 1)
        return c * np.asarray(self.ratio)[i]


@functools.lru_cache(maxsize=16)
def _parse_note(note: str) -> PeakEnvelope:
    d = json.loads(note)
    return PeakEnvelope(tuple(d["edges_mm_h"]), tuple(d["max_over_mean"]))


def cap_peaks(hr: np.ndarray, factor: int, envelope: PeakEnvelope,
              iterations: int = 20) -> np.ndarray:
    """Every ``factor``² block of ``hr`` (..., H, W) mm/h held below ``envelope.bound`` of its
    mean by water filling (module docstring); blocks with a missing value are left as they
    are. Returns a new array; block means are kept to float rounding."""
    *lead, h, w = hr.shape
    f = factor
    if h % f or w % f:
        raise ValueError(f"cap_peaks: the field ({h} x {w}) is not a whole number of "
                         f"{f} x {f} blocks")
    blocks = (hr.reshape(*lead, h // f, f, w // f, f).swapaxes(-3, -2)
              .reshape(-1, f * f).astype(np.float64))
    total = blocks.sum(axis=1)
    ok = np.isfinite(total) & (total > 0)
    x = blocks[ok]
    cap = envelope.bound(total[ok] / (f * f))[:, None]
    wet = x > 0
    for _ in range(iterations):
        over = x > cap * (1 + 1e-9)
        if not over.any():
            break
        excess = np.where(over, x - cap, 0.0).sum(axis=1, keepdims=True)
        x = np.where(over, cap, x)
        room = wet & (x < cap)
        weight = np.where(room, x, 0.0)
        wsum = weight.sum(axis=1, keepdims=True)
        share = np.divide(weight, wsum, out=np.zeros_like(weight), where=wsum > 0)
        x = x + excess * share
        full = (wsum[:, 0] == 0) & (excess[:, 0] > 0)  # no wet pixel below the bound is left
        if full.any():  # the wet pixels cannot hold the rain below it: they share it equally
            n_wet = wet[full].sum(axis=1, keepdims=True)
            x[full] = np.where(wet[full], (x[full].sum(axis=1, keepdims=True)
                                           + excess[full]) / n_wet, 0.0)
            cap[full] = np.inf
    blocks[ok] = x
    out = (blocks.reshape(*lead, h // f, w // f, f, f).swapaxes(-3, -2)
           .reshape(*lead, h, w))
    return out.astype(hr.dtype, copy=False)
