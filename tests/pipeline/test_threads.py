"""The CPU threads rule: explicit request, then OMP_NUM_THREADS, then the idle cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from precipdiff.errors import ConfigError
from precipdiff.threads import choose_threads, idle_cores


@pytest.mark.parametrize("cores,load,expected", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1),
                                                 (2, 1.0, 1), (2, 7.5, 1), (16, 3.2, 13),
                                                 (4, -1.0, 4)])
def test_idle_cores(cores, load, expected):
    assert idle_cores(cores, load) == expected


def test_choose_threads_order(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(3, cores=2, load=5.0) == (3, "--threads")
    assert choose_threads(0, cores=2, load=1.2)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(0, cores=2, load=5.0) == (2, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert choose_threads(0, cores=2, load=0.0)[0] == 2


def test_negative_threads_refused(tmp_path):
    from precipdiff.pipeline.run import PredictRequest

    with pytest.raises(ConfigError, match="--threads must be an integer >= 0"):
        PredictRequest(inputs=[tmp_path / "x.nc"], output=tmp_path / "o.nc", threads=-1)


@pytest.mark.parametrize("extra,workers", [((), 1), (("--window-workers", "2"), 2)])
def test_cli_threads_option_is_applied(tmp_path, extra, workers):
    """--threads N sets torch's pool (logged), whatever the machine's load; Stage-II window
    workers default to one per thread, --window-workers overrides."""
    from precipdiff.io import write_netcdf

    from .conftest import coarse_field, write_tiny_weights

    w = write_tiny_weights(tmp_path / "w.safetensors", "downscale", seed=2)
    src = write_netcdf(coarse_field(ny=4, nx=4, n_time=1).rename("precip"), tmp_path / "in.nc")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    res = subprocess.run([sys.executable, "-m", "precipdiff", "predict", str(src), "--output",
                          str(tmp_path / "o.nc"), "--stages", "downscale", "--weights-downscale",
                          str(w), "--members", "1", "--steps", "1", "--device", "cpu",
                          "--threads", "1", *extra], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "CPU threads: 1 (--threads)" in res.stdout
    assert f"Stage-II window workers: up to {workers}" in res.stdout


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_lets_openmp_threads_sleep_unless_told(given, expected):
    code = ("import os, sys\nfrom precipdiff import cli\nsys.argv = ['precipdiff', '--version']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('policy', os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert f"policy {expected}" in res.stdout, res.stdout + res.stderr
