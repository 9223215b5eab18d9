"""A termination signal whose exception a library swallowed is raised again at the next check."""

from __future__ import annotations

import signal

import pytest

from precipdiff import interrupts


def test_swallowed_termination_is_raised_again(monkeypatch):
    monkeypatch.setattr(interrupts, "_RECEIVED", [])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        interrupts.check_terminated()  # nothing received: no-op
        try:  # what a library that catches everything would do with it
            interrupts._raise_terminated(signal.SIGTERM, None)
        except BaseException:  # noqa: BLE001, S110
            pass
        with pytest.raises(interrupts.Terminated) as err:
            interrupts.check_terminated()
        assert err.value.code == 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_swallowed_ctrl_c_is_raised_again(monkeypatch):
    monkeypatch.setattr(interrupts, "_RECEIVED", [])
    try:
        interrupts._raise_interrupt(signal.SIGINT, None)
    except BaseException:  # noqa: BLE001, S110
        pass
    with pytest.raises(KeyboardInterrupt):
        interrupts.check_terminated()
