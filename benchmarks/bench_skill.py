"""Skill on real data: held-out MRMS test region, the diffusion stages against the baselines.

Prepare the store once (MRMS PrecipRate 2019-06-10, 36 frames, emulated IMERG-like source,
max-pooled reference, disjoint train | val | test column bands), then run:

    precipdiff prepare --config configs/prepare_mrms_emulated.yaml --output stores/mrms_emul.zarr
    python benchmarks/bench_skill.py --store stores/mrms_emul.zarr --output benchmarks/results/skill

Experiments on the store's *test* band (never seen in training; ``stage1_select`` excepted), at
a few time steps:

* ``chain``: emulated satellite source -> Stage I -> Stage II; Stage I is scored at 0.1 deg
  against the max-pooled radar, Stage I+II at 1 km against the radar; baselines: raw input,
  pooled empirical quantile mapping fitted on the *train* band, interpolation, RainFARM.
* ``downscale``: Stage II alone on the max-pooled radar (the PrecipDiff downscaling task).
* ``nfe``: Stage II CRPS and time versus sampler steps (how few steps keep the skill).
* ``real_pair`` (with ``--real-pair``): Stage I on MRMS radar-only -> gauge-corrected.
* ``downscale_mean`` (with ``--mean-store``): Stage II trained and scored on mean-pooled radar.
* ``stage1_select`` (with ``--select-correct``): Stage I candidates at 0.1 deg on the
  *validation* band, for choosing between training runs without looking at the test band.
* ``chain_mean`` (with ``--mean-store`` and ``--weights-correct-mean``): ``chain`` with both
  stages trained on the mean-pooled radar (Stage I scored against the block mean).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.baselines import get_baseline
from precipdiff.data.store import open_store
from precipdiff.evaluation.report import evaluate_fields
from precipdiff.evaluation.run import VerificationInputs, baseline_predictions, verify
from precipdiff.evaluation.spatial import subgrid_event_fraction
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights


@dataclass(frozen=True)
class Context:
    """What every experiment receives: the parsed options, the sampler options and the
    default stages (``correct``, ``downscale``, ``regression`` or None)."""

    args: argparse.Namespace
    opts: PredictOptions
    stages: dict[str, Stage | None]


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


def corrected_on(stage: Stage, src: xr.DataArray, opts: PredictOptions) -> xr.DataArray:
    """Stage I members for ``src`` (time, lat, lon), on ``src``'s own coordinates."""
    pred = Pipeline(stage, None).predict(src, opts)["corrected_lr"]
    return pred.rename(lat_lr="lat", lon_lr="lon").assign_coords(lat=src["lat"], lon=src["lon"])


def require_store_grid(stage: Stage, store: Path, st, *, factor: int) -> None:
    """SystemExit unless ``stage`` was trained for ``st``'s pooling and the given factor."""
    if stage.pooling != st.pooling or stage.factor != factor:
        raise SystemExit(
            f"{stage.source}: trained for {stage.pooling} pooling x{stage.factor}, "
            f"but {store} is {st.pooling} pooling x{st.factor}"
        )


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


