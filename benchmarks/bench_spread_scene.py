"""Does the spread inflation a scene needs follow something the coarse input shows?

One factor for all inputs (``calibrate --spread``) helps the four networks of instantaneous
rates and hurts RADOLAN's hourly sums (BENCHMARKS.md, "Spread inflation and a bound on 1-km
peaks"). This benchmark asks, frame by frame, which factor minimises the fair CRPS and whether
that factor follows a property of the coarse input or of the ensemble itself:

* Stage II with ``predict``'s defaults (mass consistency, fine threshold, peak bound) on
  ``--frames`` evenly spaced frames of every network's train and test split (160-px window
  with the most rain, mean-pooled 10-km input), ``--members`` members;
* every factor of ``--grid`` applied to the same members as ``predict`` would
  (:meth:`precipdiff.pipeline.Pipeline.inflate`), fair CRPS per frame;
* per frame: the best factor, the coarse field's mean, wet fraction, coefficient of variation
  and roughness (mean absolute neighbour difference over the mean), and the ensemble's
  relative spread (mean member standard deviation over the mean of the ensemble mean);
* Spearman correlations of log(best factor) with each on the train frames, and the CRPS a
  factor fitted on train frames (a power law of the best-correlated property) would give on
  the test frames, beside no inflation and the one calibrated factor.

    OMP_NUM_THREADS=1 python benchmarks/bench_spread_scene.py --corpus stores/corpus.zarr \\
        --output benchmarks/results/spread_scene
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from benchlib import stamp, write_report
from precipdiff.evaluation.metrics import crps_ensemble_pointwise, spread_skill_ratio
from precipdiff.pipeline import Pipeline, PredictOptions, Stage
from precipdiff.pipeline.shipped import shipped_weights
from precipdiff.release import Release
from precipdiff.training.calibrate import training_cases

log = logging.getLogger("bench_spread_scene")

GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
FEATURES = ("coarse_mean", "coarse_wet", "coarse_cv", "coarse_rough", "ens_rel_spread")


def coarse_features(lr: np.ndarray) -> dict[str, float]:
    """Properties of one coarse field (mm/h) that a user's input shows."""
    mean = float(lr.mean())
    rough = 0.5 * (np.abs(np.diff(lr, axis=0)).mean() + np.abs(np.diff(lr, axis=1)).mean())
    return {"coarse_mean": mean, "coarse_wet": float((lr >= 0.1).mean()),
            "coarse_cv": float(lr.std() / max(mean, 1e-6)),
            "coarse_rough": float(rough / max(mean, 1e-6))}


def ensemble_relative_spread(members: np.ndarray) -> float:
    """Mean member standard deviation over the mean of the ensemble mean (members (M, h, w))."""
    return float(members.std(axis=0, ddof=1).mean() / max(members.mean(), 1e-6))


def score_frames(weights: Path, corpus: str, *, frames: int, crop: int, members: int,
                 grid: tuple[float, ...]) -> list[dict]:
    release = Release.load(weights)
    pipeline = Pipeline(None, Stage.from_release(release))
    base = PredictOptions(members=members, seed=0, mass_consistent=None, spread_inflation=1.0)
    rows = []
    for split in ("train", "test"):
        for network, src, hr in training_cases(release, corpus, frames=frames, crop=crop,
                                               split=split):
            ds = pipeline.predict(src, base)
            pred, corrected = ds["precip"].values, ds["corrected_lr"].values
            lr = src.values
            for t in range(pred.shape[1]):
                valid = np.isfinite(hr[t]) & np.isfinite(pred[:, t]).all(axis=0)
                if (hr[t][valid] >= 0.1).mean() < 0.01:
                    continue  # a dry window says nothing about spread
                crps = {}
                for a in grid:
                    p = pipeline.inflate(pred[:, t], corrected[:, t],
                                         dataclasses.replace(base, spread_inflation=a))
                    crps[a] = float(crps_ensemble_pointwise(p[:, valid], hr[t][valid],
                                                            estimator="fair").mean())
                ens = pred[:, t][:, valid]
                ssr = spread_skill_ratio(xr.DataArray(ens, dims=("member", "point")),
                                         xr.DataArray(hr[t][valid], dims=("point",)))
                rows.append({"split": split, "network": network, "frame": t,
                             **coarse_features(lr[t]),
                             "ens_rel_spread": ensemble_relative_spread(ens),
                             "spread_skill": float(ssr),
                             "best": min(grid, key=lambda a: crps[a]),
                             **{f"crps_{a:g}": crps[a] for a in grid}})
            log.info("%s %s: %d frames", network, split, pred.shape[1])
    return rows


def crps_at(row: dict, a: float) -> float:
    """A frame's CRPS at grid factor ``a``."""
    return row[f"crps_{a:g}"]


def chosen_crps(row: dict, a: float, grid: tuple[float, ...]) -> float:
    """CRPS of a frame at factor ``a``, linear between the two nearest grid factors."""
    g = np.asarray(grid)
    a = float(np.clip(a, g[0], g[-1]))
    return float(np.interp(a, g, [crps_at(row, x) for x in grid]))


