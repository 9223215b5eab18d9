"""Calibrate a Stage II on training data: its fine-grid wet/dry threshold and its spread.

A diffusion ensemble spreads light rain over more 1-km pixels than the radar shows (the wet area
of a mean-pooled cell is not in its mean). The fine threshold ``t`` (mm/h, at least the trace
threshold) zeroes fine values below it; calibrated here so that the ensemble's wet fraction
(pixels >= ``wet`` mm/h) on **training** frames equals the truth's, then stored in the weights'
metadata (``fine_threshold``), where ``predict`` finds it (:meth:`precipdiff.pipeline.Pipeline.
fine_threshold`).

    python -m precipdiff.training.calibrate --weights W.safetensors --corpus stores/corpus.zarr \\
        --output W_calibrated.safetensors

The ensemble is also too narrow (spread/skill below 1 on held-out radar): with ``--spread``
the factor by which ``predict`` inflates the members about their mean
(:mod:`precipdiff.pipeline.spread`) is chosen on the same training frames by fair CRPS and
stored as the ``spread_inflation`` note (:func:`calibrate_spread`). With ``--peaks`` the bound
on 1-km peaks in the training radar is stored (``peak_envelope``, :func:`calibrate_peaks`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)

WET = 0.1  # mm/h: a wet pixel


def matching_threshold(pred: np.ndarray, truth: np.ndarray, *, wet: float = WET) -> float:
    """Smallest ``t >= wet`` with ``P(pred >= t) <= P(truth >= wet)`` over the finite values
    (``pred`` may hold several members per truth value: fractions are compared, not counts)."""
    p, o = pred[np.isfinite(pred)], truth[np.isfinite(truth)]
    target = float(np.mean(o >= wet))
    if float(np.mean(p >= wet)) <= target:
        return wet
    return max(wet, float(np.quantile(p, 1.0 - target)))


def trained_networks(notes: dict[str, str]) -> list[str] | None:
    """The corpus networks a release was trained on (its ``training_corpus`` note), or None
    for weights trained on a single store."""
    record = notes.get("training_corpus")
    return list(json.loads(record)["networks"]) if record else None


def calibration_networks(available: list[str], trained: list[str] | None,
                         requested: list[str] | None = None) -> list[str]:
    """The networks to calibrate on: ``requested``, else those the weights were trained on
    (a leave-one-network-out model must not see its held-out network here either), else all."""
    chosen = list(requested or trained or available)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ValueError(f"networks {unknown} are not in the corpus (it has {available})")
    if requested and trained:
        unseen = [n for n in requested if n not in trained]
        if unseen:
            log.warning("calibrating on %s, which the weights were not trained on", unseen)
    return chosen


def training_cases(release, corpus: str | Path, *, frames: int, crop: int,
                   networks: list[str] | None = None,
                   split: str = "train") -> Iterator[tuple[str, Any, np.ndarray]]:
    """``(network, coarse input, 1-km truth)`` of ``frames`` frames of each network's
    ``split`` (evenly spaced, a ``crop``-pixel window with the most rain); ``networks``
    defaults to those ``release`` was trained on (:func:`calibration_networks`). Calibrations
    use the train split; benchmarks may ask for "test"."""
    from precipdiff.data.corpus import open_corpus
    from precipdiff.data.windows import crop_around_rain

    handle = open_corpus(corpus)
    chosen_networks = calibration_networks(
        list(handle.networks), trained_networks(dict(release.notes)), networks)
    for network in chosen_networks:
        st = handle.open(network)
        times = np.asarray(st.splits[split]["time"], np.int64)
        if times.size == 0:
            continue
        chosen = times[np.linspace(0, times.size - 1, min(frames, times.size)).astype(int)]
        lr, hr, _, _, size = crop_around_rain(st, chosen, crop)
        src = xr.DataArray(np.nan_to_num(lr), dims=("time", "lat", "lon"),
                           coords={"time": st.times[chosen].astype("datetime64[ns]"),
                                   "lat": np.arange(size, dtype=np.float64),
                                   "lon": np.arange(size, dtype=np.float64)})
        yield network, src, hr


def training_samples(weights: str | Path, corpus: str | Path, *, frames: int = 4,
                     crop: int = 128, members: int = 4, seed: int = 0,
                     networks: list[str] | None = None) -> dict[str, Any]:
    """Stage II (default sampler, trace rule only) on the :func:`training_cases`: pooled
    members and truth."""
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.release import Release

    release = Release.load(weights)
    stage = Stage.from_release(release)
    preds, truths, per_network = [], [], {}
    for network, src, hr in training_cases(release, corpus, frames=frames, crop=crop,
                                           networks=networks):
        opts = PredictOptions(members=members, seed=seed)
        pred = np.asarray(Pipeline(None, stage).predict(src, opts)["precip"].values)
        pred[:, np.isnan(hr)] = np.nan
        preds.append(pred.ravel())
        truths.append(hr.ravel())
        per_network[network] = {"frames": int(src.sizes["time"]),
                                "window_cells": int(src.sizes["lat"]),
                                "pred_wet_fraction": float(np.nanmean(pred >= WET)),
                                "truth_wet_fraction": float(np.nanmean(hr >= WET))}
        log.info("%s: %s", network, per_network[network])
    return {"pred": np.concatenate(preds), "truth": np.concatenate(truths),
            "per_network": per_network}


def save_calibration(release, output: str | Path, key: str, value: str,
                     summary: dict[str, Any], by_product: dict[str, float] | None = None
                     ) -> dict[str, Any]:
    """Write ``release`` to ``output`` with the note ``key = value`` and its calibration record
    (``<key>_calibration``, JSON ``summary``), and with ``by_product`` (the value for each
    product, non-empty for product-conditioned weights) the ``<key>_by_product`` note and its
    copy in the record; tensors and other notes unchanged. Returns the record."""
    notes = {**release.notes, key: value}
    if by_product:
        summary = {**summary, f"{key}_by_product": by_product}
        notes[f"{key}_by_product"] = json.dumps(by_product)
    notes[f"{key}_calibration"] = json.dumps(summary)
    dataclasses.replace(release, notes=notes).save(output)
    return summary


def calibrate(weights: str | Path, corpus: str | Path, output: str | Path, **kw: Any) -> dict:
    """Write ``weights`` with a calibrated ``fine_threshold`` note to ``output``; the
    calibration summary (threshold, wet fractions, volume kept) is stored with it."""
    from precipdiff.release import Release

    s = training_samples(weights, corpus, **kw)
    t = matching_threshold(s["pred"], s["truth"])
    p = s["pred"][np.isfinite(s["pred"])]
    kept = float(p[p >= t].sum() / max(p[p >= WET].sum(), 1e-12))
    summary = {"fine_threshold_mm_h": t, "wet_mm_h": WET, "split": "train",
               "pred_wet_fraction": float(np.mean(p >= WET)),
               "truth_wet_fraction": float(np.nanmean(s["truth"] >= WET)),
               "volume_kept_fraction": kept, "per_network": s["per_network"],
               "networks": list(s["per_network"]),
               "settings": {k: v for k, v in kw.items() if k != "networks"}}
    release = Release.load(weights)
    summary = save_calibration(release, output, "fine_threshold", repr(round(t, 4)), summary,
                               product_thresholds(release, corpus, **kw))
    log.info("fine threshold %.3f mm/h (volume kept %.3f): %s", t, kept, output)
    return summary


def product_thresholds(release, corpus: str | Path, *, frames: int = 4, crop: int = 128,
                       members: int = 4, seed: int = 0,
                       networks: list[str] | None = None) -> dict[str, float]:
    """For product-conditioned weights, the fine threshold of each product whose network is
    calibrated: its members under its own label, as ``predict`` makes them (mass consistency,
    the product's spread factor if the weights carry one) with the lowest threshold (0.1 mm/h),
    matched to the network's wet fraction (:func:`matching_threshold`). Empty otherwise."""
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage

    stage = Stage.from_release(release)
    if not stage.products:
        return {}
    out = {}
    opts = PredictOptions(members=members, seed=seed, mass_consistent=None, fine_threshold=WET)
    for network, src, hr in training_cases(release, corpus, frames=frames, crop=crop,
                                           networks=networks):
        if network not in stage.products:
            continue
        pred = np.asarray(Pipeline(None, stage.set_product(network)).predict(src, opts)
                          ["precip"].values)
        pred[:, np.isnan(hr)] = np.nan
        out[network] = round(matching_threshold(pred.ravel(), hr.ravel()), 4)
        log.info("%s, own product: fine threshold %.3f mm/h", network, out[network])
    stage.set_product(None)
    return out


#: Inflation factors tried by :func:`calibrate_spread`.
SPREAD_GRID = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)

