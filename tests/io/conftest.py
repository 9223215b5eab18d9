"""Small synthetic files for the io tests (no real data needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr


def make_field(rng: np.random.Generator, n_time: int = 3, ny: int = 20, nx: int = 30
               ) -> xr.DataArray:
    """A float32 (time, lat, lon) mm/h field with some NaN, on a 0.1° grid."""
    values = rng.gamma(0.3, 2.0, size=(n_time, ny, nx)).astype(np.float32)
    values[:, :2, :3] = np.nan
    return xr.DataArray(
        values,
        coords={"time": pd.date_range("2021-07-06", periods=n_time, freq="h").values,
                "lat": np.round(30.05 + 0.1 * np.arange(ny), 4),
                "lon": np.round(-100.05 + 0.1 * np.arange(nx), 4)},
        dims=("time", "lat", "lon"), name="precip", attrs={"units": "mm/h"},
    )


@pytest.fixture
def field(rng) -> xr.DataArray:
    return make_field(rng)
