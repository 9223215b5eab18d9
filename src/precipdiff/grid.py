"""Regular lat/lon grids, nested by integer factors: crop, coarsen, upsample, regrid.

Geometry convention (docs/interfaces.md): a grid is described by the *centre* of its
south-west cell. Coarsening by ``f`` maps the fine cells ``[i*f:(i+1)*f, j*f:(j+1)*f]`` onto
coarse cell ``(i, j)`` whose coordinates are the block centres; refining is the exact inverse.
Fields are ``DataArray`` with spatial dims ``(lat, lon)`` or, for projected grids, ``(y, x)``
as the last two dims; NaN marks missing data.

Projected grids keep their CRS: :func:`grid_crs` reads it from the field's ``crs`` attribute
(PROJ string, WKT or the JSON of CF grid-mapping attributes, as the readers store it) and
:func:`cf_grid_mapping` writes it back as a CF ``grid_mapping`` variable (pyproj for the maths).

Max pooling for the reference follows PrecipDiff (Ling et al. 2025, arXiv:2501.07447).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp
import torch
import torch.nn.functional as F
import xarray as xr

from precipdiff.errors import ConfigError, GridError

__all__ = [
    "Grid",
    "crop",
    "coarsen",
    "upsample",
    "upsample_tensor",
    "regrid",
    "spatial_dims",
    "grid_crs",
    "xy_units",
    "cell_bounds",
    "cf_grid_mapping",
]

log = logging.getLogger(__name__)

_SPATIAL_DIMS = (("lat", "lon"), ("y", "x"))
_REL_TOL = 1e-4  # relative tolerance on spacings and alignments (in cell widths)


@dataclass(frozen=True)
class Grid:
    """A regular grid: centre of the south-west cell, spacings (degrees) and sizes.

    For projected ``(y, x)`` fields the same fields hold y/x coordinates in their own units.
    """

    lat0: float
    lon0: float
    dlat: float
    dlon: float
    nlat: int
    nlon: int

    def __post_init__(self) -> None:
        if not (self.dlat > 0 and self.dlon > 0):
            raise GridError(f"grid spacings must be > 0, found dlat={self.dlat}, dlon={self.dlon}")
        if int(self.nlat) < 1 or int(self.nlon) < 1:
            raise GridError(f"grid sizes must be >= 1, found nlat={self.nlat}, nlon={self.nlon}")

    @property
    def lat(self) -> np.ndarray:
        """Cell-centre latitudes, ascending (float64)."""
        return self.lat0 + self.dlat * np.arange(self.nlat)

    @property
    def lon(self) -> np.ndarray:
        """Cell-centre longitudes, ascending (float64)."""
        return self.lon0 + self.dlon * np.arange(self.nlon)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.nlat, self.nlon)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Outer cell *edges* as ``(lon_min, lat_min, lon_max, lat_max)``."""
        return (
            self.lon0 - self.dlon / 2,
            self.lat0 - self.dlat / 2,
            self.lon0 + self.dlon * (self.nlon - 0.5),
            self.lat0 + self.dlat * (self.nlat - 0.5),
        )

    @classmethod
    def from_dataarray(cls, da: xr.DataArray) -> Grid:
        """The grid of ``da``'s (lat, lon) or (y, x) coords; raises GridError if irregular."""
        ydim, xdim = spatial_dims(da)
        y0, dy, ny = _regular_axis(da[ydim].values, ydim)
        x0, dx, nx = _regular_axis(da[xdim].values, xdim)
        return cls(y0, x0, dy, dx, ny, nx)

    def coarsen(self, factor: int) -> Grid:
        """The grid whose cell ``(i, j)`` covers this grid's ``f x f`` block ``(i, j)``."""
        f = _check_factor(factor)
        if self.nlat % f or self.nlon % f:
            raise GridError(
                f"cannot coarsen a grid of shape {self.shape} by factor {f}: "
                "both sizes must be multiples of the factor"
            )
        return Grid(
            self.lat0 + (f - 1) / 2 * self.dlat,
            self.lon0 + (f - 1) / 2 * self.dlon,
            self.dlat * f,
            self.dlon * f,
            self.nlat // f,
            self.nlon // f,
        )

    def refine(self, factor: int) -> Grid:
        """The nested fine grid: each cell split into ``factor x factor`` cells."""
        f = _check_factor(factor)
        return Grid(
            self.lat0 - (f - 1) / (2 * f) * self.dlat,
            self.lon0 - (f - 1) / (2 * f) * self.dlon,
            self.dlat / f,
            self.dlon / f,
            self.nlat * f,
            self.nlon * f,
        )

    def nests_in(self, other: Grid) -> bool:
        """True if ``other`` is exactly this grid coarsened by an integer factor (same extent)."""
        f = self.nesting_factor(other, strict=False)
        return f is not None

    def nesting_factor(self, other: Grid, *, strict: bool = True) -> int | None:
        """The integer ``f`` with ``self.coarsen(f) == other``; GridError (or None) otherwise."""
        ratio = other.dlat / self.dlat
        f = round(ratio)
        if (
            f >= 1
            and math.isclose(ratio, f, rel_tol=_REL_TOL)
            and math.isclose(other.dlon / self.dlon, f, rel_tol=_REL_TOL)
            and self.nlat % f == 0
            and self.nlon % f == 0
            and self.coarsen(f).is_close(other)
        ):
            return f
        if strict:
            raise GridError(f"grid {self} does not nest in {other} by any integer factor")
        return None

    def is_close(self, other: Grid) -> bool:
        """Same sizes, and centres/spacings equal within 1e-4 of a cell."""
        return (
            self.shape == other.shape
            and math.isclose(self.dlat, other.dlat, rel_tol=_REL_TOL)
            and math.isclose(self.dlon, other.dlon, rel_tol=_REL_TOL)
            and abs(self.lat0 - other.lat0) <= _REL_TOL * self.dlat
            and abs(self.lon0 - other.lon0) <= _REL_TOL * self.dlon
        )

    def to_dataarray(self, data: np.ndarray, **kw) -> xr.DataArray:
        """Wrap a ``(..., nlat, nlon)`` array with this grid's ``lat``/``lon`` coords."""
        dims = tuple(f"dim_{i}" for i in range(data.ndim - 2)) + ("lat", "lon")
        return xr.DataArray(data, dims=kw.pop("dims", dims),
                            coords={"lat": self.lat, "lon": self.lon}, **kw)


