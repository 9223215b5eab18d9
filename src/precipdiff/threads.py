"""CPU threads for inference: how many intra-op threads a process uses, and how they wait.

The rule (measured by ``benchmarks/bench_threads.py``, BENCHMARKS.md "Threads"): intra-op threads
pay off only on cores nobody else uses. On an idle 2-core machine two threads take 0.57x the time
of one; beside one other busy process two spinning OpenMP threads take 1.45x (they wait for each
other at every barrier of every small convolution while one of them is descheduled). So:

1. ``auto`` takes the cores idle when the run starts (``os.cpu_count()`` minus the 1-minute load
   average, rounded, at least 1); ``--threads N`` or an explicit ``OMP_NUM_THREADS`` wins.
2. OpenMP threads sleep instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``, set by
   :func:`passive_waiting` before torch loads, unless the user set it): contention that starts
   *after* the decision then costs nothing (0.98x of one thread instead of 1.45x), for 7 % on an
   idle machine.
3. Several files run as one single-threaded process per core (archive workers): two processes
   x one thread did two workloads in 0.73x the time of one process x two threads.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def passive_waiting() -> None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a
    policy. Must run before torch is imported to take effect (the CLI's entry point calls it)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores not busy with other work: ``cores - load`` rounded, clamped to ``[1, cores]``."""
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def choose_threads(requested: int = 0, *, cores: int | None = None,
                   load: float | None = None) -> tuple[int, str]:
    """``(threads, why)``: ``requested`` if > 0, else ``OMP_NUM_THREADS`` if set, else the
    idle cores (:func:`idle_cores`)."""
    if requested > 0:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    n = idle_cores(cores, load)
    return n, "auto: idle cores"


def set_threads(requested: int = 0) -> int:
    """Apply :func:`choose_threads` to torch's intra-op pool; returns the number set."""
    import torch

    n, why = choose_threads(requested)
    torch.set_num_threads(n)
    log.info("CPU threads: %d (%s)", n, why)
    return n
