"""Skill against sampler NFE for the shipped Stage II, with confidence intervals.

Stage II alone downscales max-pooled (the shipped model's pooling) MRMS PrecipRate 10x over the
held-out east band of 2019-06-10 (lon -85…-82: the test band of the training store, never
trained on) at several time steps, for each (sampler, NFE); CRPS (fair estimator) per time step
and its mean with a 90 % bootstrap interval over time steps, and the mean paired difference to
the most accurate setting (trig_pc at the largest NFE) with its interval: two settings are
separated when the interval of the paired difference excludes 0.

    OMP_NUM_THREADS=1 python benchmarks/bench_nfe.py [--times 6] [--members 8]
    OMP_NUM_THREADS=1 python benchmarks/bench_nfe.py --converged

``--converged`` asks which few-step setting is nearest the converged output of the real network:
one time step, 6 members, same seed, member spread and CRPS of DPM-Solver++(2M) at 12 and 32
steps, trig_pc at 32 and Heun at 24 steps (47 NFE), and the mean |difference| between settings.

Writes ``benchmarks/results/nfe/nfe.{md,json}``. Needs ../shared/data/mrms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff import grid, io
from precipdiff.evaluation.metrics import crps_ensemble_pointwise, spread_skill_ratio
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mrms" / "2019-06-10"
OUT = Path(__file__).parent / "results" / "nfe"
BBOX = (-85.0, 41.0, -83.0, 43.0)  # inside the test band of configs/prepare_mrms_emulated.yaml
SETTINGS = [("dpmpp_2m", 4), ("dpmpp_2m", 8), ("dpmpp_2m", 12),
            ("trig_pc", 4), ("trig_pc", 6), ("trig_pc", 8), ("trig_pc", 10), ("trig_pc", 16)]


def bootstrap_ci(x: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    """90 % percentile-bootstrap interval of the mean of ``x``."""
    idx = rng.integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(axis=1)
    return float(np.quantile(means, 0.05)), float(np.quantile(means, 0.95))


def load(times: int) -> tuple[xr.DataArray, xr.DataArray]:
    files = sorted(DATA.glob("PrecipRate_*.grib2"))
    step = max(1, len(files) // times)
    hr = io.read_many(files[::step][:times], bbox=BBOX)
    hr = hr.fillna(0.0) if float(hr.isnull().mean()) < 0.01 else hr
    lr = grid.coarsen(hr, 10, method="max")
    hr = hr.isel(lat=slice(0, lr.sizes["lat"] * 10), lon=slice(0, lr.sizes["lon"] * 10))
    return lr, hr


CONVERGED = [("dpmpp_2m", 12), ("dpmpp_2m", 32), ("trig_pc", 32), ("heun", 24)]


def run_setting(down: Stage, lr: xr.DataArray, sampler: str, steps: int, members: int,
                seed: int) -> tuple[xr.DataArray, SamplerSettings, float]:
    """Stage II alone on ``lr``: (precip (member, time, lat, lon), settings, wall seconds)."""
    s2 = SamplerSettings(sampler=sampler, steps=steps)
    opts = PredictOptions(members=members, downscale=s2, seed=seed, window=512)
    t0 = time.perf_counter()
    pred = Pipeline(None, down).predict(lr, opts)["precip"]
    return pred, s2, time.perf_counter() - t0


def crps_per_time(fc: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair CRPS mean per time step; ``fc`` (member, time, y, x), ``truth`` (time, y, x)."""
    return np.array([np.nanmean(crps_ensemble_pointwise(fc[:, t], truth[t], estimator="fair"))
                     for t in range(truth.shape[0])])


def converged() -> None:
    """High-NFE settings on one time step: where do the samplers converge to?"""
    lr, hr = load(6)
    lr, hr = lr.isel(time=[2]), hr.isel(time=[2])
    down = Stage.load(shipped_weights()["downscale_max"])
    res = {}
    for sampler, steps in CONVERGED:
        pred = run_setting(down, lr, sampler, steps, members=6, seed=0)[0].values
        res[(sampler, steps)] = pred
        crps = crps_per_time(pred, hr.values)[0]
        spread = float(np.nanstd(pred[:, 0], axis=0).mean())
        print(f"{sampler} {steps}: CRPS fair {crps:.4f}, mean member std {spread:.4f}", flush=True)
    keys = list(res)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            print(f"{a} vs {b}: mean |difference| {np.nanmean(np.abs(res[a] - res[b])):.4f} mm/h")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=int, default=6)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--converged", action="store_true", help="high-NFE convergence check")
    args = ap.parse_args()
    if args.converged:
        converged()
        return
    lr, hr = load(args.times)
    down = Stage.load(shipped_weights()["downscale_max"])
    truth = hr.values
    rows, per_time = [], {}
    for sampler, steps in SETTINGS:
        pred, s2, secs = run_setting(down, lr, sampler, steps, args.members, args.seed)
        crps_t = crps_per_time(pred.values, truth)
        ssr = float(spread_skill_ratio(pred, hr.assign_coords(lat=pred.lat, lon=pred.lon)))
        key = f"{sampler}-{steps}"
        per_time[key] = crps_t
        rows.append({"sampler": sampler, "steps": steps, "nfe": down.nfe(s2),
                     "crps_fair": float(crps_t.mean()), "spread_skill": ssr, "seconds": secs})
        print(rows[-1], flush=True)
    rng = np.random.default_rng(args.seed)
    ref_key = f"{SETTINGS[-1][0]}-{SETTINGS[-1][1]}"
    for r in rows:
        x = per_time[f"{r['sampler']}-{r['steps']}"]
        r["crps_ci90"] = bootstrap_ci(x, rng)
        diff = x - per_time[ref_key]
        r["diff_to_ref"] = float(diff.mean())
        r["diff_ci90"] = bootstrap_ci(diff, rng)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
            "load_average": os.getloadavg(), "times": args.times, "members": args.members,
            "bbox": BBOX, "shape_hr": list(truth.shape)}
    (OUT / "nfe.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Stage II (shipped), max-pooled MRMS 2019-06-10 test band {BBOX}, "
             f"{args.times} time steps, {args.members} members; reference row: {ref_key}.",
             "", "| sampler | steps | NFE | CRPS fair (90 % CI) | Δ CRPS vs reference (90 % CI) "
             "| spread–skill | s |", "|---|---:|---:|---|---|---:|---:|"]
    for r in rows:
        lo, hi = r["crps_ci90"]
        dlo, dhi = r["diff_ci90"]
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['crps_fair']:.4f} "
                     f"({lo:.4f}–{hi:.4f}) | {r['diff_to_ref']:+.4f} ({dlo:+.4f}…{dhi:+.4f}) | "
                     f"{r['spread_skill']:.2f} | {r['seconds']:.0f} |")
    (OUT / "nfe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
