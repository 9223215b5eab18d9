"""Stage II cost on real radar: windows cut to the rain, and a distilled few-step student.

    OMP_NUM_THREADS=1 python benchmarks/bench_inference_cost.py \
        --student runs/distill_stage2/weights.safetensors

On a real MRMS PrecipRate frame (2019-06-10, ``--time``) mean-pooled 10x to 0.1 deg (the
areal-mean input of the default models):

* **count** (no network): fine pixels Stage II samples over the whole CONUS frame (3500 x 7000)
  with predict's default window (512) when dry windows are skipped (the layout before) and
  when each wet window is also cut to its wet cells plus a halo of context
  (:func:`precipdiff.pipeline.dry.wet_box`, ``PredictOptions.crop_to_rain`` before
  2026-12-01), and when cut to one box per group of wet cells
  (:func:`precipdiff.pipeline.dry.wet_boxes`, ``crop_to_rain`` now).
* **run**: Stage II alone over the ``--box`` (lat0 lat1 lon0 lon1), ``--members``, once per
  setting in this process, the settings interleaved over ``--rounds``: whole windows with the
  default weights and sampler (DPM-Solver++(2M), 8 log-linear steps: the code before), windows
  cut to the rain with the same, the same with 4 steps (fewer steps of the same solver), and
  the distilled ``--student`` (4 Euler steps on its own grid). CPU seconds (median over rounds),
  fair CRPS, spread/skill and the fair CRPS difference to the first setting with a 95 % block
  bootstrap interval over 50 x 50 km blocks (the same blocks for both).
* **extrapolation** to CONUS with 8 members: CPU seconds per sampled member-pixel of each
  setting x the pixels the count says it samples over CONUS.
* ``--workers-compare``: instead, Stage II over ``--box`` with one process of two threads
  and with two window workers of one thread each, interleaved (``--out
  benchmarks/results/window_workers.md``).
* ``--conus``: instead, the default Stage II (or ``--student``) over the whole CONUS frame,
  timed (``--out benchmarks/results/inference_cost_conus.md``), with ``--window-workers``
  processes (0: one per thread, as ``predict``); CPU seconds and peak memory count the
  workers.

Writes Markdown to ``--out`` (default ``benchmarks/results/inference_cost.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_dry_skip import coarse_frame  # noqa: E402
from benchlib import stamp as report_stamp  # noqa: E402
from benchlib import write_report  # noqa: E402

BLOCK = 50  # fine pixels per side of a bootstrap block


def count(lr: np.ndarray, window: int, halo: int, trace: float) -> dict[str, float]:
    """Fraction of the domain's fine pixels sampled: wet windows whole, and cut to the rain."""
    from precipdiff.pipeline.dry import dry_block, dry_cells, wet_box, wet_boxes
    from precipdiff.pipeline.tiling import windows

    dry = dry_cells(lr[None], trace=trace)
    h, w = lr.shape[0] * 10, lr.shape[1] * 10
    whole = cut = boxes = 0
    for win in windows(h, w, window, halo, multiple=10):
        if dry_block(dry, win, 10):
            continue
        whole += win.weight.numel()
        cut += wet_box(dry, win, 10, halo).weight.numel()
        boxes += sum(b.weight.numel() for b in wet_boxes(dry, win, 10, halo))
    return {"whole": whole / (h * w), "cut": cut / (h * w), "boxes": boxes / (h * w),
            "pixels": h * w, "wet_cells": float((~dry).mean())}


def settings(student: Path | None) -> list[dict]:
    from precipdiff.pipeline.shipped import shipped_weights
    from precipdiff.pipeline.stage import SamplerSettings

    teacher = Path(shipped_weights()["downscale_full"])
    rows = [
        {"name": "whole windows, default weights, DPM-Solver++(2M) 8 (before)", "weights": teacher,
         "crop": False, "sampler": SamplerSettings()},
        {"name": "cut to the rain, default weights, DPM-Solver++(2M) 8", "weights": teacher,
         "crop": True, "sampler": SamplerSettings()},
        {"name": "cut to the rain, default weights, DPM-Solver++(2M) 4", "weights": teacher,
         "crop": True, "sampler": SamplerSettings(steps=4)},
    ]
    if student is not None:
        rows.append({"name": "cut to the rain, distilled student, 4 Euler steps",
                     "weights": student, "crop": True, "sampler": SamplerSettings()})
    return rows


