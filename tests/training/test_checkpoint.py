"""Resume checkpoints: round trips, corruption, config mismatch (release weights: test_release)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from precipdiff.errors import CheckpointError
from precipdiff.training.checkpoint import (
    check_resume_config,
    find_resume_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from precipdiff.training.config import load_config


def _state(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    cfg = load_config(None, ["data.store=s.zarr", "train.steps=3"])
    return {"model": model.state_dict(), "ema": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": {"samples_seen": step}, "step": step, "samples_seen": 8 * step,
            "rng": rng_state(), "data": {"epoch": 0, "batch_in_epoch": step},
            "config": cfg.to_dict()}


def test_round_trip_and_rotation(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    prev = load_checkpoint(tmp_path / "checkpoints" / "previous.pt")
    assert (last["step"], prev["step"]) == (2, 1)
    assert find_resume_checkpoint(tmp_path)[1]["step"] == 2


def test_corrupt_last_falls_back_and_corrupt_file_raises(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(last)
    path, state = find_resume_checkpoint(tmp_path)
    assert path.name == "previous.pt" and state["step"] == 1
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_resume_checkpoint(tmp_path / "empty")


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_config_mismatch_names_keys(tmp_path):
    saved = load_config(None, ["data.store=s.zarr", "train.steps=3"]).to_dict()
    same = load_config(None, ["data.store=s.zarr", "train.steps=99", "optim.lr=0.1"]).to_dict()
    check_resume_config("x.pt", saved, same)  # duration and lr may change
    other = load_config(None, ["data.store=s.zarr", "train.steps=3", "model.model_channels=16",
                               "data.patch=64"]).to_dict()
    with pytest.raises(CheckpointError, match="model.model_channels.*|data.patch") as err:
        check_resume_config("x.pt", saved, other)
    assert "model.model_channels" in str(err.value) and "data.patch" in str(err.value)
