"""Dry stays dry: the wet/dry rule applied to every pipeline output.

A diffusion sample is never exactly zero: the residual noise leaves drizzle (0.01–0.3 mm/h)
over dry land, and an all-zero input came out with rain on most pixels. The rule:

1. **Stage I** may move and rescale rain, not create it far from any: a corrected coarse cell is
   0 when its *source* cell and the source cells within ``halo`` coarse cells of it are all dry.
2. **Stage II** likewise: a fine pixel is 0 when its *corrected* coarse cell and the corrected
   cells within ``halo`` of it are all dry. Under max pooling a dry coarse cell holds only dry
   fine pixels; under mean pooling it may hold a shower whose block mean is below ``trace``
   (at most ``trace`` mm/h of areal mean, lost with this rule). The halo allows for coarse cells
   that are slightly misplaced (satellite geolocation, parallax), so rain may spill one cell
   across a rain edge.
3. **No trace values**: anything below ``trace`` (mm/h) is 0, at both grids. The default
   :data:`DEFAULT_TRACE_MM_H` = 0.1 mm/h is the usual wet/dry threshold of radar and gauge
   verification (and the smallest non-zero step of most radar products); an areal-mean input
   that goes to a mean-pooled Stage II as it is (no Stage I) uses
   :data:`AREAL_MEAN_TRACE_MM_H` = 0.02 mm/h at the coarse grid. Weights may carry a
   calibrated value in their metadata (``trace_threshold``, mm/h), which is then the default.

"Dry" means below ``trace``; missing (NaN) cells count as dry neighbours. The threshold used is
recorded in the output's attributes. With ``--mass-consistent`` the block rescaling runs after
this rule and wins where they disagree (values it scales below ``trace`` are kept).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from precipdiff.pipeline.tiling import Window

DEFAULT_TRACE_MM_H = 0.1
#: The trace threshold of an areal-mean input downscaled as it is (no Stage I): a 10-km mean of
#: 0.05 mm/h is real rain, kept by the mass-consistent rescaling on a few pixels (BENCHMARKS.md,
#: "Light cells"); Stage I samples keep 0.1, their drizzle being noise.
AREAL_MEAN_TRACE_MM_H = 0.02
DEFAULT_HALO = 1


def dry_cells(lr: np.ndarray, *, trace: float, halo: int = DEFAULT_HALO) -> np.ndarray:
    """Bool mask of coarse cells (…, Y, X) whose ``(2 halo + 1)²`` neighbourhood is all dry."""
    wet = np.nan_to_num(lr, nan=0.0) >= trace
    if halo > 0:
        size = (1,) * (lr.ndim - 2) + (2 * halo + 1, 2 * halo + 1)
        wet = ndi.maximum_filter(wet, size=size, mode="constant", cval=False)
    return ~wet


def dry_block(dry_lr: np.ndarray, win, factor: int) -> bool:
    """Whether every coarse cell under the fine window ``win`` (``y0, y1, x0, x1`` in fine
    pixels) is dry in every member of ``dry_lr`` (…, Y, X) (:func:`dry_cells`): the rule then
    zeroes the whole window, so Stage II need not sample it (the output is the same)."""
    f = factor
    return bool(dry_lr[..., win.y0 // f : -(-win.y1 // f), win.x0 // f : -(-win.x1 // f)].all())


def wet_box(dry_lr: np.ndarray, win: Window, factor: int, margin: int) -> Window:
    """The part of window ``win`` Stage II must sample: the bounding box of its coarse cells
    that are not dry in some member of ``dry_lr`` (…, Y, X), grown by ``margin`` fine pixels of
    context (rounded up to whole coarse cells) and clipped to the window, with the window's
    blend weights over it. Every fine pixel of ``win`` outside the box lies in a dry cell, which
    the rule zeroes whatever is sampled there. A window with no wet cell (:func:`dry_block`)
    is returned whole."""
    wet = _wet_cells(dry_lr, win, factor)
    rows, cols = np.flatnonzero(wet.any(axis=1)), np.flatnonzero(wet.any(axis=0))
    if rows.size == 0:
        return win
    grow = -(-margin // factor)
    return _cells_window(win, factor, int(rows[0]) - grow, int(rows[-1]) + 1 + grow,
                         int(cols[0]) - grow, int(cols[-1]) + 1 + grow)


def wet_boxes(dry_lr: np.ndarray, win: Window, factor: int, margin: int) -> list[Window]:
    """Like :func:`wet_box`, but one box per group of wet cells: the boxes of the connected
    groups (8-neighbours) of cells not dry in some member, each grown by ``margin`` fine pixels
    (whole cells) and clipped to ``win``; two boxes are merged into their bounding box while
    they overlap or it is no larger than the two together. The boxes are disjoint and hold
    every wet cell, so every fine pixel outside them lies in a dry cell. Rain in two corners
    of a window is then sampled over two small boxes, not the whole window. A window with no
    wet cell is returned whole, as the only box."""
    wet = _wet_cells(dry_lr, win, factor)
    if not wet.any():
        return [win]
    grow = -(-margin // factor)
    labels, _ = ndi.label(wet, structure=np.ones((3, 3), bool))
    ny, nx = wet.shape
    boxes = [(max(0, sy.start - grow), min(ny, sy.stop + grow),
              max(0, sx.start - grow), min(nx, sx.stop + grow))
             for sy, sx in ndi.find_objects(labels)]
    while pair := next(((i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                        if _mergeable(boxes[i], boxes[j])), None):
        i, j = pair
        boxes[i] = _union(boxes[i], boxes.pop(j))
    return [_cells_window(win, factor, *box) for box in sorted(boxes)]


Cells = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of a window's coarse cells


def _wet_cells(dry_lr: np.ndarray, win: Window, f: int) -> np.ndarray:
    """Bool (rows, columns) of the coarse cells under ``win`` not dry in some member."""
    cells = dry_lr[..., win.y0 // f : -(-win.y1 // f), win.x0 // f : -(-win.x1 // f)]
    return ~cells.reshape(-1, *cells.shape[-2:]).all(axis=0)


def _cells_window(win: Window, f: int, r0: int, r1: int, c0: int, c1: int) -> Window:
    """The fine pixels of ``win``'s coarse cells ``r0:r1, c0:c1`` (clipped to ``win``) as a
    window with ``win``'s blend weights over it."""
    y0, y1 = max(win.y0, win.y0 + r0 * f), min(win.y1, win.y0 + r1 * f)
    x0, x1 = max(win.x0, win.x0 + c0 * f), min(win.x1, win.x0 + c1 * f)
    return Window(y0, y1, x0, x1, win.weight[y0 - win.y0 : y1 - win.y0, x0 - win.x0 : x1 - win.x0])


