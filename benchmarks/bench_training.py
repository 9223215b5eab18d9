"""Training throughput on CPU: samples/s, share of step time waiting for data, DDP scaling.

Builds a synthetic store (fine grid 384 x 384, factor 8, 8 time steps), then trains the
``downscale`` stage on 128 x 128 patches at the default model size (``ModelConfig()``: 32
channels, channel_mult (1, 2, 2), attention at level 2), global batch 8, each configuration in a
fresh process: one process with 1 and 2 intra-op threads, with a DataLoader worker, and two
DDP (gloo) processes of one thread each. Rates come from the run's own ``metrics.jsonl``
(``samples_per_s``, ``data_wait_frac``), the first logging window (warm-up) left out.
Prints a Markdown table with the machine and date. Usage::

    python benchmarks/bench_training.py [--steps 5] [--out benchmarks/results/training.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bench_training")


def make_store(path: Path, *, hr: int = 384, factor: int = 8, n_time: int = 8) -> Path:
    """A synthetic store written with the store's own writer (train: 6 times, val: 2)."""
    import zarr

    from precipdiff.data.store import STORE_FORMAT, create_store, write_frame
    from precipdiff.data.synth import synthetic_rain
    from precipdiff.data.transforms import PrecipTransform

    rng = np.random.default_rng(0)
    ref_hr = synthetic_rain(n_time, hr, hr, rng=rng, wet_fraction=0.3)
    lr = hr // factor
    ref_lr = ref_hr.reshape(n_time, lr, factor, lr, factor).max(axis=(2, 4))
    src_lr = 0.7 * ref_lr + rng.gamma(1.0, 0.3, ref_lr.shape).astype(np.float32)
    d_hr = 0.01
    centre = d_hr * (factor - 1) / 2
    attrs = {"precipdiff_store": STORE_FORMAT, "factor": factor, "pooling": "max",
             "transform": PrecipTransform.fit(ref_hr).to_dict(), "source": "synthetic",
             "reference": "synthetic", "version": "bench", "created": "bench",
             "splits": {"train": {"time": list(range(6)), "x_lr": [0, lr]},
                        "val": {"time": list(range(6, n_time)), "x_lr": [0, lr]}}}
    times = np.datetime64("2020-01-01T00:00") + np.arange(n_time) * np.timedelta64(1, "h")
    create_store(path, times=times, lat_hr=40 + d_hr * np.arange(hr),
                 lon_hr=10 + d_hr * np.arange(hr), lat_lr=40 + centre + d_hr * factor *
                 np.arange(lr), lon_lr=10 + centre + d_hr * factor * np.arange(lr), attrs=attrs)
    for t in range(n_time):
        write_frame(path, t, src_lr=src_lr[t], ref_lr=ref_lr[t], ref_hr=ref_hr[t])
    zarr.open_group(str(path), mode="r+").attrs["complete"] = True
    return path


def overrides(store: Path, out: Path, steps: int, workers: int) -> list[str]:
    return [f"data.store={store}", f"train.out_dir={out}", "train.stage=downscale",
            "data.patch=128", "data.batch_size=8", "data.samples_per_epoch=400",
            f"data.num_workers={workers}", "data.val_patches=0", f"train.steps={steps}",
            "train.log_every_steps=1", "train.checkpoint_every_samples=1000000",
            "optim.warmup_samples=16"]


def run(name: str, store: Path, tmp: Path, *, steps: int, procs: int, threads: int,
        workers: int) -> dict:
    """Train in a fresh process (or ``procs`` DDP processes); rates from metrics.jsonl."""
    out = tmp / name
    sets = [f"--set={o}" for o in overrides(store, out, steps, workers)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    cmd = [*launcher, "-m", "precipdiff.training", "--no-progress", *sets]
    start, cpu0 = time.perf_counter(), _children_cpu()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in lines if r["kind"] == "train"][1:]  # first window = warm-up
    return {"name": name, "procs": procs, "threads": threads, "workers": workers,
            "samples_per_s": statistics.mean(r["samples_per_s"] for r in windows),
            "data_wait_frac": statistics.mean(r["data_wait_frac"] for r in windows),
            "wall_s": wall, "cpu_s": cpu}


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def table(results: list[dict], params: int) -> str:
    base = next(r for r in results if r["procs"] == 1 and r["threads"] == 1 and not r["workers"])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [f"Training throughput benchmark — {now}",
            f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}; Python {platform.python_version()}, "
            f"torch {torch.__version__}",
            f"downscale stage, 128x128 patches, global batch 8, default U-Net ({params:,} "
            "parameters), float32", "",
            "| configuration | processes x threads | loader workers | samples/s | "
            "data wait | speed-up vs 1x1 | wall s (incl. start) | CPU s |",
            "|---|---|---|---|---|---|---|---|"]
    rows = [f"| {r['name']} | {r['procs']} x {r['threads']} | {r['workers']} | "
            f"{r['samples_per_s']:.2f} | {100 * r['data_wait_frac']:.1f} % | "
            f"{r['samples_per_s'] / base['samples_per_s']:.2f} | {r['wall_s']:.0f} | "
            f"{r['cpu_s']:.0f} |" for r in results]
    return "\n".join(head + rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from precipdiff.models.unet import UNet, count_parameters
    from precipdiff.training.config import ModelConfig

    params = count_parameters(UNet(ModelConfig().unet_config(1)))
    with tempfile.TemporaryDirectory(prefix="bench_training_") as d:
        tmp = Path(d)
        store = make_store(tmp / "store.zarr")
        plan = [("single", 1, 1, 0), ("single, 2 threads", 1, 2, 0),
                ("single + loader worker", 1, 1, 1), ("DDP gloo", 2, 1, 0)]
        results = []
        for name, procs, threads, workers in plan:
            log.info("running %s ...", name)
            results.append(run(name, store, tmp, steps=args.steps, procs=procs,
                               threads=threads, workers=workers))
    text = table(results, params)
    print(text)  # noqa: T201 - the benchmark's report
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