# ----------------------------------------------------------------------------- helpers


def spatial_dims(da: xr.DataArray) -> tuple[str, str]:
    """``("lat", "lon")`` or ``("y", "x")``, whichever ``da`` has; GridError otherwise."""
    for dims in _SPATIAL_DIMS:
        if all(d in da.dims for d in dims):
            return dims
    raise GridError(f"expected spatial dims (lat, lon) or (y, x), found {tuple(da.dims)}")


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise GridError(f"factor must be a positive integer, found {factor!r}")
    return int(factor)


def _regular_axis(c: np.ndarray, name: str) -> tuple[float, float, int]:
    """(first, step, n) of an ascending regular axis; GridError if it is not one."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 1 or c.size < 1:
        raise GridError(f"coordinate {name!r} must be 1-D and non-empty, found shape {c.shape}")
    if c.size == 1:
        raise GridError(f"coordinate {name!r} has a single value; its spacing is unknown")
    d = np.diff(c)
    step = (c[-1] - c[0]) / (c.size - 1)
    if step <= 0 or np.max(np.abs(d - step)) > 1e-3 * abs(step):
        raise GridError(
            f"coordinate {name!r} must be ascending with a regular spacing, found steps "
            f"{d.min():.6g}..{d.max():.6g}"
        )
    return float(c[0]), float(step), int(c.size)


def _to_last(da: xr.DataArray) -> tuple[xr.DataArray, str, str]:
    ydim, xdim = spatial_dims(da)
    others = [d for d in da.dims if d not in (ydim, xdim)]
    return da.transpose(*others, ydim, xdim), ydim, xdim


def _other_coords(da: xr.DataArray, ydim: str, xdim: str) -> dict:
    """Coords of ``da`` that do not depend on the spatial dims (kept as they are)."""
    return {k: v for k, v in da.coords.items() if not set(v.dims) & {ydim, xdim}}


def cell_bounds(centres: np.ndarray) -> np.ndarray:
    """``(n, 2)`` cell edges of a regular axis of cell centres (CF ``bounds`` variable)."""
    c0, d, n = _regular_axis(centres, "coordinate")
    edges = c0 + d * (np.arange(n + 1) - 0.5)
    return np.stack([edges[:-1], edges[1:]], axis=-1)


# ----------------------------------------------------------------------------- CRS


def grid_crs(da: xr.DataArray):
    """The field's CRS as a :class:`pyproj.CRS`.

    ``(lat, lon)`` fields: WGS 84 (EPSG:4326). ``(y, x)`` fields: the ``crs_wkt`` attribute, else
    ``crs`` — a PROJ string, WKT, EPSG code or the JSON of CF grid-mapping attributes;
    :class:`GridError` when it is absent or unreadable (metres must never be taken for degrees).
    """
    import json

    import pyproj

    if spatial_dims(da) == ("lat", "lon"):
        return pyproj.CRS.from_epsg(4326)
    text = da.attrs.get("crs_wkt") or da.attrs.get("crs")
    if not text:
        raise GridError(
            f"field {da.name!r} is on a projected (y, x) grid but has no 'crs' attribute; expected "
            "a PROJ string, WKT or CF grid-mapping attributes"
        )
    try:
        if str(text).lstrip().startswith("{"):
            return pyproj.CRS.from_cf(json.loads(text))
        return pyproj.CRS.from_user_input(str(text))
    except (pyproj.exceptions.CRSError, ValueError, TypeError) as exc:
        raise GridError(
            f"field {da.name!r}: cannot read its CRS {str(text)[:80]!r}: {exc}"
        ) from exc


def xy_units(da: xr.DataArray) -> str:
    """Units of a projected field's ``x``/``y`` coordinates: the coordinate's ``units``, else the
    field's ``xy_units`` attribute (readers set it), else metres (CF's usual unit)."""
    units = da["x"].attrs.get("units") or da.attrs.get("xy_units") or "m"
    return {"metre": "m", "meter": "m", "metres": "m", "meters": "m"}.get(str(units), str(units))


def cf_grid_mapping(crs) -> dict:
    """CF grid-mapping attributes (``grid_mapping_name``, parameters, ``crs_wkt``) of ``crs``.

    ``pyproj.CRS.from_cf(attrs)`` recovers the CRS; regular lat/lon grids get
    ``latitude_longitude``.
    """
    attrs = {k: v for k, v in crs.to_cf().items() if v is not None}
    if (
        attrs.get("grid_mapping_name") == "polar_stereographic"
        and "latitude_of_projection_origin" not in attrs
    ):  # required by CF (Appendix F); pyproj writes only the standard parallel
        with warnings.catch_warnings():  # "may lose information": we read one parameter
            warnings.simplefilter("ignore", UserWarning)
            lat_0 = crs.to_dict().get("lat_0")
        if lat_0 is None:
            lat_0 = 90.0 if float(attrs.get("standard_parallel", 90.0)) >= 0 else -90.0
        attrs["latitude_of_projection_origin"] = float(lat_0)
    attrs.setdefault("crs_wkt", crs.to_wkt())
    return attrs


# ----------------------------------------------------------------------------- crop


def crop(da: xr.DataArray, bbox: tuple[float, float, float, float]) -> xr.DataArray:
    """Cells whose centres lie in ``bbox = (lon_min, lat_min, lon_max, lat_max)`` (inclusive).

    For ``(y, x)`` fields the bbox is ``(x_min, y_min, x_max, y_max)`` in the coords' units.
    """
    ydim, xdim = spatial_dims(da)
    if len(bbox) != 4:
        raise GridError(f"bbox must be (lon_min, lat_min, lon_max, lat_max), found {bbox!r}")
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if not (x0 <= x1 and y0 <= y1):
        raise GridError(f"bbox must have min <= max, found {bbox!r}")
    ys, xs = da[ydim].values, da[xdim].values
    ysel = np.flatnonzero((ys >= y0) & (ys <= y1))
    xsel = np.flatnonzero((xs >= x0) & (xs <= x1))
    if ysel.size == 0 or xsel.size == 0:
        raise GridError(
            f"bbox {bbox!r} holds no cell centre of the field "
            f"({xdim} {xs.min():.4g}..{xs.max():.4g}, {ydim} {ys.min():.4g}..{ys.max():.4g})"
        )
    return da.isel({ydim: ysel, xdim: xsel})


# ----------------------------------------------------------------------------- coarsen


def coarsen(
    da: xr.DataArray,
    factor: int,
    *,
    method: Literal["max", "mean"] = "max",
    max_missing_fraction: float = 0.5,
) -> xr.DataArray:
    """NaN-aware block pooling by ``factor`` over the spatial dims.

    Each coarse cell ``(i, j)`` pools the fine block ``[i*f:(i+1)*f, j*f:(j+1)*f]`` with the
    max (PrecipDiff default, arXiv:2501.07447) or the mean of its valid cells; it is NaN if more
    than ``max_missing_fraction`` of the block is NaN (or all of it). Coordinates are the block
    centres (mean of the fine coordinates). Vectorised by reshaping; dtype is kept.
    """
    f = _check_factor(factor)
    if method not in ("max", "mean"):
        raise ConfigError(f"coarsen method must be 'max' or 'mean', found {method!r}")
    if not 0.0 <= max_missing_fraction <= 1.0:
        raise ConfigError(f"max_missing_fraction must be in [0, 1], found {max_missing_fraction}")
    da_t, ydim, xdim = _to_last(da)
    ny, nx = da_t.shape[-2:]
    if ny % f or nx % f:
        raise GridError(
            f"cannot coarsen a field of shape ({ydim}={ny}, {xdim}={nx}) by factor {f}: "
            "both sizes must be multiples of the factor (crop first)"
        )
    x = np.asarray(da_t.values)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    lead = x.shape[:-2]
    blocks = x.reshape(*lead, ny // f, f, nx // f, f)
    axes = (-3, -1)
    nan = np.isnan(blocks)
    n_missing = nan.sum(axis=axes)
    if method == "max":
        out = np.where(nan, -np.inf, blocks).max(axis=axes)
    else:
        total = np.where(nan, 0, blocks).sum(axis=axes, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (total / (f * f - n_missing)).astype(x.dtype)
    missing = (n_missing > max_missing_fraction * f * f) | (n_missing == f * f)
    out = np.where(missing, np.nan, out).astype(x.dtype, copy=False)

    coords = _other_coords(da_t, ydim, xdim)
    coords[ydim] = da_t[ydim].values.reshape(-1, f).mean(axis=1)
    coords[xdim] = da_t[xdim].values.reshape(-1, f).mean(axis=1)
    res = xr.DataArray(out, dims=da_t.dims, coords=coords, attrs=dict(da.attrs), name=da.name)
    return res.transpose(*da.dims)


# ----------------------------------------------------------------------------- upsample


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic-convolution weights for offsets (-1, 0, 1, 2), ``a=-0.75`` as in PyTorch."""
    def near(s):  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s):  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _interp_axis(x: np.ndarray, axis: int, factor: int, method: str) -> np.ndarray:
    """Upsample along one axis with cell-centre geometry (PyTorch ``align_corners=False``)."""
    n = x.shape[axis]
    if method == "nearest":
        return np.repeat(x, factor, axis=axis)
    u = (np.arange(n * factor) + 0.5) / factor - 0.5  # fine centres in coarse index units
    i0 = np.floor(u).astype(np.int64)
    t = (u - i0).astype(x.dtype)
    if method == "bilinear":
        offsets, w = (0, 1), np.stack([1 - t, t], axis=-1)
    else:
        offsets, w = (-1, 0, 1, 2), _cubic_weights(t)
    shape = [1] * x.ndim
    shape[axis] = n * factor
    out = None
    for k, off in enumerate(offsets):  # indices clamped = replicate the edge cells
        term = np.take(x, np.clip(i0 + off, 0, n - 1), axis=axis) * w[:, k].reshape(shape)
        out = term if out is None else out + term
    return out


