"""Archive throughput on dask.distributed: 1 vs N worker processes, and the per-task overhead.

    OMP_NUM_THREADS=1 python benchmarks/bench_archive.py            # 8 files, 4 members, 4 steps
    OMP_NUM_THREADS=1 python benchmarks/bench_archive.py --files 16 --workers 1 2 --format netcdf

The inputs are synthetic one-step coarse fields (0.1 deg, ``--size`` cells a side, gamma rain
declared as block maxima, as the shipped models expect, one hour apart); the shipped weights.
Each worker count runs ``predict --archive`` through :func:`precipdiff.pipeline.archive.
run_archive` on its own embedded LocalCluster and is timed twice: the whole run (cluster start,
weight loads, input scan, store layout, tasks) and the tasks alone (one NetCDF task per file, on
a cluster already up with the weights already loaded, from the first submit to the last result).
The overhead per task is the wall time of ``--noop`` empty tasks submitted together, divided by
their number.
Writes a Markdown table to ``--out`` (default ``benchmarks/results/archive.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(root: Path, files: int, size: int) -> list[Path]:
    import xarray as xr

    from precipdiff.io import write_netcdf

    rng = np.random.default_rng(0)
    out = []
    for k in range(files):
        data = rng.gamma(0.6, 2.0, size=(1, size, size)).astype(np.float32)
        data[data < 0.8] = 0.0
        da = xr.DataArray(
            data, dims=("time", "lat", "lon"), name="precip", attrs={"units": "mm/h"},
            coords={"time": np.array(["2020-06-01T00:00"], "datetime64[ns]")
                    + np.timedelta64(k, "h"),
                    "lat": 35.05 + 0.1 * np.arange(size), "lon": -100.95 + 0.1 * np.arange(size)},
        )
        out.append(write_netcdf(da, root / f"in{k:03d}.nc"))
    return out


def _load(req, key: tuple) -> None:
    from precipdiff.pipeline import archive

    archive.worker_pipeline(req, "cpu", key)


def _noop(i: int) -> int:
    return i


def run_once(inputs: list[Path], out: Path, workers: int, members: int, steps: int,
             fmt: str, noop: int) -> dict:
    """The whole archive run on its own cluster, then the per-task overhead on a fresh one."""
    from precipdiff.pipeline import archive
    from precipdiff.pipeline.run import PredictRequest, _options, load_pipeline

    req = PredictRequest(inputs=inputs, output=out, members=members, steps=steps, device="cpu",
                         archive=True, workers=workers, archive_format=fmt,
                         input_semantics="block_maximum")
    stats: dict = {}
    start = time.perf_counter()
    pipeline = load_pipeline(req, "cpu")
    for _ in archive.run_archive(req, pipeline, _options(req, "cpu")):
        pass
    stats["total_s"] = time.perf_counter() - start
    with archive.dask_client(workers) as client:
        client.gather(client.map(_noop, range(workers * 4)))  # warm the workers
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(noop), pure=False))
        stats["overhead_ms"] = (time.perf_counter() - t0) / noop * 1e3
    return stats


def task_seconds(inputs, out, workers, members, steps, fmt) -> float:
    """Tasks alone: the same run with the cluster already up and the weights already loaded."""
    from distributed import as_completed

    from precipdiff.pipeline import archive
    from precipdiff.pipeline.run import PredictRequest

    req = PredictRequest(inputs=inputs, output=out, members=members, steps=steps, device="cpu",
                         archive=True, workers=workers, input_semantics="block_maximum")
    key = archive.weights_key(req, "cpu")
    with archive.dask_client(workers) as client:
        client.run(_load, req, key)  # the weights on every worker first
        t0 = time.perf_counter()
        futures = [client.submit(archive.netcdf_task, req, "cpu", key, p,
                                 out / f"{p.name}.precipdiff.nc", pure=False) for p in inputs]
        for f in as_completed(futures):
            assert f.result()[2] is None, f.result()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--size", type=int, default=12, help="coarse cells a side")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--format", default="zarr", choices=("zarr", "netcdf"))
    ap.add_argument("--noop", type=int, default=200, help="empty tasks for the overhead")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/archive.md"))
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root, args.files, args.size)
        for n in args.workers:
            target = root / (f"w{n}.zarr" if args.format == "zarr" else f"w{n}")
            s = run_once(inputs, target, n, args.members, args.steps, args.format, args.noop)
            s["tasks_s"] = task_seconds(inputs, root / f"t{n}", n, args.members, args.steps,
                                        args.format)
            s["workers"] = n
            rows.append(s)
            print(f"workers {n}: {s}", flush=True)
    base = rows[0]["tasks_s"]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Archive on dask.distributed ({stamp})",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_archive.py --files {args.files} --size "
        f"{args.size} --members {args.members} --steps {args.steps} --format {args.format}`; "
        f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; "
        f"shipped weights, {args.files} one-step {args.size}x{args.size} coarse inputs.",
        "",
        "| workers | whole run (s) | tasks alone (s) | files/s (tasks) | speed-up (tasks) "
        "| overhead per empty task (ms) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['total_s']:.1f} | {r['tasks_s']:.1f} | "
            f"{args.files / r['tasks_s']:.2f} | {base / r['tasks_s']:.2f} | "
            f"{r['overhead_ms']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
