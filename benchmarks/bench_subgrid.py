"""Sub-grid wet area of radar frames: is a day's rain regime like the training day's?

For 1-km radar files (any reader of ``precipdiff.io``) cropped to a box, pools each frame 10x
(block max or mean) and reports the mean fraction of 1-km pixels >= 1 mm/h inside a coarse cell,
binned by the cell's value, for the whole box and for equal column bands (west to east). The
statistic that decides FSS at 1 mm/h for a max-pooled downscaler (BENCHMARKS.md, "Why RainFARM
wins FSS at 1 mm/h"): widespread light rain gives high fractions, isolated showers low ones.

    python benchmarks/bench_subgrid.py ../shared/data/mrms/2021-07-06/PrecipRate_*.grib2
    python benchmarks/bench_subgrid.py ../shared/data/mrms/2019-06-10/PrecipRate_*.grib2

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import warnings

import numpy as np

from precipdiff import io
from precipdiff.evaluation.spatial import subgrid_event_fraction

EDGES = (1.0, 2.0, 5.0, 20.0)


def pooled(frame: np.ndarray, factor: int, how: str) -> tuple[np.ndarray, np.ndarray]:
    """``(fine, coarse)``: the frame cropped to multiples of ``factor`` and its block pool."""
    ny, nx = (s // factor * factor for s in frame.shape)
    fine = frame[:ny, :nx]
    blocks = fine.reshape(ny // factor, factor, nx // factor, factor)
    with warnings.catch_warnings():  # all-NaN blocks (no radar coverage) pool to NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        coarse = np.nanmax(blocks, axis=(1, 3)) if how == "max" else np.nanmean(blocks, (1, 3))
    return fine, coarse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--bbox", type=float, nargs=4, default=[-102.0, 39.0, -82.0, 49.0])
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--pooling", choices=("max", "mean"), default="max")
    ap.add_argument("--bands", type=int, default=5, help="equal column bands, west to east")
    args = ap.parse_args()
    fines, coarses = [], []
    for path in sorted(args.files):
        da = io.read(path, bbox=tuple(args.bbox)).squeeze()
        frame = np.asarray(da.values, dtype=np.float64)
        frame[frame < 0] = np.nan  # MRMS missing / no-coverage codes
        fine, coarse = pooled(frame, args.factor, args.pooling)
        fines.append(fine)
        coarses.append(coarse)
    fine, coarse = np.stack(fines), np.stack(coarses)
    f, nxc = args.factor, coarse.shape[-1]
    rows = [("whole box", fine, coarse)]
    for b in range(args.bands):
        c0, c1 = b * nxc // args.bands, (b + 1) * nxc // args.bands
        band = (fine[..., c0 * f : c1 * f], coarse[..., c0:c1])
        rows.append((f"band {b + 1} of {args.bands}", *band))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Sub-grid wet fraction (>= 1 mm/h), {args.pooling}-pooled {args.factor}x — {now}\n")
    print(f"{len(args.files)} frame(s), first {sorted(args.files)[0]}; bbox {args.bbox}\n")
    heads = [f"({lo:g}, {hi:g}] mm/h" for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True)]
    print("| region | " + " | ".join(heads) + " | cells per bin |")
    print("|---|" + "---:|" * (len(heads) + 1))
    for name, fi, co in rows:
        frac = subgrid_event_fraction(fi, co, factor=f, threshold=1.0, edges=EDGES)
        bins = zip(EDGES[:-1], EDGES[1:], strict=True)
        counts = [int(((co > lo) & (co <= hi)).sum()) for lo, hi in bins]
        cells = " | ".join(f"{v:.3f}" for v in frac)
        print(f"| {name} | {cells} | {' / '.join(map(str, counts))} |")


if __name__ == "__main__":
    main()
