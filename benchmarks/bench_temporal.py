"""Per-frame Stage II vs the spatiotemporal model on held-out radar sequences.

For each 5-min network of the corpus store (held-out ``test`` events; no model saw them) the
script takes the wettest run of ``--frames`` consecutive frames and a ``--crop`` x ``--crop``
fine-pixel window around the rain, feeds the coarse (mean-pooled) radar to

* ``per-frame``: the Stage II weights (``--weights``, default the shipped ones), one frame at a
  time, member ``m`` of frame ``t`` started from the position noise of ``(seed, m, t)``;
* ``temporal``: :class:`~precipdiff.models.temporal.SpatioTemporalUNet` initialised from the
  same weights (or ``--temporal-weights``, a :func:`precipdiff.training.temporal.
  save_temporal` file), sampled with :func:`precipdiff.pipeline.sequence.downscale_sequence`
  (windows of ``--window`` frames fused at every step) from the same noise; one row per
  ``--windows`` mode (``overlap``: windows sharing ``--overlap-frames``; ``alternate``:
  partitions shifted by half a window on every other evaluation), and both again for every
  further ``--noise-correlation`` (starting noise correlated in time, AR(1), the same for both
  models: :func:`precipdiff.pipeline.sequence.sequence_noise`; with ``--noise-drift`` its
  correlated part moves with the coarse rain, :mod:`precipdiff.pipeline.drift`),

(``--split all`` takes every event instead, for leave-one-network-out weights that never saw
the network: ``--networks mrms --split all`` for the 2-min MRMS sequence), and scores both
against the 1-km radar: per-frame CRPS (fair), ensemble FSS (1 mm/h over 8 km,
5 mm/h over 32 km, all frames pooled), lag-1/lag-3 correlation error, flicker ratio, the
log-spectral distance of the spectrum of frame differences ``x_t - x_{t-1}`` to the radar's
(where in scale the changes from frame to frame sit; figure ``difference_spectra_<net>.png``)
and the CRPS of 30-min and hourly accumulations (:mod:`precipdiff.evaluation.temporal`); the
fine residual's lag-1 correlation and share of the variance; 95 % intervals of the per-frame
scores' and the lag-1 error's differences from the per-frame model; plus the wall time per
frame at the same NFE. The per-frame model is timed before and after the temporal runs and
the cost ratios use the mean of both (load on a shared machine drifts within a run).

Honest reading: a temporal model initialised from per-frame weights *is* the per-frame model
(its temporal blocks start at zero), so without ``--temporal-weights`` the two rows agree to
rounding and the run only checks equivalence and measures cost; only a trained temporal
model can show a difference. ``--weights`` must be the per-frame model the temporal one was
trained from (default: the shipped areal-mean Stage II, the base of
``configs/corpus_temporal.yaml``). Figures: for each network a strip of frames (truth, member 0
of both models) and a GIF of the same, in the output folder.

    python benchmarks/bench_temporal.py --corpus stores/corpus.zarr \\
        --temporal-weights runs/corpus_temporal/weights.safetensors \\
        --output benchmarks/results/temporal
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from precipdiff.data.clips import clip_starts
from precipdiff.data.corpus import open_corpus
from precipdiff.defaults import PREDICT
from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.diffusion.samplers import get_sampler, nfe, sampler_sigmas
from precipdiff.evaluation.metrics import crps_ensemble, crps_ensemble_pointwise
from precipdiff.evaluation.spatial import fss, fss_from_sums, fss_sums
from precipdiff.evaluation.spectra import log_spectral_distance
from precipdiff.evaluation.temporal import (
    difference_spectrum,
    lag_correlation,
    temporal_scores,
)
from precipdiff.models.temporal import SpatioTemporalUNet, TemporalConfig
from precipdiff.pipeline.drift import as_track, rain_drift
from precipdiff.pipeline.sequence import (
    WINDOW_MODES,
    SequenceOptions,
    clips_per_call,
    downscale_sequence,
    sequence_noise,
)
from precipdiff.pipeline.spread import inflate_spread
from precipdiff.release import Release

log = logging.getLogger("bench_temporal")
SHIPPED = Path("src/precipdiff/weights/stage2_downscale_mean.safetensors")
FSS_CASES = ((1.0, 8), (5.0, 32))  # (mm/h, km = 1-km pixels)


def load_case(corpus, network: str, frames: int, crop: int, split: str = "test"
              ) -> dict | None:
    """The wettest ``frames`` consecutive frames of ``network``'s ``split`` (``all``: every
    event, for weights that never saw the network) and the coarse window (``crop // factor``
    cells) with the most rain over them and no missing cell."""
    st = corpus.open(network)
    f = st.factor
    if split == "all":
        test = np.arange(st["time"].shape[0], dtype=np.int64)
    else:
        test = np.asarray(st.splits.get(split, {"time": []})["time"], np.int64)
    if test.size < frames:
        return None
    times_s = np.asarray(st["time"][:], np.int64)[test]
    order = np.argsort(times_s)
    test, times_s = test[order], times_s[order]
    events = np.asarray(st["event"][:])[test]
    starts, step = clip_starts(times_s, events, frames)
    if starts.size == 0 or step > 600:
        return None
    lr_all = np.asarray(st["ref_lr"].oindex[test], np.float32)
    wet = np.nansum(lr_all, axis=(1, 2))
    s = int(starts[np.argmax([wet[i:i + frames].sum() for i in starts])])
    idx = test[s:s + frames]
    lr = lr_all[s:s + frames]
    size = min(crop // f, lr.shape[1], lr.shape[2])
    rain = np.nan_to_num(lr).sum(0)
    bad = np.isnan(lr).any(0)
    best, pos = -1.0, (0, 0)
    for y in range(0, lr.shape[1] - size + 1, max(1, size // 4)):
        for x in range(0, lr.shape[2] - size + 1, max(1, size // 4)):
            if not bad[y:y + size, x:x + size].any() and rain[y:y + size, x:x + size].sum() > best:
                best, pos = float(rain[y:y + size, x:x + size].sum()), (y, x)
    y0, x0 = pos
    hr = np.asarray(st["ref_hr"].oindex[idx, y0 * f:(y0 + size) * f, x0 * f:(x0 + size) * f],
                    np.float32)
    return {"network": network, "lr": lr[:, y0:y0 + size, x0:x0 + size], "hr": hr,
            "time_s": times_s[s:s + frames], "factor": f, "step_s": step,
            "start": str(np.datetime64(int(times_s[s]), "s"))}


@torch.no_grad()
def per_frame(net, lr_t: torch.Tensor, f: int, opts: SequenceOptions, sd: float) -> torch.Tensor:
    """Stage II frame by frame from the same noise as :func:`sample_sequence`: (M, N, H, W)."""
    from precipdiff.grid import upsample_tensor

    base = upsample_tensor(lr_t[:, None].float(), f, method="bilinear")
    n, h, w = base.shape[0], base.shape[-2], base.shape[-1]
    noise = sequence_noise(opts.members, 0, n, h, w, seed=opts.seed,
                           correlation=opts.noise_correlation, drift=opts.noise_drift
                           ).reshape(opts.members, n, 1, h, w)
    sig = sampler_sigmas(opts.sampler, opts.steps, sigma_data=sd).float()
    d = EDMPrecond(net, sigma_data=sd)
    out = []
    for t in range(n):
        cond = base[t:t + 1].repeat(opts.members, 1, 1, 1)
        r = get_sampler(opts.sampler)(d, noise[:, t] * float(sig[0]), sig, cond=cond)
        out.append(base[t, 0] + r[:, 0])
    return torch.stack(out, dim=1)


def score(pred_mm: np.ndarray, truth: np.ndarray, times: np.ndarray) -> dict[str, float]:
    coords = {"time": times}
    fc = xr.DataArray(pred_mm, dims=("member", "time", "y", "x"), coords=coords)
    ob = xr.DataArray(truth, dims=("time", "y", "x"), coords=coords)
    out = {"crps_fair": float(crps_ensemble(fc, ob, estimator="fair"))}
    for thr, km in FSS_CASES:  # ensemble FSS over every frame (1-km pixels)
        out[f"fss_{thr:g}mm_{km}km"] = float(fss(fc, ob, threshold=thr, scale=km,
                                                 spatial_dims=("y", "x"), reduce_dims="time"))
    out.update(temporal_scores(fc, ob, lags=(1, 3), periods_h=(0.5, 1.0)))
    out["diff_spectrum_lsd_db"] = log_spectral_distance(difference_spectrum(fc),
                                                        difference_spectrum(ob))
    out["lag1_corr"] = float(np.nanmean(lag_correlation(fc, 1).values))  # mean over members
    out["lag1_corr_radar"] = float(lag_correlation(ob, 1))
    return out


def residual_terms(pred_t: np.ndarray, base: np.ndarray, truth_t: np.ndarray
                   ) -> dict[str, float]:
    """Lag-1 correlation of the residual ``T(x) - up(T(LR))`` (members: mean over members)
    and the residual's share of the variance of ``T(x)``, for the members and the radar."""
    def lag1(x: np.ndarray) -> float:
        a, b = x[:-1].ravel() - x[:-1].mean(), x[1:].ravel() - x[1:].mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    res = pred_t - base[None]
    obs = truth_t - base
    return {"residual_lag1": float(np.mean([lag1(r) for r in res])),
            "residual_lag1_radar": lag1(obs),
            "residual_var_share": float(np.mean([r.var() / p.var()
                                                 for r, p in zip(res, pred_t, strict=True)])),
            "residual_var_share_radar": float(obs.var() / truth_t.var())}


