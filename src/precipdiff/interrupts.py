"""Signals as exceptions, so that ``with`` blocks clean up.

SIGTERM (and SIGHUP, unless ignored) is turned into :class:`Terminated`, a :class:`SystemExit`
with status ``128 + signum`` (143 for SIGTERM, the shell convention), raised in the main thread
wherever it happens to be. Context managers (:func:`precipdiff.atomic.atomic_path`, temporary
scratch directories) then remove their temporary files as they do after Ctrl-C. Code that
catches ``Exception`` does not swallow it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class Terminated(SystemExit):
    """The process was asked to stop by a signal; ``code`` is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name}"


#: Signals received (kept so that one a library swallowed is raised again, :func:`check_terminated`)
_RECEIVED: list[int] = []


def _raise_terminated(signum: int, frame: Any) -> None:
    # a second signal during the clean-up ends the process at once (default action)
    signal.signal(signum, signal.SIG_DFL)
    _RECEIVED.append(signum)
    raise Terminated(signum)


def _raise_interrupt(signum: int, frame: Any) -> None:
    _RECEIVED.append(signum)
    signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as without this handler


def check_terminated() -> None:
    """Raise again (:class:`Terminated`, or ``KeyboardInterrupt`` for Ctrl-C) if a signal
    arrived but its exception was swallowed (e.g. raised inside a library's worker-thread wait
    that catches everything). Long loops call this between units of work."""
    if _RECEIVED:
        if _RECEIVED[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(_RECEIVED[0])


def check_between_steps(_: object = None) -> None:
    """:func:`check_terminated` as a sampler callback (called after every denoising step)."""
    check_terminated()


def _quiet_unraisable(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that drops a signal's exception raised where Python cannot
    propagate it (e.g. inside a weakref callback, printed as "Exception ignored in ...") once
    the signal is recorded: :func:`check_terminated` raises it again at the next unit of work,
    and the user sees one error line instead of a traceback. Other exceptions go to
    ``previous``."""

    def hook(unraisable: Any) -> None:
        if _RECEIVED and isinstance(unraisable.exc_value, (Terminated, KeyboardInterrupt)):
            return
        previous(unraisable)

    hook.quiet_signals = True  # type: ignore[attr-defined]
    return hook


def raise_on_termination() -> None:
    """Make SIGTERM (and SIGHUP where it is not ignored) raise :class:`Terminated`, and keep a
    signal's exception that surfaces where it cannot propagate off stderr
    (:func:`_quiet_unraisable`).

    Only possible in the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if not getattr(sys.unraisablehook, "quiet_signals", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    signal.signal(signal.SIGTERM, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)
    hup = getattr(signal, "SIGHUP", None)
    if hup is not None and signal.getsignal(hup) is not signal.SIG_IGN:
        signal.signal(hup, _raise_terminated)
