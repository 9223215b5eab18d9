"""SIGINT/SIGTERM during training: finish the step, save a checkpoint, then leave.

Outside the steps (opening the store, building, writing the release weights) SIGTERM raises
``SystemExit(143)`` at once, as Ctrl-C raises ``KeyboardInterrupt``: the ``with`` blocks of
atomic writes remove their temporary files either way (:func:`terminate_raises`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

from precipdiff.training.distributed import DistInfo, any_rank

log = logging.getLogger(__name__)


class StopSignals:
    """Context manager: the first SIGINT/SIGTERM sets a flag, a second one stops at once.

    :meth:`requested` agrees across ranks (one rank signalled → every rank stops at the same
    step), so DDP processes checkpoint and leave together.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now (temporary files are removed)
            raise exit_for(signum)
        self.signum = signum
        log.warning("signal %d received: saving a checkpoint after this step", signum)

    def requested(self, info: DistInfo) -> bool:
        flag = any_rank(self.signum is not None, info)
        if flag and self.signum is None:
            self.signum = signal.SIGTERM
        return flag

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def exit_for(signum: int | None) -> BaseException:
    """The exception that ends the process as the signal asked (SIGINT → KeyboardInterrupt)."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SystemExit(128 + (signum or signal.SIGTERM))


def _raise_terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` in the main thread (elsewhere
    nothing changes); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