def real_pair(ctx: Context) -> dict:
    """Stage I on a real radar-only -> gauge-corrected pair (test band), against raw and EQM.

    Rows: the shipped Stage I (trained on *emulated satellite* errors: an out-of-distribution
    check) and, with ``--weights-correct-pair``, a Stage I trained on this store's own train band
    (``configs/stage1_correct_gaugecorr.yaml``). EQM is fitted on the same train band.
    """
    from precipdiff.evaluation.report import metric_table, write_report

    args, opts, stages = ctx.args, ctx.opts, ctx.stages
    store = args.real_pair
    st = open_store(store)
    t = list(range(len(st.times)))
    _, src, ref_lr, _ = load_split(store, "test", t, None)
    qm = fit_qm(store, st.pooling, n_times=len(t))
    preds = {"raw input": src, "quantile mapping (EQM, train band)": qm.apply(src)}
    candidates = [("precipdiff Stage I (shipped, emulated-satellite-trained)", stages["correct"])]
    if args.weights_correct_pair is not None:
        candidates.append(
            ("precipdiff Stage I (trained on this pair)", Stage.load(args.weights_correct_pair))
        )
    for name, stage in candidates:
        preds[name] = corrected_on(stage, src, opts)
    rows = {
        name: evaluate_fields(p, ref_lr, scales_px=(1, 2, 4, 8), seed=args.seed, name=name)
        for name, p in preds.items()
    }
    write_report(
        {f"Real pair, coarse grid: radar-only -> gauge-corrected ({st.pooling}-pooled)":
         metric_table(rows)},
        None,
        output_dir=args.output / "real_pair",
        title="MRMS radar-only vs gauge-corrected, 2021-07-06 00Z, test band",
    )
    return rows


def stage1_select(ctx: Context) -> dict:
    """Stage I candidates at the coarse grid on the ``--select-split`` band (model selection).

    Scores each ``--select-correct`` weights file, the raw source and train-band EQM against
    the pooled reference of ``--store`` on the *validation* band by default, so that choosing
    between training runs never looks at the test band.
    """
    from precipdiff.evaluation.report import metric_table, write_report

    args, opts = ctx.args, ctx.opts
    st = open_store(args.store)
    _, src, ref_lr, _ = load_split(args.store, args.select_split, args.times, None)
    qm = fit_qm(args.store, st.pooling)
    preds = {"raw input": src, "quantile mapping (EQM, train band)": qm.apply(src)}
    for path in args.select_correct:
        preds[str(path)] = corrected_on(Stage.load(path), src, opts)
    rows = {
        name: evaluate_fields(p, ref_lr, scales_px=(1, 2, 4, 8), seed=args.seed, name=name)
        for name, p in preds.items()
    }
    write_report(
        {f"Stage I candidates, {args.select_split} band, coarse grid": metric_table(rows)},
        None,
        output_dir=args.output / f"stage1_select_{args.select_split}",
        title=f"Stage I model selection on the {args.select_split} band of {args.store}",
    )
    return rows


def chain(ctx: Context, *, store: Path, correct: Stage, down: Stage, name: str) -> dict:
    """Emulated satellite -> Stage I -> Stage II, against the baselines (Stage I and I+II)."""
    args, opts, stages = ctx.args, ctx.opts, ctx.stages
    st, src, _, ref_hr = load_split(store, "test", args.times, tuple(args.rows))
    require_store_grid(correct, store, st, factor=1)  # Stage I works on the coarse grid
    require_store_grid(down, store, st, factor=st.factor)
    regression = stages["regression"]
    qm, qm_fine = fit_qm(store, st.pooling), fit_qm(store, "mean")
    t0 = time.perf_counter()
    out = Pipeline(correct, down).predict(src, opts)
    seconds = time.perf_counter() - t0
    mass = Pipeline(correct, down).predict(src, replace(opts, mass_consistent=True))["precip"]
    extra = {"precipdiff I+II, mass-consistent": mass}
    if regression is not None and regression.pooling == st.pooling:
        reg = Pipeline(None, regression).predict(src, replace(opts, members=1))["precip"]
        extra["regression-only (on raw input)"] = reg.isel(member=0, drop=True)
    _, rows = verify(
        VerificationInputs(
            truth_hr=ref_hr,
            src_lr=src,
            factor=st.factor,
            pooling=st.pooling,
            corrected_lr=out["corrected_lr"],
            downscaled=out["precip"],
            extra_hr=extra,
        ),
        args.output / name,
        qm=qm,
        qm_fine=qm_fine,
        seed=args.seed,
        baselines=("nearest", "bilinear", "bicubic", "qm", "rainfarm"),
        title="Skill on the MRMS test band: emulated satellite -> Stage I -> Stage II "
        f"({st.pooling}-pooled reference)",
    )
    return {"rows": rows, "seconds": seconds}


