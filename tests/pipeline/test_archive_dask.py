"""Archive mode on a real dask LocalCluster (2 worker processes): the zarr store, resuming,
a worker killed mid-task, bad inputs, and weights loaded once per worker."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr
import zarr

from precipdiff.errors import ConfigError, GridError, PrecipdiffError
from precipdiff.io import write_netcdf
from precipdiff.pipeline import archive
from precipdiff.pipeline.run import PredictRequest, _options, load_pipeline

from .conftest import coarse_field, write_temporal

distributed = pytest.importorskip("distributed")

# the hooks below run on the workers, which cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c, distributed.Client(c) as client:
        yield c.scheduler_address, client


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three one-step inputs, one hour apart, plus one with two steps (the first is 30 min
    later than the last one-step file), all on one 6x8 grid."""
    root = tmp_path_factory.mktemp("archive_inputs")
    field = coarse_field(ny=6, nx=8, n_time=2)
    out = []
    for k in range(3):
        one = field.isel(time=[0]).assign_coords(time=field["time"][[0]] + np.timedelta64(k, "h"))
        out.append(write_netcdf(one.rename("precip"), root / f"f{k}.nc"))
    two = field.assign_coords(time=field["time"] + np.timedelta64(3, "h"))
    out.append(write_netcdf(two.rename("precip"), root / "f3.nc"))
    return out


def _request(tiny_weights, inputs, output, address, **kw) -> PredictRequest:
    return PredictRequest(
        inputs=list(inputs), output=output, weights_correct=tiny_weights["correct"],
        weights_downscale=tiny_weights["downscale"], members=2, steps=2, device="cpu",
        archive=True, scheduler=address, **kw,
    )


def _run(req: PredictRequest, hook=None) -> list[Path]:
    pipeline = load_pipeline(req, "cpu")
    return list(archive.run_archive(req, pipeline, _options(req, "cpu"), hook=hook))


@pytest.fixture(scope="module")
def reference(tiny_weights, files, cluster, tmp_path_factory) -> Path:
    """An uninterrupted zarr run over every input."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert _run(_request(tiny_weights, files, store, cluster[0], archive_format="zarr")) == [store]
    return store


def test_store_layout_and_same_ensembles_as_netcdf(tiny_weights, files, cluster, reference,
                                                   tmp_path) -> None:
    ds = xr.open_zarr(reference)
    assert ds["precip"].dims == ("time", "member", "lat", "lon")
    assert ds["precip"].shape == (5, 2, 24, 32)
    assert ds["precip"].encoding["chunks"][:2] == (1, 2)
    assert ds["exceedance_probability"].dims[:2] == ("time", "threshold")
    assert ds.attrs["Conventions"] == "CF-1.8" and ds["precip"].attrs["units"] == "mm h-1"
    assert ds["precip"].attrs["grid_mapping"] == "crs" and "crs_wkt" in ds["crs"].attrs
    assert (ds["step_done"].values == 1).all()
    assert np.isfinite(ds["precip"].values).any()
    assert "consolidated_metadata" in (reference / "zarr.json").read_text()
    # the NetCDF mode (one file per input) writes the same ensembles with the same seeds
    out = tmp_path / "nc"
    written = _run(_request(tiny_weights, files, out, cluster[0]))
    assert len(written) == len(files)
    for path in files:
        nc = xr.open_dataset(out / f"{path.name}.precipdiff.nc")
        steps = ds.sel(time=nc["time"].values)
        np.testing.assert_array_equal(steps["precip"].values,
                                      nc["precip"].transpose("time", "member", ...).values)
        assert (steps["seed"].values == nc.attrs["seed"]).all()
    # each worker loaded the weights once for all those tasks
    loads = cluster[1].run(lambda: archive.LOADS["count"])
    assert max(loads.values()) == 1 and min(loads.values()) >= 0


def _volume_sums(precip: np.ndarray, corrected: np.ndarray, f: int = 4):
    """Fine rain / f**2 and corrected coarse rain over the valid cells, per time step."""
    t, m, ny, nx = corrected.shape
    blocks = precip.reshape(t, m, ny, f, nx, f)
    valid = np.isfinite(blocks).all(axis=(3, 5)) & np.isfinite(corrected)
    fine = np.where(valid, np.nansum(blocks, axis=(3, 5), dtype=np.float64), 0).sum(axis=(1, 2, 3))
    coarse = np.where(valid, corrected, 0).astype(np.float64).sum(axis=(1, 2, 3))
    return fine / f**2, coarse


def test_volume_error_per_step_and_run(tiny_weights, files, cluster, reference) -> None:
    """Each step's volume_error (and the run's, in attrs) is the fine-grid mean of the members
    over the corrected coarse mean, minus 1, recomputed here from the store's own fields."""
    ds = xr.open_zarr(reference)
    fine, coarse = _volume_sums(ds["precip"].values, ds["corrected_lr"].values)
    assert (coarse > 0).all()
    np.testing.assert_allclose(ds["volume_error"].values, fine / coarse - 1, rtol=1e-6)
    np.testing.assert_allclose(ds["coarse_volume"].values, coarse, rtol=1e-6)
    assert ds["volume_error"].attrs["units"] == "1"
    assert "this time step" in ds["volume_error"].attrs["comment"]
    assert ds.attrs["volume_error"] == pytest.approx(fine.sum() / coarse.sum() - 1, rel=1e-6)
    assert "all members and times" in ds.attrs["volume_error_meaning"]