def relative_curves(rows: list[dict], grid: tuple[float, ...]) -> list[str]:
    """Per network and split: the mean CRPS at each factor over the mean CRPS at 1."""
    lines = ["| network | split | " + " | ".join(f"a = {a:g}" for a in grid) + " |",
             "|---|---|" + "---:|" * len(grid)]
    for split in ("train", "test"):
        for network in dict.fromkeys(r["network"] for r in rows):
            sub = [r for r in rows if r["network"] == network and r["split"] == split]
            if sub:
                ref = np.mean([crps_at(r, 1.0) for r in sub])
                lines.append(f"| {network} | {split} | " + " | ".join(
                    f"{np.mean([crps_at(r, a) for r in sub]) / ref:.3f}" for a in grid) + " |")
    return lines


def crps_fit(rows: list[dict], feature: str, grid: tuple[float, ...]) -> tuple[float, float]:
    """``(b0, b1)`` of ``a = exp(b0 + b1 log feature)`` minimising the mean over networks of
    the mean relative CRPS of their frames (a grid search, steps of 0.05)."""
    best = (np.inf, 0.0, 0.0)
    for b1 in np.arange(-0.5, 1.5001, 0.05):
        for b0 in np.arange(-0.5, 1.5001, 0.05):
            per: dict[str, list[float]] = {}
            for r in rows:
                a = float(np.exp(b0 + b1 * np.log(max(r[feature], 1e-6))))
                per.setdefault(r["network"], []).append(chosen_crps(r, a, grid)
                                                        / crps_at(r, 1.0))
            obj = float(np.mean([np.mean(v) for v in per.values()]))
            if obj < best[0]:
                best = (obj, float(b0), float(b1))
    return best[1], best[2]


def summarise(rows: list[dict], grid: tuple[float, ...], calibrated: float) -> list[str]:
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    y = np.log([r["best"] for r in train])
    lines = ["| property | Spearman ρ with log(best factor), train frames | test frames |",
             "|---|---:|---:|"]
    rho = {}
    for f in FEATURES:
        r_tr = stats.spearmanr([r[f] for r in train], y).statistic
        r_te = stats.spearmanr([r[f] for r in test], np.log([r["best"] for r in test])).statistic
        rho[f] = r_tr
        lines.append(f"| {f} | {r_tr:+.2f} | {r_te:+.2f} |")
    best_f = max(FEATURES, key=lambda f: abs(rho[f]))
    x = np.log([max(r[best_f], 1e-6) for r in train])
    slope, intercept = np.polyfit(x, y, 1)
    lines += ["", f"Fitted on train frames: log a = {intercept:+.3f} {slope:+.3f} log "
              f"{best_f}; frames: {len(train)} train, {len(test)} test.", "",
              "| network (test frames) | best factor per frame, median | CRPS a = 1 | "
              f"a = {calibrated:g} | a = fitted | oracle (best per frame) |",
              "|---|---:|---:|---:|---:|---:|"]
    for network in dict.fromkeys(r["network"] for r in test):
        sub = [r for r in test if r["network"] == network]
        fitted = [chosen_crps(r, float(np.exp(intercept + slope * np.log(max(r[best_f], 1e-6)))),
                              grid) for r in sub]
        lines.append(
            f"| {network} ({len(sub)}) | {np.median([r['best'] for r in sub]):g} | "
            f"{np.mean([crps_at(r, 1.0) for r in sub]):.4f} | "
            f"{np.mean([chosen_crps(r, calibrated, grid) for r in sub]):.4f} | "
            f"{np.mean(fitted):.4f} | {np.mean([crps_at(r, r['best']) for r in sub]):.4f} |")
    b0, b1 = crps_fit(train, best_f, grid)
    lines += ["", f"Fitted by CRPS on train frames instead (mean over networks of relative CRPS): "
              f"log a = {b0:+.2f} {b1:+.2f} log {best_f}.", "",
              "Mean CRPS relative to a = 1, per network and split:", "",
              *relative_curves(rows, grid)]
    lines += ["", "| network | split | frames | best factor, median (IQR) | spread/skill at a = 1, "
              "median |", "|---|---|---:|---|---:|"]
    for split, sub_rows in (("train", train), ("test", test)):
        for network in dict.fromkeys(r["network"] for r in sub_rows):
            b = [r["best"] for r in sub_rows if r["network"] == network]
            ss = [r["spread_skill"] for r in sub_rows if r["network"] == network]
            q = np.percentile(b, [25, 50, 75])
            lines.append(f"| {network} | {split} | {len(b)} | {q[1]:g} ({q[0]:g}–{q[2]:g}) | "
                         f"{np.median(ss):.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="stores/corpus.zarr")
    ap.add_argument("--weights", type=Path, default=None,
                    help="Stage II weights (default: the shipped default, distilled)")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--calibrated", type=float, default=2.0,
                    help="the one factor calibrate --spread found, for comparison")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/spread_scene"))
    ap.add_argument("--from-csv", action="store_true",
                    help="summarise the output folder's frames.csv again without running")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    weights = args.weights or Path(shipped_weights()["downscale"])
    table = args.output / "frames.csv"
    if args.from_csv:
        with open(table, newline="") as fh:
            rows = [{k: v if k in ("split", "network") else float(v) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
    else:
        rows = score_frames(weights, args.corpus, frames=args.frames, crop=args.crop,
                            members=args.members, grid=GRID)
        args.output.mkdir(parents=True, exist_ok=True)
        with open(table, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    lines = [f"# Spread inflation per scene ({stamp()})", "",
             f"weights `{weights}`, {args.members} members, {args.frames} frames per network "
             f"and split, {args.crop}-px windows, predict's defaults", ""]
    summary = summarise(rows, GRID, args.calibrated)
    write_report(args.output / "report.md", lines + summary)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