def pair_sums(x: np.ndarray) -> np.ndarray:
    """Sums ``(..., T-1, 6)`` over the pixels of each frame pair ``(x_{t-1}, x_t)`` of ``x (...,
    T, H, W)`` — count, sum a, sum b, sum a^2, sum b^2, sum ab (finite pairs only) — from which
    the pooled lag-1 correlation of any set of pairs follows (:func:`pooled_r`)."""
    a, b = x[..., :-1, :, :].astype(np.float64), x[..., 1:, :, :].astype(np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    return np.stack([ok.sum((-2, -1)), a.sum((-2, -1)), b.sum((-2, -1)), (a * a).sum((-2, -1)),
                     (b * b).sum((-2, -1)), (a * b).sum((-2, -1))], axis=-1)


def pooled_r(sums: np.ndarray) -> np.ndarray:
    """Pearson correlation from summed :func:`pair_sums` ``(..., 6)``."""
    n, sa, sb, saa, sbb, sab = np.moveaxis(sums, -1, 0)
    return (sab - sa * sb / n) / np.sqrt((saa - sa * sa / n) * (sbb - sb * sb / n))


def lag1_error(terms: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """``mean_m |r_m - r_radar|`` over the frame pairs ``idx (B, L)`` of each resample: (B,)."""
    r_m = pooled_r(terms["members"][:, idx].sum(2))  # (M, B)
    r_o = pooled_r(terms["radar"][idx].sum(1))  # (B,)
    return np.abs(r_m - r_o[None]).mean(0)


def frame_terms(pred_mm: np.ndarray, truth: np.ndarray) -> dict:
    """Per-frame pieces of the per-frame scores: fair CRPS ``(T,)`` (mean over pixels) and the
    ensemble FSS sums ``(T, 3)`` of each (threshold, scale), which add over frames; and the
    frame-pair sums of the members and the radar (lag-1 correlation error)."""
    crps = crps_ensemble_pointwise(pred_mm, truth, axis=0, estimator="fair")
    out: dict = {"crps_fair": np.nanmean(crps, axis=(-2, -1))}
    for thr, km in FSS_CASES:
        out[f"fss_{thr:g}mm_{km}km"] = fss_sums(pred_mm, truth, threshold=thr, scale=km,
                                                member_axis=0)
    out["lag1_corr_error"] = {"members": pair_sums(pred_mm), "radar": pair_sums(truth)}
    return out


def paired_interval(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, n_boot: int = 2000,
                    block: int = 3, seed: int = 0) -> dict[str, list[float]]:
    """95 % interval of ``score(b) - score(a)`` for every per-frame score and the lag-1
    correlation error, from a moving-block bootstrap over frames (frame pairs for the lag-1
    error; blocks of ``block`` consecutive ones, the same resampled ones for both models:
    frames of one sequence are correlated in time)."""
    rng = np.random.default_rng(seed)

    def resample(n: int) -> np.ndarray:
        size = min(block, n)
        starts = rng.integers(0, n - size + 1, size=(n_boot, -(-n // size)))
        return (starts[..., None] + np.arange(size)).reshape(n_boot, -1)[:, :n]

    n = a["crps_fair"].shape[0]
    idx = resample(n)
    out = {}
    for key in a:
        if key == "lag1_corr_error":  # frame pairs, resampled the same way
            pairs = resample(n - 1)
            d = lag1_error(b[key], pairs) - lag1_error(a[key], pairs)
        elif key == "crps_fair":
            d = b[key][idx].mean(1) - a[key][idx].mean(1)
        else:
            d = fss_from_sums(b[key][idx].sum(1)) - fss_from_sums(a[key][idx].sum(1))
        out[key] = [float(np.nanpercentile(d, 2.5)), float(np.nanpercentile(d, 97.5))]
    return out


def run_case(case: dict, release: Release, temporal_net, opts: SequenceOptions,
             modes: tuple[str, ...] = ("overlap",),
             correlations: tuple[float, ...] = (0.0,), inflation: float = 1.0,
             product: str | None = None, drift: bool = False) -> dict:
    """Per-frame and temporal members of ``case``, scored: for every noise correlation in
    ``correlations`` the per-frame model and one temporal row per window mode in ``modes``
    (named ``per-frame`` / ``temporal`` for the first mode at the first correlation), with the
    cost ratio of each row to the first per-frame row (timed before and after the others).
    Every row's members are spread about their mean by ``inflation`` (mm/h, values below 0.1
    mm/h zeroed: :func:`~precipdiff.pipeline.spread.inflate_spread`; no mass consistency here,
    so the clipped negatives add a little rain). ``product``: the target product both models
    are conditioned on (product-conditioned weights only; None: any). ``drift``: the correlated
    noise of both models moves with the coarse rain (:func:`~precipdiff.pipeline.drift.
    rain_drift`) instead of standing at fixed pixels."""
    tr, f, sd = release.transform, case["factor"], release.sigma_data
    lr_t = torch.from_numpy(tr.forward(case["lr"]).astype(np.float32))
    per_frame_net = release.build_net().eval().set_product(product)
    temporal_net.set_product(product)
    preds, secs = {}, {}

    def timed(name: str, fn) -> None:
        t0 = time.perf_counter()
        preds[name] = fn()
        secs.setdefault(name, []).append(time.perf_counter() - t0)

    first = correlations[0]
    if drift:
        track = rain_drift(case["lr"], f)
        opts = replace(opts, noise_drift=as_track(track))
    for phi in correlations:
        noise = "" if phi == first else f", noise correlation {phi:g}"
        o = replace(opts, noise_correlation=phi)
        timed(f"per-frame{noise}", lambda o=o: per_frame(per_frame_net, lr_t, f, o, sd))
        for k, mode in enumerate(modes):
            name = ("temporal" if k == 0 else f"temporal, {mode} windows") + noise
            timed(name, lambda mode=mode, o=o: downscale_sequence(
                temporal_net, lr_t, case["time_s"].astype(np.float64), f,
                replace(o, windows=mode), sigma_data=sd))
    o = replace(opts, noise_correlation=first)
    timed("per-frame", lambda: per_frame(per_frame_net, lr_t, f, o, sd))
    times = case["time_s"].astype("datetime64[s]").astype("datetime64[ns]")
    n = case["lr"].shape[0]
    t_frame = float(np.mean(secs["per-frame"]))
    rows, member0, terms, in_mm = {}, {"truth (radar)": case["hr"]}, {}, {}
    for name, pred in preds.items():
        mm = np.asarray(tr.inverse(pred.numpy()), np.float32)
        mm = in_mm[name] = inflate_spread(mm, inflation, threshold=0.1 if inflation != 1 else 0)
        rows[name] = {**score(mm, case["hr"], times), "s_per_frame": float(np.mean(secs[name])) / n}
        terms[name] = frame_terms(mm, case["hr"])
        if "noise correlation" not in name or name.startswith("temporal"):
            member0[f"{name}, member 0"] = mm[0]
    # where the frame-to-frame correlation is lost: the residual r = T(x) - up(T(LR)) of the
    # members and of the radar, its lag-1 correlation and its share of the field's variance
    from precipdiff.grid import upsample_tensor

    base = upsample_tensor(lr_t[:, None].float(), f, method="bilinear")[:, 0].numpy()
    t_truth = np.nan_to_num(tr.forward(case["hr"]).astype(np.float32))
    for name, pred in preds.items():
        t_pred = pred.numpy() if inflation == 1 else tr.forward(in_mm[name]).astype(np.float32)
        rows[name].update(residual_terms(t_pred, base, t_truth))
    for name in rows:  # how sure is a difference from the per-frame model (one sequence)?
        if name != "per-frame":
            rows[name]["minus_per_frame_95"] = paired_interval(terms["per-frame"], terms[name])
    case["member0"] = member0
    case["diff_spectra"] = {"truth (radar)": difference_spectrum(
        xr.DataArray(case["hr"], dims=("time", "y", "x")))}
    for name, mm in in_mm.items():
        case["diff_spectra"][name] = difference_spectrum(
            xr.DataArray(mm, dims=("member", "time", "y", "x")))
    return {"network": case["network"], "start": case["start"], "frames": n,
            "step_s": case["step_s"], "crop": int(case["hr"].shape[-1]),
            "product": product or "any",
            "max_abs_diff_transformed": float((preds["per-frame"] - preds["temporal"]).abs().max()),
            "cost_ratio": float(np.mean(secs["temporal"])) / t_frame,
            "cost_ratios": {name: float(np.mean(secs[name])) / t_frame
                            for name in preds if name != "per-frame"},
            "per_frame_s": secs["per-frame"], "rows": rows}


def figures(case: dict, out: Path) -> None:
    """A strip of every other frame and a GIF: truth beside member 0 of both models; the
    spectra of the frame-to-frame differences of every row and the radar."""
    from precipdiff.evaluation.plots import psd_curves, sequence_gif, sequence_strip

    psd_curves(case["diff_spectra"], out / f"difference_spectra_{case['network']}.png",
               title=f"{case['network']}: spectrum of x(t) - x(t-1)")

    times = [str(t)[11:16] for t in case["time_s"].astype("datetime64[s]")]
    title = f"{case['network']} (held out), {case['start'][:10]}"
    sequence_strip(case["member0"], out / f"sequence_{case['network']}.png", times=times,
                   every=2, title=title)
    sequence_gif(case["member0"], out / f"sequence_{case['network']}.gif", times=times,
                 title=title)


def report(results: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    keys = ["crps_fair", "fss_1mm_8km", "fss_5mm_32km", "lag1_corr", "lag1_corr_radar",
            "residual_lag1", "residual_lag1_radar", "residual_var_share",
            "residual_var_share_radar", "lag1_corr_error", "lag3_corr_error",
            "flicker_ratio", "diff_spectrum_lsd_db", "crps_fair_30min_accum",
            "crps_fair_60min_accum", "s_per_frame"]
    lines = ["# Per-frame Stage II vs temporal model (held-out radar sequences)", "",
             f"Settings: {json.dumps(meta)}", "",
             "| network | model | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in results:
        for name, row in r["rows"].items():
            lines.append(f"| {r['network']} ({r['start']}, {r['frames']} x {r['step_s']} s) | "
                         f"{name} | " + " | ".join(f"{row.get(k, float('nan')):.4g}"
                                                  for k in keys) + " |")
        for name, row in r["rows"].items():
            if "minus_per_frame_95" in row:
                iv = "; ".join(f"{k} [{lo:+.4f}, {hi:+.4f}]"
                               for k, (lo, hi) in row["minus_per_frame_95"].items())
                lines.append(f"| | {name} minus per-frame, 95 % (block bootstrap over frames): "
                             f"{iv} |" + " |" * (len(keys) - 1))
        ratios = ", ".join(f"{name} {v:.2f}" for name, v in
                           r.get("cost_ratios", {"temporal": r["cost_ratio"]}).items())
        lines.append(f"| | max abs diff (transformed) {r['max_abs_diff_transformed']:.2e}, "
                     f"cost ratio {ratios} | " + " | " * (len(keys) - 1) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def sequence_arguments(ap: argparse.ArgumentParser, *, output: str, crop: int,
                       members: int = 8) -> None:
    """The options this benchmark shares with ``bench_time_refine.py``."""
    ap.add_argument("--corpus", type=Path, default=Path("stores/corpus.zarr"))
    ap.add_argument("--weights", type=Path, default=SHIPPED)
    ap.add_argument("--temporal-weights", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=Path(output))
    ap.add_argument("--networks", nargs="*", default=None)
    ap.add_argument("--crop", type=int, default=crop)
    ap.add_argument("--members", type=int, default=members)
    ap.add_argument("--sampler", default=PREDICT.sampler)
    ap.add_argument("--steps", type=int, default=PREDICT.steps)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--overlap-frames", type=int, default=2)
    ap.add_argument("--windows", nargs="+", default=["overlap"], choices=WINDOW_MODES,
                    help="temporal window modes, one temporal row each (the first is 'temporal')")
    ap.add_argument("--noise-correlation", type=float, nargs="+", default=[0.0],
                    help="lag-1 correlations of the starting noise in time (AR(1)), the "
                    "per-frame and temporal rows again for each")
    ap.add_argument("--seed", type=int, default=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sequence_arguments(ap, output="benchmarks/results/temporal", crop=120)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--split", default="test",
                    help="corpus split of the sequences; 'all' for a network the weights never "
                    "saw (leave-one-network-out weights)")
    ap.add_argument("--own-product", action="store_true",
                    help="condition both models on each network's own product (weights "
                    "trained with model.products)")
    ap.add_argument("--spread-inflation", type=float, default=1.0,
                    help="spread every row's members about their mean by this factor")
    ap.add_argument("--noise-drift", action="store_true",
                    help="correlated noise moves with the coarse rain (one translation per "
                    "frame step) instead of standing at fixed pixels")
    return ap.parse_args(argv)


def temporal_net(args: argparse.Namespace, release: Release) -> SpatioTemporalUNet:
    """``--temporal-weights``, else the per-frame ``release`` with zero temporal blocks."""
    if args.temporal_weights is not None:
        from precipdiff.training.temporal import load_temporal

        net, _ = load_temporal(args.temporal_weights)
    else:
        net = SpatioTemporalUNet(release.model, TemporalConfig(frames=args.window))
        net.load_per_frame(release.state)
    return net.eval()


def sequence_options(args: argparse.Namespace) -> SequenceOptions:
    return SequenceOptions(members=max(args.members, 1), seed=args.seed, sampler=args.sampler,
                           steps=args.steps, window=args.window,
                           overlap_frames=args.overlap_frames, tile=max(args.crop, 64),
                           overlap=32, tile_batch=clips_per_call(args.window, args.members))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    torch.manual_seed(0)
    release = Release.load(args.weights)
    net, opts = temporal_net(args, release), sequence_options(args)
    corpus = open_corpus(args.corpus)
    results = []
    for network in args.networks or corpus.networks:
        case = load_case(corpus, network, args.frames, args.crop, args.split)
        if case is None:
            log.info("%s: no %d-frame %s sequence at <= 10 min", network, args.frames,
                     args.split)
            continue
        results.append(run_case(case, release, net, opts, tuple(args.windows),
                                tuple(args.noise_correlation), args.spread_inflation,
                                network if args.own_product else None, args.noise_drift))
        log.info("%s: %s", network, json.dumps(results[-1]))
        args.output.mkdir(parents=True, exist_ok=True)
        figures(case, args.output)
    meta = {**{k: str(v) for k, v in vars(args).items()},
            "nfe": nfe(args.sampler, args.steps), "threads": torch.get_num_threads()}
    report(results, meta, args.output)


if __name__ == "__main__":
    main()