def test_rerun_does_only_missing_steps(tiny_weights, files, cluster, reference, tmp_path) -> None:
    store = tmp_path / "s.zarr"
    req = _request(tiny_weights, files, store, cluster[0], archive_format="zarr")
    _run(req)
    root = zarr.open_group(store, mode="r+")
    root["step_done"][4] = 0
    root["precip"][4] = np.nan  # as if the run had died in this step
    log = tmp_path / "steps.log"
    _run(req, hook=_Logger(str(log)))
    assert log.read_text().split() == ["step_written:4", "step_done:4"]
    for name in ("precip", "corrected_lr", "ensemble_std", "step_done", "seed", "volume_error"):
        np.testing.assert_array_equal(zarr.open_group(store)[name][:],
                                      zarr.open_group(reference)[name][:])
    run_error = xr.open_zarr(store).attrs["volume_error"]
    assert run_error == xr.open_zarr(reference).attrs["volume_error"]
    # nothing left to do: a third run writes nothing
    log.unlink()
    _run(req, hook=_Logger(str(log)))
    assert not log.exists()


def test_temporal_stage_two_in_the_store(tiny_weights, files, cluster, tmp_path) -> None:
    """With a temporal Stage II each file is one record: the store holds what the NetCDF
    mode writes per file, and a resumed step is sampled again with its record."""
    temporal = write_temporal(tiny_weights["downscale"], tmp_path / "t.safetensors",
                              trained=True)
    weights = {**tiny_weights, "downscale": temporal}
    store = tmp_path / "t.zarr"
    req = _request(weights, files, store, cluster[0], archive_format="zarr")
    assert _run(req) == [store]
    ds = xr.open_zarr(store)
    assert (ds["step_done"].values == 1).all() and np.isfinite(ds["precip"].values).any()
    out = tmp_path / "nc"
    _run(_request(weights, files[2:], out, cluster[0]))
    for path in files[2:]:  # f3.nc has two steps: one record
        nc = xr.open_dataset(out / f"{path.name}.precipdiff.nc")
        assert nc.attrs["downscale_temporal_frames"] == 3
        steps = ds.sel(time=nc["time"].values)
        np.testing.assert_array_equal(steps["precip"].values,
                                      nc["precip"].transpose("time", "member", ...).values)
    reference = {n: zarr.open_group(store)[n][:] for n in ("precip", "volume_error")}
    root = zarr.open_group(store, mode="r+")
    root["step_done"][4] = 0
    root["precip"][4] = np.nan
    log = tmp_path / "steps.log"
    _run(req, hook=_Logger(str(log)))
    assert log.read_text().split() == ["step_written:4", "step_done:4"]
    for name, value in reference.items():
        np.testing.assert_array_equal(zarr.open_group(store)[name][:], value)