def _union(a: Cells, b: Cells) -> Cells:
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _area(box: Cells) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def _mergeable(a: Cells, b: Cells) -> bool:
    """Whether two boxes overlap, or their union is no larger than the two together."""
    overlap = a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]
    return overlap or _area(_union(a, b)) <= _area(a) + _area(b)


def dry_coarse(
    corrected: np.ndarray, source: np.ndarray, *, trace: float, halo: int = DEFAULT_HALO
) -> np.ndarray:
    """Stage-I members (M, Y, X) with the rule applied: 0 where ``source`` (Y, X) is dry around
    the cell, 0 below ``trace``; NaN stays NaN. Returns a new array."""
    out = corrected.copy()
    dry = dry_cells(source, trace=trace, halo=halo)
    out[:, dry] = np.where(np.isnan(out[:, dry]), np.nan, 0.0)
    out[out < trace] = 0.0
    return out


def dry_fine(
    hr: np.ndarray, dry_lr: np.ndarray, factor: int, *, trace: float
) -> np.ndarray:
    """Fine members (M, h, w) with the rule applied in place and returned.

    ``dry_lr`` (M, h/f, w/f) is :func:`dry_cells` of the corrected members on the rows of ``hr``
    (``h`` and ``w`` multiples of ``factor`` or cut at the domain edge).
    """
    m, h, w = hr.shape
    mask = np.repeat(np.repeat(dry_lr, factor, axis=-2), factor, axis=-1)[:, :h, :w]
    hr[mask & np.isfinite(hr)] = 0.0
    hr[hr < trace] = 0.0
    return hr
