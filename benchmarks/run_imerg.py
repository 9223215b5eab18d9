"""The shipped pipeline on the real IMERG V06B subset (2017-01-03 11:00 UTC, CONUS).

    python benchmarks/run_imerg.py --output benchmarks/results/imerg

No co-located radar exists for this scene in ../shared/data, so there is no skill to score: the
script writes the ensemble NetCDF and shows what can be shown — maps of the source, the corrected
coarse field, downscaled members and exceedance probability, the intensity distributions and the
radially averaged spectra of the source, the corrected and the downscaled fields.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from precipdiff.evaluation.spectra import rapsd  # noqa: E402
from precipdiff.io import read  # noqa: E402
from precipdiff.pipeline import PredictOptions, SamplerSettings  # noqa: E402
from precipdiff.pipeline.output import predict_to_file  # noqa: E402
from precipdiff.pipeline.run import PredictRequest, load_pipeline  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imerg"


def _map(ax, da: xr.DataArray, title: str, norm) -> None:
    v = np.where(np.isfinite(da.values) & (da.values < norm.vmin), norm.vmin / 2, da.values)
    cmap = matplotlib.colormaps["viridis"].with_extremes(under="white", bad="0.75")
    lat, lon = da["lat"].values, da["lon"].values
    im = ax.imshow(
        v,
        origin="lower",
        cmap=cmap,
        norm=norm,
        extent=[lon[0], lon[-1], lat[0], lat[-1]],
        aspect="auto",
    )
    ax.set_title(title, fontsize=9)
    return im


def figures(ds: xr.Dataset, out: Path) -> list[Path]:
    src = ds["source_lr"].isel(time=0).rename(lat_lr="lat", lon_lr="lon")
    cor = ds["corrected_lr"].isel(time=0).rename(lat_lr="lat", lon_lr="lon")
    hr = ds["precip"].isel(time=0)
    vmax = float(np.nanmax([np.nanmax(src), np.nanmax(cor), np.nanmax(hr)]))
    norm = LogNorm(vmin=0.1, vmax=max(vmax, 1.0))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), constrained_layout=True)
    _map(axes[0, 0], src, "IMERG V06B source (0.1°)", norm)
    _map(axes[0, 1], cor.mean("member"), "Stage I corrected, ensemble mean (0.1°)", norm)
    _map(axes[0, 2], hr.mean("member"), "Stage I+II, ensemble mean (0.01°)", norm)
    _map(axes[1, 0], hr.isel(member=0), "Stage I+II, member 0", norm)
    im = _map(axes[1, 1], hr.isel(member=1), "Stage I+II, member 1", norm)
    fig.colorbar(im, ax=axes[:, :2], shrink=0.6, label="mm/h")
    prob = ds["exceedance_probability"].isel(time=0).sel(threshold=1.0, method="nearest")
    lat, lon = prob["lat"].values, prob["lon"].values
    pm = axes[1, 2].imshow(
        prob.values,
        origin="lower",
        vmin=0,
        vmax=1,
        cmap="magma",
        extent=[lon[0], lon[-1], lat[0], lat[-1]],
        aspect="auto",
    )
    axes[1, 2].set_title("P(rain >= 1 mm/h), 0.01°", fontsize=9)
    fig.colorbar(pm, ax=axes[1, 2], shrink=0.8)
    fig.suptitle(
        f"IMERG {str(ds['time'].values[0])[:16]} UTC — no co-located radar: no skill scored"
    )
    maps = out / "imerg_maps.png"
    fig.savefig(maps, dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    edges = np.logspace(-1, np.log10(max(vmax, 1.0)), 40)
    for name, v in (
        ("IMERG source", src.values),
        ("Stage I corrected", cor.values),
        ("Stage I+II", hr.values),
    ):
        v = v[np.isfinite(v) & (v >= 0.1)]
        h, _ = np.histogram(v, bins=edges, density=True)
        a1.step(edges[:-1], h, where="post", label=f"{name} (wet {v.size})")
    a1.set(
        xscale="log",
        yscale="log",
        xlabel="mm/h",
        ylabel="density (wet pixels)",
        title="intensity distributions",
    )
    a1.legend(fontsize=8)
    for name, da, dx in (
        ("IMERG source (10 km)", src, 10.0),
        ("Stage I corrected (10 km)", cor, 10.0),
        ("Stage I+II (1 km)", hr, 1.0),
    ):
        p = rapsd(da)
        fr = p["freq"].values / dx
        ok = fr > 0
        a2.loglog(fr[ok], p.values[ok], label=name)
    a2.set(xlabel="wavenumber (1/km)", ylabel="PSD", title="radially averaged power spectra")
    a2.legend(fontsize=8)
    stats = out / "imerg_distributions_spectra.png"
    fig.savefig(stats, dpi=110)
    plt.close(fig)
    return [maps, stats]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/imerg"))
    ap.add_argument("--bbox", type=float, nargs=4, default=[-84.0, 36.0, -78.0, 40.0])
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    files = sorted(glob.glob(str(DATA / "*SUB.hdf5")))
    if not files:
        raise SystemExit(f"IMERG subset not found under {DATA}")
    src = read(files[0], bbox=tuple(args.bbox))
    args.output.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(PredictRequest(inputs=[], output=args.output), "cpu")
    s = SamplerSettings(sampler="dpmpp_2m", steps=args.steps)
    opts = PredictOptions(members=args.members, correct=s, downscale=s, window=256)
    t0 = time.perf_counter()
    nc = predict_to_file(pipe, src, args.output / "imerg_precipdiff.nc", opts)
    secs = time.perf_counter() - t0
    ds = xr.open_dataset(nc).load()
    paths = figures(ds, args.output)
    src_v = ds["source_lr"].values
    cor_v = ds["corrected_lr"].values
    hr_v = ds["precip"].values
    print(
        f"IMERG {Path(files[0]).name} bbox {args.bbox}: {src.shape[1]}x{src.shape[2]} coarse"
        f" -> {hr_v.shape[2]}x{hr_v.shape[3]} fine, {args.members} members, {args.steps} steps,"
        f" {secs:.0f} s"
    )
    for name, v in (("source", src_v), ("corrected", cor_v), ("downscaled", hr_v)):
        w = v[np.isfinite(v)]
        print(
            f"{name}: mean {w.mean():.3f} mm/h, wet(>=0.1) {np.mean(w >= 0.1):.3f}, "
            f"p99 {np.percentile(w, 99):.2f}, max {w.max():.2f}"
        )
    print("figures:", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