#: How :func:`calibrate_spread` pools the networks' relative CRPS: their mean, or the worst
#: network's (a minimax choice: the factor that helps every network, if any does).
SPREAD_CRITERIA = {"mean": np.mean, "worst": np.max}


def calibrate_spread(weights: str | Path, corpus: str | Path, output: str | Path, *,
                     grid: tuple[float, ...] = SPREAD_GRID, frames: int = 4, crop: int = 128,
                     members: int = 4, seed: int = 0, networks: list[str] | None = None,
                     criterion: str = "mean") -> dict:
    """Write ``weights`` with a calibrated ``spread_inflation`` note to ``output``.

    Stage II runs with ``predict``'s defaults (mass consistency for areal-mean weights, the
    weights' fine threshold) on the :func:`training_cases`; every factor of ``grid`` is applied
    to the same members (:meth:`~precipdiff.pipeline.Pipeline.inflate`, as ``predict`` does)
    and scored with the fair CRPS against the 1-km radar. The factor with the lowest CRPS
    relative to no inflation, pooled over networks by ``criterion`` (:data:`SPREAD_CRITERIA`:
    the mean, each network weighing the same whatever its rain amounts, or the worst network)
    is stored; ties go to the factor closest to 1. Train frames only: the held-out events stay
    for the benchmark (``bench_generalise.py``). Product-conditioned weights also get the
    factor each of their products' networks wants under its own label
    (``spread_inflation_by_product``, JSON; ``predict --product`` uses it)."""
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.release import Release

    if criterion not in SPREAD_CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(SPREAD_CRITERIA)}, got {criterion!r}")
    if members < 2 or 1.0 not in grid:
        raise ValueError(f"the spread calibration needs >= 2 members and 1.0 in the grid, "
                         f"got members={members}, grid={grid}")
    release = Release.load(weights)
    stage = Stage.from_release(release)
    pipeline = Pipeline(None, stage)
    base = PredictOptions(members=members, seed=seed, mass_consistent=None,
                          spread_inflation=1.0)
    relative: dict[float, list[float]] = {a: [] for a in grid}
    per_network, by_product = {}, {}
    for network, src, hr in training_cases(release, corpus, frames=frames, crop=crop,
                                           networks=networks):
        crps = _spread_curve(pipeline, base, src, hr, grid)
        for a in grid:
            relative[a].append(crps[a] / crps[1.0])
        per_network[network] = {"frames": int(src.sizes["time"]),
                                "crps_fair": {repr(a): v for a, v in crps.items()}}
        log.info("%s: CRPS %s", network, per_network[network]["crps_fair"])
        if network in stage.products:  # the factor this network wants under its own label
            own = _spread_curve(pipeline, base, src, hr, grid, product=network)
            by_product[network] = min(grid, key=lambda a, c=own: (round(c[a] / c[1.0], 6),
                                                                 abs(a - 1.0)))
            per_network[network]["own_product_crps_fair"] = {repr(a): v for a, v in own.items()}
            log.info("%s, own product: CRPS %s", network, own)
    curves = {name: {a: float(pool(v)) for a, v in relative.items()}
              for name, pool in SPREAD_CRITERIA.items()}
    pooled = curves[criterion]
    best = min(grid, key=lambda a: (round(pooled[a], 6), abs(a - 1.0)))
    summary = {"spread_inflation": best, "criterion": f"{criterion} over networks of fair "
               "CRPS relative to no inflation", "split": "train",
               **{f"{name}_relative_crps": {repr(a): v for a, v in curve.items()}
                  for name, curve in curves.items()},
               "per_network": per_network, "networks": list(per_network),
               "settings": {"frames": frames, "crop": crop, "members": members, "seed": seed}}
    summary = save_calibration(release, output, "spread_inflation", repr(best), summary,
                               by_product)
    log.info("spread inflation %.2f (%s relative CRPS %.4f): %s", best, criterion,
             pooled[best], output)
    return summary