def crps_map(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pointwise fair CRPS (mm/h) of ``members (M, Y, X)`` against ``truth (Y, X)``."""
    from precipdiff.evaluation.metrics import crps_ensemble_pointwise

    return crps_ensemble_pointwise(members, truth, axis=0, estimator="fair")


def block_interval(diff: np.ndarray, valid: np.ndarray, *, draws: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``diff`` over valid pixels and a 95 % bootstrap interval over BLOCK-px blocks."""
    ny, nx = diff.shape[0] // BLOCK, diff.shape[1] // BLOCK
    sums, counts = [], []
    for i in range(ny):
        for j in range(nx):
            sl = (slice(i * BLOCK, (i + 1) * BLOCK), slice(j * BLOCK, (j + 1) * BLOCK))
            v = valid[sl]
            sums.append(float(diff[sl][v].sum()))
            counts.append(int(v.sum()))
    s, c = np.array(sums), np.array(counts)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(s), size=(draws, len(s)))
    boot = s[pick].sum(1) / np.maximum(c[pick].sum(1), 1)
    return float(s.sum() / c.sum()), float(np.quantile(boot, 0.025)), float(np.quantile(boot,
                                                                                         0.975))


def run(src, truth: np.ndarray, rows: list[dict], members: int, rounds: int) -> dict:
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage

    pipes = {r["name"]: Pipeline(None, Stage.load(r["weights"])) for r in rows}
    out: dict[str, dict] = {r["name"]: {"cpu": []} for r in rows}
    for _ in range(rounds):
        for r in rows:
            opts = PredictOptions(members=members, mass_consistent=None, trace_threshold=0.02,
                                  downscale=r["sampler"], crop_to_rain=r["crop"])
            c0 = time.process_time()
            ds = pipes[r["name"]].predict(src, opts)
            out[r["name"]]["cpu"].append(time.process_time() - c0)
            pred = np.asarray(ds["precip"].isel(time=0).values, np.float64)
            out[r["name"]].update(
                precip=pred, nfe=int(ds.attrs["downscale_nfe"]),
                fraction=float(ds.attrs.get("stage2_sampled_fraction", 1.0)))
    valid = np.isfinite(truth)
    ref = None
    for r in rows:
        o = out[r["name"]]
        pred = np.nan_to_num(o["precip"])
        crps = crps_map(pred, np.nan_to_num(truth))
        mean = pred.mean(0)
        spread = np.sqrt(pred.var(0, ddof=1)[valid].mean())
        skill = np.sqrt(((mean - truth)[valid] ** 2).mean())
        o.update(crps=float(crps[valid].mean()), spread_skill=float(spread / skill),
                 cpu_s=float(np.median(o["cpu"])))
        if ref is None:
            ref = crps
        o["delta"] = block_interval(crps - ref, valid)
    return out


def frame_input(lr, args: argparse.Namespace, box: dict | None = None):
    """The coarse frame (optionally ``box``: ``sel`` slices) as predict's input: south to
    north, missing as 0, one time step at ``--time``, float32."""
    src = lr.sortby("lat")
    src = (src if box is None else src.sel(box)).fillna(0.0)
    return src.expand_dims(time=[np.datetime64(
        f"2019-06-10T{args.time[:2]}:{args.time[2:]}", "ns")]).astype(np.float32)


