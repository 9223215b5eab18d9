"""Generalisation: the shipped stages on the held-out events of every corpus network.

The corpus store (``configs/prepare_corpus.yaml``: MRMS, RADOLAN, MeteoSwiss, FMI and OPERA
CIRRUS on their native 1-km grids, 10 x 10 km mean-pooled coarse cells) names one held-out
event per network (its "test" split); no model saw those frames. For each network the script
takes ``--frames`` frames of the held-out event (evenly spaced among its wetter half) and one
``--crop`` x ``--crop`` fine-pixel window around the rain (the coarse window with the most
pooled rain over those frames, at most 5 % missing), feeds the *mean-pooled* radar to Stage II
and scores the ``--members`` ensemble against the 1-km radar, beside bilinear and bicubic
interpolation of the same input. Rows: the corpus-trained Stage II (``--weights-new``), the
comparison Stage II (``--weights-shipped``, default the shipped one), the regression-only
CorrDiff mean with ``--regression`` (``configs/corpus_regression.yaml``; a point forecast, on
the raw input in the chain task), and the baselines (bilinear, bicubic, RainFARM with
``--rainfarm``).

``--task`` chooses the input:

- ``downscale`` (default): the mean-pooled radar (the honest task: areal means, as IMERG/ERA5);
- ``downscale_max``: the 10 x 10 block maxima of the same 1-km radar (PrecipDiff's setting;
  give max-pooled weights as ``--weights-new``);
- ``chain``: the corpus's emulated satellite field (``src_lr``: mean pooling, shift, blur,
  bias, noise, missed drizzle) through Stage I (``--weights-correct``) and Stage II
  (``--weights-new``), against the 1-km radar; baselines are interpolations of the raw source,
  quantile mapping fitted on the network's *train* frames (source -> mean-pooled radar) then
  bilinear, and Stage II alone on the uncorrected source.

    precipdiff prepare --config configs/prepare_corpus.yaml --output stores/corpus.zarr
    python benchmarks/bench_generalise.py --corpus stores/corpus.zarr \\
        --weights-new runs/corpus_stage2_downscale/weights.safetensors \\
        --output benchmarks/results/generalise
    python benchmarks/bench_generalise.py --task chain \\
        --weights-correct runs/corpus_stage1_correct/weights.safetensors \\
        --weights-new runs/corpus_stage2_downscale/weights.safetensors \\
        --output benchmarks/results/generalise_chain

Metrics: CRPS (fair estimator; for the single-valued interpolations their MAE, which is the
CRPS of a point forecast), FSS at 1 and 5 mm/h over 8 and 32 km, spread/skill, volume
error (domain mean of the ensemble mean against the truth's, %), wet-fraction error (pixels
>= 0.1 mm/h, all members pooled, relative to the truth's, %), trace fraction (0 < R < 0.1 mm/h;
truth's in its own column), p99.9 and p99.99 errors (mm/h). In the chain task a second table
scores Stage I alone on the coarse grid against the mean-pooled radar (beside the raw source and
quantile mapping), so that each stage's extremes are reported apart. Writes ``results.json``,
``results.csv`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.baselines import get_baseline
from precipdiff.data.corpus import open_corpus
from precipdiff.data.windows import crop_around_rain
from precipdiff.defaults import PREDICT
from precipdiff.diffusion.samplers import native_schedule
from precipdiff.evaluation.report import evaluate_fields
from precipdiff.evaluation.run import baseline_predictions
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.shipped import shipped_weights

WET = 0.1  # mm/h: wet pixel
METRICS = ("crps_fair", "FSS@1/8px", "FSS@1/32px", "FSS@5/8px", "FSS@5/32px",
           "spread_skill_ratio", "volume_error_pct", "wet_fraction_error_pct", "trace_fraction",
           "p99.9_error", "p99.99_error")


STAGE1_METRICS = ("crps_fair", "mean_bias", "spread_skill_ratio", "volume_error_pct",
                  "wet_fraction_error_pct", "p99.9_error", "p99.99_error")
STAGE1_HEAD = ["method", "CRPS fair", "bias", "spread/skill", "volume err %", "wet-frac err %",
               "p99.9 err", "p99.99 err"]


def pick_frames(ref_lr: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices evenly spaced among the frames whose pooled wet area is at least the
    median (so that a window can be put around rain in every chosen frame)."""
    wet = np.nansum(ref_lr >= WET, axis=(1, 2))
    candidates = np.flatnonzero(wet >= np.median(wet))
    take = np.linspace(0, candidates.size - 1, min(n, candidates.size)).round().astype(int)
    return candidates[np.unique(take)]


