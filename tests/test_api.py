"""``precipdiff.downscale``: eager and lazy (dask, one task per time step) give the same
ensembles, each step matches a one-step archive file, and ``import precipdiff`` stays light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import precipdiff
from precipdiff.errors import ConfigError, PrecipdiffError

from .pipeline.conftest import coarse_field, write_tiny_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("api_weights")
    return {
        "weights_correct": write_tiny_weights(root / "c.safetensors", "correct", seed=1),
        "weights_downscale": write_tiny_weights(root / "d.safetensors", "downscale", seed=2),
    }


def test_lazy_equals_eager(weights) -> None:
    src = coarse_field(ny=6, nx=8, n_time=2)
    eager = precipdiff.downscale(src, members=2, steps=2, **weights)
    lazy = precipdiff.downscale(src.chunk(time=1), members=2, steps=2, **weights)
    assert lazy["precip"].chunks is not None and lazy["precip"].data.numblocks[0] == 2
    assert eager["precip"].dims == ("time", "member", "lat", "lon")
    assert eager["precip"].shape == (2, 2, 24, 32)
    computed = lazy.compute(scheduler="synchronous")
    xr.testing.assert_identical(computed, eager)
    assert np.isfinite(eager["precip"].values).any()
    # the two steps got different seeds, and a Dataset input is the same as its variable
    assert eager["seed"].values[0] != eager["seed"].values[1]
    again = precipdiff.downscale(src.to_dataset(name="precip"), members=2, steps=2, **weights)
    xr.testing.assert_identical(again, eager)


def test_lazy_on_a_distributed_cluster(weights) -> None:
    distributed = pytest.importorskip("distributed")
    src = coarse_field(ny=6, nx=8, n_time=2)
    eager = precipdiff.downscale(src, members=2, steps=2, **weights)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        lazy = precipdiff.downscale(src.chunk(time=1), members=2, steps=2, **weights).compute()
    xr.testing.assert_identical(lazy, eager)


def test_step_matches_one_step_archive_file(weights, tmp_path) -> None:
    """Step t of downscale() is what predict --archive writes for a file holding only step t."""
    from precipdiff.io import write_netcdf
    from precipdiff.pipeline.run import PredictRequest, run_predict

    src = coarse_field(ny=6, nx=8, n_time=2)
    out = precipdiff.downscale(src, members=2, steps=2, **weights)
    path = write_netcdf(src.isel(time=[1]).rename("precip"), tmp_path / "one.nc")
    req = PredictRequest(inputs=[path], output=tmp_path / "arch", members=2, steps=2,
                         device="cpu", archive=True, workers=1, **weights)
    (written,) = list(run_predict(req))
    nc = xr.open_dataset(written)
    np.testing.assert_array_equal(out["precip"].values[1], nc["precip"].values[:, 0])
    assert int(out["seed"].values[1]) == nc.attrs["seed"]


def test_time_selection(weights) -> None:
    """time= keeps the steps in [START, END] (same ensembles as without it) and records it."""
    src = coarse_field(ny=6, nx=8, n_time=2)
    full = precipdiff.downscale(src, members=2, steps=2, **weights)
    part = precipdiff.downscale(src, members=2, steps=2, time="2019-06-10T00:30/", **weights)
    assert part.attrs["time_selection"] == "2019-06-10T00:30/"
    xr.testing.assert_equal(part, full.isel(time=[1]))
    lazy = precipdiff.downscale(src.chunk(time=1), members=2, steps=2,
                                time=slice(None, "2019-06-10T00:10"), **weights)
    assert lazy.sizes["time"] == 1
    with pytest.raises(ConfigError, match=r"no time step of the input array .* the array covers"):
        precipdiff.downscale(src, time="2020-01-01/", **weights)


def test_bad_arguments(weights) -> None:
    src = coarse_field(ny=6, nx=8, n_time=1)
    with pytest.raises(ConfigError, match="--members"):
        precipdiff.downscale(src, members=0, **weights)
    with pytest.raises(ConfigError, match="unknown option"):
        precipdiff.downscale(src, coarsen=2, **weights)
    with pytest.raises(PrecipdiffError, match="semantics"):
        precipdiff.downscale(src, input_semantics="block_maximum", **weights)
    with pytest.raises(ConfigError, match="--product fmi.*not trained with product"):
        precipdiff.downscale(src, product="fmi", **weights)
    ds = xr.Dataset({"a": src, "b": src})
    with pytest.raises(ConfigError, match="variable="):
        precipdiff.downscale(ds, **weights)


def test_import_is_light() -> None:
    code = ("import sys, precipdiff; assert 'torch' not in sys.modules; "
            "assert 'precipdiff.api' not in sys.modules; assert callable(precipdiff.downscale); "
            "assert 'precipdiff.api' in sys.modules; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
