"""Read speed of the radar readers (ODIM HDF5, MeteoSwiss GIF, FMI PGM) against pysteps' importers.

Both read the same real files in ``../shared/data/radar``, side by side in one run: every round
reads each file once with each reader, alternating which goes first, so machine load hits both
alike; the table gives the median per read (wall and CPU seconds) and the ratio ours / pysteps.
The work differs slightly: ``precipdiff.io.read`` also converts reflectivity to mm/h (pysteps
returns dBZ for ODIM DBZH and FMI), attaches 2-D lat/lon and builds a DataArray. The first read
of a grid computes its lat/lon (then cached); that cold read is timed separately.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_radar_io.py [--rounds N] [--files N]``;
writes ``benchmarks/results/radar_io.md``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from precipdiff import io
from precipdiff.io import _projected

log = logging.getLogger("bench_radar_io")
RADAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "radar"
RESULTS = Path(__file__).resolve().parent / "results" / "radar_io.md"
FORMATS = {  # name: (glob under RADAR, pysteps importer name, its keyword arguments)
    "ODIM HDF5 (OPERA CIRRUS DBZH, 3800x4400)": (
        "opera-cirrus/*/*.hdf", "import_odim_hdf5", {"qty": "DBZH"}),
    "MeteoSwiss AQC GIF (710x640)": (
        "mch/*/*.gif", "import_mch_gif", {"product": "AQC", "unit": "mm", "accutime": 5.0}),
    "FMI PGM.gz (760x1226)": ("fmi/*/*.pgm.gz", "import_fmi_pgm", {"gzipped": True}),
}


def _timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def bench_format(files: list[Path], importer, kwargs: dict, rounds: int) -> dict:
    """Cold first read, then ``rounds`` interleaved rounds over ``files``; medians per read."""
    _projected._latlon.cache_clear()
    cold = _timed(lambda: io.read(files[0]))
    importer(str(files[0]), **kwargs)  # pysteps' own warm-up (imports, page cache)
    ours: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    for r in range(rounds):
        for k, f in enumerate(files):
            pair = [(ours, lambda f=f: io.read(f)),
                    (theirs, lambda f=f: importer(str(f), **kwargs))]
            for sink, fn in pair if (r + k) % 2 == 0 else pair[::-1]:
                sink.append(_timed(fn))

    def med(xs, i):
        return statistics.median(x[i] for x in xs)

    return {"cold": cold, "ours": (med(ours, 0), med(ours, 1)),
            "pysteps": (med(theirs, 0), med(theirs, 1)), "n": len(ours)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=3, help="files per format (spread evenly)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        from pysteps.io import importers
    except ImportError:
        log.error("pysteps is not installed; it is the reference importer of this benchmark")
        return 1
    rows = []
    for name, (pattern, fn_name, kwargs) in FORMATS.items():
        found = sorted(RADAR.glob(pattern))
        if not found:
            log.error("no files match %s under %s", pattern, RADAR)
            return 1
        step = max(1, len(found) // args.files)
        files = found[::step][: args.files]
        log.info("%s: %d files x %d rounds", name, len(files), args.rounds)
        res = bench_format(files, getattr(importers, fn_name), kwargs, args.rounds)
        rows.append((name, fn_name, res))
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    stamp = datetime.datetime.now(datetime.timezone.utc)
    out = [
        f"Radar read benchmark — {stamp:%Y-%m-%d %H:%M} UTC",
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, load average {load} at the end; "
        f"Python {platform.python_version()}, pysteps {version('pysteps')}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"{args.rounds} interleaved rounds, medians per read",
        f"command: python benchmarks/bench_radar_io.py --rounds {args.rounds} --files {args.files}",
        "",
        "| format | reads | `io.read` wall s | pysteps wall s | ratio wall | `io.read` CPU s "
        "| pysteps CPU s | ratio CPU | `io.read` cold (lat/lon) wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, fn_name, r in rows:
        (ow, oc), (pw, pc), (cw, _) = r["ours"], r["pysteps"], r["cold"]
        out.append(f"| {name} vs `{fn_name}` | {r['n']} | {ow:.3f} | {pw:.3f} | {ow / pw:.2f} | "
                   f"{oc:.3f} | {pc:.3f} | {oc / pc:.2f} | {cw:.3f} |")
    text = "\n".join(out) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
