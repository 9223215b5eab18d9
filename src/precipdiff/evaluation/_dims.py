"""Shared helpers: scores-style ``reduce_dims`` / ``preserve_dims`` and NaN pairing."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from precipdiff.errors import GridError

COORD_ATOL = 1e-6  # degrees: coordinates closer than this are the same grid

Dims = str | Sequence[Hashable] | None


def _as_list(dims: Dims) -> list[Hashable]:
    if dims is None:
        return []
    if isinstance(dims, str):
        return [dims]
    return list(dims)


def dims_to_reduce(
    da: xr.DataArray,
    *,
    reduce_dims: Dims = None,
    preserve_dims: Dims = None,
    exclude: Sequence[Hashable] = (),
) -> list[Hashable]:
    """Dimensions of ``da`` to reduce over, following the ``scores`` convention.

    Give at most one of ``reduce_dims`` / ``preserve_dims``; with neither, every
    dimension (except ``exclude``, e.g. the ensemble ``member`` dim) is reduced.
    Unknown names raise ``ValueError`` naming the dimension and the available ones.
    """
    if reduce_dims is not None and preserve_dims is not None:
        raise ValueError("give reduce_dims or preserve_dims, not both")
    available = [d for d in da.dims if d not in exclude]
    if reduce_dims is not None:
        wanted = _as_list(reduce_dims)
        unknown = [d for d in wanted if d not in available]
        if unknown:
            raise ValueError(f"reduce_dims {unknown} not among dims {available}")
        return wanted
    keep = _as_list(preserve_dims)
    unknown = [d for d in keep if d not in available]
    if unknown:
        raise ValueError(f"preserve_dims {unknown} not among dims {available}")
    return [d for d in available if d not in keep]


def align_exact(fcst: xr.DataArray, obs: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Check that shared dims have equal sizes and coordinates, then give ``fcst`` the
    coordinates of ``obs``.

    Numeric coordinates may differ by float rounding (``COORD_ATOL``); anything else raises
    :class:`GridError` naming the dimension, never a silent intersection or reindexing.
    """
    for dim in set(fcst.dims) & set(obs.dims):
        if fcst.sizes[dim] != obs.sizes[dim]:
            raise GridError(f"dimension {dim!r}: forecast has {fcst.sizes[dim]} values, "
                            f"observation {obs.sizes[dim]}")
        if dim not in fcst.coords or dim not in obs.coords:
            continue
        a, b = fcst[dim].values, obs[dim].values
        if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
            same = np.allclose(a, b, rtol=0.0, atol=COORD_ATOL)
        else:
            same = np.array_equal(a, b)
        if not same:
            raise GridError(f"coordinate {dim!r} differs between forecast and observation "
                            f"(forecast {a[:3]}..., observation {b[:3]}...)")
        fcst = fcst.assign_coords({dim: obs[dim]})
    return fcst, obs


def paired(fcst: xr.DataArray, obs: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Align ``fcst`` and ``obs`` (:func:`align_exact`) and mask pixels missing in either."""
    f, o = align_exact(fcst, obs)
    valid = f.notnull() & o.notnull()
    return f.where(valid), o.where(valid)
