"""Test helpers: optional oracles (xarray-style ``has_x, requires_x``) and synthetic rain."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr


def importorskip_pair(modname: str) -> tuple[bool, pytest.MarkDecorator]:
    """``(has_mod, requires_mod)``: a flag and a skip marker for an optional oracle."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(modname)
        has = True
    except ImportError:
        has = False
    return has, pytest.mark.skipif(not has, reason=f"requires {modname}")


has_pysteps, requires_pysteps = importorskip_pair("pysteps")
has_scores, requires_scores = importorskip_pair("scores")
has_properscoring, requires_properscoring = importorskip_pair("properscoring")


def rain(rng: np.random.Generator, shape: tuple[int, ...], wet: float = 0.3,
         smooth: float = 2.0) -> np.ndarray:
    """Zero-inflated, spatially correlated gamma-like rain (mm/h) of ``shape`` (..., ny, nx)."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal(shape)
    sigma = (0,) * (len(shape) - 2) + (smooth, smooth)
    field = gaussian_filter(noise, sigma)
    field /= field.std()
    cut = np.quantile(field, 1 - wet)
    return np.where(field > cut, np.expm1(1.5 * (field - cut)) * 4.0, 0.0)


def as_field(values: np.ndarray, *, member: bool = False) -> xr.DataArray:
    """Wrap ``(member?, time, lat, lon)`` values in a DataArray on a 0.01-degree grid."""
    dims = (["member"] if member else []) + ["time", "lat", "lon"]
    nt, ny, nx = values.shape[-3:]
    coords = {
        "time": np.datetime64("2020-01-01T00", "ns") + np.arange(nt) * np.timedelta64(1, "h"),
        "lat": 40.0 + 0.01 * np.arange(ny),
        "lon": -100.0 + 0.01 * np.arange(nx),
    }
    return xr.DataArray(values, dims=dims, coords=coords, attrs={"units": "mm/h"})


def read_mrms_crop(path: Path, *, rows: slice, cols: slice) -> np.ndarray:
    """A crop of an MRMS GRIB2 PrecipRate field via eccodes; missing (-3) -> NaN."""
    eccodes = pytest.importorskip("eccodes")
    with open(path, "rb") as fh:
        gid = eccodes.codes_grib_new_from_file(fh)
        try:
            nx = eccodes.codes_get(gid, "Ni")
            ny = eccodes.codes_get(gid, "Nj")
            values = eccodes.codes_get_values(gid).reshape(ny, nx)
        finally:
            eccodes.codes_release(gid)
    crop = values[rows, cols].astype(np.float64)
    crop[crop < 0] = np.nan
    return crop
