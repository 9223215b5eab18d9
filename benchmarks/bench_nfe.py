"""Skill and solver error against sampler NFE for a shipped Stage II, with intervals.

Stage II alone downscales MRMS PrecipRate 10x over the east band of 2019-06-10 (lon -85…-82:
the test band of the max-pooled model's training store; the mean-pooled corpus model saw this
day's western part only) at several time steps, for each (sampler, steps, schedule); CRPS (fair
estimator) per time step and its mean with a 90 % bootstrap interval over time steps, and the
mean paired difference to the reference (the last setting, DPM-Solver++(2M) with 32 steps) with
its interval: two settings are separated when the interval of the paired difference excludes 0.
``--model mean`` (default) runs the default Stage II on mean-pooled input, ``--model max`` the
max-pooled one on block maxima.

    OMP_NUM_THREADS=1 python benchmarks/bench_nfe.py [--times 6] [--members 6] [--model mean]
    OMP_NUM_THREADS=1 python benchmarks/bench_nfe.py --converged [--model mean]
    OMP_NUM_THREADS=1 python benchmarks/bench_nfe.py --converged --student W --members 16 \
        --frames 1 4 --rows dpmpp_2m-4 dpmpp_2m-8 trig_pc-32

``--converged`` measures solver error on the real network: one time step, a 200 x 200 km crop,
6 members from the same noise; for each few-step setting the mean member std relative to the
converged one (DPM-Solver++(2M), 32 steps) and the mean |difference| of same-seed members, and
for the converged settings (Heun 24 steps = 47 NFE, trig_pc 32) their distance to the reference
(what "converged" means here).

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
from precipdiff.evaluation.distribution import earth_movers_distance
from precipdiff.evaluation.metrics import crps_ensemble_pointwise, spread_skill_ratio
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mrms" / "2019-06-10"
OUT = Path(__file__).parent / "results" / "nfe"
BBOX = (-85.0, 41.0, -83.0, 43.0)  # inside the test band of configs/prepare_mrms_emulated.yaml
#: (sampler, steps, schedule; None = the sampler's own); the last one is the reference
SETTINGS = [("dpmpp_2m", 12, "karras"), ("dpmpp_2m", 4, None), ("dpmpp_2m", 6, None),
            ("dpmpp_2m", 8, None), ("dpmpp_2m", 10, None), ("trig_pc", 8, None),
            ("trig_pc", 10, None), ("dpmpp_2m", 32, None)]
FEW = SETTINGS[:-1]
CONVERGED = [("heun", 24, None), ("trig_pc", 32, None)]


def bootstrap_ci(x: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    """90 % percentile-bootstrap interval of the mean of ``x``."""
    idx = rng.integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(axis=1)
    return float(np.quantile(means, 0.05)), float(np.quantile(means, 0.95))


def load(times: int, pooling: str) -> tuple[xr.DataArray, xr.DataArray]:
    files = sorted(DATA.glob("PrecipRate_*.grib2"))
    step = max(1, len(files) // times)
    hr = io.read_many(files[::step][:times], bbox=BBOX)
    hr = hr.fillna(0.0) if float(hr.isnull().mean()) < 0.01 else hr
    lr = grid.coarsen(hr, 10, method=pooling)
    lr.attrs["input_semantics"] = "block_maximum" if pooling == "max" else "areal_mean"
    hr = hr.isel(lat=slice(0, lr.sizes["lat"] * 10), lon=slice(0, lr.sizes["lon"] * 10))
    return lr, hr


def run_setting(down: Stage, lr: xr.DataArray, sampler: str, steps: int, members: int,
                seed: int, schedule: str | None = None
                ) -> tuple[xr.DataArray, SamplerSettings, float]:
    """Stage II alone on ``lr``: (precip (member, time, lat, lon), settings, wall seconds)."""
    s2 = SamplerSettings(sampler=sampler, steps=steps, schedule=schedule)
    opts = PredictOptions(members=members, downscale=s2, seed=seed, window=512)
    t0 = time.perf_counter()
    pred = Pipeline(None, down).predict(lr, opts)["precip"]
    return pred, s2, time.perf_counter() - t0


def crps_per_time(fc: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Fair CRPS mean per time step; ``fc`` (member, time, y, x), ``truth`` (time, y, x)."""
    return np.array([np.nanmean(crps_ensemble_pointwise(fc[:, t], truth[t], estimator="fair"))
                     for t in range(truth.shape[0])])


def label(sampler: str, steps: int, schedule: str | None) -> str:
    return f"{sampler}-{steps}" + (f" ({schedule} schedule)" if schedule else "")


def stage_for(model: str) -> tuple[Stage, str]:
    """The shipped Stage II of ``model`` (``mean`` | ``max``) and its pooling."""
    key = "downscale_full" if model == "mean" else "downscale_max"
    return Stage.load(shipped_weights()[key]), model