def run_conus(lr, fine, args: argparse.Namespace) -> None:
    """The default Stage II (``--student`` if given) over the whole CONUS frame, predict's
    defaults, ``--members``: CPU and wall seconds, peak memory, fair CRPS against the radar."""
    import resource

    import torch

    from precipdiff.allocator import keep_freed_memory
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.pipeline.shipped import shipped_weights

    keep_freed_memory()  # as predict does

    weights = args.student or shipped_weights()["downscale"]
    src = frame_input(lr, args)
    truth = np.asarray(fine.sortby("lat").values, np.float64)
    pipe = Pipeline(None, Stage.load(weights))
    workers = args.window_workers or torch.get_num_threads()
    opts = PredictOptions(members=args.members, mass_consistent=None, trace_threshold=0.02,
                          window_workers=workers)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, w0 = time.process_time(), time.perf_counter()
    ds = pipe.predict(src, opts)
    wall = time.perf_counter() - w0
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, ended with the step
    cpu = time.process_time() - c0 + (done.ru_utime + done.ru_stime
                                      - children.ru_utime - children.ru_stime)
    pred = np.asarray(ds["precip"].isel(time=0).values, np.float32)
    valid = np.isfinite(truth)
    crps = float(np.nanmean(crps_map(np.nan_to_num(pred), np.nan_to_num(truth))[valid]))
    stamp = report_stamp()
    lines = [f"# Stage II over CONUS ({stamp})", "",
             f"MRMS PrecipRate 2019-06-10 {args.time} UTC mean-pooled to 0.1 deg, "
             f"{truth.shape[0]} x {truth.shape[1]} fine pixels, {args.members} members, "
             f"weights {Path(weights).name}, {torch.get_num_threads()} thread(s), "
             f"window workers {workers}, "
             "predict's defaults (window 512, trace 0.02 mm/h, mass-consistent, windows cut "
             "to a box per group of wet cells)", "",
             "| wall s | CPU s (with workers) | peak RSS MB, this process | peak RSS MB, largest "
             "worker | windows sampled / dry | sampled fraction | NFE | CRPS fair (mm/h) |",
             "|---:|---:|---:|---:|---|---:|---:|---:|",
             f"| {wall:.0f} | {cpu:.0f} | "
             f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} | "
             f"{done.ru_maxrss / 1024:.0f} | "
             f"{ds.attrs.get('stage2_blocks_sampled')} / {ds.attrs.get('stage2_blocks_dry')} | "
             f"{ds.attrs.get('stage2_sampled_fraction')} | {ds.attrs['downscale_nfe']} | "
             f"{crps:.4f} |"]
    write_report(args.out, lines)
    print("\n".join(lines))


