"""Calibrate a temporal Stage II's starting-noise correlation in time on training sequences.

How fast a temporal Stage II's members decorrelate from frame to frame depends on the
correlation ``phi`` in time of their starting noise (an AR(1) prior,
:func:`~precipdiff.pipeline.sequence.sequence_noise`), not only on what the network learnt.
This samples the model on the wettest run of ``frames`` consecutive frames of every **train**
event of the corpus networks it was trained on (cadence of at most 10 min), for each ``phi`` of a
grid, and keeps the ``phi`` whose members' lag-1 correlation (all pixels and frames pooled, mean
over members) is closest to the radar's, averaged over the sequences. It is stored in the
weights' metadata (``temporal_noise_correlation_calibrated``, with the per-sequence errors in
``temporal_noise_correlation_calibration``), where ``predict`` finds it
(:func:`precipdiff.pipeline.record.noise_correlation`). With ``--drift`` the correlated noise
moves with the coarse rain while calibrating (:mod:`precipdiff.pipeline.drift`), and the
weights are noted so (``temporal_noise_drift = "1"``) that ``predict`` moves it too.

    python -m precipdiff.training.calibrate_time --weights T.safetensors \\
        --corpus stores/corpus.zarr --output T_calibrated.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Noise correlations tried (lag-1, per frame step).
GRID = (0.0, 0.25, 0.5, 0.75)
#: Longest frame step of a calibration sequence (s): hourly records are not sequences here.
MAX_STEP_S = 600


def training_sequences(corpus: Any, networks: list[str], *, frames: int, crop: int,
                       split: str = "train") -> list[dict[str, Any]]:
    """The wettest ``frames`` consecutive frames of every ``split`` event of each network (at
    most :data:`MAX_STEP_S` apart), cut to the ``crop``-pixel window with the most rain."""
    from precipdiff.data.clips import clip_starts
    from precipdiff.data.windows import crop_around_rain

    out = []
    for network in networks:
        st = corpus.open(network)
        idx = np.asarray(st.splits.get(split, {"time": []})["time"], np.int64)
        times = np.asarray(st["time"][:], np.int64)
        idx = idx[np.argsort(times[idx], kind="stable")]
        events = np.asarray(st["event"][:])[idx]
        for event in np.unique(events):
            sel = idx[events == event]
            starts, step = clip_starts(times[sel], events[events == event], frames)
            if starts.size == 0 or step > MAX_STEP_S:
                continue
            wet = np.nansum(np.asarray(st["ref_lr"].oindex[sel], np.float32), axis=(1, 2))
            s = int(starts[np.argmax([wet[i:i + frames].sum() for i in starts])])
            rc = crop_around_rain(st, sel[s:s + frames], crop)
            out.append({"network": network, "event": int(event), "lr": rc.lr, "hr": rc.hr,
                        "time_s": times[sel[s:s + frames]].astype(np.float64),
                        "factor": int(st.factor), "step_s": int(step)})
    return out


def member_lag1(net: Any, release: Any, case: dict[str, Any], phi: float, *, members: int,
                steps: int, seed: int, drift: tuple[tuple[float, float], ...] | None = None
                ) -> float:
    """Mean over members of the lag-1 correlation of the model's members on ``case`` (mm/h);
    ``drift``: the coarse rain's track, which the correlated noise then follows
    (:func:`~precipdiff.pipeline.drift.rain_drift`), or None: fixed pixels."""
    import torch
    import xarray as xr

    from precipdiff.defaults import PREDICT
    from precipdiff.evaluation.temporal import lag_correlation
    from precipdiff.pipeline.sequence import SequenceOptions, clips_per_call, downscale_sequence

    tr, frames = release.transform, release.temporal.frames
    size = case["hr"].shape[-1]
    opts = SequenceOptions(members=members, seed=seed, sampler=PREDICT.sampler, steps=steps,
                           window=frames, windows="alternate", tile=max(size, 64), overlap=32,
                           tile_batch=clips_per_call(frames, 8), noise_correlation=phi,
                           noise_drift=drift)
    lr_t = torch.from_numpy(tr.forward(np.nan_to_num(case["lr"])).astype(np.float32))
    pred = downscale_sequence(net, lr_t, case["time_s"], case["factor"], opts,
                              sigma_data=release.sigma_data)
    mm = np.asarray(tr.inverse(pred.numpy()), np.float32)
    mm[:, np.isnan(case["hr"])] = np.nan
    da = xr.DataArray(mm, dims=("member", "time", "y", "x"))
    return float(np.nanmean(lag_correlation(da, 1).values))


def radar_lag1(case: dict[str, Any]) -> float:
    import xarray as xr

    from precipdiff.evaluation.temporal import lag_correlation

    return float(lag_correlation(xr.DataArray(case["hr"], dims=("time", "y", "x")), 1))


def choose(errors: dict[float, list[float]]) -> float:
    """The correlation with the smallest mean error (the smaller one on a tie)."""
    return min(sorted(errors), key=lambda phi: float(np.mean(errors[phi])))


def calibrate_time(weights: str | Path, corpus: str | Path, output: str | Path, *,
                   grid: tuple[float, ...] = GRID, frames: int = 12, crop: int = 96,
                   members: int = 4, steps: int = 8, seed: int = 0,
                   networks: list[str] | None = None, drift: bool = False) -> dict[str, Any]:
    """Write ``weights`` with a calibrated ``temporal_noise_correlation_calibrated`` note to
    ``output``; returns the summary stored with it. ``drift``: calibrate the correlation of
    noise that moves with the rain, and note ``temporal_noise_drift = "1"`` so that
    ``predict`` moves it too (:func:`precipdiff.pipeline.record.noise_drift`)."""
    from precipdiff.data.corpus import open_corpus
    from precipdiff.pipeline.drift import as_track, rain_drift
    from precipdiff.release import Release
    from precipdiff.training.calibrate import calibration_networks, trained_networks
    from precipdiff.training.temporal import load_temporal

    net, meta = load_temporal(weights)
    release = meta["release"]
    handle = open_corpus(corpus)
    chosen = calibration_networks(list(handle.networks), trained_networks(dict(release.notes)),
                                  networks)
    cases = training_sequences(handle, chosen, frames=frames, crop=crop)
    wrong = sorted({c["network"] for c in cases if c["factor"] != release.factor})
    if wrong:
        raise ValueError(f"{weights}: downscales x{release.factor}, but {corpus} networks "
                         f"{wrong} are x{cases[0]['factor']}")
    if not cases:
        raise ValueError(f"{corpus}: no train sequence of {frames} frames at most "
                         f"{MAX_STEP_S} s apart in {chosen}")
    errors: dict[float, list[float]] = {phi: [] for phi in grid}
    own: dict[str, dict[float, list[float]]] = {}  # product -> phi -> errors under its label
    per_case = []

    def lag1s(case: dict[str, Any], r_obs: float, table: dict[float, list[float]],
              track: tuple[tuple[float, float], ...] | None,
              product: str | None = None) -> dict[str, float]:
        """Members' lag-1 for every phi of ``grid`` under ``product``, the noise following
        ``track``; errors into ``table``."""
        net.set_product(product)
        out = {}
        for phi in grid:
            out[repr(phi)] = member_lag1(net, release, case, phi, members=members, steps=steps,
                                         seed=seed, drift=track)
            table[phi].append(abs(out[repr(phi)] - r_obs))
        net.set_product(None)
        return out

    for case in cases:
        r_obs = radar_lag1(case)
        track = as_track(rain_drift(case["lr"], case["factor"])) if drift else None
        row = {"network": case["network"], "event": case["event"], "step_s": case["step_s"],
               "radar_lag1": r_obs, "members_lag1": lag1s(case, r_obs, errors, track)}
        if case["network"] in net.cfg.products:
            table = own.setdefault(case["network"], {phi: [] for phi in grid})
            row["own_product_members_lag1"] = lag1s(case, r_obs, table, track, case["network"])
        per_case.append(row)
        log.info("%s event %d: radar %.3f, members %s", case["network"], case["event"], r_obs,
                 row["members_lag1"])
    phi = choose(errors)
    summary = {"noise_correlation": phi, "split": "train",
               "mean_lag1_error": {repr(k): float(np.mean(v)) for k, v in errors.items()},
               "sequences": per_case, "networks": chosen,
               "settings": {"frames": frames, "crop": crop, "members": members,
                            "steps": steps, "seed": seed, "grid": list(grid), "drift": drift}}
    notes = {**release.notes, "temporal_noise_correlation_calibrated": repr(phi),
             "temporal_noise_drift": "1" if drift else "0"}
    if own:  # each product's own correlation, under its label (``predict --product``)
        by_product = {name: choose(table) for name, table in own.items()}
        summary["noise_correlation_by_product"] = by_product
        notes["temporal_noise_correlation_calibrated_by_product"] = json.dumps(by_product)
    notes["temporal_noise_correlation_calibration"] = json.dumps(summary)
    dataclasses.replace(Release.load(weights), notes=notes).save(output)
    log.info("noise correlation %.2f (mean lag-1 errors %s): %s", phi,
             summary["mean_lag1_error"], output)
    return summary


def main(argv: list[str] | None = None) -> None:
    from precipdiff.training.calibrate import calibration_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    calibration_arguments(ap, frames=12, crop=96, unit="sequence")
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--drift", action="store_true",
                    help="the correlated noise moves with the coarse rain (predict does the "
                    "same with these weights)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = calibrate_time(args.weights, args.corpus, args.output, grid=tuple(args.grid),
                             frames=args.frames, crop=args.crop, members=args.members,
                             steps=args.steps, seed=args.seed, networks=args.networks,
                             drift=args.drift)
    print(json.dumps({k: v for k, v in summary.items() if k != "sequences"}, indent=1))


if __name__ == "__main__":
    main()
