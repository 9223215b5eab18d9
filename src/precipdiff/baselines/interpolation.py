"""Interpolation baselines: nearest, bilinear and bicubic upsampling onto the nested fine grid.

A thin adapter over :func:`precipdiff.grid.upsample` (cell-centre geometry of a factor-``f``
refinement: the coarse cell ``(i, j)`` covers fine cells ``[i f:(i+1) f, j f:(j+1) f]``), with
the result clipped to ``>= 0`` (bicubic overshoots below zero next to rain edges).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from precipdiff.grid import upsample

__all__ = ["INTERPOLATION_METHODS", "interpolate"]

INTERPOLATION_METHODS = ("nearest", "bilinear", "bicubic")


def interpolate(lr: xr.DataArray, factor: int, *, method: str = "bilinear") -> xr.DataArray:
    """Upsample ``lr`` ``(..., lat, lon)`` by ``factor`` with ``method``; NaN cells stay NaN."""
    out = upsample(lr, factor, method=method)
    out = out.clip(min=0.0) if np.issubdtype(out.dtype, np.floating) else out
    return out.assign_attrs(baseline=f"interpolation_{method}")
