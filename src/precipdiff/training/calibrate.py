"""Calibrate a Stage II's fine-grid wet/dry threshold on training data.

A diffusion ensemble spreads light rain over more 1-km pixels than the radar shows (the wet area
of a mean-pooled cell is not in its mean). The fine threshold ``t`` (mm/h, at least the trace
threshold) zeroes fine values below it; calibrated here so that the ensemble's wet fraction
(pixels >= ``wet`` mm/h) on **training** frames equals the truth's, then stored in the weights'
metadata (``fine_threshold``), where ``predict`` finds it (:meth:`precipdiff.pipeline.Pipeline.
fine_threshold`).

    python -m precipdiff.training.calibrate --weights W.safetensors --corpus stores/corpus.zarr \\
        --output W_calibrated.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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


def training_samples(weights: str | Path, corpus: str | Path, *, frames: int = 4,
                     crop: int = 128, members: int = 4, seed: int = 0,
                     networks: list[str] | None = None) -> dict[str, Any]:
    """Stage II (default sampler, trace rule only) on ``frames`` train frames of each network
    (evenly spaced, a ``crop``-pixel window with the most rain): pooled members and truth.
    ``networks`` defaults to those the weights were trained on (:func:`calibration_networks`)."""
    from precipdiff.data.corpus import open_corpus
    from precipdiff.data.windows import crop_around_rain
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.release import Release

    release = Release.load(weights)
    stage = Stage.from_release(release)
    handle = open_corpus(corpus)
    chosen_networks = calibration_networks(
        list(handle.networks), trained_networks(dict(release.notes)), networks)
    preds, truths, per_network = [], [], {}
    for network in chosen_networks:
        st = handle.open(network)
        train = np.asarray(st.splits["train"]["time"], np.int64)
        chosen = train[np.linspace(0, train.size - 1, min(frames, train.size)).astype(int)]
        lr, hr, _, _, size = crop_around_rain(st, chosen, crop)
        src = xr.DataArray(np.nan_to_num(lr), dims=("time", "lat", "lon"),
                           coords={"time": st.times[chosen].astype("datetime64[ns]"),
                                   "lat": np.arange(size, dtype=np.float64),
                                   "lon": np.arange(size, dtype=np.float64)})
        opts = PredictOptions(members=members, seed=seed)
        pred = np.asarray(Pipeline(None, stage).predict(src, opts)["precip"].values)
        pred[:, np.isnan(hr)] = np.nan
        preds.append(pred.ravel())
        truths.append(hr.ravel())
        per_network[network] = {"frames": int(chosen.size), "window_cells": int(size),
                                "pred_wet_fraction": float(np.nanmean(pred >= WET)),
                                "truth_wet_fraction": float(np.nanmean(hr >= WET))}
        log.info("%s: %s", network, per_network[network])
    return {"pred": np.concatenate(preds), "truth": np.concatenate(truths),
            "per_network": per_network}


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
    notes = {**release.notes, "fine_threshold": repr(round(t, 4)),
             "fine_threshold_calibration": json.dumps(summary)}
    dataclasses.replace(release, notes=notes).save(output)
    log.info("fine threshold %.3f mm/h (volume kept %.3f): %s", t, kept, output)
    return summary


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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = calibrate(args.weights, args.corpus, args.output, frames=args.frames,
                        crop=args.crop, members=args.members, seed=args.seed,
                        networks=args.networks)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_network"}, indent=1))


if __name__ == "__main__":
    main()