def _field(values: np.ndarray, times: np.ndarray, n_y: int, n_x: int) -> xr.DataArray:
    """(time, lat, lon) on pixel-index coordinates (the metrics need only a regular grid)."""
    return xr.DataArray(np.asarray(values, np.float32), dims=("time", "lat", "lon"),
                        coords={"time": times, "lat": np.arange(n_y, dtype=np.float64),
                                "lon": np.arange(n_x, dtype=np.float64)},
                        attrs={"units": "mm/h"})


TASKS = ("downscale", "downscale_max", "chain")


def load_case(corpus, network: str, frames: int, crop: int, task: str = "downscale") -> dict:
    """The held-out frames of ``network``: coarse input of ``task`` (with the store's own grid
    coords, so the pipeline sees the real spacing) and the 1-km truth, cropped around the rain
    (the window is chosen on the mean-pooled radar for every task)."""
    st = corpus.open(network)
    f = st.factor
    test = np.asarray(st.splits["test"]["time"], dtype=np.int64)
    ref_lr_all = np.asarray(st["ref_lr"].oindex[test], np.float32)
    chosen = test[pick_frames(ref_lr_all, frames)]
    lr, hr, y0, x0, size = crop_around_rain(st, chosen, crop, max_missing=0.05)
    ref_lr = lr
    if task == "downscale_max":
        lr = hr.reshape(hr.shape[0], size, f, size, f).max(axis=(2, 4))
    elif task == "chain":
        lr = np.asarray(st["src_lr"].oindex[chosen, y0:y0 + size, x0:x0 + size], np.float32)
    times = st.times[chosen].astype("datetime64[ns]")
    ydim, xdim = ("y", "x") if "y_lr" in st.group else ("lat", "lon")
    coords = {"time": times,
              ydim: np.asarray(st.group[f"{ydim}_lr"][y0:y0 + size], np.float64),
              xdim: np.asarray(st.group[f"{xdim}_lr"][x0:x0 + size], np.float64)}
    attrs = {"units": "mm/h",
             "input_semantics": "block_maximum" if task == "downscale_max" else "areal_mean"}
    if st.crs:
        attrs["crs"] = str(st.crs)
    src = xr.DataArray(lr, dims=("time", ydim, xdim), coords=coords, attrs=attrs)
    event = st.group.attrs["events"][int(st.group["event"][int(chosen[0])])]
    return {"network": network, "event": event, "src": src, "lr": lr, "ref_lr": ref_lr, "hr": hr,
            "times": times, "frames": [str(t)[:16] for t in times], "factor": f,
            "window_lr": [y0, x0, size], "qm": fit_qm(st) if task == "chain" else None}


def fit_qm(st, max_frames: int = 200):
    """Pooled empirical quantile mapping from the emulated source to the mean-pooled radar,
    fitted on (at most ``max_frames`` evenly spaced) *train* frames of the network."""
    train = np.asarray(st.splits["train"]["time"], dtype=np.int64)
    train = train[np.linspace(0, train.size - 1, min(max_frames, train.size)).astype(int)]
    dims = ("time", "lat", "lon")
    src = xr.DataArray(np.asarray(st["src_lr"].oindex[train], np.float32), dims=dims)
    ref = xr.DataArray(np.asarray(st["ref_lr"].oindex[train], np.float32), dims=dims)
    return get_baseline("eqm_pooled")(src, ref)


