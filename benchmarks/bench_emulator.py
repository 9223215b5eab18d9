"""Satellite emulator vs real IMERG: side-by-side statistics at 0.1 deg (Markdown table).

MRMS PrecipRate frames of 2019-06-10 00:00-01:10 UTC are cropped to the IMERG subset's
domain (lon -124..-67, lat 24..49), mean-pooled 10x onto the IMERG cell centres and passed
through ``precipdiff.data.emulate``; the real IMERG V06B half-hour (2017-01-03 11:00 UTC) is
masked to MRMS radar coverage. The two scenes differ in season and weather (winter storm vs
summer convection), so this checks plausibility, not a like-for-like match.

Usage: ``python benchmarks/bench_emulator.py [--data ../shared/data] [--frames 36] [--seed 0]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import time
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff import grid
from precipdiff.data.emulate import EmulatorParams, emulate_satellite

log = logging.getLogger("bench_emulator")

BBOX = (-124.0, 24.0, -67.0, 49.0)  # IMERG subset's cell edges (lon_min, lat_min, lon_max, lat_max)
WET = 0.1  # mm/h
QUANTILES = (50, 90, 99, 99.9)


# ------------------------------------------------------------------ readers (io or fallback)


def read_mrms(path: Path) -> xr.DataArray:
    """One MRMS PrecipRate frame cropped to BBOX, (time, lat, lon) mm/h, NaN missing."""
    try:
        from precipdiff.io import read

        return read(path, bbox=BBOX)
    except ImportError:
        pass
    from precipdiff.io._eccodes import (
        eccodes,  # fallback: discipline 209/6/1 PrecipRate, -3 missing, north -> south
    )

    with open(path, "rb") as fh:
        h = eccodes.codes_grib_new_from_file(fh)
        try:
            ni, nj = eccodes.codes_get(h, "Ni"), eccodes.codes_get(h, "Nj")
            lat1 = eccodes.codes_get(h, "latitudeOfFirstGridPointInDegrees")
            lon1 = eccodes.codes_get(h, "longitudeOfFirstGridPointInDegrees")
            d = eccodes.codes_get(h, "iDirectionIncrementInDegrees")
            when = dt.datetime.strptime(f"{eccodes.codes_get(h, 'dataDate')}"
                                        f"{eccodes.codes_get(h, 'dataTime'):04d}", "%Y%m%d%H%M")
            v = eccodes.codes_get_values(h).reshape(nj, ni)[::-1].astype(np.float32)
        finally:
            eccodes.codes_release(h)
    v[v < 0] = np.nan
    lat = lat1 - d * (nj - 1) + d * np.arange(nj)
    lon = ((lon1 + d * np.arange(ni)) + 180) % 360 - 180
    da = xr.DataArray(v[None], dims=("time", "lat", "lon"),
                      coords={"time": [np.datetime64(when, "ns")], "lat": lat, "lon": lon},
                      attrs={"units": "mm/h"})
    return grid.crop(da, BBOX)


def read_imerg(path: Path) -> xr.DataArray:
    """The IMERG V06B subset as (time, lat, lon) mm/h (root datasets, fill -9999.9)."""
    try:
        from precipdiff.io import read

        return read(path)
    except ImportError:
        pass
    import h5py

    with h5py.File(path, "r") as f:
        p = np.asarray(f["precipitationCal"][:], dtype=np.float32).transpose(0, 2, 1)
        lat, lon, t = f["lat"][:], f["lon"][:], f["time"][:]
    p[p < -9000] = np.nan
    return xr.DataArray(p, dims=("time", "lat", "lon"),
                        coords={"time": (t * 1e9).astype("datetime64[ns]"), "lat": lat,
                                "lon": lon}, attrs={"units": "mm/h"})


# ------------------------------------------------------------------ statistics


def rapsd(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectral density (k in cycles/pixel, NaN -> 0, mean removed)."""
    f = np.nan_to_num(field) - np.nanmean(field)
    ny, nx = f.shape
    power = np.abs(np.fft.fft2(f)) ** 2 / f.size
    k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]).ravel()
    edges = np.arange(0.5, max(ny, nx) // 2) / max(ny, nx)
    idx = np.digitize(k, edges)
    n = np.maximum(np.bincount(idx, minlength=edges.size + 1), 1)
    ps = np.bincount(idx, power.ravel(), minlength=edges.size + 1) / n
    kc = np.bincount(idx, k, minlength=edges.size + 1) / n
    return kc[1:-1], ps[1:-1]


def spectral_slope(frames: np.ndarray, kmin: float = 1 / 32, kmax: float = 1 / 3) -> float:
    """Log-log slope of the frame-averaged RAPSD for wavelengths 3-32 px (30-320 km)."""
    spectra = [rapsd(f) for f in frames]
    k = spectra[0][0]
    ps = np.mean([s[1] for s in spectra], axis=0)
    sel = (k >= kmin) & (k <= kmax) & (ps > 0)
    return float(np.polyfit(np.log(k[sel]), np.log(ps[sel]), 1)[0])


def stats(frames: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Wet fraction, wet-pixel quantiles, max and RAPSD slope over the valid cells."""
    vals = frames[:, valid]
    vals = vals[np.isfinite(vals)]
    wet = vals[vals >= WET]
    out = {"wet fraction (>= 0.1 mm/h)": wet.size / max(vals.size, 1)}
    for q in QUANTILES:
        out[f"wet q{q:g} (mm/h)"] = float(np.percentile(wet, q)) if wet.size else np.nan
    out["max (mm/h)"] = float(vals.max())
    out["mean (mm/h)"] = float(vals.mean())
    masked = np.where(valid, frames, np.nan)
    out["RAPSD slope (30-320 km)"] = spectral_slope(masked)
    return out


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    files = sorted((args.data / "mrms" / "2019-06-10").glob("PrecipRate_*.grib2"))[: args.frames]
    imerg_file = next((args.data / "imerg").glob("*20170103*V06B*SUB.hdf5"))
    t0 = time.perf_counter()
    imerg = read_imerg(imerg_file)
    target = grid.Grid.from_dataarray(imerg)
    params = EmulatorParams()
    rng = np.random.default_rng(args.seed)
    coarse, emulated, hr_sum, n_hr = [], [], None, 0
    for i, path in enumerate(files):
        hr = read_mrms(path)
        lr = grid.coarsen(hr, 10, method="mean")
        if not grid.Grid.from_dataarray(lr).is_close(target):
            raise SystemExit(f"MRMS coarse grid {grid.Grid.from_dataarray(lr)} != IMERG {target}")
        coarse.append(lr.values[0])
        emulated.append(emulate_satellite(hr, factor=10, params=params, rng=rng).values[0])
        if i < 15:  # 00:00-00:28: the half hour an IMERG file covers
            hr_sum = hr if hr_sum is None else hr_sum + hr.values
            n_hr += 1
        log.info("frame %d/%d %s", i + 1, len(files), path.name)
    hr_mean = hr_sum / n_hr
    emulated_30 = emulate_satellite(hr_mean, factor=10, params=params, rng=rng).values
    coarse = np.stack(coarse)
    valid = np.isfinite(coarse).all(axis=0)
    cols = {
        "IMERG V06B 2017-01-03 11:00 (1 half-hour)": stats(imerg.values, valid),
        f"emulator(MRMS) 2019-06-10 ({len(files)} frames)": stats(np.stack(emulated), valid),
        "emulator(MRMS 30-min mean)": stats(emulated_30, valid),
        "MRMS mean-pooled, no emulation": stats(coarse, valid),
    }
    elapsed = time.perf_counter() - t0
    print(f"\n### Emulator vs IMERG at 0.1 deg — {dt.date.today()} on {platform.node()} "
          f"({platform.machine()}, {platform.processor() or 'cpu'}), {elapsed:.0f} s\n")
    print("Not like for like: IMERG scene is January 2017 (winter storms); MRMS is June 2019 "
          f"(summer convection). Cells: {valid.sum()} of {valid.size} with MRMS coverage.\n")
    names = list(cols)
    print("| statistic | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in next(iter(cols.values())):
        print(f"| {key} | " + " | ".join(f"{cols[n][key]:.4g}" for n in names) + " |")
    print(f"\nEmulatorParams: {params.to_dict()}")


if __name__ == "__main__":
    main()