def _fill_nearest(x2d: np.ndarray) -> np.ndarray:
    """Fill NaN cells with the value of the nearest valid cell (Euclidean, in cells)."""
    nan = np.isnan(x2d)
    if not nan.any() or nan.all():
        return x2d
    idx = ndi.distance_transform_edt(nan, return_distances=False, return_indices=True)
    return x2d[tuple(idx)]


def upsample(
    da: xr.DataArray,
    factor: int,
    *,
    method: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
    nonnegative: bool = True,
) -> xr.DataArray:
    """Interpolate onto the nested fine grid (``Grid.refine(factor)`` of the input grid).

    Same geometry as :func:`upsample_tensor` (cell centres, PyTorch ``align_corners=False``):
    beyond the outermost centres the edge cells are replicated. Missing data rule: a missing
    coarse cell is treated like the outside of the domain — the interpolation sees it filled
    with its nearest valid coarse neighbour — and all its fine cells are NaN in the output.
    So missing stays missing, and no NaN spreads into the fine cells of valid coarse cells.
    ``nonnegative`` clips bicubic overshoots to >= 0 (precipitation); other methods cannot
    create negative values from non-negative input.
    """
    f = _check_factor(factor)
    if method not in ("nearest", "bilinear", "bicubic"):
        raise ConfigError(f"upsample method must be nearest|bilinear|bicubic, found {method!r}")
    da_t, ydim, xdim = _to_last(da)
    y0, dy, _ = _regular_axis(da_t[ydim].values, ydim)
    x0, dx, _ = _regular_axis(da_t[xdim].values, xdim)
    x = np.asarray(da_t.values)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    nan = np.isnan(x)
    if nan.any() and method != "nearest":
        flat = x.reshape(-1, *x.shape[-2:])
        x = np.stack([_fill_nearest(s) for s in flat]).reshape(x.shape)
    out = _interp_axis(_interp_axis(x, x.ndim - 2, f, method), x.ndim - 1, f, method)
    if nan.any():
        out[np.repeat(np.repeat(nan, f, axis=-2), f, axis=-1)] = np.nan
    if method == "bicubic" and nonnegative:
        np.maximum(out, 0, out=out)
    fine = Grid(y0, x0, dy, dx, *x.shape[-2:]).refine(f)
    coords = _other_coords(da_t, ydim, xdim)
    coords[ydim], coords[xdim] = fine.lat, fine.lon
    res = xr.DataArray(out, dims=da_t.dims, coords=coords, attrs=dict(da.attrs), name=da.name)
    return res.transpose(*da.dims)