def extra_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Volume and wet-fraction errors (%) and the trace fraction of ``pred`` (member?, ...)."""
    ens = pred if pred.ndim == truth.ndim + 1 else pred[None]
    valid = np.isfinite(truth) & np.isfinite(ens).all(axis=0)
    t, p = truth[valid], ens[:, valid]
    vol_t, wet_t = float(t.mean()), float((t >= WET).mean())
    return {"volume_error_pct": 100.0 * (float(p.mean()) - vol_t) / vol_t,
            "wet_fraction_error_pct": 100.0 * (float((p >= WET).mean()) - wet_t) / wet_t,
            "trace_fraction": float(((p > 0) & (p < WET)).mean())}


def score_case(case: dict, pipelines: dict[str, Pipeline], opts: PredictOptions, seed: int,
               baselines: tuple[str, ...] = ("bilinear", "bicubic"),
               row_options: dict[str, dict] | None = None) -> dict:
    """Every method's metrics on one case; seconds per pipeline prediction. ``row_options``
    overrides predict options per row (e.g. ``{"mass_consistent": True}``)."""
    hr, times, f = case["hr"], case["times"], case["factor"]
    truth = _field(hr, times, *hr.shape[1:])
    preds: dict[str, np.ndarray] = {}
    corrected: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, pipeline in pipelines.items():
        deterministic = pipeline.downscale is not None and pipeline.downscale.kind == "regression"
        run_opts = dataclasses.replace(opts, members=1) if deterministic else opts
        run_opts = dataclasses.replace(run_opts, **(row_options or {}).get(name, {}))
        t0 = time.perf_counter()
        ds = pipeline.predict(case["src"], run_opts)
        seconds[name] = time.perf_counter() - t0
        preds[name] = np.asarray(ds["precip"].values)
        if deterministic:  # one member: scored as a point forecast (its CRPS is its MAE)
            preds[name] = preds[name][0]
        if pipeline.correct is not None and "corrected_lr" in ds:
            corrected[name] = np.asarray(ds["corrected_lr"].values)
    lr = _field(case["lr"], times, *case["lr"].shape[1:])
    names = (*baselines, "qm") if case.get("qm") is not None else baselines
    for name, da in baseline_predictions(lr, f, names, qm=case.get("qm"), seed=seed,
                                         members=opts.members).items():
        dims = ("member", "time", "lat", "lon") if "member" in da.dims else truth.dims
        preds[name] = np.asarray(da.transpose(*dims).values)
    rows = {}
    for name, values in preds.items():
        if values.ndim == 4:
            da = xr.DataArray(values, dims=("member", *truth.dims), coords=truth.coords)
        else:
            da = truth.copy(data=values)
        m = evaluate_fields(da, truth, scales_px=(8, 32), seed=seed, name=name)
        if values.ndim == 3:  # the CRPS of a single-valued forecast is its absolute error
            m["crps_fair"] = m["mae"]
        m.update(extra_metrics(values, hr))
        rows[name] = {k: m.get(k, float("nan")) for k in METRICS}
    truth_trace = float(((hr > 0) & (hr < WET))[np.isfinite(hr)].mean())
    stage1 = score_stage1(case, corrected, seed) if corrected else {}
    return {"rows": rows, "stage1_rows": stage1, "seconds": seconds,
            "truth_trace_fraction": truth_trace,
            "truth_mean_mm_h": float(np.nanmean(hr)),
            "truth_wet_fraction": float(np.nanmean(hr >= WET))}


def score_stage1(case: dict, corrected: dict[str, np.ndarray], seed: int) -> dict:
    """Stage I on its own grid: each pipeline's corrected members, the raw source and quantile
    mapping against the mean-pooled radar (the coarse truth), so that each stage's extremes
    (p99.9/p99.99 error) and skill are reported apart."""
    ref = case["ref_lr"]
    truth = _field(ref, case["times"], *ref.shape[1:])
    preds = {f"{name}: Stage I output": values for name, values in corrected.items()}
    preds["raw source"] = case["lr"]
    if case.get("qm") is not None:
        preds["quantile mapping"] = case["qm"].apply_values(case["lr"])
    rows = {}
    for name, values in preds.items():
        dims = ("member", *truth.dims) if values.ndim == 4 else truth.dims
        da = xr.DataArray(values, dims=dims, coords=truth.coords)
        m = evaluate_fields(da, truth, scales_px=(4,), seed=seed, name=name)
        if values.ndim == 3:
            m["crps_fair"] = m["mae"]
        m.update(extra_metrics(values, ref))
        rows[name] = {k: m.get(k, float("nan")) for k in STAGE1_METRICS}
    return rows


def _fmt(v: float) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.3g}"


def report(results: list[dict], meta: dict, out: Path) -> None:
    """``results.json``, ``results.csv`` and ``report.md`` (one table per network/event)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=1,
                                                 default=str))
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["network", "event", "method", *METRICS])
        for r in results:
            for name, row in r["rows"].items():
                w.writerow([r["network"], r["event"], name, *(row[k] for k in METRICS)])
    head = ["method", "CRPS fair", "FSS 1/8km", "FSS 1/32km", "FSS 5/8km", "FSS 5/32km",
            "spread/skill", "volume err %", "wet-frac err %", "trace frac", "p99.9 err",
            "p99.99 err"]
    lines = [f"# {meta['title']}", "", f"{meta['note']}", ""]
    for r in results:
        lines += [f"## {r['network']} / {r['event']} (held out): frames {', '.join(r['frames'])}, "
                  f"window {r['window_lr'][2]}x{r['window_lr'][2]} coarse cells; truth mean "
                  f"{r['truth_mean_mm_h']:.3g} mm/h, wet fraction {r['truth_wet_fraction']:.3g}, "
                  f"trace fraction {r['truth_trace_fraction']:.3g}", "",
                  "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for name, row in r["rows"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row[k]) for k in METRICS) + " |")
        lines.append("")
        if r.get("stage1_rows"):
            lines += ["Stage I alone, on the coarse grid against the mean-pooled radar:", "",
                      "| " + " | ".join(STAGE1_HEAD) + " |",
                      "|---|" + "---:|" * (len(STAGE1_HEAD) - 1)]
            for name, row in r["stage1_rows"].items():
                lines.append(f"| {name} | "
                             + " | ".join(_fmt(row[k]) for k in STAGE1_METRICS) + " |")
            lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("stores/corpus.zarr"))
    ap.add_argument("--task", choices=TASKS, default="downscale")
    ap.add_argument("--weights-new", type=Path, default=None,
                    help="the Stage II under test (default: the shipped default Stage II)")
    ap.add_argument("--weights-shipped", type=Path, default=None,
                    help="a second Stage II to compare ('none': no second one; default: "
                         "none for chain, else the shipped max-pooled Stage II)")
    ap.add_argument("--weights-correct", type=Path, default=None,
                    help="Stage I for --task chain (default: the shipped default Stage I)")
    ap.add_argument("--regression", type=Path, default=None,
                    help="regression-only weights (CorrDiff mean, configs/corpus_regression.yaml) "
                         "scored as a point forecast in place of Stage II")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/generalise"))
    ap.add_argument("--networks", nargs="*", default=None)
    ap.add_argument("--frames", type=int, default=2, help="frames per held-out event")
    ap.add_argument("--crop", type=int, default=250, help="window size in fine pixels")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--rainfarm", action="store_true", help="add the RainFARM baseline (pysteps)")
    ap.add_argument("--mass-consistent", action="store_true",
                    help="add the precipdiff rows again with predict's --mass-consistent")
    ap.add_argument("--sampler", default=PREDICT.sampler)
    ap.add_argument("--steps", type=int, default=PREDICT.steps)
    ap.add_argument("--schedule", default=PREDICT.schedule,
                    help="noise schedule (default: the sampler's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--own-product", action="store_true",
                    help="for product-conditioned weights, add a row conditioned on each "
                    "held-out network's own product (`predict --product NETWORK`)")
    ap.add_argument("--trace-threshold", type=float, default=None,
                    help="coarse trace threshold (mm/h) of the precipdiff rows; default: the "
                    "weights' own")
    return ap.parse_args(argv)