def _spread_curve(pipeline, base, src, hr: np.ndarray, grid: tuple[float, ...], *,
                  product: str | None = None) -> dict[float, float]:
    """Fair CRPS of Stage II's members on ``src`` against ``hr`` for every inflation factor of
    ``grid``, applied to the same members as ``predict`` does (:meth:`Pipeline.inflate`)."""
    from precipdiff.evaluation.metrics import crps_ensemble_pointwise

    pipeline.downscale.set_product(product)
    ds = pipeline.predict(src, base)
    pred, corrected = ds["precip"].values, ds["corrected_lr"].values
    valid = np.isfinite(hr) & np.isfinite(pred).all(axis=0)
    crps = {}
    for a in grid:
        opts = dataclasses.replace(base, spread_inflation=a)
        p = np.stack([pipeline.inflate(pred[:, t], corrected[:, t], opts)
                      for t in range(pred.shape[1])], axis=1)
        crps[a] = float(crps_ensemble_pointwise(p[:, valid], hr[valid], estimator="fair").mean())
    pipeline.downscale.set_product(None)
    return crps


def calibrate_peaks(weights: str | Path, corpus: str | Path, output: str | Path, *,
                    networks: list[str] | None = None, **_: Any) -> dict:
    """Write ``weights`` with a ``peak_envelope`` note to ``output``: the largest ratio of a
    coarse block's 1-km maximum to its mean over **all** train frames of the networks the
    weights were trained on (:class:`~precipdiff.pipeline.peaks.PeakEnvelope`), which
    ``predict`` holds every fine block below (:func:`~precipdiff.pipeline.peaks.cap_peaks`)."""
    from precipdiff.data.corpus import open_corpus
    from precipdiff.pipeline.peaks import PeakEnvelope
    from precipdiff.release import Release

    release = Release.load(weights)
    handle = open_corpus(corpus)
    chosen = calibration_networks(list(handle.networks), trained_networks(dict(release.notes)),
                                  networks)
    blocks = {network: _train_blocks(handle.open(network)) for network in chosen}
    per_network = {network: {"frames": frames, "envelope": PeakEnvelope.fit(m, x).ratio}
                   for network, (frames, m, x) in blocks.items()}
    envelope = PeakEnvelope.fit(np.concatenate([m for _, m, _ in blocks.values()]),
                                np.concatenate([x for _, _, x in blocks.values()]))
    summary = {"edges_mm_h": envelope.edges, "max_over_mean": envelope.ratio,
               "split": "train", "networks": chosen, "per_network": per_network}
    save_calibration(release, output, "peak_envelope", envelope.to_note(), summary)
    log.info("peak envelope %s: %s", envelope.ratio, output)
    return summary