def downscale(ctx: Context, *, store: Path, down: Stage, name: str) -> dict:
    """Stage II alone on the pooled radar of ``store`` (the PrecipDiff downscaling task)."""
    args, opts, stages = ctx.args, ctx.opts, ctx.stages
    st, _, ref_lr, ref_hr = load_split(store, "test", args.times, tuple(args.rows))
    require_store_grid(down, store, st, factor=st.factor)
    t0 = time.perf_counter()
    only_down = Pipeline(None, down).predict(ref_lr, opts)
    seconds = time.perf_counter() - t0
    extra = {}
    regression = stages["regression"]
    if regression is not None and regression.pooling == st.pooling:
        reg = Pipeline(None, regression).predict(ref_lr, replace(opts, members=1))["precip"]
        extra["regression-only"] = reg.isel(member=0, drop=True)
    # the baselines once, for both the verification rows and the sub-grid table
    baselines = baseline_predictions(
        ref_lr, st.factor, ("bilinear", "bicubic", "rainfarm"), seed=args.seed
    )
    subgrid = subgrid_table(
        store,
        {
            **{k: v for k, v in baselines.items() if k != "bicubic interpolation"},
            **extra,
            "precipdiff Stage II": only_down["precip"],
        },
        ref_lr,
        ref_hr,
        args.output / name / "subgrid_wet_fraction.md",
    )
    _, rows = verify(
        VerificationInputs(
            truth_hr=ref_hr,
            src_lr=ref_lr,
            factor=st.factor,
            pooling=st.pooling,
            downscaled=only_down["precip"],
            extra_hr={**baselines, **extra},
        ),
        args.output / name,
        seed=args.seed,
        baselines=("nearest",),
        title=f"Skill on the MRMS test band: Stage II on the {st.pooling}-pooled radar "
        f"({st.factor}x downscaling)",
    )
    return {"rows": rows, "seconds": seconds, "subgrid_wet_fraction": subgrid}


SUBGRID_EDGES = (1.0, 2.0, 5.0, 20.0)  # coarse-cell bins (mm/h) of the sub-grid table


def _fraction_row(fine: xr.DataArray, coarse: xr.DataArray, factor: int) -> list[float]:
    lead = [d for d in fine.dims if d not in ("time", "lat", "lon")]
    values = fine.transpose(*lead, "time", "lat", "lon").values
    return subgrid_event_fraction(
        values, coarse.values, factor=factor, threshold=1.0, edges=SUBGRID_EDGES
    ).tolist()