def test_time_factor_refines_each_file(tiny_weights, files, cluster, tmp_path) -> None:
    """--time-factor in archive mode: each file refined on its own; the store's time axis holds
    the sub-steps, as the NetCDF mode's file does, with the same values; a rerun with another
    factor is refused."""
    store = tmp_path / "r.zarr"
    req = _request(tiny_weights, files[3:], store, cluster[0], archive_format="zarr",
                   time_factor=2)
    assert _run(req) == [store]
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == 4 and ds.attrs["time_factor"] == "2"
    assert (np.diff(ds["time"].values) == np.timedelta64(15, "m")).all()
    out = tmp_path / "nc"
    _run(_request(tiny_weights, files[3:], out, cluster[0], time_factor=2))
    nc = xr.open_dataset(out / f"{files[3].name}.precipdiff.nc")
    np.testing.assert_array_equal(ds["time"].values, nc["time"].values)
    np.testing.assert_array_equal(ds["precip"].values,
                                  nc["precip"].transpose("time", "member", ...).values)
    pairs = ds["source_lr"].values.reshape(2, 2, *ds["source_lr"].shape[1:]).mean(axis=1)
    given = xr.open_dataset(files[3])["precip"].values
    np.testing.assert_allclose(pairs, given, rtol=1e-4, atol=1e-5)  # each interval's mean kept
    with pytest.raises(ConfigError, match="time_factor"):
        _run(_request(tiny_weights, files[3:], store, cluster[0], archive_format="zarr",
                      time_factor=3))


def test_worker_killed_mid_task(tiny_weights, files, cluster, reference, tmp_path) -> None:
    """The first task to finish writing a step's fields kills its worker before marking the
    step done: dask reruns the task elsewhere and the store ends identical to the reference."""
    store = tmp_path / "k.zarr"
    marker = tmp_path / "killed"
    req = _request(tiny_weights, files, store, cluster[0], archive_format="zarr")
    _run(req, hook=_KillOnce(str(marker)))
    assert marker.exists()
    # the run report names the tasks dask ran again (the one that died, and any queued on
    # the same worker)
    report = json.loads((tmp_path / "k.zarr.report.json").read_text())
    retried = report["tasks"]["retried"]
    assert retried and set(retried.values()) == {1} and retried.keys() <= set(map(str, files))
    assert report["time_steps"] == {"written": 5, "already_present": 0}
    ref = zarr.open_group(reference)
    got = zarr.open_group(store)
    for name in ("precip", "ensemble_mean", "exceedance_probability", "source_lr", "step_done",
                 "seed", "input_id"):
        np.testing.assert_array_equal(got[name][:], ref[name][:])


def test_bad_input_reported_rest_completes(tiny_weights, files, cluster, tmp_path) -> None:
    bad = tmp_path / "bad.nc"
    bad.write_bytes(files[0].read_bytes()[:300])
    store = tmp_path / "b.zarr"
    req = _request(tiny_weights, [files[0], bad, files[1]], store, cluster[0],
                   archive_format="zarr")
    with pytest.raises(PrecipdiffError, match=r"1 input file\(s\) failed.*bad\.nc"):
        _run(req)
    assert (zarr.open_group(store)["step_done"][:] == 1).all()
    assert zarr.open_group(store)["step_done"].shape == (2,)
    report = json.loads((tmp_path / "b.zarr.report.json").read_text())
    assert report["status"] == "inputs_skipped" and report["format"] == "zarr"
    assert sorted(report["inputs"]["done"]) == sorted(map(str, [files[0], files[1]]))
    (skipped,) = report["inputs"]["skipped"]
    assert skipped["input"] == str(bad) and "bad.nc" in skipped["reason"]
    assert "\n" not in skipped["reason"]
    assert report["time_steps"] == {"written": 2, "already_present": 0}
    assert report["workers"] == 2 and report["scheduler"] == cluster[0]
    assert report["tasks"] == {"submitted": 2, "retried": {}}
    assert report["wall_time_s"] > 0 and report["started"].endswith("Z")