def run_workers(lr, args: argparse.Namespace) -> None:
    """The default Stage II over ``--box`` with both cores used two ways, interleaved over
    ``--rounds``: one process with two intra-op threads, and two window worker processes with
    one thread each (:mod:`precipdiff.pipeline.blocks`, the worker start included); wall
    seconds and whether the outputs are the same."""
    import torch

    import precipdiff.pipeline.pipeline as pp
    from precipdiff.allocator import keep_freed_memory
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.pipeline.shipped import shipped_weights

    lat0, lat1, lon0, lon1 = args.box
    src = frame_input(lr, args, {"lat": slice(lat0, lat1), "lon": slice(lon0, lon1)})
    pipe = Pipeline(None, Stage.load(args.student or shipped_weights()["downscale"]))
    pp.POOL_MIN_WORK = 0  # compare the two ways, not the rule that picks one
    keep_freed_memory()  # as predict does here and in its workers
    walls: dict[int, list[float]] = {1: [], 2: []}
    outs = {}
    for _ in range(args.rounds):
        for workers in (1, 2):
            torch.set_num_threads(2)
            opts = PredictOptions(members=args.members, mass_consistent=None,
                                  trace_threshold=0.02, window_workers=workers)
            w0 = time.perf_counter()
            ds = pipe.predict(src, opts)
            walls[workers].append(time.perf_counter() - w0)
            outs[workers] = ds["precip"].values
            blocks = ds.attrs.get("stage2_blocks_sampled")
    same = float(np.nanmax(np.abs(outs[1] - outs[2])))
    med = {k: float(np.median(v)) for k, v in walls.items()}
    stamp = report_stamp()
    lines = [f"# Window workers vs threads ({stamp})", "",
             f"Stage II over lat {lat0}–{lat1}, lon {lon0}–{lon1}, {args.members} members, "
             f"{blocks} blocks, {args.rounds} interleaved round(s); largest difference between "
             f"the two outputs {same:.3g} mm/h", "",
             "| way | wall s (each round) | median | x one process, two threads |",
             "|---|---|---:|---:|",
             f"| one process, two threads | {', '.join(f'{w:.1f}' for w in walls[1])} | "
             f"{med[1]:.1f} | 1.00 |",
             f"| two window workers, one thread each | "
             f"{', '.join(f'{w:.1f}' for w in walls[2])} | {med[2]:.1f} | "
             f"{med[2] / med[1]:.2f} |"]
    write_report(args.out, lines)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", default="0040", help="HHMM of the MRMS frame")
    ap.add_argument("--box", type=float, nargs=4, default=[34.0, 42.0, -94.0, -86.0],
                    metavar=("LAT0", "LAT1", "LON0", "LON1"))
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--trace", type=float, default=0.02, help="coarse trace threshold, mm/h "
                    "(predict's for areal-mean input to Stage II alone)")
    ap.add_argument("--student", type=Path, default=None, help="distilled Stage II weights")
    ap.add_argument("--conus", action="store_true",
                    help="instead: time the default Stage II over the whole CONUS frame")
    ap.add_argument("--workers-compare", action="store_true",
                    help="instead: two threads vs two window workers over --box")
    ap.add_argument("--window-workers", type=int, default=0,
                    help="--conus: Stage-II worker processes (0: one per thread, as predict)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/inference_cost.md"))
    args = ap.parse_args(argv)
    from precipdiff.defaults import PREDICT

    lr, fine = coarse_frame(args.time)
    if args.conus:
        run_conus(lr, fine, args)
        return
    if args.workers_compare:
        run_workers(lr, args)
        return
    stamp = report_stamp()
    c = count(np.asarray(lr.values, np.float32), PREDICT.window, PREDICT.halo, args.trace)
    lines = [f"# Stage II cost ({stamp})", "",
             f"MRMS PrecipRate 2019-06-10 {args.time} UTC mean-pooled to 0.1 deg, trace "
             f"{args.trace} mm/h. CONUS (3500 x 7000 fine pixels): coarse cells not dry "
             f"{c['wet_cells']:.3f}; pixels sampled over the domain's with window "
             f"{PREDICT.window}: wet windows whole {c['whole']:.3f}, cut to one box of the rain "
             f"{c['cut']:.3f} ({c['cut'] / c['whole']:.2f}x), cut to a box per group of wet "
             f"cells (now) {c['boxes']:.3f} ({c['boxes'] / c['whole']:.2f}x)", ""]
    print("\n".join(lines), flush=True)
    lat0, lat1, lon0, lon1 = args.box
    box = {"lat": slice(lat0, lat1), "lon": slice(lon0, lon1)}
    src = frame_input(lr, args, box)
    truth = np.asarray(fine.sortby("lat").sel(box).values, np.float64)
    rows = settings(args.student)
    res = run(src, truth, rows, args.members, args.rounds)
    ny, nx = truth.shape
    lines += [f"Stage II alone over lat {lat0}–{lat1}, lon {lon0}–{lon1} ({ny} x {nx} fine "
              f"pixels), {args.members} members, window {PREDICT.window}, median CPU seconds "
              f"of {args.rounds} interleaved round(s); CONUS extrapolated from each setting's "
              "CPU seconds per sampled pixel and the count above (8 members, one thread):", "",
              "| setting | NFE | sampled fraction | CPU s | CPU x | CRPS fair | Δ CRPS vs "
              "first, 95 % | spread/skill | CONUS, 8 members, 1 thread (h) |",
              "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    base = res[rows[0]["name"]]["cpu_s"]
    for r in rows:
        o = res[r["name"]]
        per_pixel = o["cpu_s"] / (args.members * ny * nx * o["fraction"])
        conus = per_pixel * 8 * c["pixels"] * (c["boxes"] if r["crop"] else c["whole"]) / 3600
        d, lo, hi = o["delta"]
        lines.append(f"| {r['name']} | {o['nfe']} | {o['fraction']:.3f} | {o['cpu_s']:.1f} | "
                     f"{o['cpu_s'] / base:.2f} | {o['crps']:.4f} | {d:+.4f} [{lo:+.4f}, "
                     f"{hi:+.4f}] | {o['spread_skill']:.2f} | {conus:.2f} |")
    write_report(args.out, lines)
    print("\n".join(lines[-(len(rows) + 2):]))


if __name__ == "__main__":
    main()
