"""The run report of ``predict --archive``: what one run did, as a small JSON file.

Written atomically next to the output once the run's tasks are over (also when inputs were
skipped, never when the run stopped before any task: a usage error leaves nothing behind):
``OUTPUT/report.json`` for ``--format netcdf`` (OUTPUT is a folder), ``OUTPUT.report.json``
for ``--format zarr``. A rerun replaces it. Keys (``precipdiff_archive_report`` = 1):

* ``inputs``: ``done`` (their task ran this time), ``complete_before`` (nothing left to do:
  resumed), ``outside_time`` (no step in ``--time``), ``skipped`` (``[{"input", "reason"}]``,
  the one-line reason of each bad input);
* ``time_steps``: ``written`` by this run, ``already_present`` before it (a resumed run);
* ``tasks``: ``submitted`` and ``retried`` (``{input: n}``: how often the scheduler
  rescheduled a task because the worker holding it died, running it or queued there: its
  ``TaskState.suspicious``; null where the scheduler could not say);
* ``started`` / ``finished`` (UTC ISO 8601), ``wall_time_s``, ``workers`` (at the end),
  ``scheduler`` (``embedded`` or the address), ``format``, ``output`` and ``status``
  (``complete`` or ``inputs_skipped``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from precipdiff.atomic import atomic_path

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"


def report_path(output: Path, fmt: str) -> Path:
    """Where the report of an archive run into ``output`` goes (see the module docstring)."""
    output = Path(output)
    if fmt == "zarr":
        return output.with_name(f"{output.name}.report.json")
    return output / REPORT_NAME


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ArchiveReport:
    """What an archive run did, collected as it goes (the parent process only)."""

    fmt: str
    output: Path
    scheduler: str = "embedded"
    started: float = field(default_factory=time.time)
    clock: float = field(default_factory=time.monotonic)
    done: list[str] = field(default_factory=list)
    complete_before: list[str] = field(default_factory=list)
    outside_time: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    steps_written: int = 0
    steps_present: int = 0
    submitted: int = 0
    retried: dict[str, int] | None = field(default_factory=dict)
    workers: int | None = None

    def skip(self, path: Path, reason: str) -> None:
        """A bad input: logged and listed with its one-line reason."""
        log.error("skipped %s: %s", path, reason)
        self.skipped.append({"input": str(path), "reason": reason})

    def failure(self) -> str | None:
        """The run's one-line error when inputs were skipped, else None."""
        if not self.skipped:
            return None
        listed = "; ".join(f"{s['input']} ({s['reason']})" for s in self.skipped)
        return f"{len(self.skipped)} input file(s) failed and were skipped: {listed}"

    def to_dict(self) -> dict:
        """The JSON content (see the module docstring)."""
        now = time.time()
        return {
            "precipdiff_archive_report": 1,
            "format": self.fmt,
            "output": str(self.output),
            "status": "inputs_skipped" if self.skipped else "complete",
            "started": _stamp(self.started),
            "finished": _stamp(now),
            "wall_time_s": round(time.monotonic() - self.clock, 3),
            "scheduler": self.scheduler,
            "workers": self.workers,
            "inputs": {"done": self.done, "complete_before": self.complete_before,
                       "outside_time": self.outside_time, "skipped": self.skipped},
            "time_steps": {"written": self.steps_written, "already_present": self.steps_present},
            "tasks": {"submitted": self.submitted, "retried": self.retried},
        }

    def write(self) -> Path:
        """Write the report atomically to :func:`report_path`; returns its path."""
        path = report_path(self.output, self.fmt)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        log.info("run report written to %s", path)
        return path


def _suspicious(dask_scheduler, keys: list[str]) -> dict[str, int]:
    """On the scheduler: how often each task's worker died while running it."""
    tasks = dask_scheduler.tasks
    return {k: int(tasks[k].suspicious) for k in keys if k in tasks}


def task_retries(client, futures: Iterable, inputs: Iterable[Path]) -> dict[str, int] | None:
    """``{input: reruns}`` for the tasks dask ran more than once (their worker died); None
    when the scheduler cannot tell. Call while ``futures`` are still held."""
    names = {str(f.key): str(p) for f, p in zip(futures, inputs, strict=True)}
    if not names:
        return {}
    try:
        counts = client.run_on_scheduler(_suspicious, keys=list(names))
    except Exception as exc:  # a remote scheduler without precipdiff, an old distributed
        log.warning("could not read task retries from the scheduler: %s", exc)
        return None
    return {names[k]: n for k, n in counts.items() if n > 0}


def worker_count(client) -> int | None:
    """Workers connected to ``client``'s scheduler now (None when it cannot tell)."""
    try:
        return len(client.nthreads())
    except Exception as exc:
        log.warning("could not count the dask workers: %s", exc)
        return None
