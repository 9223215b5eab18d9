"""Run these small-tensor tests single-threaded: on a shared 2-core machine, intra-op threads
contend with other processes and make tiny convolutions ~100x slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
