"""Helpers the benchmark scripts share: which CPU ran them, when, and writing their reports."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, as ``lscpu`` shows it), else the machine."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def stamp() -> str:
    """``YYYY-MM-DD HH:MM UTC, <CPU>``: the line that dates a report and names its machine."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}"


def write_report(path: Path, lines: list[str]) -> None:
    """The Markdown ``lines`` to ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
