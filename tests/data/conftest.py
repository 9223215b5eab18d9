"""Fixtures for the data tests: synthetic reference/source files written as NetCDF in tmp dirs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from precipdiff.data.synth import synthetic_scene
from precipdiff.grid import coarsen
from precipdiff.io import write_netcdf

LAT0, LON0 = 35.005, -100.995  # centres of the SW 0.01 deg cell; 0.1 deg blocks start on 0.1


def scene(seed: int = 0, n_time: int = 4, shape: tuple[int, int] = (120, 240),
          **kw) -> xr.DataArray:
    """Synthetic 0.01 deg rain (mm/h), frames 2 min apart from 2019-06-10T00:00."""
    rng = np.random.default_rng(seed)
    return synthetic_scene(rng=rng, n_time=n_time, shape=shape, lat0=kw.pop("lat0", LAT0),
                           lon0=kw.pop("lon0", LON0),
                           step_minutes=kw.pop("step_minutes", 2.0), **kw).astype(np.float32)


def write_frames(da: xr.DataArray, folder: Path, prefix: str) -> list[Path]:
    """One NetCDF file per time step: ``<folder>/<prefix>_<i>.nc``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(da.sizes["time"]):
        frame = da.isel(time=[i]).rename("precip")
        frame.attrs.setdefault("units", "mm/h")
        out.append(write_netcdf(frame, folder / f"{prefix}_{i:02d}.nc"))
    return out


def biased_source(ref: xr.DataArray, *, factor: int = 10, shift_s: int = 20) -> xr.DataArray:
    """A coarse, biased source nested in ``ref``'s grid: 1.3 x mean-pooled ref, times + shift."""
    src = coarsen(ref, factor, method="mean") * np.float32(1.3)
    src = src.assign_coords(time=ref["time"].values + np.timedelta64(shift_s, "s"))
    src.attrs["units"] = "mm/h"
    return src.astype(np.float32)


@pytest.fixture(scope="session")
def S() -> SimpleNamespace:  # noqa: N802 - short handle for the helpers
    """The helpers above, for test modules (importlib import mode has no conftest import)."""
    return SimpleNamespace(scene=scene, write_frames=write_frames, biased_source=biased_source)


@pytest.fixture
def pair_files(tmp_path: Path) -> tuple[xr.DataArray, list[Path], list[Path]]:
    """(reference scene, reference files, source files) of 4 frames on 120 x 240 cells."""
    ref = scene()
    return ref, write_frames(ref, tmp_path / "in", "ref"), \
        write_frames(biased_source(ref), tmp_path / "in", "src")


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """A completed store: 6 frames, 100 x 240 fine cells, factor 10, space split 60/20/20."""
    from precipdiff.data.prepare import PrepareConfig, prepare_store

    d = tmp_path_factory.mktemp("store")
    ref = scene(seed=3, n_time=6, shape=(100, 240))
    ref[:, :7, :13] = np.nan  # a missing corner
    refs = write_frames(ref, d / "in", "ref")
    srcs = write_frames(biased_source(ref), d / "in", "src")
    cfg = PrepareConfig(reference=[str(p) for p in refs], source=[str(p) for p in srcs],
                        split="space", fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    return prepare_store(cfg, d / "store.zarr")
