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

from precipdiff import io
from precipdiff.evaluation.spatial import subgrid_event_fraction
from precipdiff.grid import coarsen

EDGES = (1.0, 2.0, 5.0, 20.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--bbox", type=float, nargs=4, default=[-102.0, 39.0, -82.0, 49.0])
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--pooling", choices=("max", "mean"), default="max")
    ap.add_argument("--bands", type=int, default=5, help="equal column bands, west to east")
    args = ap.parse_args()
    f = args.factor
    da = io.read_many(args.files, bbox=tuple(args.bbox))  # readers mask missing values as NaN
    fine_da = da.isel(
        lat=slice(0, da.sizes["lat"] // f * f), lon=slice(0, da.sizes["lon"] // f * f)
    )
    # a block is NaN only when all of it is (the statistic itself skips partly missing cells)
    coarse = coarsen(fine_da, f, method=args.pooling, max_missing_fraction=1.0).values
    fine = fine_da.values
    nxc = coarse.shape[-1]
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
