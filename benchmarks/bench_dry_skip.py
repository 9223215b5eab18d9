"""Stage II windows: balanced sizes, dry ones skipped; the work saved on real radar.

    OMP_NUM_THREADS=1 python benchmarks/bench_dry_skip.py
    OMP_NUM_THREADS=1 python benchmarks/bench_dry_skip.py --box 35 41 -95 -89 --members 8

Stage II samples a large domain window by window (:func:`precipdiff.pipeline.tiling.windows`).
Two changes cut the work: windows are as long as needed to cover the domain with as few of them
(:func:`~precipdiff.pipeline.tiling.balanced_size`; before, every window was ``--window``
pixels, so a domain just above one window was sampled almost twice), and a window whose coarse
cells are all dry (below the trace threshold, with the dry neighbourhood of
:func:`precipdiff.pipeline.dry.dry_cells`) is not sampled, since the dry rule zeroes it
whatever Stage II samples there (:func:`~precipdiff.pipeline.dry.dry_block`). On a real MRMS
PrecipRate frame (2019-06-10, ``--time``) mean-pooled 10x to 0.1 deg (the areal-mean input of
the default models):

* **count** (no network): over the whole CONUS frame (3500 x 7000 fine pixels), for each window
  size in ``--windows``, the fine pixels sampled with the fixed-size layout, the balanced one,
  and the balanced one without its dry windows, over the domain's pixels.
* **run**: Stage II alone (the shipped default weights, predict's default sampler and steps,
  ``--members``) over the ``--box`` (lat0 lat1 lon0 lon1), three times in this process: the
  fixed-size layout with every window sampled (the code before), balanced windows with every
  window sampled, balanced windows with dry ones skipped (now); CPU and wall seconds, and the
  fair CRPS against the 1-km radar. The last two outputs must be bit-identical.
  ``--compare-windows 256 384`` adds the current code at other window sizes (``--now-only``:
  only those and the current default).

Writes Markdown to ``--out`` (default ``benchmarks/results/dry_skip.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import stamp as report_stamp  # noqa: E402
from benchlib import write_report  # noqa: E402

MRMS = Path("../shared/data/mrms/2019-06-10")


def coarse_frame(time_hhmm: str):
    """The MRMS frame at ``time_hhmm`` (UTC) mean-pooled 10x, NaN where not covered, and the
    1-km frame itself."""
    from precipdiff.grid import coarsen
    from precipdiff.io.mrms import read_mrms

    path = MRMS / f"PrecipRate_00.00_20190610-{time_hhmm}00.grib2"
    if not path.exists():
        raise SystemExit(f"{path}: not found (the shared data folder is needed)")
    da = read_mrms(path).isel(time=0)
    da = da.where(da >= 0)
    return coarsen(da, 10, method="mean", max_missing_fraction=0.5), da


@contextlib.contextmanager
def layout(balanced: bool):
    """Windows as laid out now (:func:`~precipdiff.pipeline.tiling.balanced_size`) or as before
    it (every window ``size`` long, starts spread evenly)."""
    from precipdiff.pipeline import tiling

    original = tiling.balanced_size
    if not balanced:
        tiling.balanced_size = lambda n, size, overlap, multiple=1: size
    try:
        yield
    finally:
        tiling.balanced_size = original


def count(lr: np.ndarray, sizes: list[int], trace: float, halo: int = 32) -> list[dict]:
    from precipdiff.pipeline.dry import dry_block, dry_cells
    from precipdiff.pipeline.tiling import windows

    dry = dry_cells(lr[None], trace=trace)
    h, w = lr.shape[0] * 10, lr.shape[1] * 10
    rows = []
    for size in sizes:
        with layout(False):
            before = sum((v.y1 - v.y0) * (v.x1 - v.x0)
                         for v in windows(h, w, size, halo, multiple=10))
        wins = list(windows(h, w, size, halo, multiple=10))
        area = [(v.y1 - v.y0) * (v.x1 - v.x0) for v in wins]
        wet = [a for v, a in zip(wins, area, strict=True) if not dry_block(dry, v, 10)]
        rows.append({"window": size, "windows": len(wins), "wet_windows": len(wet),
                     "pixels_before": int(before), "pixels_all": int(sum(area)),
                     "pixels_wet": int(sum(wet)), "domain": h * w})
    return rows


RUNS = (("before: fixed-size windows, every window sampled", False, False),
        ("balanced windows, every window sampled", True, False),
        ("now: balanced windows, dry ones skipped", True, True))


def run(src, truth, members: int, extra_windows: tuple[int, ...] = (),
        now_only: bool = False) -> dict:
    import xarray as xr

    import precipdiff.pipeline.pipeline as pp
    from precipdiff.evaluation.metrics import crps_ensemble
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.pipeline.shipped import shipped_weights

    pipe = Pipeline(None, Stage.load(shipped_weights()["downscale_full"]))
    opts = PredictOptions(members=members, mass_consistent=None, trace_threshold=0.02)
    out = {}
    original = pp.dry_block
    runs = [(name, balanced, skip, opts.window) for name, balanced, skip in RUNS
            if skip or not now_only]
    runs += [(f"now, window {w}", True, True, w) for w in extra_windows]
    for name, balanced, skip, window in runs:
        pp.dry_block = original if skip else (lambda *a, **k: False)
        with layout(balanced):
            c0, w0 = time.process_time(), time.perf_counter()
            ds = pipe.predict(src, dataclasses.replace(opts, window=window))
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        pred = ds["precip"].isel(time=0)
        ob = xr.DataArray(truth, dims=pred.dims[1:])
        fc = xr.DataArray(pred.values, dims=pred.dims)
        out[name] = {"cpu_s": cpu, "wall_s": wall, "sampled": ds.attrs.get("stage2_blocks_sampled"),
                     "dry": ds.attrs.get("stage2_blocks_dry"), "precip": pred.values,
                     "crps": float(crps_ensemble(fc, ob, estimator="fair"))}
    pp.dry_block = original
    if not now_only:
        a, b = out[RUNS[1][0]]["precip"], out[RUNS[2][0]]["precip"]
        out["identical"] = bool(np.array_equal(a, b, equal_nan=True))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", default="0040", help="HHMM of the MRMS frame")
    ap.add_argument("--windows", type=int, nargs="+", default=[256, 384, 512, 768, 1024])
    ap.add_argument("--box", type=float, nargs=4, default=[34.0, 42.0, -94.0, -86.0],
                    metavar=("LAT0", "LAT1", "LON0", "LON1"))
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--trace", type=float, default=0.02, help="coarse trace threshold, mm/h "
                    "(predict's for areal-mean input to Stage II alone)")
    ap.add_argument("--compare-windows", type=int, nargs="*", default=[],
                    help="also run the current code with these --window sizes")
    ap.add_argument("--now-only", action="store_true",
                    help="run only the current code (with --compare-windows)")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dry_skip.md"))
    args = ap.parse_args(argv)
    lr, fine = coarse_frame(args.time)
    stamp = report_stamp()
    lines = [f"# Dry windows skipped ({stamp})", "",
             f"MRMS PrecipRate 2019-06-10 {args.time} UTC, mean-pooled to 0.1 deg, trace "
             f"{args.trace} mm/h; fine pixels sampled over the domain's (CONUS, 3500 x 7000)", "",
             "| window px | windows | wet windows | fixed-size windows (before) | balanced | "
             "balanced, dry skipped | work ratio (now / before) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in count(np.asarray(lr.values, np.float32), args.windows, args.trace):
        d = r["domain"]
        lines.append(f"| {r['window']} | {r['windows']} | {r['wet_windows']} | "
                     f"{r['pixels_before'] / d:.2f} | {r['pixels_all'] / d:.2f} | "
                     f"{r['pixels_wet'] / d:.2f} | {r['pixels_wet'] / r['pixels_before']:.2f} |")
    print("\n".join(lines), flush=True)
    if not args.skip_run:
        lat0, lat1, lon0, lon1 = args.box
        box = {"lat": slice(lat0, lat1), "lon": slice(lon0, lon1)}
        src = lr.sortby("lat").sel(box).fillna(0.0)
        truth = fine.sortby("lat").sel(box)
        src = src.expand_dims(time=[np.datetime64(
            f"2019-06-10T{args.time[:2]}:{args.time[2:]}", "ns")]).astype(np.float32)
        res = run(src, np.asarray(truth.values, np.float32), args.members,
                  tuple(args.compare_windows), args.now_only)
        ny, nx = src.shape[-2:]
        lines += ["", f"Stage II alone over lat {lat0}–{lat1}, lon {lon0}–{lon1} ({ny * 10} x "
                  f"{nx * 10} fine pixels), {args.members} members, predict's defaults "
                  "(window 512, DPM-Solver++(2M) 8 steps), scored against the 1-km radar:", "",
                  "| run | blocks sampled | blocks dry | CPU s | wall s | CPU time x | CRPS fair |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        names = [n for n, _, skip in RUNS if skip or not args.now_only]
        base = res[names[0]]["cpu_s"]
        names += [f"now, window {w}" for w in args.compare_windows]
        for name in names:
            r = res[name]
            lines.append(f"| {name} | {r['sampled']} | {r['dry']} | {r['cpu_s']:.1f} | "
                         f"{r['wall_s']:.1f} | {r['cpu_s'] / base:.2f} | {r['crps']:.4f} |")
        if "identical" in res:
            lines += ["", f"Balanced windows with and without skipping bit-identical: "
                      f"{res['identical']}"]
    write_report(args.out, lines)
    print("\n".join(lines[-8:]))


if __name__ == "__main__":
    main()
