"""Subprocess entry for the kill/resume tests: a training run with a slowed-down dataset.

``python _slow_train.py [--resume] section.key=value ...``; each sample sleeps 20 ms so that a
test can kill the run between two checkpoints.
"""

from __future__ import annotations

import sys
import time

import torch

import precipdiff.data.dataset as dataset
from precipdiff.training.config import load_config
from precipdiff.training.loop import train

_getitem = dataset.PatchDataset.__getitem__


def _slow_getitem(self, index):
    time.sleep(0.02)
    return _getitem(self, index)


if __name__ == "__main__":
    torch.set_num_threads(1)
    dataset.PatchDataset.__getitem__ = _slow_getitem
    args = sys.argv[1:]
    resume = "--resume" in args
    train(load_config(None, [a for a in args if a != "--resume"]), resume=resume, progress=False)
