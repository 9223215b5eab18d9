"""Peak memory of a temporal Stage II over long records: whole-record state vs chunks.

    OMP_NUM_THREADS=1 python benchmarks/bench_record_memory.py
    OMP_NUM_THREADS=1 python benchmarks/bench_record_memory.py --frames 24 96 --chunks 24 0

Each run is a fresh process (``--child``) that writes one record of ``--frames`` 5-min steps
(``--size`` coarse cells a side, synthetic gamma rain, seeded) through
:func:`precipdiff.pipeline.output.predict_to_file` with the shipped temporal Stage II
(``stage2_temporal_mean``, no Stage I), ``--members`` members sampled together and
``--temporal-chunk`` frames per sampler state (0: the whole record as one state, the only way
before chunks existed). It reports the process's peak resident set size (``VmHWM``), the
resident size after loading the weights, and the wall time. With chunks the sampler's state
should not grow with the record's length; the output file is written frame by frame.

Writes a Markdown table to ``--out`` (default ``benchmarks/results/record_memory.md``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_archive import _rss_mb  # noqa: E402
from benchlib import stamp, write_report  # noqa: E402

WHOLE = 10**6  # a chunk longer than any record: one state


def child(args: argparse.Namespace) -> dict:
    import xarray as xr

    from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
    from precipdiff.pipeline.output import predict_to_file
    from precipdiff.pipeline.shipped import shipped_weights

    stage = Stage.load(shipped_weights()["downscale_temporal"])
    loaded = _rss_mb()[0]
    rng = np.random.default_rng(0)
    data = rng.gamma(0.6, 2.0, size=(args.frames[0], args.size, args.size)).astype(np.float32)
    data[data < 0.8] = 0.0
    src = xr.DataArray(
        data, dims=("time", "lat", "lon"), name="precip", attrs={"units": "mm/h"},
        coords={"time": np.datetime64("2020-06-01T00:00", "ns")
                + np.timedelta64(5, "m") * np.arange(args.frames[0]),
                "lat": 47.0 + 0.1 * np.arange(args.size), "lon": 7.0 + 0.1 * np.arange(args.size)})
    chunk = args.chunks[0] or WHOLE
    opts = PredictOptions(members=args.members, member_batch=args.members, seed=0,
                          downscale=SamplerSettings(sampler="dpmpp_2m", steps=args.steps),
                          precision="fp32", temporal_chunk=chunk)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        predict_to_file(Pipeline(None, stage), src, Path(tmp) / "out.nc", opts, thresholds=())
    wall = time.perf_counter() - t0
    return {"frames": args.frames[0], "chunk": args.chunks[0], "loaded_mb": loaded,
            "peak_mb": _rss_mb()[1], "wall_s": wall}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[24, 96])
    ap.add_argument("--chunks", type=int, nargs="+", default=[24, 0],
                    help="frames per sampler state, 0: the whole record")
    ap.add_argument("--size", type=int, default=16, help="coarse cells a side (x10 fine)")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/record_memory.md"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    for frames in args.frames:
        for chunk in args.chunks:
            cmd = [sys.executable, __file__, "--child", "--frames", str(frames), "--chunks",
                   str(chunk), "--size", str(args.size), "--members", str(args.members),
                   "--steps", str(args.steps)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    fine = args.size * 10
    lines = [f"# Temporal record memory ({stamp()})", "",
             f"{args.members} members, {fine}x{fine} fine pixels, {args.steps} steps, "
             "one process per row", "",
             "| frames | frames per state | RSS after loading (MB) | peak RSS (MB) | wall (s) |",
             "|---:|---|---:|---:|---:|"]
    for r in rows:
        state = "whole record" if r["chunk"] == 0 else str(r["chunk"])
        lines.append(f"| {r['frames']} | {state} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | "
                     f"{r['wall_s']:.1f} |")
    write_report(args.out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