def subgrid_table(
    store: Path,
    preds: dict[str, xr.DataArray],
    ref_lr: xr.DataArray,
    ref_hr: xr.DataArray,
    path: Path,
) -> dict:
    """Fraction of 1-km pixels >= 1 mm/h inside a coarse cell, by the cell's value.

    Rows: the truth of each split band over every time step of the store (how the sub-grid
    wet area differs between the training and the test regions), then the truth and each
    method on the evaluated test band. Written as markdown to ``path``.
    """
    st = open_store(store)
    out: dict[str, list[float]] = {}
    for split in ("train", "val", "test"):
        _, _, lr, hr = load_split(store, split, list(range(len(st.times))), None)
        out[f"truth, {split} band, all {len(st.times)} times"] = _fraction_row(hr, lr, st.factor)
    out["truth, evaluated test rows/times"] = _fraction_row(ref_hr, ref_lr, st.factor)
    for name, pred in preds.items():
        out[name] = _fraction_row(pred, ref_lr, st.factor)
    bins = [f"({a:g}, {b:g}]" for a, b in zip(SUBGRID_EDGES[:-1], SUBGRID_EDGES[1:], strict=True)]
    lines = [
        f"Fraction of 1-km pixels >= 1 mm/h inside a {st.pooling}-pooled cell, by the cell's "
        "value (mm/h)",
        "",
        "| rows | " + " | ".join(bins) + " |",
        "|---|" + "---:|" * len(bins),
    ]
    lines += [f"| {k} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for k, row in out.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return out


def nfe_sweep(ctx: Context) -> list[dict]:
    """Stage II CRPS and time against sampler steps (one time step, 4 members)."""
    args, stages = ctx.args, ctx.stages
    _, _, ref_lr, ref_hr = load_split(args.store, "test", args.times[:1], tuple(args.rows))
    down = stages["downscale"]
    out = []
    for sampler in ("dpmpp_2m", "heun"):
        for steps in args.nfe_steps:
            if sampler == "heun" and steps < 2:
                continue
            s2 = SamplerSettings(sampler=sampler, steps=steps)
            o2 = PredictOptions(members=4, correct=s2, downscale=s2, seed=args.seed, window=256)
            t0 = time.perf_counter()
            pred = Pipeline(None, down).predict(ref_lr, o2)["precip"]
            secs = time.perf_counter() - t0
            m = evaluate_fields(pred, ref_hr, scales_px=(1, 4, 16))
            out.append(
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
    return out


@dataclass(frozen=True)
class Experiment:
    """One row of the experiment table: ``run(ctx, **arguments)``.

    ``arguments`` maps each keyword of ``run`` to where its value comes from: ``arg:<name>``
    (a command-line option), ``stage:<key>`` (a default stage), ``load:<name>`` (weights from
    an option, loaded) or ``text:<value>``. ``needs`` are the options it requires; the first
    one, when given, also selects the experiment by default. ``store`` names the option whose
    store the summary records.
    """

    run: Callable[..., object]
    arguments: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    store: str = "store"


EXPERIMENTS: dict[str, Experiment] = {
    "chain": Experiment(
        chain,
        {"store": "arg:store", "correct": "stage:correct", "down": "stage:downscale",
         "name": "text:chain"},
    ),
    "downscale": Experiment(
        downscale, {"store": "arg:store", "down": "stage:downscale", "name": "text:downscale"}
    ),
    "nfe": Experiment(nfe_sweep),
    "real_pair": Experiment(real_pair, needs=("real_pair",), store="real_pair"),
    "downscale_mean": Experiment(
        downscale,
        {"store": "arg:mean_store", "down": "load:weights_downscale_mean",
         "name": "text:downscale_mean"},
        needs=("mean_store", "weights_downscale_mean"),
        store="mean_store",
    ),
    "chain_mean": Experiment(
        chain,
        {"store": "arg:mean_store", "correct": "load:weights_correct_mean",
         "down": "load:weights_downscale_mean", "name": "text:chain_mean"},
        needs=("weights_correct_mean", "mean_store", "weights_downscale_mean"),
        store="mean_store",
    ),
    "stage1_select": Experiment(stage1_select, needs=("select_correct",)),
}


def _resolve(spec: str, ctx: Context) -> object:
    source, _, name = spec.partition(":")
    if source == "arg":
        return getattr(ctx.args, name)
    if source == "stage":
        return ctx.stages[name]
    if source == "load":
        return Stage.load(getattr(ctx.args, name))
    if source == "text":
        return name
    raise ValueError(f"unknown argument source {spec!r}")


def run_experiment(name: str, ctx: Context) -> object:
    """Check the options ``name`` needs, resolve its arguments and run it."""
    exp = EXPERIMENTS[name]
    missing = [n for n in exp.needs if not getattr(ctx.args, n)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise SystemExit(f"{name} needs {flags}")
    return exp.run(ctx, **{k: _resolve(v, ctx) for k, v in exp.arguments.items()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("stores/mrms_emul.zarr"))
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/skill"))
    ap.add_argument("--weights-correct", type=Path, default=None)
    ap.add_argument("--weights-downscale", type=Path, default=None)
    ap.add_argument("--weights-regression", type=Path, default=None,
                    help="a regression (CorrDiff mean) stage: adds the regression-only rows")
    ap.add_argument("--times", type=int, nargs="*", default=[5, 20, 35])
    ap.add_argument("--rows", type=int, nargs=2, default=[30, 70], help="coarse rows of the band")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sampler", default="dpmpp_2m", help="sampler of the main experiments")
    ap.add_argument("--nfe-steps", type=int, nargs="*", default=[2, 4, 8, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-pair", type=Path, default=None,
                    help="store of a real pair (configs/prepare_mrms_gaugecorr.yaml): "
                    "Stage I table")
    ap.add_argument("--weights-correct-pair", type=Path, default=None,
                    help="a Stage I trained on the --real-pair store (adds its row)")
    ap.add_argument("--mean-store", type=Path, default=None,
                    help="mean-pooled store (configs/prepare_mrms_meanpool.yaml)")
    ap.add_argument("--weights-downscale-mean", type=Path, default=None,
                    help="a Stage II trained on --mean-store "
                    "(configs/stage2_downscale_meanpool.yaml)")
    ap.add_argument("--weights-correct-mean", type=Path, default=None,
                    help="a Stage I trained on --mean-store (configs/stage1_correct_meanpool.yaml)")
    ap.add_argument("--select-correct", type=Path, nargs="*", default=[],
                    help="Stage I weights to compare in stage1_select")
    ap.add_argument("--select-split", choices=("train", "val", "test"), default="val",
                    help="band of stage1_select (default: validation)")
    ap.add_argument("--experiments", nargs="+", choices=tuple(EXPERIMENTS), default=None,
                    help="which experiments to run (default: every one whose inputs are given); "
                    "summary.json keeps the results of the others")
    return ap.parse_args(argv)


def _meta(name: str, args: argparse.Namespace, weights: tuple[Path, Path]) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "store": str(getattr(args, EXPERIMENTS[name].store)),
        "times": args.times,
        "rows_lr": args.rows,
        "members": args.members,
        "sampler": args.sampler,
        "steps": args.steps,
        "weights": [str(w) for w in (*weights, args.weights_downscale_mean,
                                     args.weights_correct_pair, args.weights_correct_mean)],
    }


def _print_nfe(rows: list[dict]) -> None:
    print("| sampler | steps | NFE | CRPS fair | CRPS ecdf | spread-skill | s (4 members) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['crps_fair']:.4f} | "
            f"{r['crps_ecdf']:.4f} | {r['spread_skill_ratio']:.2f} | {r['seconds']:.1f} |"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shipped = shipped_weights()
    weights = (args.weights_correct or shipped["correct"],
               args.weights_downscale or shipped["downscale"])
    stages = {
        "correct": Stage.load(weights[0]),
        "downscale": Stage.load(weights[1]),
        "regression": Stage.load(args.weights_regression) if args.weights_regression else None,
    }
    todo = args.experiments or [
        n for n, e in EXPERIMENTS.items() if not e.needs or getattr(args, e.needs[0])
    ]
    s = SamplerSettings(sampler=args.sampler, steps=args.steps)
    ctx = Context(args, PredictOptions(members=args.members, correct=s, downscale=s,
                                       seed=args.seed, window=256), stages)
    summary_path = args.output / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    meta = summary.setdefault("meta", {})
    for name in todo:
        summary[name] = run_experiment(name, ctx)
        meta[name] = _meta(name, args, weights)
        args.output.mkdir(parents=True, exist_ok=True)
        tmp = summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1, default=float))
        tmp.replace(summary_path)
        print(f"{name}: done ({meta[name]['date']})", flush=True)
    if "nfe" in todo:
        _print_nfe(summary["nfe"])


if __name__ == "__main__":
    main()
