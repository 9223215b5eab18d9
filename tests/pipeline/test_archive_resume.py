"""A 48-step ``predict --archive --format zarr`` run, killed (SIGKILL to its whole process
group: the CLI, the embedded LocalCluster's nannies and workers) once some steps are done and
then rerun, ends bitwise identical to an uninterrupted run. All three runs go through the real
CLI in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from precipdiff.io import write_netcdf

from .conftest import coarse_field

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

N_FILES, PER_FILE = 6, 8  # 48 time steps, 30 min apart, in six files
#: Global attributes that say when a run happened, not what it wrote.
RUN_SPECIFIC = {"date_created", "history"}


def _inputs(root: Path) -> list[Path]:
    """Six 8-step 4x4 coarse inputs (each step its own field, with a missing block)."""
    start = np.datetime64("2019-06-10T00:00", "ns")
    out = []
    for k in range(N_FILES):
        steps = [coarse_field(ny=4, nx=4, n_time=1, seed=100 * k + j) for j in range(PER_FILE)]
        field = xr.concat(steps, dim="time")
        index = np.arange(k * PER_FILE, (k + 1) * PER_FILE)
        field = field.assign_coords(time=start + index * np.timedelta64(30, "m"))
        out.append(write_netcdf(field.rename("precip"), root / f"in{k}.nc"))
    return out


def _command(tiny_weights, inputs: list[Path], store: Path) -> list[str]:
    return [sys.executable, "-m", "precipdiff", "-q", "predict", *map(str, inputs), "--archive",
            "--format", "zarr", "--workers", "2", "--output", str(store),
            "--weights-correct", str(tiny_weights["correct"]),
            "--weights-downscale", str(tiny_weights["downscale"]),
            "--members", "2", "--steps", "1", "--device", "cpu"]


def _start(cmd: list[str]) -> subprocess.Popen:
    """The CLI in its own session (process group), so that one killpg reaches every process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and err == "", err
    assert out.startswith("written: "), out


def _steps_done(store: Path) -> np.ndarray | None:
    """The store's ``step_done`` (None while the store is not laid out yet)."""
    try:
        return np.asarray(zarr.open_group(store, mode="r")["step_done"][:])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _group_alive(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that can still run (zombies excepted)."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return alive


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI's process group and wait until none of its processes runs any more."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.communicate()
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid):
        assert time.monotonic() < deadline, "processes of the killed run still alive"
        time.sleep(0.05)


def _kill_after_first_step(proc: subprocess.Popen, store: Path, total: int) -> np.ndarray:
    """Poll the store's done flags; kill the whole run once at least one step is done."""
    deadline = time.monotonic() + 240
    while True:
        done = _steps_done(store)
        if done is not None and done.sum() > 0:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a step was seen done: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, "no step done within 240 s"
        time.sleep(0.05)
    _kill_group(proc)
    done = _steps_done(store)
    assert 0 < done.sum() < total, f"kill came too late to test a resume: {int(done.sum())} done"
    return done


def _assert_same_store(got: Path, ref: Path) -> None:
    """Every array bitwise equal (NaN included), array attributes equal, global attributes equal
    except the run-specific ones."""
    a, b = zarr.open_group(got, mode="r"), zarr.open_group(ref, mode="r")
    names = sorted(name for name, _ in b.arrays())
    assert sorted(name for name, _ in a.arrays()) == names
    for name in names:
        x, y = a[name][...], b[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
        if x.dtype.kind == "f":
            assert np.array_equal(np.isnan(x), np.isnan(y)), name
        assert dict(a[name].attrs) == dict(b[name].attrs), name
    for attrs in (a.attrs, b.attrs):
        assert RUN_SPECIFIC <= set(attrs)
    mine = {k: v for k, v in a.attrs.items() if k not in RUN_SPECIFIC}
    assert mine == {k: v for k, v in b.attrs.items() if k not in RUN_SPECIFIC}


@pytest.mark.slow
def test_killed_and_resumed_run_is_bitwise_identical(tiny_weights, tmp_path) -> None:
    inputs = _inputs(tmp_path)
    total = N_FILES * PER_FILE
    ref, resumed = tmp_path / "ref.zarr", tmp_path / "resumed.zarr"
    # the uninterrupted run and the one to kill side by side (the wall time of one)
    reference = _start(_command(tiny_weights, inputs, ref))
    victim = _start(_command(tiny_weights, inputs, resumed))
    try:
        before = _kill_after_first_step(victim, resumed, total)
        _finish(reference)
    finally:
        for proc in (reference, victim):
            if proc.poll() is None:
                _kill_group(proc)
    assert not resumed.with_name("resumed.zarr.report.json").exists()  # it died before that
    rerun = _start(_command(tiny_weights, inputs, resumed))  # the same command again
    try:
        _finish(rerun)
    finally:
        if rerun.poll() is None:
            _kill_group(rerun)

    _assert_same_store(resumed, ref)
    ds = xr.open_zarr(resumed)
    assert ds.sizes["time"] == total and (ds["step_done"].values == 1).all()
    assert np.isnan(ds["precip"].values).any() and np.isfinite(ds["precip"].values).any()
    assert np.isfinite(ds.attrs["volume_error"])
    report = json.loads(resumed.with_name("resumed.zarr.report.json").read_text())
    present = int(before.sum())
    assert report["status"] == "complete"
    assert report["time_steps"] == {"written": total - present, "already_present": present}
    whole = before.reshape(N_FILES, PER_FILE).all(axis=1)
    assert sorted(report["inputs"]["complete_before"]) == sorted(
        str(p) for p, w in zip(inputs, whole, strict=True) if w)
    assert sorted(report["inputs"]["done"]) == sorted(
        str(p) for p, w in zip(inputs, whole, strict=True) if not w)
    assert report["tasks"]["submitted"] == N_FILES - int(whole.sum())
