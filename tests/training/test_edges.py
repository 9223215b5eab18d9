"""Training at the edges, through the real CLI where a user meets it: config values refused up
front, divergence stopped before anything non-finite is written, one training per run directory,
signals that save, clean up and exit 130/143, and a killed run's leftovers removed on resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _training_store import tiny_overrides, wait_for

from precipdiff.atomic import atomic_path
from precipdiff.training.checkpoint import load_checkpoint
from precipdiff.training.config import load_config
from precipdiff.training.loop import DivergedError, train
from precipdiff.training.rundir import LOCK_NAME, RunLock, RunLockedError
from precipdiff.training.signals import terminate_raises

SCRIPT = Path(__file__).with_name("_slow_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "precipdiff", *args], capture_output=True,
                          text=True, env=ENV, timeout=300)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _leftovers(run: Path) -> list[str]:
    """Temporary files and locks that a finished or stopped training must not leave."""
    return sorted(p.name for p in run.rglob("*") if ".tmp-" in p.name or p.name in (
        LOCK_NAME, ".previous.pt.link"))


def _finite_checkpoints(run: Path) -> None:
    for name in ("last.pt", "previous.pt"):
        path = run / "checkpoints" / name
        if path.exists():
            state = load_checkpoint(path)
            for part in ("model", "ema"):
                assert all(torch.isfinite(v).all() for v in state[part].values()), (name, part)


@pytest.mark.parametrize(("override", "key"), [("diffusion.val_sampler=foo",
                                                "diffusion.val_sampler"),
                                               ("optim.lr=.inf", "optim.lr")])
def test_bad_config_refused_before_training(tiny_store, tmp_path, override, key):
    """Found when the config is loaded, not after a training: no run directory is created."""
    out = tmp_path / "run"
    res = run_cli("train", *_sets(tiny_overrides(tiny_store, out, override)))
    assert res.returncode == 2
    assert key in _one_line(res.stderr)
    assert not out.exists()


def test_divergence_stops_with_one_line_and_keeps_good_files(tiny_store, tmp_path):
    """optim.lr=1e30 on resume: exit 2, one line; the finished run's weights and every
    checkpoint stay finite (the last good one is kept); nothing temporary is left."""
    out = tmp_path / "run"
    base = tiny_overrides(tiny_store, out, "train.steps=2", "optim.warmup_samples=0")
    train(load_config(None, base), progress=False)
    weights = (out / "weights.safetensors").read_bytes()
    more = [*base, "train.steps=8", "optim.lr=1e30", "train.checkpoint_every_samples=4"]
    res = run_cli("train", "--resume", *_sets(more))
    assert res.returncode == 2
    assert "training diverged" in _one_line(res.stderr)
    assert (out / "weights.safetensors").read_bytes() == weights
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] >= 2
    _finite_checkpoints(out)
    assert _leftovers(out) == []


def test_divergence_in_process_raises(tiny_store, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(tiny_store, out, "optim.lr=1e30",
                                           "optim.warmup_samples=0"))
    with pytest.raises(DivergedError, match="diverged"):
        train(cfg, progress=False)
    assert not (out / "weights.safetensors").exists()
    _finite_checkpoints(out)
    assert _leftovers(out) == []


def _start_slow(overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), *overrides], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_second_training_in_the_same_directory_is_refused(tiny_store, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_store, out, "train.steps=400", "data.num_workers=0")
    first = _start_slow(overrides)
    try:
        wait_for(out / "config.yaml", first, timeout=120.0)
        lock = json.loads((out / LOCK_NAME).read_text())
        assert lock["pid"] == first.pid
        res = run_cli("train", *_sets(overrides))
        assert res.returncode == 2
        line = _one_line(res.stderr)
        assert "in use by another training" in line and str(first.pid) in line
        assert first.poll() is None  # the first one runs on, undisturbed
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert _leftovers(out) == []  # the lock went with its training


def test_lock_of_a_dead_process_is_taken_over(tiny_store, tmp_path):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host":
                                             socket.gethostname()}))
    run = train(load_config(None, tiny_overrides(tiny_store, out, "train.steps=1")),
                progress=False)
    assert (run / "weights.safetensors").is_file() and _leftovers(run) == []


def test_lock_in_process_and_failed_start_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "run"
    with RunLock(out):
        with pytest.raises(RunLockedError, match="in use"), RunLock(out):
            pass
        assert (out / LOCK_NAME).exists()
    assert not (out / LOCK_NAME).exists()
    with pytest.raises(ValueError), RunLock(tmp_path / "b" / "run"):
        raise ValueError("start failed")
    assert not (tmp_path / "b").exists()


def test_resume_removes_a_killed_runs_temporary_files(tiny_store, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_store, out, "train.steps=2")
    train(load_config(None, overrides), progress=False)
    stale = [out / ".weights.safetensors.tmp-abc123", out / "checkpoints" / "..staged.pt.tmp-x1",
             out / ".config.yaml.tmp-q", out / "checkpoints" / ".previous.pt.link"]
    for path in stale:
        path.write_bytes(b"half written")
    train(load_config(None, [*overrides, "train.steps=3"]), resume=True, progress=False)
    assert _leftovers(out) == []
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3


def test_sigterm_outside_the_steps_cleans_up_like_ctrl_c(tmp_path):
    """SIGTERM raises SystemExit(143) inside the block, so atomic writes remove their temp."""
    target, before = tmp_path / "weights.safetensors", signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, terminate_raises(), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_train_signal_saves_cleans_and_exits(tiny_store, tmp_path, signum, status):
    """Ctrl-C (SIGINT) and SIGTERM during `precipdiff train`: a checkpoint is saved, the exit
    status is 128 + signal, no weights, temporary files or lock are left."""
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_store, out, "train.steps=100000", "data.val_patches=0",
                               "train.val_every_samples=1000000000")
    proc = subprocess.Popen([sys.executable, "-m", "precipdiff", "train", *_sets(overrides)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "checkpoints" / "last.pt", proc, timeout=120.0)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, stderr[-3000:]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] >= 2
    assert not (out / "weights.safetensors").exists()
    assert _leftovers(out) == []
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "stopped" for e in events)


def test_second_signal_stops_at_once_with_its_own_status():
    """The first SIGTERM only asks for a checkpoint; a second one ends with 143, not 130."""
    from precipdiff.training.distributed import DistInfo
    from precipdiff.training.signals import StopSignals

    with pytest.raises(SystemExit) as exit_info, StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        assert stop.requested(DistInfo()) and stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert exit_info.value.code == 128 + signal.SIGTERM
