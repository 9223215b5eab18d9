"""Blend sums of overlapping window outputs, in memory or on disk.

Windows of a large domain (:func:`~precipdiff.pipeline.tiling.windows`) and blocks of a
temporal record (:mod:`precipdiff.pipeline.record`) are sampled on their own and blended with
their weights: the accumulator holds ``sum_k w_k y_k`` and ``sum_k w_k`` of one fine field,
in memory up to :data:`IN_MEMORY_LIMIT` bytes, else as zarr arrays in a scratch folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

#: Largest blend sum held in memory, bytes (PRECIPDIFF_ACCUMULATOR_MB, MiB, overrides it).
IN_MEMORY_LIMIT = int(os.environ.get("PRECIPDIFF_ACCUMULATOR_MB", "256")) * 2**20


class Accumulator:
    """Weighted sum of window outputs and the sum of weights of one fine field (members,
    height, width), in memory or on disk (zarr arrays in ``scratch``).

    On disk the arrays are ``scratch/wsum.zarr`` and ``scratch/wnorm.zarr``, overwritten by the
    next accumulator in the same folder: the per-frame path reuses one folder for every time
    step (its bands have been read by then), so a run's scratch space is one step's."""

    def __init__(self, members: int, height: int, width: int, scratch: Path | None, *,
                 share: int = 1):
        """``share``: accumulators open at once; each stays in memory up to
        :data:`IN_MEMORY_LIMIT` / ``share`` bytes, so that together they stay under it."""
        nbytes = members * height * width * 4
        self.folder: Path | None = None
        if nbytes <= IN_MEMORY_LIMIT // max(1, share) or scratch is None:
            self.wsum = np.zeros((members, height, width), np.float32)
            self.wnorm = np.zeros((height, width), np.float32)
        else:
            import zarr

            self.folder = Path(scratch)
            chunks = (members, 512, 512)
            self.wsum = zarr.create_array(
                scratch / "wsum.zarr",
                shape=(members, height, width),
                chunks=chunks,
                dtype="float32",
                fill_value=0.0,
                overwrite=True,
            )
            self.wnorm = zarr.create_array(
                scratch / "wnorm.zarr",
                shape=(height, width),
                chunks=chunks[1:],
                dtype="float32",
                fill_value=0.0,
                overwrite=True,
            )

    def add(self, m0: int, y0: int, x0: int, values: np.ndarray, weight: np.ndarray) -> None:
        m1, (h, w) = m0 + values.shape[0], weight.shape
        self.wsum[m0:m1, y0 : y0 + h, x0 : x0 + w] = (
            self.wsum[m0:m1, y0 : y0 + h, x0 : x0 + w] + values * weight
        )
        if m0 == 0:
            self.wnorm[y0 : y0 + h, x0 : x0 + w] = self.wnorm[y0 : y0 + h, x0 : x0 + w] + weight

    def band(self, y0: int, y1: int) -> np.ndarray:
        return np.asarray(self.wsum[:, y0:y1]) / np.asarray(self.wnorm[y0:y1])[None]

    def close(self) -> None:
        """Remove the on-disk arrays (nothing to do in memory)."""
        if self.folder is not None:
            for name in ("wsum.zarr", "wnorm.zarr"):
                shutil.rmtree(self.folder / name, ignore_errors=True)
