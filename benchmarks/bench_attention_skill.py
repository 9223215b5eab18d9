"""Skill of the shipped Stage II with global vs neighbourhood attention, on held-out MRMS radar.

Reads MRMS PrecipRate frames from ``--mrms-dir`` (``../shared/data/mrms/2019-06-10``), crops
``--bbox`` (default lon -85...-81, lat 42...46: 400 x 400 km of the eastern test band of the
shipped Stage II's training store and the region east of it, never seen in training), pools
them as the stage was trained (its ``pooling`` and ``factor`` from the release metadata: block
maximum, 10x), and runs Stage II alone twice with the same seed and options: global attention
(the old behaviour) and neighbourhood attention over the training patch (the new default).
Both are scored against the 1-km radar with :func:`precipdiff.evaluation.report.evaluate_fields`
(CRPS, FSS, spectra, ...); the Markdown report goes to ``--output``.

    OMP_NUM_THREADS=1 python benchmarks/bench_attention_skill.py --times 20 --members 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch
import xarray as xr

from precipdiff.defaults import PREDICT
from precipdiff.evaluation.report import evaluate_fields, metric_table, write_report
from precipdiff.grid import coarsen
from precipdiff.io.mrms import read_mrms
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("crps_fair", "crps_ecdf", "spread_skill_ratio", "rmse", "pearson", "FSS@1/4px",
        "FSS@5/4px", "FSS@5/16px", "frequency_bias@1", "log_spectral_distance_db",
        "spectral_slope_error", "p99.9_error", "emd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mrms-dir", type=Path, default=ROOT.parent / "shared/data/mrms/2019-06-10")
    ap.add_argument("--bbox", type=float, nargs=4, default=[-85.0, 42.0, -81.0, 46.0],
                    metavar=("LON0", "LAT0", "LON1", "LAT1"))
    ap.add_argument("--times", type=int, nargs="+", default=[20],
                    help="frame indices (sorted file names, every 2 min from 00:00)")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=PREDICT.steps)
    ap.add_argument("--sampler", default=PREDICT.sampler)
    ap.add_argument("--window", type=int, default=PREDICT.window,
                    help="predict's fine-grid window (default: the CLI's)")
    ap.add_argument("--weights", type=Path, default=None, help="Stage II (default: shipped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/attention_skill")
    return ap.parse_args(argv)


def read_frames(args: argparse.Namespace) -> xr.DataArray:
    files = sorted(args.mrms_dir.glob("PrecipRate_*.grib2"))
    if not files:
        raise SystemExit(f"{args.mrms_dir}: no MRMS PrecipRate files")
    frames = [read_mrms(files[t], bbox=tuple(args.bbox)) for t in args.times]
    return xr.concat(frames, dim="time")


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")), "unknown CPU")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    weights = args.weights or shipped_weights()["downscale_max"]
    base = Stage.load(weights)
    truth = read_frames(args)
    side = base.factor
    ny, nx = (truth.sizes["lat"] // side) * side, (truth.sizes["lon"] // side) * side
    truth = truth.isel(lat=slice(0, ny), lon=slice(0, nx))
    coarse = coarsen(truth, side, method=base.pooling)
    s = SamplerSettings(sampler=args.sampler, steps=args.steps)
    opts = PredictOptions(members=args.members, correct=s, downscale=s, seed=args.seed,
                          window=args.window)
    rows, seconds = {}, {}
    for name, span in (("global attention", 0), (f"neighbourhood attention ({base.patch} px)",
                                                  base.patch)):
        stage = Stage.load(weights, attn_window=span)
        t0 = time.perf_counter()
        pred = Pipeline(None, stage).predict(coarse, replace(opts))["precip"]
        seconds[name] = time.perf_counter() - t0
        rows[name] = evaluate_fields(pred, truth, scales_px=(1, 4, 16), seed=args.seed, name=name)
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_model(), "load_average": os.getloadavg()[0], "weights": str(weights),
            "bbox": args.bbox, "times": [str(t) for t in truth["time"].values],
            "fine_shape": [ny, nx], "pooling": base.pooling, "factor": side,
            "members": args.members, "sampler": args.sampler, "steps": args.steps,
            "window": args.window, "seed": args.seed, "seconds": seconds}
    args.output.mkdir(parents=True, exist_ok=True)
    write_report({"Stage II on held-out MRMS, global vs neighbourhood attention":
                  metric_table(rows)}, None, output_dir=args.output,
                 title="Attention span: shipped Stage II on held-out MRMS radar")
    (args.output / "summary.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    names = list(rows)
    print(f"{meta['date']}; {meta['cpu']}; load average {meta['load_average']:.1f}; "
          f"{ny}x{nx} fine px; times {meta['times']}; {args.members} members, {args.sampler} "
          f"{args.steps} steps, window {args.window}\n")
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in KEYS:
        if key in rows[names[0]]:
            print(f"| {key} | " + " | ".join(f"{rows[n][key]:.4f}" for n in names) + " |")
    print("| seconds | " + " | ".join(f"{seconds[n]:.0f}" for n in names) + " |")


if __name__ == "__main__":
    main()
