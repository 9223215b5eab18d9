"""DDP: 2 gloo processes with the same global batch reach the weights of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _training_store import tiny_overrides

from precipdiff.models.unet import UNet
from precipdiff.training.checkpoint import load_checkpoint
from precipdiff.training.config import load_config
from precipdiff.training.loop import train

STEPS = ["train.steps=3", "data.val_patches=0"]


def _losses(run) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["kind"] == "train"]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_match_one(tiny_store, tmp_path):
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    sets = [f"--set={o}" for o in tiny_overrides(tiny_store, ddp_out, *STEPS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "precipdiff.training", "--no-progress", *sets]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    one = train(load_config(None, tiny_overrides(tiny_store, one_out, *STEPS)), progress=False)
    acc = train(load_config(None, tiny_overrides(tiny_store, tmp_path / "acc", *STEPS,
                                                 "optim.accumulate=2")), progress=False)
    ref = load_checkpoint(one / "checkpoints" / "last.pt")
    for other in (ddp_out, acc):
        state = load_checkpoint(other / "checkpoints" / "last.pt")
        assert state["step"] == ref["step"] == 3
        assert _losses(other) == pytest.approx(_losses(one), rel=1e-5)
        assert _max_diff(state["model"], ref["model"]) < 1e-5
        assert _max_diff(state["ema"], ref["ema"]) < 1e-5
    torch.manual_seed(0)
    fresh = UNet(load_config(None, tiny_overrides(tiny_store, one_out)).model.unet_config(1))
    assert _max_diff(fresh.state_dict(), ref["model"]) > 1e-3  # the tolerance is meaningful
