"""Archive on dask.distributed: throughput with 1 vs N workers, scheduling overhead per task,
and peak memory per worker.

    OMP_NUM_THREADS=1 python benchmarks/bench_archive.py            # all three parts
    OMP_NUM_THREADS=1 python benchmarks/bench_archive.py --files 16 --workers 1 2 --format netcdf
    OMP_NUM_THREADS=1 python benchmarks/bench_archive.py --parts overhead memory \\
        --out benchmarks/results/archive/overhead_memory.md

The inputs are synthetic coarse fields (0.1 deg, gamma rain, one hour apart); the shipped
weights (areal-mean models by default: ``--input-semantics``). Three parts (``--parts``):

* ``throughput``: ``--files`` one-step ``--size`` inputs; each worker count runs ``predict
  --archive`` through :func:`precipdiff.pipeline.archive.run_archive` on its own embedded
  LocalCluster and is timed twice: the whole run (cluster start, weight loads, input scan, store
  layout, tasks) and the tasks alone (one NetCDF task per file, on a cluster already up with the
  weights already loaded, from the first submit to the last result). The overhead per empty task
  is the wall time of ``--noop`` empty tasks submitted together, divided by their number.
* ``overhead``: ``--overhead-files`` one-step ``--overhead-size`` inputs through a zarr archive
  on one worker, against the same calls (scan, store layout, one :func:`~precipdiff.pipeline.
  archive.zarr_task` per file) made in this process one after the other. Overhead per task =
  (archive wall - in-process wall) / tasks, for the whole run (cluster start included) and for
  the tasks alone (cluster up, weights loaded, store laid out).
* ``memory``: one input per worker of ``--memory-steps`` time steps (``--memory-size`` a side)
  through a zarr archive on the largest of ``--workers``; each worker's resident set size
  after loading the weights, after the first and the last time step it wrote (a hook), and its
  peak (``VmHWM``) at the end. A task writes one time step at a time, so neither should grow
  with the steps per input (the archive's size).

Writes a Markdown table per part to ``--out`` (default ``benchmarks/results/archive.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

PARTS = ("throughput", "overhead", "memory")


def make_inputs(root: Path, files: int, size: int, steps: int = 1) -> list[Path]:
    """``files`` inputs of ``steps`` hourly time steps each (file k starts at hour k * steps)."""
    import xarray as xr

    from precipdiff.io import write_netcdf

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for k in range(files):
        data = rng.gamma(0.6, 2.0, size=(steps, size, size)).astype(np.float32)
        data[data < 0.8] = 0.0
        da = xr.DataArray(
            data, dims=("time", "lat", "lon"), name="precip", attrs={"units": "mm/h"},
            coords={"time": np.datetime64("2020-06-01T00:00", "ns")
                    + np.timedelta64(1, "h") * (k * steps + np.arange(steps)),
                    "lat": 35.05 + 0.1 * np.arange(size), "lon": -100.95 + 0.1 * np.arange(size)},
        )
        out.append(write_netcdf(da, root / f"in{k:03d}.nc"))
    return out


def _request(inputs: list[Path], out: Path, workers: int, fmt: str, args, **kw):
    from precipdiff.pipeline.run import PredictRequest

    return PredictRequest(inputs=inputs, output=out, members=args.members, steps=args.steps,
                          device="cpu", archive=True, workers=workers, archive_format=fmt,
                          input_semantics=args.input_semantics, **kw)


def _load(req, key: tuple) -> None:
    from precipdiff.pipeline import archive

    archive.worker_pipeline(req, "cpu", key)


def _noop(i: int) -> int:
    return i


def _whole_run(req) -> float:
    """Seconds of ``predict --archive`` end to end (weights, cluster, scan, layout, tasks)."""
    from precipdiff.pipeline import archive
    from precipdiff.pipeline.run import _options, load_pipeline

    start = time.perf_counter()
    pipeline = load_pipeline(req, "cpu")
    for _ in archive.run_archive(req, pipeline, _options(req, "cpu")):
        pass
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- throughput


def run_once(inputs: list[Path], out: Path, workers: int, fmt: str, noop: int, args) -> dict:
    """The whole archive run on its own cluster, then the per-task overhead on a fresh one."""
    from precipdiff.pipeline import archive

    stats: dict = {"total_s": _whole_run(_request(inputs, out, workers, fmt, args))}
    with archive.dask_client(workers) as client:
        client.gather(client.map(_noop, range(workers * 4)))  # warm the workers
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(noop), pure=False))
        stats["overhead_ms"] = (time.perf_counter() - t0) / noop * 1e3
    return stats


def task_seconds(inputs: list[Path], out: Path, workers: int, args) -> float:
    """Tasks alone: the same run with the cluster already up and the weights already loaded."""
    from distributed import as_completed

    from precipdiff.pipeline import archive

    req = _request(inputs, out, workers, "netcdf", args)
    key = archive.weights_key(req, "cpu")
    with archive.dask_client(workers) as client:
        client.run(_load, req, key)  # the weights on every worker first
        t0 = time.perf_counter()
        futures = [client.submit(archive.netcdf_task, req, "cpu", key, p,
                                 out / f"{p.name}.precipdiff.nc", pure=False) for p in inputs]
        for f in as_completed(futures):
            assert f.result()[2] is None, f.result()
        return time.perf_counter() - t0


def throughput(root: Path, args) -> list[str]:
    inputs = make_inputs(root / "throughput", args.files, args.size)
    rows = []
    for n in args.workers:
        target = root / (f"w{n}.zarr" if args.format == "zarr" else f"w{n}")
        s = run_once(inputs, target, n, args.format, args.noop, args)
        s["tasks_s"] = task_seconds(inputs, root / f"t{n}", n, args)
        s["workers"] = n
        rows.append(s)
        print(f"workers {n}: {s}", flush=True)
    base = rows[0]["tasks_s"]
    lines = [
        f"## Throughput: {args.files} one-step {args.size}x{args.size} coarse inputs, "
        f"--format {args.format}",
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
    return lines


# ----------------------------------------------------------------------------- overhead


def in_process(inputs: list[Path], store: Path, args) -> tuple[float, float]:
    """The zarr archive's calls made here, one after the other, without dask: seconds of the
    whole (weights, scan, layout, tasks, finish) and of the tasks alone."""
    from precipdiff.pipeline import archive
    from precipdiff.pipeline.run import _options, load_pipeline

    archive._PIPELINES.clear()  # load the weights as a fresh worker would
    req = _request(inputs, store, 1, "zarr", args)
    start = time.perf_counter()
    pipeline, opts = load_pipeline(req, "cpu"), _options(req, "cpu")
    key = archive.weights_key(req, "cpu")
    infos = [archive.scan_task(req, "cpu", key, p) for p in inputs]
    archive._store_for(store, req, pipeline, opts, key, infos)
    t0 = time.perf_counter()
    for p in inputs:
        assert archive.zarr_task(req, "cpu", key, p, store)[1] is None
    tasks = time.perf_counter() - t0
    archive.finish_store(store, pipeline)
    return time.perf_counter() - start, tasks


def warm_tasks(inputs: list[Path], store: Path, args) -> float:
    """The zarr tasks alone on one worker: cluster up, weights loaded, store laid out."""
    from precipdiff.pipeline import archive
    from precipdiff.pipeline.run import _options, load_pipeline

    req = _request(inputs, store, 1, "zarr", args)
    pipeline, opts = load_pipeline(req, "cpu"), _options(req, "cpu")
    key = archive.weights_key(req, "cpu")
    with archive.dask_client(1) as client:
        client.run(_load, req, key)
        infos = client.gather(client.map(archive.scan_task, [req] * len(inputs),
                                         ["cpu"] * len(inputs), [key] * len(inputs), inputs))
        archive._store_for(store, req, pipeline, opts, key, infos)
        t0 = time.perf_counter()
        futures = [client.submit(archive.zarr_task, req, "cpu", key, p, store, pure=False)
                   for p in inputs]
        assert all(error is None for _, error in client.gather(futures))
        return time.perf_counter() - t0


def overhead(root: Path, args) -> list[str]:
    n = args.overhead_files
    inputs = make_inputs(root / "overhead", n, args.overhead_size)
    local_s, local_tasks = in_process(inputs, root / "local.zarr", args)
    whole_s = _whole_run(_request(inputs, root / "archive.zarr", 1, "zarr", args))
    warm_s = warm_tasks(inputs, root / "warm.zarr", args)
    print(f"overhead: in-process {local_s:.2f} s (tasks {local_tasks:.2f} s), archive "
          f"{whole_s:.2f} s (tasks {warm_s:.2f} s)", flush=True)
    size = args.overhead_size
    return [
        f"## Scheduling overhead: {n} one-step {size}x{size} coarse inputs, --format zarr, "
        "1 worker vs in-process",
        "",
        "| part | in-process (s) | archive, 1 worker (s) | overhead per task (ms) |",
        "|---|---:|---:|---:|",
        f"| whole run (cluster start, weights, scan, layout, tasks) | {local_s:.2f} | "
        f"{whole_s:.2f} | {(whole_s - local_s) / n * 1e3:.0f} |",
        f"| tasks alone (cluster up, weights loaded) | {local_tasks:.2f} | {warm_s:.2f} | "
        f"{(warm_s - local_tasks) / n * 1e3:.1f} |",
    ]


# ----------------------------------------------------------------------------- memory


def _rss_mb() -> tuple[float, float]:
    """This process's resident set size now and its peak so far (MB): ``VmRSS`` and ``VmHWM``
    of ``/proc/self/status`` (``ru_maxrss`` elsewhere). Not ``ru_maxrss`` on Linux: it survives
    ``exec``, so a spawned worker would report the peak of the process that forked it."""
    fields = {}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024  # kB
    if len(fields) == 2:
        return fields["VmRSS"], fields["VmHWM"]
    import psutil

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS
    return psutil.Process().memory_info().rss / 2**20, peak


class RssLog:
    """Archive hook: each worker appends its resident set size (MB) after every time step it
    completes to ``folder/<pid>.txt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, event: str, index: int) -> None:
        if event == "step_done":
            with open(self.folder / f"{os.getpid()}.txt", "a") as fh:
                fh.write(f"{_rss_mb()[0]:.1f}\n")


