"""Spatial and categorical scores: fractions skill score and contingency-table scores.

Event convention (both FSS and contingency scores): an event is ``value >= threshold``
(as pysteps' FSS; note pysteps' ``det_cat_fct`` uses ``>``, ``scores``' FSS ``>`` by default).
Pixels missing (NaN) in either field are excluded from the sums; in the neighbourhood
filtering they count as non-events, exactly like the zero padding outside the domain.

References
----------
Roberts, N. M., Lean, H. W. (2008): Scale-selective verification of rainfall accumulations from
high-resolution forecasts of convective events. Mon. Wea. Rev. 136, 78-97.
Wilks, D. S. (2011): Statistical Methods in the Atmospheric Sciences, 3rd ed., ch. 8.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy.ndimage import uniform_filter

from ._dims import Dims, align_exact, dims_to_reduce

__all__ = [
    "categorical_scores",
    "contingency_table",
    "fss",
    "fss_sums",
    "scores_from_table",
    "subgrid_event_fraction",
]

SPATIAL_DIMS = ("lat", "lon")


def _fractions(binary: np.ndarray, scale: int) -> np.ndarray:
    """Fractions: ``scale x scale`` moving mean over the last two axes, zero padding."""
    if scale <= 1:
        return binary
    size = (1,) * (binary.ndim - 2) + (scale, scale)
    return uniform_filter(binary, size=size, mode="constant", cval=0.0)


def fss_sums(fcst: np.ndarray, obs: np.ndarray, *, threshold: float, scale: int,
             member_axis: int | None = None) -> np.ndarray:
    """Per-field sums ``(sum S_f**2, sum S_f S_o, sum S_o**2)`` over the last two axes.

    Returns shape ``(*leading, 3)``. With ``member_axis`` the forecast binary field is the
    fraction of members with an event (ensemble/probabilistic FSS). Sums over several
    fields add, which makes FSS streamable (pysteps ``fss_accum``).
    """
    fcst = np.asarray(fcst, dtype=np.float64)
    obs = np.asarray(obs, dtype=np.float64)
    if member_axis is not None:
        f_ok = np.isfinite(fcst).all(member_axis)
        i_f = (np.nan_to_num(fcst, nan=-np.inf) >= threshold).mean(member_axis)
    else:
        f_ok = np.isfinite(fcst)
        i_f = (np.nan_to_num(fcst, nan=-np.inf) >= threshold).astype(np.float64)
    valid = f_ok & np.isfinite(obs)
    i_o = (np.nan_to_num(obs, nan=-np.inf) >= threshold).astype(np.float64)
    s_f = _fractions(i_f, scale) * valid
    s_o = _fractions(i_o, scale) * valid
    axes = (-2, -1)
    return np.stack([(s_f**2).sum(axes), (s_f * s_o).sum(axes), (s_o**2).sum(axes)], axis=-1)


def fss_from_sums(sums: np.ndarray) -> np.ndarray:
    """``FSS = 1 - sum (S_f - S_o)**2 / (sum S_f**2 + sum S_o**2)`` from the summed terms."""
    sums = np.asarray(sums, dtype=np.float64)
    ff, fo, oo = sums[..., 0], sums[..., 1], sums[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (ff - 2.0 * fo + oo) / (ff + oo)


def fss(fcst: xr.DataArray, obs: xr.DataArray, *, threshold: float, scale: int,
        spatial_dims: Sequence[str] = SPATIAL_DIMS, member_dim: str = "member",
        reduce_dims: Dims = None, preserve_dims: Dims = None) -> xr.DataArray:
    """Fractions skill score (Roberts & Lean 2008) for events ``>= threshold``.

    Fractions ``S`` are ``scale x scale`` moving means of the binary event fields with zero
    padding (``scipy.ndimage.uniform_filter(mode="constant")``, the pysteps convention)::

        FSS = 1 - sum (S_f - S_o)**2 / (sum S_f**2 + sum S_o**2)

    The sums run over space and the reduced non-spatial dims (aggregated as pysteps does
    over time, not an average of per-field FSS). If ``fcst`` has ``member_dim``, ``S_f`` is
    built from the fraction of members with an event (ensemble FSS). NaN when neither field
    has an event. ``reduce_dims``/``preserve_dims`` refer to the non-spatial dims.
    """
    f, o = align_exact(fcst, obs)
    has_members = member_dim in f.dims
    lead = [d for d in o.dims if d not in spatial_dims]
    o = o.transpose(*lead, *spatial_dims)
    order = ([member_dim] if has_members else []) + lead + list(spatial_dims)
    f = f.transpose(*order)
    sums = fss_sums(f.values, o.values, threshold=threshold, scale=scale,
                    member_axis=0 if has_members else None)
    sums_da = xr.DataArray(sums, dims=[*lead, "_term"],
                           coords={d: o.coords[d] for d in lead if d in o.coords})
    dims = dims_to_reduce(sums_da, reduce_dims=reduce_dims, preserve_dims=preserve_dims,
                          exclude=["_term"])
    total = sums_da.sum(dims)
    out = xr.apply_ufunc(fss_from_sums, total, input_core_dims=[["_term"]])
    return out.rename("fss").assign_attrs(threshold=threshold, scale=scale)


# ----------------------------------------------------------------------------- contingency
def contingency_table(fcst: xr.DataArray, obs: xr.DataArray, *, threshold: float,
                      reduce_dims: Dims = None, preserve_dims: Dims = None) -> xr.Dataset:
    """Counts ``hits, misses, false_alarms, correct_negatives`` for events ``>= threshold``.

    Pixels missing in either field are not counted.
    """
    f, o = align_exact(fcst, obs)
    valid = f.notnull() & o.notnull()
    ef, eo = (f >= threshold) & valid, (o >= threshold) & valid
    dims = dims_to_reduce(valid, reduce_dims=reduce_dims, preserve_dims=preserve_dims)
    return xr.Dataset({
        "hits": (ef & eo).sum(dims),
        "misses": (~ef & eo).sum(dims),
        "false_alarms": (ef & ~eo).sum(dims),
        "correct_negatives": (valid & ~ef & ~eo).sum(dims),
    }).assign_attrs(threshold=threshold)


def scores_from_table(table: xr.Dataset | dict) -> xr.Dataset | dict:
    """POD, FAR, CSI, ETS and frequency bias from a contingency table.

    With hits H, misses M, false alarms F, correct negatives R, N = H + M + F + R::

        POD = H / (H + M);  FAR = F / (H + F);  CSI = H / (H + M + F)
        H_random = (H + M)(H + F) / N;  ETS = (H - H_random) / (H + M + F - H_random)
        frequency_bias = (H + F) / (H + M)

    Undefined ratios (0/0) are NaN. Works on a Dataset or a dict of numbers/arrays.
    """
    h, m, f, r = (table[k] * 1.0 for k in ("hits", "misses", "false_alarms",
                                              "correct_negatives"))
    n = h + m + f + r
    h_random = (h + m) * (h + f) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "POD": h / (h + m),
            "FAR": f / (h + f),
            "CSI": h / (h + m + f),
            "ETS": (h - h_random) / (h + m + f - h_random),
            "frequency_bias": (h + f) / (h + m),
        }
    return xr.Dataset(out) if isinstance(table, xr.Dataset) else out


def categorical_scores(fcst: xr.DataArray, obs: xr.DataArray, *, threshold: float,
                       reduce_dims: Dims = None, preserve_dims: Dims = None) -> xr.Dataset:
    """POD, FAR, CSI, ETS, frequency bias for events ``>= threshold`` (see
    :func:`scores_from_table`)."""
    table = contingency_table(fcst, obs, threshold=threshold, reduce_dims=reduce_dims,
                              preserve_dims=preserve_dims)
    return scores_from_table(table).assign_attrs(threshold=threshold)


# ----------------------------------------------------------------------------- sub-grid
def subgrid_event_fraction(fine: np.ndarray, coarse: np.ndarray, *, factor: int,
                           threshold: float, edges: Sequence[float]) -> np.ndarray:
    """Mean fraction of fine pixels ``>= threshold`` inside a coarse cell, binned by its value.

    ``fine`` has shape ``(..., Y * factor, X * factor)`` (leading axes, e.g. members, are
    averaged), ``coarse`` ``(T, Y, X)`` or ``(Y, X)`` matching the trailing axes of ``fine``
    after block reduction. Coarse cells with ``edges[i] < value <= edges[i+1]`` (mm/h) fall in
    bin ``i``; returns shape ``(len(edges) - 1,)``, NaN for an empty bin. Cells with any
    missing fine pixel are skipped. This is the downscaler's sub-grid wet-area statistic: a
    10x max-pooled cell of 1-2 mm/h may hold a single shower or widespread light rain.
    """
    fine = np.asarray(fine, dtype=np.float64)
    coarse = np.asarray(coarse, dtype=np.float64)
    *lead, ny, nx = fine.shape
    if ny % factor or nx % factor or coarse.shape[-2:] != (ny // factor, nx // factor):
        raise ValueError(f"fine {fine.shape} is not coarse {coarse.shape} x factor {factor}")
    blocks = fine.reshape(*lead, ny // factor, factor, nx // factor, factor)
    ok = np.isfinite(blocks).all(axis=(-3, -1))
    frac = (np.nan_to_num(blocks, nan=-np.inf) >= threshold).mean(axis=(-3, -1))
    n_extra = frac.ndim - coarse.ndim
    if n_extra < 0 or frac.shape[n_extra:] != coarse.shape:
        raise ValueError(f"fine {fine.shape} does not end with coarse {coarse.shape} x {factor}")
    frac = np.where(ok, frac, np.nan).reshape(-1, *coarse.shape).mean(axis=0)
    edges = np.asarray(edges, dtype=np.float64)
    out = np.full(edges.size - 1, np.nan)
    for i in range(edges.size - 1):
        sel = (coarse > edges[i]) & (coarse <= edges[i + 1]) & np.isfinite(frac)
        if sel.any():
            out[i] = frac[sel].mean()
    return out