def upsample_tensor(
    x: torch.Tensor,
    factor: int,
    method: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, H*f, W*f)`` with the geometry of :func:`upsample`.

    ``F.interpolate`` with ``align_corners=False`` places the fine samples at the fine cell
    centres. No clipping and no NaN handling (tensors never hold NaN; see interfaces.md).
    """
    f = _check_factor(factor)
    if x.ndim != 4:
        raise GridError(f"upsample_tensor expects (B, C, H, W), found shape {tuple(x.shape)}")
    if method == "nearest":
        return F.interpolate(x, scale_factor=f, mode="nearest")
    if method in ("bilinear", "bicubic"):
        return F.interpolate(x, scale_factor=f, mode=method, align_corners=False)
    raise ConfigError(f"upsample method must be nearest|bilinear|bicubic, found {method!r}")


# ----------------------------------------------------------------------------- regrid


def _edges(c0: float, d: float, n: int) -> np.ndarray:
    return c0 + d * (np.arange(n + 1) - 0.5)


def _overlap_matrix(src_edges: np.ndarray, dst_edges: np.ndarray) -> sp.csr_matrix:
    """Sparse ``(n_dst, n_src)`` overlap lengths between 1-D cells given by their edges."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return sp.csr_matrix(np.clip(hi - lo, 0, None))