def test_failed_step_then_resumed_run(tiny_weights, files, cluster, tmp_path) -> None:
    """A task that fails leaves its step undone: no run-level volume_error, the input in the
    report's skipped list; the rerun does that step only and reports the other as present."""
    store = tmp_path / "r.zarr"
    req = _request(tiny_weights, files[:2], store, cluster[0], archive_format="zarr")
    with pytest.raises(PrecipdiffError, match="refused step 0"):
        _run(req, hook=_FailAt(0))
    assert zarr.open_group(store)["step_done"][:].tolist() == [0, 1]
    assert "volume_error" not in xr.open_zarr(store).attrs
    report = json.loads((tmp_path / "r.zarr.report.json").read_text())
    assert report["inputs"]["skipped"] == [{"input": str(files[0]), "reason": "refused step 0"}]
    assert report["time_steps"] == {"written": 1, "already_present": 0}
    assert _run(req) == [store]
    report = json.loads((tmp_path / "r.zarr.report.json").read_text())
    assert report["status"] == "complete" and report["inputs"]["skipped"] == []
    assert report["inputs"]["done"] == [str(files[0])]
    assert report["inputs"]["complete_before"] == [str(files[1])]
    assert report["time_steps"] == {"written": 1, "already_present": 1}
    assert np.isfinite(xr.open_zarr(store).attrs["volume_error"])


def test_one_grid_and_unique_times(tiny_weights, files, cluster, tmp_path) -> None:
    other = coarse_field(ny=6, nx=10, n_time=1)
    other = other.assign_coords(time=other["time"] + np.timedelta64(9, "h"))
    odd = write_netcdf(other.rename("precip"), tmp_path / "odd.nc")
    req = _request(tiny_weights, [files[0], odd], tmp_path / "g.zarr", cluster[0],
                   archive_format="zarr")
    with pytest.raises(GridError, match=r"odd\.nc is on another grid"):
        _run(req)
    twin = tmp_path / "twin.nc"
    twin.write_bytes(files[0].read_bytes())
    req = _request(tiny_weights, [files[0], twin], tmp_path / "t.zarr", cluster[0],
                   archive_format="zarr")
    with pytest.raises(ConfigError, match=r"both hold the time"):
        _run(req)
    assert not (tmp_path / "g.zarr").exists() and not (tmp_path / "t.zarr").exists()


def test_other_settings_refused(tiny_weights, files, cluster, reference, tmp_path) -> None:
    req = _request(tiny_weights, files, reference, cluster[0], archive_format="zarr", seed=5)
    with pytest.raises(ConfigError, match="made with other settings"):
        _run(req)


def test_time_selection_lays_out_selected_steps(tiny_weights, files, cluster, reference,
                                               tmp_path) -> None:
    """--time: the store holds only the selected steps (f0 is outside, f3 half inside); steps
    of whole files equal the reference's; a rerun without --time is refused."""
    from precipdiff.pipeline.timesel import parse_time_range

    store = tmp_path / "sel.zarr"
    req = _request(tiny_weights, files, store, cluster[0], archive_format="zarr",
                   time=parse_time_range("2019-06-10T01:00/2019-06-10T03:00"))
    assert _run(req) == [store]
    ds = xr.open_zarr(store)
    hours = np.array(["2019-06-10T01:00", "2019-06-10T02:00", "2019-06-10T03:00"],
                     "datetime64[ns]")
    np.testing.assert_array_equal(ds["time"].values, hours)
    assert (ds["step_done"].values == 1).all()
    assert ds.attrs["time_selection"] == "2019-06-10T01:00/2019-06-10T03:00"
    ref = xr.open_zarr(reference)
    np.testing.assert_array_equal(ds["precip"].values[:2], ref["precip"].sel(time=hours[:2]))
    with pytest.raises(ConfigError, match="made with other settings"):
        _run(_request(tiny_weights, files, store, cluster[0], archive_format="zarr"))


