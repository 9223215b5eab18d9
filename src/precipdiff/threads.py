"""CPU threads for inference: how many intra-op threads a process uses, decided once.

The rule (measured by ``benchmarks/bench_threads.py``, BENCHMARKS.md "Threads"): intra-op threads
pay off only on cores nobody else uses. Beside another busy process, two OpenMP threads on two
cores run several times *slower* than one, because the threads wait for each other at every
barrier of every small convolution while one of them is descheduled. So ``auto`` takes the cores
that are idle now (``os.cpu_count()`` minus the 1-minute load average, rounded, at least 1), and
an explicit ``OMP_NUM_THREADS`` or ``--threads N`` wins. Archive workers use one thread each
(one process per core).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


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