def _train_blocks(st) -> tuple[int, np.ndarray, np.ndarray]:
    """The number of train frames of a corpus network ``st`` and the means and maxima (mm/h)
    of their ``factor``² blocks of 1-km radar (NaN where a block has a missing pixel), read one
    frame at a time (bounded memory on large grids)."""
    f = st.factor
    train = np.asarray(st.splits["train"]["time"], np.int64)
    means, maxima = [], []
    for t in train:
        hr = np.asarray(st["ref_hr"][int(t)], np.float64)
        h, w = hr.shape[0] // f * f, hr.shape[1] // f * f
        b = hr[:h, :w].reshape(h // f, f, w // f, f)
        means.append(b.mean(axis=(1, 3)).ravel())
        maxima.append(b.max(axis=(1, 3)).ravel())
    return int(train.size), np.concatenate(means), np.concatenate(maxima)


def calibration_arguments(ap: argparse.ArgumentParser, *, frames: int, crop: int,
                          unit: str) -> None:
    """The options of both calibrations (this module's and :mod:`.calibrate_time`):
    weights, corpus, output, ``frames`` / ``crop`` per ``unit``, members, seed, networks."""
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=frames, help=f"train frames per {unit}")
    ap.add_argument("--crop", type=int, default=crop, help=f"window (fine pixels) per {unit}")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--networks", nargs="+", default=None,
                    help="corpus networks (default: those the weights were trained on)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    calibration_arguments(ap, frames=4, crop=128, unit="network")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--spread", action="store_true",
                      help="calibrate the spread inflation (after the fine threshold, which it "
                           "uses) instead of the fine threshold")
    what.add_argument("--peaks", action="store_true",
                      help="store the bound on 1-km peaks of the training radar instead")
    ap.add_argument("--criterion", choices=sorted(SPREAD_CRITERIA), default="mean",
                    help="with --spread: pool the networks' relative CRPS by their mean or "
                         "take the worst network's")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = calibrate_spread if args.spread else calibrate_peaks if args.peaks else calibrate
    extra = {"criterion": args.criterion} if args.spread else {}
    summary = run(args.weights, args.corpus, args.output, frames=args.frames,
                  crop=args.crop, members=args.members, seed=args.seed,
                  networks=args.networks, **extra)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_network"}, indent=1))


if __name__ == "__main__":
    main()