#: Suffix of the rows run with predict's mass consistency (``--mass-consistent``).
MASS = ", mass-consistent"
#: Suffix of the rows conditioned on the held-out network's own product (``--own-product``).
OWN = ", own product"


def add_own_product_rows(rows: dict[str, Pipeline]) -> dict[str, Pipeline]:
    """Beside every row whose Stage II knows products, the same weights (a separate copy, set
    per network by :func:`set_own_product`) under the name ``<row>, own product``."""
    out: dict[str, Pipeline] = {}
    for name, p in rows.items():
        out[name] = p
        if p.downscale is not None and p.downscale.products:
            base, mass = (name[:-len(MASS)], MASS) if name.endswith(MASS) else (name, "")
            out[f"{base}{OWN}{mass}"] = Pipeline(p.correct, Stage.load(p.downscale.source))
    return out


def set_own_product(rows: dict[str, Pipeline], network: str) -> None:
    """Condition the own-product rows on ``network`` ("any" where the weights lack it)."""
    for name, p in rows.items():
        if OWN in name:
            p.downscale.set_product(network if network in p.downscale.products else None)


def build_pipelines(args: argparse.Namespace) -> dict[str, Pipeline]:
    """The precipdiff rows of ``args.task``, by name."""
    shipped = shipped_weights()
    new = Stage.load(args.weights_new or shipped["downscale"])
    if args.task == "chain":
        correct = Stage.load(args.weights_correct or shipped["correct"])
        rows = {"precipdiff Stage I+II": Pipeline(correct, new),
                "precipdiff Stage II only (uncorrected source)": Pipeline(None, new)}
    else:
        rows = {"precipdiff Stage II (under test)": Pipeline(None, new)}
    if args.mass_consistent:  # the same stages, every coarse cell's mean restored
        rows.update({f"{name}{MASS}": p for name, p in list(rows.items())})
    if args.regression is not None:  # deterministic end to end: on the raw input, as the
        # interpolations and quantile mapping (Stage I samples would make it a random draw)
        name = "regression-only (uncorrected source)" if args.task == "chain" else \
            "regression-only"
        rows[name] = Pipeline(None, Stage.load(args.regression))
    other = args.weights_shipped or (None if args.task == "chain" else shipped["downscale_max"])
    if other is not None and str(other) != "none":
        name = f"precipdiff Stage II ({Path(other).name})"
        rows[name] = Pipeline(None, Stage.load(other))
        if args.mass_consistent:
            rows[f"{name}{MASS}"] = rows[name]
    return add_own_product_rows(rows) if args.own_product else rows