def test_progress_follows_tasks(tiny_weights, files, cluster, tmp_path) -> None:
    calls = []
    req = _request(tiny_weights, files[:2], tmp_path / "p", cluster[0])
    pipeline = load_pipeline(req, "cpu")
    out = list(archive.run_archive(req, pipeline, _options(req, "cpu"),
                                   progress=lambda done, total: calls.append((done, total))))
    assert len(out) == 2 and calls == [(0, 2), (1, 2), (2, 2)]


class _Logger:
    """Hook that appends ``event:index`` lines to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, event: str, index: int) -> None:
        with open(self.path, "a") as fh:
            fh.write(f"{event}:{index}\n")


class _FailAt:
    """Hook that fails (a user error) once the fields of store step ``index`` are written."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, event: str, index: int) -> None:
        if event == "step_written" and index == self.index:
            raise PrecipdiffError(f"refused step {index}")


class _KillOnce:
    """Hook that kills its worker process the first time a step's fields are written."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, event: str, index: int) -> None:
        if event == "step_written" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


def _cli(*args: str):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _cli_args(tiny_weights, *extra: str) -> list[str]:
    return ["predict", *extra, "--weights-correct", str(tiny_weights["correct"]),
            "--weights-downscale", str(tiny_weights["downscale"]), "--members", "2",
            "--steps", "2", "--device", "cpu"]


def test_cli_zarr_store(tiny_weights, files, reference, tmp_path) -> None:
    """Through the real CLI on its embedded cluster: the store equals the reference; a zarr
    store without --archive, and inputs on two grids, are one-line errors leaving nothing."""
    store = tmp_path / "cli.zarr"
    res = _cli("-q", *_cli_args(tiny_weights, *map(str, files), "--archive", "--format", "zarr",
                                "--workers", "2", "--output", str(store)))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.splitlines() == [f"written: {store}"]
    np.testing.assert_array_equal(zarr.open_group(store)["precip"][:],
                                  zarr.open_group(reference)["precip"][:])
    res = _cli(*_cli_args(tiny_weights, str(files[0]), "--format", "zarr",
                          "--output", str(tmp_path / "x.zarr")))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "needs --archive" in res.stderr
    other = coarse_field(ny=6, nx=10, n_time=1)
    odd = write_netcdf(other.rename("precip"), tmp_path / "odd.nc")
    res = _cli(*_cli_args(tiny_weights, str(files[1]), str(odd), "--archive", "--format", "zarr",
                          "--output", str(tmp_path / "y.zarr")))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "odd.nc is on another grid" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.zarr", "cli.zarr.report.json",
                                                          "odd.nc"]


def test_cli_unknown_format(tiny_weights, files, tmp_path) -> None:
    res = _cli(*_cli_args(tiny_weights, str(files[0]), "--archive", "--format", "tiff",
                          "--output", str(tmp_path / "out")))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "--format 'tiff' is unknown" in res.stderr and not list(tmp_path.iterdir())


def test_worker_device_spreads_workers_over_gpus():
    """With several GPUs, LocalCluster workers 0..N-1 take cuda:0..N-1 (round robin); one GPU,
    the CPU or an explicit device are left as given."""
    from precipdiff.pipeline.archive import worker_device

    assert [worker_device("cuda", name=i, gpus=2) for i in range(4)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_device("cuda", name=3, gpus=1) == "cuda"
    assert worker_device("cpu", name=3, gpus=4) == "cpu"
    assert worker_device("cuda:1", name=0, gpus=4) == "cuda:1"
    assert worker_device("cuda", name="tcp-worker-a", gpus=3).startswith("cuda:")
    assert worker_device("cuda", gpus=2) == "cuda"  # not on a dask worker


def test_embedded_workers_run_without_the_profiler() -> None:
    """dask's profiler keeps a running task's call tree: a worker's memory grew with the
    length of its input. The embedded cluster turns it off in its workers only."""
    import dask

    from precipdiff.cluster import dask_client

    def profiling() -> bool:
        import dask

        return bool(dask.config.get("distributed.worker.profile.enabled"))

    with dask_client(1) as client:
        assert list(client.run(profiling).values()) == [False]
    assert dask.config.get("distributed.worker.profile.enabled") is True
