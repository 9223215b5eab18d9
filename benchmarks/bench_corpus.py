"""Time, peak memory and size of ``prepare`` for the whole multi-network corpus.

Runs ``prepare_corpus`` on ``configs/prepare_corpus.yaml`` (MRMS, RADOLAN, MeteoSwiss, FMI and
OPERA CIRRUS from ../shared/data) in a fresh process and reports the wall and CPU time per
network and in total, the peak resident memory of the process (``ru_maxrss``) beside the memory
after the imports and the largest single input field, the store size on disk and the frames per
network and split. Prints a Markdown table with the machine and date and writes it to
``benchmarks/results/corpus.md``. Run from the repository root::

    python benchmarks/bench_corpus.py [--config configs/prepare_corpus.yaml] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(config: str, out: str) -> dict:
    """One timed run in this process; returns the figures as a dict."""
    from precipdiff.data import pairing
    from precipdiff.data.corpus import load_corpus_config, open_corpus, prepare_corpus

    cfg = load_corpus_config(config)
    files = [(s.network, f) for s in cfg.sources
             for f in pairing.expand_files(s.files, s.network)]
    rss_start = _rss_mb()
    marks: list[tuple[float, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    prepare_corpus(cfg, out, progress=lambda done, total: marks.append(
        (time.perf_counter(), time.process_time())))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_net: dict[str, list[float]] = {}
    prev = (t0, c0)
    for (net, _), mark in zip(files, marks, strict=False):
        acc = per_net.setdefault(net, [0.0, 0.0, 0])
        acc[0] += mark[0] - prev[0]
        acc[1] += mark[1] - prev[1]
        acc[2] += 1
        prev = mark
    c = open_corpus(out)
    nets = {}
    for net in c.networks:
        h = c.open(net)
        ny, nx = h["ref_hr"].shape[1:]
        nets[net] = {"files": per_net[net][2], "wall_s": per_net[net][0],
                     "cpu_s": per_net[net][1], "frames": c.attrs["frames"][net],
                     "grid": f"{ny} x {nx}", "frame_mb": ny * nx * 4 / 2**20}
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    return {"wall_s": wall, "cpu_s": cpu, "finish_s": wall - (marks[-1][0] - t0),
            "rss_after_imports_mb": rss_start, "peak_rss_mb": peak, "store_mb": size / 2**20,
            "networks": nets}


def table(r: dict, command: str) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"`{command}` ({when}; {_cpu_model()}, {os.cpu_count()} cores, load average "
             f"{load})", "",
             "| network | files | frames (train / val / test) | fine grid | wall s | CPU s |",
             "|---|---:|---|---|---:|---:|"]
    for net, n in r["networks"].items():
        f = n["frames"]
        lines.append(f"| {net} | {n['files']} | {f.get('train', 0)} / {f.get('val', 0)} / "
                     f"{f.get('test', 0)} | {n['grid']} | {n['wall_s']:.1f} | "
                     f"{n['cpu_s']:.1f} |")
    big = max(n["frame_mb"] for n in r["networks"].values())
    lines += ["", f"Total {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU (events, splits and "
              f"the transform fit: {r['finish_s']:.1f} s). Peak resident memory "
              f"{r['peak_rss_mb']:.0f} MB ({r['rss_after_imports_mb']:.0f} MB after the "
              f"imports; the largest fine-grid frame is {big:.0f} MB in float32). Store "
              f"{r['store_mb']:.0f} MB on disk."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/prepare_corpus.yaml")
    ap.add_argument("--keep", default=None, help="write the store here (default: a temp dir)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.config, args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or str(Path(tmp) / "corpus.zarr")
        proc = subprocess.run([sys.executable, __file__, "--config", args.config, "--child",
                               out], capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"bench_corpus: prepare failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    text = table(result, "python " + " ".join(["benchmarks/bench_corpus.py", *sys.argv[1:]]))
    print(text)
    target = REPO / "benchmarks" / "results" / "corpus.md"
    target.write_text(text + "\n\n```json\n" + json.dumps(result, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
