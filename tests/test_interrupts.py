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


def test_a_recorded_signal_raised_where_it_cannot_propagate_is_not_printed(monkeypatch):
    """A SIGTERM raised inside a weakref callback is "Exception ignored in ..." on stderr; once
    recorded it is raised again by check_terminated, so the hook drops it (others pass)."""
    import types

    seen = []
    hook = interrupts._quiet_unraisable(seen.append)
    terminated = types.SimpleNamespace(exc_value=interrupts.Terminated(signal.SIGTERM))
    other = types.SimpleNamespace(exc_value=ValueError("a real problem"))
    monkeypatch.setattr(interrupts, "_RECEIVED", [])
    hook(terminated)  # not recorded (not ours): passed on
    monkeypatch.setattr(interrupts, "_RECEIVED", [signal.SIGTERM])
    hook(terminated)
    hook(other)
    assert seen == [terminated, other]
