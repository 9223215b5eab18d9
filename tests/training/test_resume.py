"""Exact resume: SIGKILL then --resume reaches the same weights; SIGTERM saves a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _training_store import tiny_overrides, wait_for

from precipdiff.training.checkpoint import load_checkpoint, load_weights
from precipdiff.training.config import load_config
from precipdiff.training.loop import train

SCRIPT = Path(__file__).with_name("_slow_train.py")
STEPS = ["train.steps=8", "train.checkpoint_every_samples=8", "data.num_workers=0"]


@pytest.fixture(scope="module")
def reference(tiny_store, tmp_path_factory):
    """The uninterrupted run."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref") / "run"
    run = train(load_config(None, tiny_overrides(tiny_store, out, *STEPS)), progress=False)
    return load_weights(run / "weights.safetensors")[0], load_checkpoint(
        run / "checkpoints" / "last.pt")


def _start(overrides: list[str], *, resume: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(SCRIPT), *(["--resume"] if resume else []), *overrides]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _assert_same(weights: dict, state: dict, reference) -> None:
    ref_weights, ref_state = reference
    assert state["step"] == ref_state["step"]
    for name, value in ref_state["model"].items():
        assert torch.equal(state["model"][name], value), name
    for name, value in ref_weights.items():
        assert torch.equal(weights[name], value), name


def _step(out: Path) -> int:
    return load_checkpoint(out / "checkpoints" / "last.pt")["step"]


def test_sigterm_then_sigkill_then_resume_is_exact(tiny_store, tmp_path, reference):
    """SIGTERM saves and exits 143; the resumed run is SIGKILLed after its next checkpoint;
    resuming again finishes with exactly the weights of the uninterrupted run."""
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    overrides = tiny_overrides(tiny_store, out, *STEPS)
    proc = _start(overrides)
    wait_for(last, proc, timeout=60.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    stopped = _step(out)
    assert 2 <= stopped < 8 and not (out / "weights.safetensors").exists()
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "stopped" for e in events)

    mtime = last.stat().st_mtime_ns
    proc = _start(overrides, resume=True)
    deadline = time.monotonic() + 60
    while last.stat().st_mtime_ns == mtime:  # last.pt is replaced, never removed
        assert proc.poll() is None and time.monotonic() < deadline, "no new checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _step(out)
    assert stopped < killed_at < 8 and not (out / "weights.safetensors").exists()

    run = train(load_config(None, overrides), resume=True, progress=False)
    _assert_same(load_weights(run / "weights.safetensors")[0], load_checkpoint(last), reference)
    samples = [json.loads(line)["samples"] for line in
               (run / "metrics.jsonl").read_text().splitlines()]
    assert samples == sorted(samples)  # lines past a checkpoint are dropped on resume
