"""Intra-op threads, OpenMP waiting and processes x threads for Stage II inference on CPU.

One workload: the shipped default Stage II downscales a seeded synthetic 20 x 20 coarse scene
(200 x 200 km at 1 km) with 4 members and 4 DPM++(2M) steps; each measurement runs it
``--rounds`` times in a fresh process (so that ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` act
before the OpenMP runtime starts) and keeps the median wall time of one workload.

Settings: 1 or 2 intra-op threads x OpenMP waiting active (the runtime's default: idle threads
spin) or passive (they sleep), each on a quiet machine and beside one competing process (a
one-thread matrix-multiply loop: another job on the same cores). Throughput: two workloads at
once as 2 processes x 1 thread against one after the other as 1 process x 2 threads. Settings
are measured in interleaved rounds, so that drifts in machine load fall on all of them.

    python benchmarks/bench_threads.py [--rounds 3] [--repeats 2]

Writes ``benchmarks/results/threads/threads.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "threads"

WORKLOAD = """
import sys, time, torch
from precipdiff.demo import demo_scene
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights
truth, src = demo_scene(0)
down = Stage.load(shipped_weights()["downscale_full"])
opts = PredictOptions(members=4, downscale=SamplerSettings("dpmpp_2m", 4), seed=0)
pipe = Pipeline(None, down)
pipe.predict(src, opts)  # warm-up
times = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter(); pipe.predict(src, opts); times.append(time.perf_counter() - t0)
print(sorted(times)[len(times) // 2])
"""

HOG = """
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a.T / 512)
"""


def _env(threads: int, wait: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if wait == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def _workload(threads: int, wait: str, rounds: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKLOAD, str(rounds)], env=_env(threads, wait),
                            stdout=subprocess.PIPE, text=True)


def measure(threads: int, wait: str, contended: bool, rounds: int) -> float:
    """Median seconds of one workload under the setting."""
    hog = (subprocess.Popen([sys.executable, "-c", HOG], env=_env(1, "active"))
           if contended else None)
    try:
        p = _workload(threads, wait, rounds)
        out, _ = p.communicate()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if p.returncode != 0:
        raise RuntimeError(f"workload failed with exit {p.returncode}")
    return float(out.strip().splitlines()[-1])


def throughput(procs: int, threads: int, wait: str, rounds: int) -> float:
    """Wall seconds for two workloads (each ``rounds`` timed runs plus a warm-up)."""
    t0 = time.perf_counter()
    if procs == 2:
        ps = [_workload(threads, wait, rounds) for _ in range(2)]
        codes = [p.wait() for p in ps]
    else:
        codes = [_workload(threads, wait, rounds).wait() for _ in range(2)]
    if any(codes):
        raise RuntimeError(f"workload failed: exits {codes}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed workloads per process")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved passes over settings")
    args = ap.parse_args()
    settings = [(t, w, c) for c in (False, True) for t in (1, 2) for w in ("active", "passive")]
    res: dict[str, list[float]] = {}
    tp: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for t, w, c in settings:
            key = f"{t}|{w}|{c}"
            res.setdefault(key, []).append(measure(t, w, c, args.rounds))
            print(key, res[key][-1], flush=True)
        for procs, t in ((2, 1), (1, 2)):
            for w in ("active", "passive"):
                key = f"{procs}x{t}|{w}"
                tp.setdefault(key, []).append(throughput(procs, t, w, args.rounds))
                print(key, tp[key][-1], flush=True)
    base = float(np.median(res["1|active|False"]))
    rows = [{"threads": t, "wait": w, "contended": c,
             "seconds": float(np.median(res[f"{t}|{w}|{c}"])),
             "ratio_to_1_thread_quiet": float(np.median(res[f"{t}|{w}|{c}"])) / base}
            for t, w, c in settings]
    tp_rows = [{"setting": k, "seconds_for_two": float(np.median(v))} for k, v in tp.items()]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Model name")), "unknown CPU")
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
            "cpu": model, "cores": os.cpu_count(), "load_average_end": os.getloadavg(),
            "rounds": args.rounds, "repeats": args.repeats}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "threads.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                   "throughput": tp_rows}, indent=1))
    lines = [f"{model}, {os.cpu_count()} cores; Stage II, 4 members x 4 steps, 200 x 200 km; "
             f"median of {args.repeats} interleaved passes x {args.rounds} runs.", "",
             "| threads | OpenMP waiting | other job on the cores | s per workload "
             "| × 1 thread quiet |",
             "|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['wait']} | {'yes' if r['contended'] else 'no'} | "
                     f"{r['seconds']:.2f} | {r['ratio_to_1_thread_quiet']:.2f} |")
    lines += ["", "| two workloads as | OpenMP waiting | s for both |", "|---|---|---:|"]
    for r in tp_rows:
        setting, wait = r["setting"].split("|")
        procs, t = setting.split("x")
        lines.append(f"| {procs} process(es) x {t} thread(s) | {wait} | "
                     f"{r['seconds_for_two']:.1f} |")
    (OUT / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
