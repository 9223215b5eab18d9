"""What a run reports: JSONL metrics log, optional TensorBoard, a rich progress bar (rank 0 only).

``metrics.jsonl`` holds one JSON object per line: ``{"kind": "train" | "val" | "event", "step",
"samples", "time", ...metrics}``. Train lines carry ``loss``, ``lr``, ``grad_norm``,
``samples_per_s`` and ``data_wait_frac`` (share of wall time spent waiting for the next batch);
val lines carry ``val_loss`` and, for diffusion stages, ``val_crps_fair`` (transformed space).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from precipdiff.atomic import atomic_path
from precipdiff.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


def require_tensorboard() -> None:
    """ConfigError before any work when TensorBoard is asked for but not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard: needs the 'tensorboard' package "
                          "(pip install 'precipdiff[tensorboard]')") from None


def truncate_metrics(path: Path, samples: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (``samples`` > resumed)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if record.get("samples", 0) <= samples:
            kept.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


class Monitor:
    """Rank-0 reporting; on other ranks every method is a no-op."""

    def __init__(self, run_dir: Path, *, enabled: bool, progress: bool, tensorboard: bool,
                 total_samples: int, start_samples: int) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._fh = open(self.path, "a") if enabled else None  # noqa: SIM115 - closed in close()
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._bar = None
        if enabled and progress:
            self._bar = _make_progress()
            self._task = self._bar.add_task("train", total=total_samples, completed=start_samples,
                                            loss=float("nan"))
            self._bar.start()

    def write(self, kind: str, step: int, samples: int, **metrics: Any) -> None:
        """Append one record to ``metrics.jsonl`` (and TensorBoard scalars)."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "samples": samples, "time": time.time(), **metrics}
        self._fh.write(json.dumps(_finite(record)) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, samples)
        if kind == "val":
            log.info("step %d (%d samples): %s", step, samples,
                     ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                               if isinstance(v, float)))

    def advance(self, samples: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=samples, loss=loss)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf as null (strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}


def _make_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Samples per second from rich's speed estimate."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- samples/s" if speed is None else f"{speed:.1f} samples/s")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TextColumn("loss [cyan]{task.fields[loss]:.4f}"), TimeRemainingColumn(),
    )


class StepMeter:
    """Loss, gradient norm, throughput and the share of step time spent waiting for data.

    ``data_wait_frac = wait / (elapsed - excluded)`` where ``wait`` is the time spent in
    ``next(batches)`` and ``excluded`` the time spent on validation and checkpoints.
    """

    def __init__(self) -> None:
        self._reset()
        self.last_loss = float("nan")

    def _reset(self) -> None:
        self.start, self.wait, self.excluded = time.perf_counter(), 0.0, 0.0
        self.losses: list[float] = []
        self.norms: list[float] = []

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """Iterate ``batches``, adding the time spent waiting for each item."""
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            yield item

    def add(self, loss: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.last_loss = loss

    def exclude(self, seconds: float) -> None:
        """Leave time spent outside training steps (validation, checkpoints) out of the rates."""
        self.excluded += seconds

    def flush(self, batch_size: int) -> dict[str, float]:
        """Averages since the last flush."""
        elapsed = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        n = max(len(self.losses), 1)
        out = {"loss": sum(self.losses) / n, "grad_norm": sum(self.norms) / n,
               "samples_per_s": len(self.losses) * batch_size / elapsed,
               "data_wait_frac": min(self.wait / elapsed, 1.0)}
        self._reset()
        return out
