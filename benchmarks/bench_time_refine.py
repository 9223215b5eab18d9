"""Temporal super-resolution: 30-min coarse input to 5-min frames, on held-out radar sequences.

For each 5-min network of the corpus (held-out ``test`` events; no model saw them) the script
takes the wettest run of ``--intervals`` x 6 consecutive 5-min frames (fewer intervals, down to 2,
where its held-out event is shorter) and a ``--crop`` window
(:func:`bench_temporal.load_case`), averages the mean-pooled radar over every 30 min (the coarse
input of a half-hourly product such as IMERG: each value the mean rate of its half hour), and
splits it back into 5-min frames with :func:`precipdiff.pipeline.time_refine.refine_time`:

* ``repeat``: every sub-step is the interval mean (piecewise constant; the naive reading);
* ``linear``: linear in time between interval means, rescaled to keep each interval's mean;
* ``motion``: motion-compensated (pysteps' Proesmans optical flow), rescaled the same way;
* ``oracle``: the true 5-min coarse frames (what a 5-min product would give; an upper bound).

Coarse scores are against the true 5-min coarse frames (MAE, correlation, CSI at 1 mm/h, lag-1
correlation error and flicker ratio of the sequence, and the largest error of an interval's
mean: ~0 for the conserving methods). With ``--members N`` (> 0) each refined sequence also
goes through Stage II (the per-frame ``--weights`` and the spatiotemporal ``--temporal-weights``,
both from the same noise as ``bench_temporal.py``) and the 1-km ensembles are scored against
the 5-min 1-km radar: per-frame CRPS (fair), lag-1 correlation error, flicker ratio and 30-min
accumulation CRPS.

    python benchmarks/bench_time_refine.py --corpus stores/corpus.zarr \\
        --temporal-weights src/precipdiff/weights/stage2_temporal_mean.safetensors \\
        --output benchmarks/results/time_refine
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from bench_temporal import (  # this folder: run as a script
    load_case,
    run_case,
    sequence_arguments,
    sequence_options,
    temporal_net,
)
from precipdiff.data.corpus import open_corpus
from precipdiff.evaluation.temporal import temporal_scores
from precipdiff.pipeline.time_refine import refine_time
from precipdiff.release import Release

log = logging.getLogger("bench_time_refine")
FACTOR = 6  # 30 min to 5 min
METHODS = ("oracle", "repeat", "linear", "motion")


def coarse_in_time(lr: np.ndarray, time_s: np.ndarray, factor: int) -> xr.DataArray:
    """Mean rate over every ``factor`` frames, stamped at the first (mm/h, (time, y, x))."""
    n = lr.shape[0] // factor * factor
    means = lr[:n].reshape(n // factor, factor, *lr.shape[1:]).mean(axis=1)
    times = time_s[:n:factor].astype("datetime64[s]").astype("datetime64[ns]")
    return xr.DataArray(means, dims=("time", "y", "x"), coords={"time": times},
                        attrs={"units": "mm/h"})


def refined(method: str, coarse: xr.DataArray, truth_lr: np.ndarray, factor: int) -> np.ndarray:
    """The 5-min coarse sequence of ``method`` (``(time, y, x)`` mm/h)."""
    if method == "oracle":
        return truth_lr
    if method == "repeat":
        return np.repeat(coarse.values, factor, axis=0)
    return refine_time(coarse, factor, method=method, conserve=True).values


def coarse_scores(seq: np.ndarray, truth: np.ndarray, coarse: np.ndarray, factor: int,
                  times: np.ndarray) -> dict[str, float]:
    """Deterministic scores of a refined coarse sequence against the true 5-min frames."""
    ok = np.isfinite(seq) & np.isfinite(truth)
    a, b = seq[ok], truth[ok]
    hit = ((a >= 1) & (b >= 1)).sum()
    csi = hit / max(((a >= 1) | (b >= 1)).sum(), 1)
    interval = seq.reshape(-1, factor, *seq.shape[1:]).mean(axis=1)
    coords = {"time": times}
    fc = xr.DataArray(seq[None], dims=("member", "time", "y", "x"), coords=coords)
    ob = xr.DataArray(truth, dims=("time", "y", "x"), coords=coords)
    t = temporal_scores(fc, ob, lags=(1,), periods_h=())
    return {"mae": float(np.abs(a - b).mean()), "pearson": float(np.corrcoef(a, b)[0, 1]),
            "csi@1": float(csi), "lag1_corr_err": t["lag1_corr_error"],
            "flicker_ratio": t["flicker_ratio"],
            "interval_mean_max_err": float(np.nanmax(np.abs(interval - coarse)))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sequence_arguments(ap, output="benchmarks/results/time_refine", crop=80)
    ap.add_argument("--intervals", type=int, default=3,
                    help="30-min intervals per sequence (fewer where the held-out event is short)")
    return ap.parse_args(argv)


def report(results: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=1))
    lines = ["# Temporal super-resolution: 30-min coarse input to 5-min frames", "",
             f"`python benchmarks/bench_time_refine.py {meta['argv']}` ({meta['date']}, "
             f"{meta['machine']}, load average {meta['load'][0]:.1f}); {meta['wall_s']:.0f} s.",
             ""]
    for r in results:
        lines += [f"## {r['network']} from {r['start']}: {r['frames']} 5-min frames, "
                  f"{r['crop']} km window", "", "Coarse (10 km) sequence against the true "
                  "5-min coarse frames:", "",
                  "| method | MAE (mm/h) | correlation | CSI 1 mm/h | lag-1 corr err | flicker "
                  "ratio | max error of a 30-min mean (mm/h) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m, s in r["coarse"].items():
            lines.append(f"| {m} | {s['mae']:.3f} | {s['pearson']:.3f} | {s['csi@1']:.3f} | "
                         f"{s['lag1_corr_err']:.3f} | {s['flicker_ratio']:.2f} | "
                         f"{s['interval_mean_max_err']:.2g} |")
        if r.get("fine"):
            lines += ["", "1-km ensembles against the 5-min radar:", "",
                      "| method | model | CRPS fair | lag-1 corr err | flicker ratio | CRPS "
                      "30-min acc |", "|---|---|---:|---:|---:|---:|"]
            for m, rows in r["fine"].items():
                for model, s in rows.items():
                    lines.append(f"| {m} | {model} | {s['crps_fair']:.4f} | "
                                 f"{s['lag1_corr_error']:.3f} | {s['flicker_ratio']:.2f} | "
                                 f"{s['crps_fair_30min_accum']:.4f} |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    start = time.perf_counter()
    release = Release.load(args.weights)
    net = temporal_net(args, release) if args.members > 0 else None
    opts = sequence_options(args)
    corpus = open_corpus(args.corpus)
    results = []
    for network in args.networks or corpus.networks:
        case = None
        for k in range(args.intervals, 1, -1):  # the longest held-out sequence up to that
            case = load_case(corpus, network, k * FACTOR, args.crop)
            if case is not None:
                break
        if case is None or case["step_s"] != 300:
            log.info("%s: no %d-frame held-out 5-min sequence", network,
                     args.intervals * FACTOR)
            continue
        coarse = coarse_in_time(case["lr"], case["time_s"], FACTOR)
        times = case["time_s"].astype("datetime64[s]").astype("datetime64[ns]")
        row = {"network": network, "start": case["start"], "frames": int(case["lr"].shape[0]),
               "crop": int(case["hr"].shape[-1]), "coarse": {}, "fine": {}}
        for method in METHODS:
            seq = refined(method, coarse, case["lr"], FACTOR).astype(np.float32)
            row["coarse"][method] = coarse_scores(seq, case["lr"], coarse.values, FACTOR, times)
            if net is not None:
                fine = run_case({**case, "lr": seq}, release, net, opts, tuple(args.windows),
                                tuple(args.noise_correlation))
                row["fine"][method] = fine["rows"]
            log.info("%s %s: %s", network, method, json.dumps(row["coarse"][method]))
        results.append(row)
        meta = {"argv": " ".join(sys.argv[1:] if argv is None else argv),
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": platform.processor() or platform.machine(),
                "load": os.getloadavg(), "wall_s": time.perf_counter() - start,
                "threads": torch.get_num_threads()}
        report(results, meta, args.output)


if __name__ == "__main__":
    main()
