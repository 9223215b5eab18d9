"""Read-speed benchmark of the MRMS reader on the real CONUS frames in ../shared/data.

Times (wall clock): one full 7000x3500 frame (median of several reads), the same frame with a
crop-on-read bounding box, and the per-frame time over all 36 frames of 2019-06-10.
Prints a Markdown table with the machine and date.
Usage: ``python benchmarks/bench_io.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from precipdiff import io
from precipdiff.io._eccodes import eccodes

log = logging.getLogger("bench_io")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrms" / "2019-06-10"
BBOX = (-100.0, 35.0, -95.0, 40.0)  # 5° x 5° = 500 x 500 px


def _median_time(fn, repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``repeat`` calls (CPU time is the fairer number
    on a shared, oversubscribed machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _decode_only(path: Path) -> None:
    with open(path, "rb") as fh:
        h = eccodes.codes_grib_new_from_file(fh)
    eccodes.codes_get_values(h)
    eccodes.codes_release(h)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    files = sorted(DATA.glob("*.grib2"))
    if not files:
        log.error("no MRMS frames in %s", DATA)
        return 1
    first = files[0]
    io.read(first)  # warm-up: imports, page cache
    rows = [
        ("ecCodes decode only (codes_get_values), 1 frame", _median_time(
            lambda: _decode_only(first), args.repeat)),
        ("`io.read` full CONUS frame 7000x3500", _median_time(lambda: io.read(first), args.repeat)),
        ("`io.read` with bbox 500x500 (crop-on-read)", _median_time(
            lambda: io.read(first, bbox=BBOX), args.repeat)),
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        io.read(f)
    n = len(files)
    rows.append((f"`io.read` all {n} frames, per frame",
                 ((time.perf_counter() - t0) / n, (time.process_time() - c0) / n)))
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    out = [
        f"MRMS read benchmark — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, "
        f"ecCodes {eccodes.codes_get_api_version()}; median of {args.repeat}",
        "",
        "| what | wall s | CPU s |",
        "|---|---|---|",
        *[f"| {name} | {wall:.3f} | {cpu:.3f} |" for name, (wall, cpu) in rows],
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
