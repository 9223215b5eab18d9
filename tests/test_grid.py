"""Tests for precipdiff.grid: nesting geometry, pooling with masks, upsampling, regridding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from precipdiff import grid
from precipdiff.errors import ConfigError, GridError
from precipdiff.grid import Grid


def field(g: Grid, data: np.ndarray) -> xr.DataArray:
    """A (time, lat, lon) DataArray on grid ``g``."""
    data = data.reshape(-1, g.nlat, g.nlon)
    return xr.DataArray(
        data, dims=("time", "lat", "lon"),
        coords={"time": np.arange(data.shape[0]), "lat": g.lat, "lon": g.lon},
        attrs={"units": "mm/h"},
    )


G = Grid(lat0=47.005, lon0=-122.795, dlat=0.01, dlon=0.01, nlat=40, nlon=60)


def test_grid_coords_bbox_and_nesting():
    assert np.allclose(G.lat[[0, -1]], [47.005, 47.395])
    assert np.allclose(G.bbox, (-122.8, 47.0, -122.2, 47.4))
    lr = G.coarsen(10)
    assert np.allclose(lr.lat[:2], [47.05, 47.15]) and lr.shape == (4, 6)
    assert np.allclose(lr.bbox, G.bbox)
    assert lr.refine(10).is_close(G)
    assert G.nests_in(lr) and G.nesting_factor(lr) == 10
    assert not G.nests_in(Grid(47.05, -122.75, 0.1, 0.1, 3, 6))  # different extent
    shifted = Grid(47.06, -122.75, 0.1, 0.1, 4, 6)
    assert not G.nests_in(shifted)
    with pytest.raises(GridError, match="does not nest"):
        G.nesting_factor(shifted)
    with pytest.raises(GridError, match=r"\(40, 60\) by factor 7"):
        G.coarsen(7)
    with pytest.raises(GridError):
        Grid(0, 0, -0.1, 0.1, 3, 3)


def test_from_dataarray_roundtrip_and_irregular():
    da = field(G, np.zeros(G.shape))
    assert Grid.from_dataarray(da).is_close(G)
    bad = da.assign_coords(lon=np.r_[G.lon[:-1], G.lon[-1] + 0.5])
    with pytest.raises(GridError, match="regular spacing"):
        Grid.from_dataarray(bad)
    with pytest.raises(GridError, match="spatial dims"):
        Grid.from_dataarray(da.rename(lat="a"))


def test_crop_by_centres():
    da = field(G, np.arange(G.nlat * G.nlon, dtype="f4"))
    out = grid.crop(da, (-122.7, 47.1, -122.5, 47.2))
    assert out.lon.values[0] >= -122.7 and out.lon.values[-1] <= -122.5
    assert out.sizes["lat"] == 10 and out.sizes["lon"] == 20
    with pytest.raises(GridError, match="holds no cell centre"):
        grid.crop(da, (0, 0, 1, 1))


def test_coarsen_max_mean_and_block_centres(rng):
    x = rng.gamma(0.3, 2.0, size=(2, *G.shape)).astype("f4")
    da = field(G, x)
    mx = grid.coarsen(da, 10)
    mn = grid.coarsen(da, 10, method="mean")
    ref = x.reshape(2, 4, 10, 6, 10)
    np.testing.assert_allclose(mx.values, ref.max(axis=(2, 4)))
    np.testing.assert_allclose(mn.values, ref.mean(axis=(2, 4)), rtol=1e-6)
    assert mx.dtype == np.float32 and mx.attrs["units"] == "mm/h"
    assert Grid.from_dataarray(mx).is_close(G.coarsen(10))
    np.testing.assert_array_equal(mx.time.values, da.time.values)


def test_coarsen_mask_propagation():
    x = np.ones(G.shape, dtype="f4")
    x[:10, :10] = np.nan  # block (0, 0) all missing
    x[:10, 10:10 + 5] = np.nan  # block (0, 1): exactly 50 % missing -> kept
    x[:10, 20:20 + 6] = np.nan  # block (0, 2): 60 % missing -> NaN
    x[10:20, 0] = 5.0
    da = field(G, x)
    out = grid.coarsen(da, 10).values[0]
    assert np.isnan(out[0, 0]) and out[0, 1] == 1 and np.isnan(out[0, 2]) and out[1, 0] == 5
    strict = grid.coarsen(da, 10, method="mean", max_missing_fraction=0.0).values[0]
    assert np.isnan(strict[0, 1]) and np.isclose(strict[1, 0], 1.4)
    assert np.isnan(grid.coarsen(da, 10, max_missing_fraction=1.0).values[0, 0, 0])


def test_coarsen_errors_and_yx():
    da = field(G, np.zeros(G.shape))
    with pytest.raises(GridError, match=r"lat=40, lon=60\) by factor 7"):
        grid.coarsen(da, 7)
    with pytest.raises(ConfigError):
        grid.coarsen(da, 10, method="median")
    yx = da.rename(lat="y", lon="x").transpose("time", "x", "y")
    out = grid.coarsen(yx, 5)
    assert out.dims == ("time", "x", "y") and out.shape == (1, 12, 8)


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
def test_upsample_matches_tensor(rng, method):
    lr = G.coarsen(10)
    x = rng.normal(size=(2, *lr.shape)).astype("f4")
    up = grid.upsample(field(lr, x), 10, method=method, nonnegative=False)
    ten = grid.upsample_tensor(torch.from_numpy(x)[:, None], 10, method)[:, 0].numpy()
    np.testing.assert_allclose(up.values, ten, atol=2e-5)
    assert Grid.from_dataarray(up).is_close(lr.refine(10))


def test_upsample_constant_nan_and_nonnegative():
    lr = G.coarsen(10)
    x = np.full(lr.shape, 2.0, dtype="f4")
    x[1, 2] = np.nan
    for method in ("nearest", "bilinear", "bicubic"):
        up = grid.upsample(field(lr, x), 10, method=method).values[0]
        assert np.isnan(up[10:20, 20:30]).all()  # missing stays missing ...
        assert np.isnan(up).sum() == 100  # ... and does not bleed
        np.testing.assert_allclose(up[~np.isnan(up)], 2.0, rtol=1e-6)
    spike = np.zeros(lr.shape, dtype="f4")
    spike[2, 3] = 10.0
    bc = grid.upsample(field(lr, spike), 10, method="bicubic").values
    raw = grid.upsample(field(lr, spike), 10, method="bicubic", nonnegative=False).values
    assert raw.min() < 0 and bc.min() == 0


def test_upsample_coarsen_mean_roundtrip_nearest(rng):
    lr = G.coarsen(10)
    da = field(lr, rng.random(lr.shape).astype("f4"))
    back = grid.coarsen(grid.upsample(da, 10, method="nearest"), 10, method="mean")
    np.testing.assert_allclose(back.values, da.values, rtol=1e-6)
    np.testing.assert_allclose(back.lat.values, da.lat.values)


def test_regrid_conservative_preserves_area_mean(rng):
    src = Grid(30.05, -100.05, 0.1, 0.1, 120, 90)  # 30..42N, 100.1..91.1W (edges)
    dst = Grid(30.075, -100.025, 0.15, 0.15, 80, 60)  # same outer edges, cells straddle
    assert np.allclose(src.bbox, dst.bbox)
    x = rng.gamma(0.5, 3.0, size=src.shape)
    out = grid.regrid(field(src, x), dst, method="conservative").values[0]

    def area_mean(g, v):
        w = np.cos(np.deg2rad(g.lat))[:, None] * np.ones(g.nlon)
        return (w * v).sum() / w.sum()

    np.testing.assert_allclose(area_mean(dst, out), area_mean(src, x), rtol=1e-4)


def test_regrid_identity_linear_and_missing():
    src = Grid(24.05, -124.95, 0.1, 0.1, 10, 12)
    lon2d, lat2d = np.meshgrid(src.lon, src.lat)
    lin = 2.0 * lat2d - 3.0 * lon2d
    da = field(src, lin)
    for method in ("bilinear", "conservative"):
        np.testing.assert_allclose(grid.regrid(da, src, method=method).values[0], lin,
                                   rtol=1e-9, atol=1e-9)
    # half-cell shift (IMERG centres vs block centres): bilinear is exact for linear fields
    dst = Grid(24.10, -124.90, 0.1, 0.1, 9, 11)
    out = grid.regrid(da, dst).values[0]
    lo, la = np.meshgrid(dst.lon, dst.lat)
    np.testing.assert_allclose(out, 2.0 * la - 3.0 * lo, atol=1e-9)
    x = np.ones(src.shape)
    x[3, 3] = np.nan
    out = grid.regrid(field(src, x), src, method="conservative").values[0]
    assert np.isnan(out[3, 3]) and np.isnan(out).sum() == 1
    outside = Grid(10.05, -124.95, 0.1, 0.1, 3, 3)
    assert np.isnan(grid.regrid(da, outside).values).all()