def _linear_matrix(src: np.ndarray, dst: np.ndarray, d_src: float) -> sp.csr_matrix:
    """Sparse ``(n_dst, n_src)`` linear-interpolation weights on a regular source axis.

    Targets between the outermost source centres and edges take the edge value; targets
    outside the source cell edges get no weight (they become NaN).
    """
    n = src.size
    u = (dst - src[0]) / d_src
    inside = (u >= -0.5) & (u <= n - 0.5)
    u = np.clip(u, 0, n - 1)
    i0 = np.minimum(np.floor(u).astype(np.int64), max(n - 2, 0))
    t = u - i0
    rows = np.flatnonzero(inside)
    i0, t = i0[rows], t[rows]
    i1 = np.minimum(i0 + 1, n - 1)
    data = np.concatenate([1 - t, t])
    return sp.csr_matrix((data, (np.concatenate([rows, rows]), np.concatenate([i0, i1]))),
                         shape=(dst.size, n))


def regrid(
    da: xr.DataArray,
    target: Grid,
    *,
    method: Literal["bilinear", "conservative"] = "bilinear",
    max_missing_fraction: float = 0.5,
) -> xr.DataArray:
    """Regrid a regular (lat, lon) field onto ``target`` (e.g. IMERG centres -> MRMS blocks).

    ``bilinear``: separable linear interpolation between source cell centres.
    ``conservative``: first-order area-weighted average over the source cells each target cell
    overlaps; the overlap is separable on a regular lat/lon grid — longitude overlap times the
    overlap in ``sin(lat)`` — so the area-weighted mean is preserved exactly.
    Missing data: weights are renormalised over valid source cells; a target cell is NaN if
    more than ``max_missing_fraction`` of its weight (its area, for conservative) falls on
    missing cells or outside the source. Longitudes are not wrapped (same convention assumed).
    """
    if method not in ("bilinear", "conservative"):
        raise ConfigError(f"regrid method must be bilinear|conservative, found {method!r}")
    da_t, ydim, xdim = _to_last(da)
    if (ydim, xdim) != ("lat", "lon"):
        raise GridError(f"regrid needs (lat, lon) dims, found {tuple(da.dims)}")
    src = Grid.from_dataarray(da_t)
    if method == "bilinear":
        wy = _linear_matrix(src.lat, target.lat, src.dlat)
        wx = _linear_matrix(src.lon, target.lon, src.dlon)
        norm_y = norm_x = None
    else:
        s = np.sin(np.deg2rad(np.clip(_edges(src.lat0, src.dlat, src.nlat), -90, 90)))
        t = np.sin(np.deg2rad(np.clip(_edges(target.lat0, target.dlat, target.nlat), -90, 90)))
        wy = _overlap_matrix(s, t)
        wx = _overlap_matrix(_edges(src.lon0, src.dlon, src.nlon),
                             _edges(target.lon0, target.dlon, target.nlon))
        norm_y, norm_x = np.diff(t), np.full(target.nlon, target.dlon)
    x = np.asarray(da_t.values, dtype=np.float64)
    flat = x.reshape(-1, src.nlat, src.nlon)
    valid = ~np.isnan(flat)
    out = np.empty((flat.shape[0], target.nlat, target.nlon), dtype=np.float64)
    # full weight of a target cell: 1 for bilinear, its area (in dlon x dsin(lat)) otherwise
    full = 1.0 if norm_y is None else norm_y[:, None] * norm_x[None, :]
    for k in range(flat.shape[0]):
        num = (wx @ (wy @ np.where(valid[k], flat[k], 0.0)).T).T
        den = (wx @ (wy @ valid[k].astype(np.float64)).T).T
        with np.errstate(invalid="ignore", divide="ignore"):
            val = num / den
        val[(den <= (1 - max_missing_fraction) * full * (1 - 1e-9)) | (den <= 0)] = np.nan
        out[k] = val
    out = out.reshape(*x.shape[:-2], target.nlat, target.nlon)
    dtype = da_t.dtype if np.issubdtype(da_t.dtype, np.floating) else np.float32
    coords = _other_coords(da_t, ydim, xdim)
    coords["lat"], coords["lon"] = target.lat, target.lon
    res = xr.DataArray(out.astype(dtype), dims=da_t.dims, coords=coords,
                       attrs=dict(da.attrs), name=da.name)
    return res.transpose(*da.dims)
