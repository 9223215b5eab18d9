"""One way to get a dask.distributed client: an embedded LocalCluster or an existing scheduler.

``predict --archive`` and ``prepare`` both run their tasks through :func:`dask_client`, so a
laptop and a cluster use one code path (``--scheduler ADDRESS`` or ``DASK_SCHEDULER_ADDRESS``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["dask_client"]


@contextlib.contextmanager
def dask_client(workers: int, address: str | None = None) -> Iterator:
    """A :class:`distributed.Client`: connected to ``address``, or to an embedded
    ``LocalCluster`` of ``workers`` processes with one thread each.

    The embedded workers run without dask's statistical profiler
    (``distributed.worker.profile.enabled``): it samples a running task's stack every 10 ms and
    keeps the call tree for as long as the task runs, so a worker's memory grew with the length
    of its input (+0.3 MB per time step of a 96-step input, ``benchmarks/bench_archive.py
    --parts memory``) instead of staying bounded by one step. Workers of an existing cluster
    keep their own settings (set ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False`` there).
    """
    import dask
    from distributed import Client, LocalCluster

    quiet = logging.getLogger("distributed")  # its INFO lines are not ours to show
    quiet.setLevel(max(quiet.getEffectiveLevel(), logging.WARNING))
    # "Worker process still alive after 4 s, killing" at shutdown of a loaded machine is routine
    nanny = logging.getLogger("distributed.nanny")
    nanny.setLevel(max(nanny.getEffectiveLevel(), logging.ERROR))
    if address:
        with Client(address) as client:
            yield client
        return
    with dask.config.set({"distributed.worker.profile.enabled": False}), LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client
