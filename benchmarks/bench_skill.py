"""Skill on real data: held-out MRMS test region, the diffusion stages against the baselines.

Prepare the store once (MRMS PrecipRate 2019-06-10, 36 frames, emulated IMERG-like source,
max-pooled reference, disjoint train | val | test column bands), then run:

    precipdiff prepare --config configs/prepare_mrms_emulated.yaml --output stores/mrms_emul.zarr
    python benchmarks/bench_skill.py --store stores/mrms_emul.zarr --output benchmarks/results/skill

Experiments, all on the store's *test* band (never seen in training), at a few time steps:

* ``chain``: emulated satellite source -> Stage I -> Stage II; Stage I is scored at 0.1 deg
  against the max-pooled radar, Stage I+II at 1 km against the radar; baselines: raw input,
  pooled empirical quantile mapping fitted on the *train* band, interpolation, RainFARM.
* ``downscale``: Stage II alone on the max-pooled radar (the PrecipDiff downscaling task).
* ``nfe``: Stage II CRPS and time versus sampler steps (how few steps keep the skill).

Weights default to the shipped ones (``--weights-correct/--weights-downscale`` to override).
Writes ``report.md`` + CSV + figures per experiment under ``--output`` and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.baselines import get_baseline
from precipdiff.data.store import open_store
from precipdiff.evaluation.report import evaluate_fields
from precipdiff.evaluation.run import VerificationInputs, verify
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights


def _da(values: np.ndarray, grid, times: np.ndarray) -> xr.DataArray:
    return xr.DataArray(
        np.asarray(values, np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": times.astype("datetime64[ns]"), "lat": grid.lat, "lon": grid.lon},
        attrs={"units": "mm/h"},
    )


def load_split(store_path: Path, split: str, times: list[int], rows_lr: tuple[int, int] | None):
    """(src_lr, ref_lr, ref_hr) DataArrays of one split band at the given time indices."""
    st = open_store(store_path)
    f = st.factor
    x0, x1 = st.splits[split]["x_lr"]
    y0, y1 = rows_lr or (0, st.grid_lr.nlat)
    glr, ghr = st.grid_lr, st.grid_hr
    from precipdiff.grid import Grid

    sub_lr = Grid(glr.lat[y0], glr.lon[x0], glr.dlat, glr.dlon, y1 - y0, x1 - x0)
    sub_hr = Grid(
        ghr.lat[y0 * f], ghr.lon[x0 * f], ghr.dlat, ghr.dlon, (y1 - y0) * f, (x1 - x0) * f
    )
    t = np.asarray(times)
    tt = st.times[t]
    src = _da(st["src_lr"].oindex[t, y0:y1, x0:x1], sub_lr, tt)
    ref_lr = _da(st["ref_lr"].oindex[t, y0:y1, x0:x1], sub_lr, tt)
    ref_hr = _da(st["ref_hr"].oindex[t, y0 * f : y1 * f, x0 * f : x1 * f], sub_hr, tt)
    return st, src, ref_lr, ref_hr


def fit_qm(store_path: Path, pooling_target: str, n_times: int = 12):
    """Pooled EQM fitted on the *train* band: source -> reference pooled ``pooling_target``."""
    from precipdiff.grid import coarsen

    st = open_store(store_path)
    times = list(range(0, len(st.times), max(1, len(st.times) // n_times)))
    _, src, ref_lr, ref_hr = load_split(store_path, "train", times, None)
    ref = (
        ref_lr
        if pooling_target == st.pooling
        else coarsen(ref_hr, st.factor, method=pooling_target)
    )
    return get_baseline("eqm_pooled")(src, ref.assign_coords(lat=src["lat"], lon=src["lon"]))


def real_pair(store: Path, correct: Stage, args: argparse.Namespace, opts: PredictOptions) -> dict:
    """Stage I on a real radar-only -> gauge-corrected pair (test band), against raw and EQM.

    The shipped Stage I was trained on *emulated satellite* errors, not on radar-vs-gauge errors:
    this is an out-of-distribution check, and EQM is fitted on this store's own train band.
    """
    from precipdiff.evaluation.report import metric_table, write_report

    st = open_store(store)
    t = list(range(len(st.times)))
    _, src, ref_lr, _ = load_split(store, "test", t, None)
    qm = fit_qm(store, st.pooling, n_times=len(t))
    pred = Pipeline(correct, None).predict(src, opts)["corrected_lr"]
    pred = pred.rename(lat_lr="lat", lon_lr="lon").assign_coords(lat=src["lat"], lon=src["lon"])
    rows = {
        name: evaluate_fields(p, ref_lr, scales_px=(1, 2, 4, 8), seed=args.seed, name=name)
        for name, p in (
            ("raw input", src),
            ("quantile mapping (EQM, train band)", qm.apply(src)),
            ("precipdiff Stage I (shipped, emulated-satellite-trained)", pred),
        )
    }
    write_report(
        {"Real pair, coarse grid: radar-only -> gauge-corrected (max-pooled)": metric_table(rows)},
        None,
        output_dir=args.output / "real_pair",
        title="MRMS radar-only vs gauge-corrected, 2021-07-06 00Z, test band",
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("stores/mrms_emul.zarr"))
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/skill"))
    ap.add_argument("--weights-correct", type=Path, default=None)
    ap.add_argument("--weights-downscale", type=Path, default=None)
    ap.add_argument(
        "--weights-regression",
        type=Path,
        default=None,
        help="a regression (CorrDiff mean) stage: adds the regression-only rows",
    )
    ap.add_argument("--times", type=int, nargs="*", default=[5, 20, 35])
    ap.add_argument("--rows", type=int, nargs=2, default=[30, 70], help="coarse rows of the band")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--nfe-steps", type=int, nargs="*", default=[2, 4, 8, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--real-pair",
        type=Path,
        default=None,
        help="store of a real pair (configs/prepare_mrms_gaugecorr.yaml): Stage I table",
    )
    ap.add_argument("--skip-main", action="store_true", help="only the --real-pair experiment")
    args = ap.parse_args()
    shipped = shipped_weights()
    wc = args.weights_correct or shipped["correct"]
    wd = args.weights_downscale or shipped["downscale"]
    correct, down = Stage.load(wc), Stage.load(wd)
    st, src, ref_lr, ref_hr = load_split(args.store, "test", args.times, tuple(args.rows))
    f = st.factor
    s = SamplerSettings(sampler="dpmpp_2m", steps=args.steps)
    opts = PredictOptions(members=args.members, correct=s, downscale=s, seed=args.seed, window=256)
    summary: dict[str, dict] = {}
    if args.real_pair is not None:
        summary["real_pair"] = real_pair(args.real_pair, correct, args, opts)
        if args.skip_main:
            print(json.dumps(summary["real_pair"], indent=1, default=float))
            return
    qm, qm_fine = fit_qm(args.store, st.pooling), fit_qm(args.store, "mean")

    t0 = time.perf_counter()
    chain = Pipeline(correct, down).predict(src, opts)
    t_chain = time.perf_counter() - t0
    mass = Pipeline(correct, down).predict(src, replace(opts, mass_consistent=True))["precip"]
    extra = {"precipdiff I+II, mass-consistent": mass}
    regression = Stage.load(args.weights_regression) if args.weights_regression else None
    if regression is not None:
        reg = Pipeline(None, regression).predict(src, replace(opts, members=1))["precip"]
        extra["regression-only (on raw input)"] = reg.isel(member=0, drop=True)
    _, rows = verify(
        VerificationInputs(
            truth_hr=ref_hr,
            src_lr=src,
            factor=f,
            pooling=st.pooling,
            corrected_lr=chain["corrected_lr"],
            downscaled=chain["precip"],
            extra_hr=extra,
        ),
        args.output / "chain",
        qm=qm,
        qm_fine=qm_fine,
        seed=args.seed,
        baselines=("nearest", "bilinear", "bicubic", "qm", "rainfarm"),
        title="Skill on the MRMS test band: emulated satellite -> Stage I -> Stage II",
    )
    summary["chain"] = {"rows": rows, "seconds": t_chain}

    t0 = time.perf_counter()
    only_down = Pipeline(None, down).predict(ref_lr, opts)
    t_down = time.perf_counter() - t0
    extra = {}
    if regression is not None:
        reg = Pipeline(None, regression).predict(ref_lr, replace(opts, members=1))["precip"]
        extra["regression-only"] = reg.isel(member=0, drop=True)
    _, rows = verify(
        VerificationInputs(
            truth_hr=ref_hr,
            src_lr=ref_lr,
            factor=f,
            pooling=st.pooling,
            downscaled=only_down["precip"],
            extra_hr=extra,
        ),
        args.output / "downscale",
        seed=args.seed,
        baselines=("nearest", "bilinear", "bicubic", "rainfarm"),
        title="Skill on the MRMS test band: Stage II on the max-pooled radar (10x downscaling)",
    )
    summary["downscale"] = {"rows": rows, "seconds": t_down}

    nfe_rows = []
    for sampler in ("dpmpp_2m", "heun"):
        for steps in args.nfe_steps:
            if sampler == "heun" and steps < 2:
                continue
            s2 = SamplerSettings(sampler=sampler, steps=steps)
            o2 = PredictOptions(members=4, correct=s2, downscale=s2, seed=args.seed, window=256)
            t0 = time.perf_counter()
            pred = Pipeline(None, down).predict(ref_lr.isel(time=[0]), o2)["precip"]
            secs = time.perf_counter() - t0
            m = evaluate_fields(pred, ref_hr.isel(time=[0]), scales_px=(1, 4, 16))
            nfe_rows.append(
                {
                    "sampler": sampler,
                    "steps": steps,
                    "nfe": down.nfe(s2),
                    "crps_fair": m["crps_fair"],
                    "crps_ecdf": m["crps_ecdf"],
                    "spread_skill_ratio": m["spread_skill_ratio"],
                    "seconds": secs,
                }
            )
    summary["nfe"] = nfe_rows
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "store": str(args.store),
        "times": args.times,
        "rows_lr": args.rows,
        "members": args.members,
        "steps": args.steps,
        "weights": [str(wc), str(wd)],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(
        json.dumps({"meta": meta, **summary}, indent=1, default=float)
    )
    print(json.dumps(meta))
    print("| sampler | steps | NFE | CRPS fair | CRPS ecdf | spread-skill | s (4 members) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in nfe_rows:
        print(
            f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['crps_fair']:.4f} | "
            f"{r['crps_ecdf']:.4f} | {r['spread_skill_ratio']:.2f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
