"""Shared helpers: scores-style ``reduce_dims`` / ``preserve_dims`` and NaN pairing."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import xarray as xr

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


def paired(fcst: xr.DataArray, obs: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Broadcast-align ``fcst`` and ``obs`` exactly and mask pixels missing in either.

    ``join="exact"`` makes differing coordinates an error rather than a silent
    intersection.
    """
    f, o = xr.align(fcst, obs, join="exact")
    valid = f.notnull() & o.notnull()
    return f.where(valid), o.where(valid)
