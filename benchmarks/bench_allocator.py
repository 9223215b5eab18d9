"""The C allocator policy on one Stage-II block: glibc's default vs freed memory kept.

Each measurement is a fresh process (one intra-op thread) that samples one block of the
default Stage II (``--members`` x ``--size`` px, then 64 px smaller; bf16 autocast, the
distilled 4 steps) after a small warm-up block, with glibc's default policy
(``PRECIPDIFF_MALLOC=default``), with :func:`precipdiff.allocator.keep_freed_memory`, and with
that and :func:`~precipdiff.allocator.release_freed_memory` after each block (what Stage II
does); the three are interleaved over ``--rounds``.
Reports wall, user and system CPU seconds, minor page faults and peak RSS (medians).

    OMP_NUM_THREADS=1 python benchmarks/bench_allocator.py [--rounds 3]

Writes ``benchmarks/results/allocator.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import stamp as report_stamp  # noqa: E402
from benchlib import write_report  # noqa: E402

CHILD = """
import json, resource, sys, time
import numpy as np, torch
from precipdiff.allocator import keep_freed_memory, release_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] != "default" else False
from precipdiff.pipeline import SamplerSettings, Stage
from precipdiff.pipeline.blocks import Block, BlockSettings, sample_block
from precipdiff.pipeline.shipped import shipped_weights
m, size = int(sys.argv[2]), int(sys.argv[3])
stage = Stage.load(shipped_weights()["downscale"])
cfg = BlockSettings(SamplerSettings(), seed=0, bf16=True)
base = np.random.default_rng(0).normal(size=(m, 1, size, size)).astype(np.float32)
sample_block(stage, Block(0, 0, 0, 0, base[:1, :, :64, :64]), cfg)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for k in range(2):  # a large block, then a smaller one (the sizes of a run vary)
    sample_block(stage, Block(0, 0, 0, 0, base[:, :, : size - 64 * k, : size - 64 * k]), cfg)
    if sys.argv[1] == "trim":
        release_freed_memory()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"applied": applied, "wall": time.perf_counter() - t0,
                  "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
                  "minflt": r1.ru_minflt - r0.ru_minflt, "maxrss_mb": r1.ru_maxrss / 1024}))
"""

MODES = {"glibc default": "default", "freed memory kept": "keep",
         "kept, given back between blocks (now)": "trim"}


def measure(mode: str, members: int, size: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if mode == "default":
        env["PRECIPDIFF_MALLOC"] = "default"
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(members), str(size)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "allocator.md")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {k: [] for k in MODES}
    for _ in range(args.rounds):
        for name, mode in MODES.items():
            runs[name].append(measure(mode, args.members, args.size))
            print(name, runs[name][-1], flush=True)
    base = float(np.median([r["wall"] for r in runs["glibc default"]]))
    stamp = report_stamp()
    lines = [f"# Allocator policy, two Stage-II blocks ({stamp})", "",
             f"{args.members} members x {args.size}² px then {args.size - 64}² px, default "
             "Stage II, bf16, one thread, a fresh process per run, medians of "
             f"{args.rounds} interleaved rounds", "",
             "| policy | wall s (each round) | wall s | x default | user s | system s | minor "
             "page faults | peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, rs in runs.items():
        med = {k: float(np.median([r[k] for r in rs]))
               for k in ("wall", "user", "sys", "minflt", "maxrss_mb")}
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        lines.append(f"| {name} | {walls} | "
                     f"{med['wall']:.1f} | {med['wall'] / base:.2f} | {med['user']:.1f} | "
                     f"{med['sys']:.1f} | {med['minflt']:.0f} | {med['maxrss_mb']:.0f} |")
    write_report(args.out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