def weights_names(pipeline: Pipeline) -> str:
    """File names of a pipeline's weights, Stage I first."""
    stages = (pipeline.correct, pipeline.downscale)
    def name(s: Stage) -> str:
        notes = [f"distilled: {len(s.distilled)} Euler steps on its own grid"] if s.distilled \
            else []
        if "spread_inflation" in s.metadata:
            notes.append(f"spread inflation {s.metadata['spread_inflation']}")
        if "peak_envelope" in s.metadata:
            notes.append("peaks capped by its peak_envelope")
        if s.products:
            notes.append(f"products {', '.join(s.products)}")
        return Path(s.source).name + (f" ({'; '.join(notes)})" if notes else "")

    return " + ".join(name(s) for s in stages if s is not None)


TITLES = {"downscale": "Stage II on held-out events, mean-pooled input",
          "downscale_max": "Stage II on held-out events, max-pooled input",
          "chain": "Stage I+II on held-out events, emulated satellite input"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    corpus = open_corpus(args.corpus)
    pipelines = build_pipelines(args)
    sampler = SamplerSettings(sampler=args.sampler, steps=args.steps, schedule=args.schedule)
    opts = PredictOptions(members=args.members, correct=sampler, downscale=sampler,
                          seed=args.seed, allow_semantics_mismatch=True,
                          trace_threshold=args.trace_threshold)
    baselines = ("bilinear", "bicubic", *(("rainfarm",) if args.rainfarm else ()))
    results = []
    start = time.perf_counter()
    for network in args.networks or corpus.networks:  # the report grows after every network
        case = load_case(corpus, network, args.frames, args.crop, args.task)
        set_own_product(pipelines, network)
        scored = score_case(case, pipelines, opts, args.seed, baselines,
                            {n: {"mass_consistent": True} for n in pipelines
                             if n.endswith(MASS)})
        results.append({k: v for k, v in case.items()
                        if k not in ("src", "lr", "ref_lr", "hr", "times", "qm")} | scored)
        meta = {
            "title": f"Generalisation: {TITLES[args.task]}",
            "note": (f"{args.members} members, {args.sampler} {args.steps} steps on the "
                     f"{args.schedule or native_schedule(args.sampler)} schedule, seed "
                     f"{args.seed}; weights: "
                     + "; ".join(f"{k} = {weights_names(p)}" for k, p in pipelines.items())
                     + f"; corpus {args.corpus}"),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(), "wall_s": time.perf_counter() - start,
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        report(results, meta, args.output)


if __name__ == "__main__":
    main()