def converged(model: str, members: int = 6, student: Path | None = None,
              rows: list[str] | None = None, frames: tuple[int, ...] = (2,)) -> None:
    """Solver error of the few-step settings against the converged network output.

    ``student``: a distilled Stage II (:mod:`precipdiff.training.distill`) of the ``model``'s
    network, sampled on its own grid from the same noise, scored against the teacher's
    reference. ``rows``: only the settings with these labels (e.g. ``dpmpp_2m-8``)."""
    down, pooling = stage_for(model)
    lr, hr = load(6, pooling)
    lr = lr.isel(time=list(frames), lat=slice(0, 20), lon=slice(0, 20))
    ref = run_setting(down, lr, *SETTINGS[-1][:2], members=members, seed=0)[0].values
    ref_std = float(np.nanstd(ref, axis=0).mean())
    lines = [f"Stage II ({model}-pooled model), time step(s) {list(frames)}, "
             f"{lr.shape[-2] * 10} x {lr.shape[-1] * 10} km, {members} members; reference "
             f"{label(*SETTINGS[-1])}: mean member std {ref_std:.4f} mm/h.", "",
             "| setting | NFE | std vs reference | W1 vs reference (mm/h) | mean abs. difference "
             "(mm/h) | s |", "|---|---:|---:|---:|---:|---:|"]
    settings = [(label(*st), down, st) for st in FEW + CONVERGED]
    if student is not None:
        settings.append((f"distilled student ({student.name})", Stage.load(student),
                         ("dpmpp_2m", 8, None)))
    for name, stage, (sampler, steps, schedule) in settings:
        if rows and name not in rows and stage is down:
            continue
        pred, s2, secs = run_setting(stage, lr, sampler, steps, members, 0, schedule)
        std = float(np.nanstd(pred.values, axis=0).mean())
        diff = float(np.nanmean(np.abs(pred.values - ref)))
        lines.append(f"| {name} | {stage.nfe(s2)} | {100 * (std / ref_std - 1):+.1f} % | "
                     f"{earth_movers_distance(pred.values, ref):.4f} | {diff:.4f} | {secs:.0f} |")
        print(lines[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "" if student is None else f"_student_{student.parent.name}"  # e.g. the run
    (OUT / f"converged_{model}{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", type=int, default=6)
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--model", choices=("mean", "max"), default="mean")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--converged", action="store_true", help="high-NFE convergence check")
    ap.add_argument("--student", type=Path, default=None,
                    help="with --converged: add this distilled Stage II")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="with --converged: only these settings, e.g. dpmpp_2m-8 dpmpp_2m-4")
    ap.add_argument("--frames", type=int, nargs="+", default=[2],
                    help="with --converged: time steps (of 6 spread over the hour)")
    args = ap.parse_args()
    if args.converged:
        converged(args.model, args.members, args.student, args.rows, tuple(args.frames))
        return
    down, pooling = stage_for(args.model)
    lr, hr = load(args.times, pooling)
    truth = hr.values
    rows, per_time = [], {}
    for sampler, steps, schedule in SETTINGS:
        pred, s2, secs = run_setting(down, lr, sampler, steps, args.members, args.seed,
                                     schedule)
        crps_t = crps_per_time(pred.values, truth)
        ssr = float(spread_skill_ratio(pred, hr.assign_coords(lat=pred.lat, lon=pred.lon)))
        key = label(sampler, steps, schedule)
        per_time[key] = crps_t
        rows.append({"setting": key, "sampler": sampler, "steps": steps, "nfe": down.nfe(s2),
                     "crps_fair": float(crps_t.mean()), "spread_skill": ssr, "seconds": secs})
        print(rows[-1], flush=True)
    rng = np.random.default_rng(args.seed)
    ref_key = label(*SETTINGS[-1])
    for r in rows:
        x = per_time[r["setting"]]
        r["crps_ci90"] = bootstrap_ci(x, rng)
        diff = x - per_time[ref_key]
        r["diff_to_ref"] = float(diff.mean())
        r["diff_ci90"] = bootstrap_ci(diff, rng)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"),
            "load_average": os.getloadavg(), "times": args.times, "members": args.members,
            "bbox": BBOX, "shape_hr": list(truth.shape)}
    (OUT / f"nfe_{args.model}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                           indent=1))
    lines = [f"Stage II (shipped, {args.model}-pooled), {pooling}-pooled MRMS 2019-06-10 east "
             f"band {BBOX}, {args.times} time steps, {args.members} members; reference row: "
             f"{ref_key}.",
             "", "| setting | NFE | CRPS fair (90 % CI) | Δ CRPS vs reference (90 % CI) "
             "| spread–skill | s |", "|---|---:|---|---|---:|---:|"]
    for r in rows:
        lo, hi = r["crps_ci90"]
        dlo, dhi = r["diff_ci90"]
        lines.append(f"| {r['setting']} | {r['nfe']} | {r['crps_fair']:.4f} "
                     f"({lo:.4f}–{hi:.4f}) | {r['diff_to_ref']:+.4f} ({dlo:+.4f}…{dhi:+.4f}) | "
                     f"{r['spread_skill']:.2f} | {r['seconds']:.0f} |")
    (OUT / f"nfe_{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