def worker_memory(inputs: list[Path], store: Path, workers: int, args) -> list[dict]:
    """Per worker: RSS after loading the weights, after its first and last time step, and its
    peak at the end (MB)."""
    from precipdiff.pipeline import archive
    from precipdiff.pipeline.run import _options, load_pipeline

    folder = store.with_suffix(".rss")
    folder.mkdir()
    req = _request(inputs, store, workers, "zarr", args)
    key = archive.weights_key(req, "cpu")
    with archive.dask_client(workers) as client:
        client.run(_load, req, key)
        loaded, pids = client.run(_rss_mb), client.run(os.getpid)
        req = _request(inputs, store, workers, "zarr", args, scheduler=client.scheduler.address)
        for _ in archive.run_archive(req, load_pipeline(req, "cpu"), _options(req, "cpu"),
                                     hook=RssLog(folder)):
            pass
        end = client.run(_rss_mb)
    rows = []
    for w in sorted(end):
        log = folder / f"{pids[w]}.txt"
        steps = [float(v) for v in log.read_text().split()] if log.exists() else [np.nan]
        rows.append({"loaded": loaded[w][0], "first": steps[0], "last": steps[-1],
                     "steps": len(steps) if log.exists() else 0, "peak": end[w][1]})
    return rows


def memory(root: Path, args) -> list[str]:
    from precipdiff.pipeline.run import PredictRequest

    size, workers = args.memory_size, max(args.workers)
    factor = 4  # the shipped Stage II
    lines = [
        f"## Peak memory per worker: {workers} inputs of n time steps, {size}x{size} coarse "
        f"({size * factor}x{size * factor} fine), --format zarr, {workers} workers",
        "",
        "| steps per input | fine fields of one input (MB) | worker | steps done | RSS after "
        "weights (MB) | RSS after its first step (MB) | after its last step (MB) | peak RSS (MB) "
        "| peak - after weights (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for steps in args.memory_steps:
        inputs = make_inputs(root / f"memory{steps}", workers, size, steps)
        rows = worker_memory(inputs, root / f"m{steps}.zarr", workers, args)
        print(f"memory, {steps} steps per input: {rows}", flush=True)
        # precip, mean, std and one exceedance probability per threshold: float32 planes
        planes = args.members + 2 + len(PredictRequest.thresholds)
        fields = steps * planes * (size * factor) ** 2 * 4 / 2**20
        for k, r in enumerate(rows):
            lines.append(f"| {steps} | {fields:.1f} | {k} | {r['steps']} | {r['loaded']:.0f} | "
                         f"{r['first']:.0f} | {r['last']:.0f} | {r['peak']:.0f} | "
                         f"{r['peak'] - r['loaded']:.0f} |")
    return lines


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--size", type=int, default=12, help="coarse cells a side")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="sampler steps per stage")
    ap.add_argument("--input-semantics", default="areal_mean",
                    help="what the shipped default models expect")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--format", default="zarr", choices=("zarr", "netcdf"))
    ap.add_argument("--noop", type=int, default=200, help="empty tasks for the overhead")
    ap.add_argument("--overhead-files", type=int, default=24)
    ap.add_argument("--overhead-size", type=int, default=4)
    ap.add_argument("--memory-size", type=int, default=32)
    ap.add_argument("--memory-steps", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/archive.md"))
    args = ap.parse_args()

    body: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for part, run in (("throughput", throughput), ("overhead", overhead),
                          ("memory", memory)):
            if part in args.parts:
                body += ["", *run(Path(tmp), args)]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = (f"--parts {' '.join(args.parts)} --files {args.files} --size {args.size} "
             f"--members {args.members} --steps {args.steps} --format {args.format} "
             f"--workers {' '.join(map(str, args.workers))} --overhead-files "
             f"{args.overhead_files} --overhead-size {args.overhead_size} --memory-size "
             f"{args.memory_size} --memory-steps {' '.join(map(str, args.memory_steps))}")
    lines = [
        f"# Archive on dask.distributed ({stamp})",
        "",
        f"`OMP_NUM_THREADS=1 python benchmarks/bench_archive.py {flags}`; {model}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; shipped "
        f"weights ({args.input_semantics}), {args.members} members, {args.steps} sampler steps "
        f"per stage; {time.perf_counter() - started:.0f} s in all.",
        *body,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
