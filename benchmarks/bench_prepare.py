"""Throughput and peak memory of ``prepare_store`` on the 36 MRMS frames of 2019-06-10.

Builds the emulated-source store (``recipe_emulated``: MRMS PrecipRate truth cropped to a
1000 x 2000 cell (10 deg x 20 deg) region, IMERG-like source from the satellite emulator) once
per worker count, each run in a fresh process. Reports wall time split into the scan phase
(every file read and checked, pairs and grid fixed) and the write phase, frames/s, CPU seconds
of the whole process tree (the fairer number on a shared machine), peak resident memory of the
process tree (sum over the main process and its workers, sampled every 50 ms with psutil) and
the largest single process (``ru_maxrss``), and the store size. Prints a Markdown table with
the machine and date. Usage::

    python benchmarks/bench_prepare.py [--workers 1 2] [--frames 36] [--bbox W S E N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

log = logging.getLogger("bench_prepare")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrms" / "2019-06-10"
BBOX = (-102.0, 39.0, -82.0, 49.0)  # 1000 x 2000 cells of 0.01 deg (rainy on 2019-06-10 00Z)


def child(args: dict) -> None:
    """One timed ``prepare_store`` run; prints a JSON line of timings."""
    from precipdiff.data.prepare import prepare_store, recipe_emulated

    files = sorted(str(p) for p in DATA.glob("PrecipRate_00.00_20190610-*.grib2"))
    files = files[: args["frames"]]
    cfg = recipe_emulated(files, bbox=tuple(args["bbox"]), reference_reader="mrms", seed=1)
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    prepare_store(cfg, args["out"], workers=args["workers"],
                  progress=lambda done, total: marks.append((time.perf_counter(), done)))
    total = time.perf_counter() - t0
    scan_end = max(t for t, done in marks if done <= len(files))  # one scan per file
    print(json.dumps({"total_s": total, "scan_s": scan_end - t0,
                      "write_s": marks[-1][0] - scan_end,
                      "frames": len(files),
                      "maxrss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                       resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
                      / 1024}))


def _tree(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return [p]


def run(workers: int, frames: int, bbox: tuple[float, ...], tmp: Path) -> dict:
    """Run :func:`child` in a fresh interpreter; sample the tree's RSS and CPU while it runs."""
    out = tmp / f"bench_w{workers}.zarr"
    spec = json.dumps({"workers": workers, "frames": frames, "bbox": list(bbox), "out": str(out)})
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=subprocess.PIPE,
                            text=True)
    ps, peak, cpu = psutil.Process(proc.pid), 0, {}
    while proc.poll() is None:
        rss = 0
        for q in _tree(ps):
            try:
                rss += q.memory_info().rss
                t = q.cpu_times()
                cpu[q.pid] = t.user + t.system
            except psutil.Error:
                pass
        peak = max(peak, rss)
        time.sleep(0.05)
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"prepare run with {workers} workers failed ({proc.returncode})")
    res = json.loads(stdout.strip().splitlines()[-1])
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return {**res, "workers": workers, "peak_tree_mb": peak / 2**20, "cpu_s": sum(cpu.values()),
            "store_mb": size / 2**20}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int, default=36)
    parser.add_argument("--bbox", type=float, nargs=4, default=BBOX)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        child(json.loads(a.child))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not DATA.is_dir():
        log.error("%s is absent: nothing to benchmark", DATA)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench_prepare-") as tmp:
        rows = [run(w, a.frames, tuple(a.bbox), Path(tmp)) for w in a.workers]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n### prepare throughput: {rows[0]['frames']} MRMS frames, region {tuple(a.bbox)} "
          f"(1-km fine grid, factor 10, emulated source)\n")
    print(f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average at the end {load}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
          "UTC\n")
    print("| workers | total s | scan s | write s | frames/s | CPU s (tree) | peak RSS tree MB "
          "| max RSS one process MB | store MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['total_s']:.1f} | {r['scan_s']:.1f} | {r['write_s']:.1f} "
              f"| {r['frames'] / r['total_s']:.2f} | {r['cpu_s']:.0f} | {r['peak_tree_mb']:.0f} "
              f"| {r['maxrss_mb']:.0f} | {r['store_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
