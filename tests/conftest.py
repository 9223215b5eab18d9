"""Shared fixtures: the real-data folder (skipped cleanly when absent) and seeded generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20190610)


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    """Tests use tiny tensors: one intra-op thread is faster and immune to oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _signal_running(proc, sig: int) -> bool:
    """Send ``sig`` to the child ``proc`` only while it is still running: freeze it (SIGSTOP),
    check that it has not exited, signal, resume. False when it had already finished (on a
    loaded machine a short run can end between the test's last poll and its signal)."""
    import os
    import signal as _signal

    os.kill(proc.pid, _signal.SIGSTOP)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    os.kill(proc.pid, _signal.SIGCONT)
    return True


@pytest.fixture
def signal_running():
    """:func:`_signal_running`: signal a child process only while it still runs."""
    return _signal_running


def _default_signal_disposition() -> None:
    """``preexec_fn`` of a child that a test will signal: Ctrl-C and SIGTERM at their defaults
    and unblocked. A child inherits an ignored SIGINT (POSIX: background jobs do), and some
    pytest worker processes have one: the child then rightly ignores the test's Ctrl-C."""
    import signal as _signal

    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT, _signal.SIGTERM})


@pytest.fixture
def signal_defaults():
    """:func:`_default_signal_disposition`, for ``subprocess.Popen(preexec_fn=...)``."""
    return _default_signal_disposition
