"""A tiny synthetic training store for the training tests (built with the store's own writer)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

from precipdiff.data.store import STORE_FORMAT, create_store, write_frame
from precipdiff.data.synth import synthetic_rain
from precipdiff.data.transforms import PrecipTransform


def make_store(path: Path, *, n_time: int = 6, hr: int = 64, factor: int = 4,
               seed: int = 0) -> Path:
    """``hr x hr`` fine grid, coarse grid ``hr / factor``; train = first 4 times, val = the rest."""
    rng = np.random.default_rng(seed)
    ref_hr = synthetic_rain(n_time, hr, hr, rng=rng, wet_fraction=0.3)
    lr = hr // factor
    ref_lr = ref_hr.reshape(n_time, lr, factor, lr, factor).max(axis=(2, 4))
    src_lr = 0.7 * ref_lr + rng.gamma(1.0, 0.3, ref_lr.shape).astype(np.float32)
    src_lr[:, 0, 0] = np.nan  # one missing coarse cell
    d_hr, d_lr = 0.01, 0.01 * factor
    lat_hr, lon_hr = 40 + d_hr * np.arange(hr), 10 + d_hr * np.arange(hr)
    lat_lr = 40 + d_hr * (factor - 1) / 2 + d_lr * np.arange(lr)
    lon_lr = 10 + d_hr * (factor - 1) / 2 + d_lr * np.arange(lr)
    times = np.datetime64("2020-01-01T00:00") + np.arange(n_time) * np.timedelta64(1, "h")
    attrs = {"precipdiff_store": STORE_FORMAT, "factor": factor, "pooling": "max",
             "transform": PrecipTransform.fit(ref_hr).to_dict(), "source": "synthetic",
             "reference": "synthetic", "version": "test", "created": "2020-01-01",
             "splits": {"train": {"time": list(range(4)), "x_lr": [0, lr]},
                        "val": {"time": list(range(4, n_time)), "x_lr": [0, lr]}}}
    create_store(path, times=times, lat_hr=lat_hr, lon_hr=lon_hr, lat_lr=lat_lr, lon_lr=lon_lr,
                 attrs=attrs)
    for t in range(n_time):
        write_frame(path, t, src_lr=src_lr[t], ref_lr=ref_lr[t], ref_hr=ref_hr[t])
    import zarr

    zarr.open_group(str(path), mode="r+").attrs["complete"] = True
    return path


def tiny_overrides(store: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run: 8-channel two-level U-Net, 16x16 patches, a few steps."""
    return [f"data.store={store}", f"train.out_dir={out}", "data.patch=16", "data.batch_size=4",
            "data.samples_per_epoch=12", "data.val_patches=2", "model.model_channels=8",
            "model.channel_mult=[1, 2]", "model.attn_levels=[1]", "model.head_channels=8",
            "optim.warmup_samples=8", "optim.lr=1e-3", "train.steps=6",
            "train.ema_halflife_samples=16", "train.checkpoint_every_samples=8",
            "train.val_every_samples=12", "train.log_every_steps=2",
            "diffusion.val_steps=2", "diffusion.val_members=2", *extra]


def make_corpus(folder: Path, *, factor: int = 2, seed: int = 0) -> Path:
    """A tiny two-network corpus store (``precipdiff prepare`` with ``sources:``), mean pooling.

    ``alpha``: a 1-km LAEA grid (40 x 60), events early (train), mid (val), late (test);
    ``beta``: a 0.01 deg lat/lon grid (30 x 50), events day1 (train) and day2 (test).
    """
    import xarray as xr

    from precipdiff.data.corpus import prepare_corpus
    from precipdiff.data.corpus_config import CorpusConfig

    laea = "+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +ellps=WGS84 +units=m"
    t0, step = np.datetime64("2020-03-01T10:00", "ns"), np.timedelta64(5, "m")
    rng = np.random.default_rng(seed)
    specs = {"alpha": ((40, 60), [t0 + k * step for k in (0, 1, 2, 8, 9, 16, 17)], True),
             "beta": ((30, 50), [t0 + np.timedelta64(1, "D") + k * step for k in (0, 1, 2)]
                      + [t0 + np.timedelta64(2, "D")], False)}
    for name, (shape, times, projected) in specs.items():
        rain = synthetic_rain(len(times), *shape, rng=rng, wet_fraction=0.4).astype(np.float32)
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k, t in enumerate(times):
            if projected:
                x = -499500.0 + 1000.0 * np.arange(shape[1])
                y = 200500.0 + 1000.0 * np.arange(shape[0])
                ds = xr.Dataset(
                    {"rainrate": (("time", "y", "x"), rain[k:k + 1],
                                  {"units": "mm/h", "grid_mapping": "crs"}),
                     "crs": ((), np.int32(0), {"grid_mapping_name":
                                               "lambert_azimuthal_equal_area", "proj4": laea})},
                    coords={"time": [t], "x": ("x", x, {"units": "m"}),
                            "y": ("y", y, {"units": "m"})})
            else:
                lat = 35.005 + 0.01 * np.arange(shape[0])
                lon = -100.995 + 0.01 * np.arange(shape[1])
                ds = xr.Dataset({"precip": (("time", "lat", "lon"), rain[k:k + 1],
                                            {"units": "mm/h"})},
                                coords={"time": [t],
                                        "lat": ("lat", lat, {"units": "degrees_north"}),
                                        "lon": ("lon", lon, {"units": "degrees_east"})})
            ds.to_netcdf(folder / name / f"f{k:02d}.nc")
    day = "2020-03-02"
    cfg = CorpusConfig.from_dict({
        "factor": factor, "pooling": "mean", "seed": 7,
        "sources": [
            {"network": "alpha", "files": str(folder / "alpha" / "*.nc"),
             "events": {"early": ["2020-03-01T10:00", "2020-03-01T10:10"],
                        "mid": ["2020-03-01T10:40", "2020-03-01T10:45"],
                        "late": ["2020-03-01T11:20", "2020-03-01T11:25"]},
             "held_out": "late", "validation": "mid"},
            {"network": "beta", "files": str(folder / "beta" / "*.nc"),
             "events": {"day1": [f"{day}T10:00", f"{day}T10:10"],
                        "day2": ["2020-03-03T10:00", "2020-03-03T10:00"]},
             "held_out": "day2"}]})
    return prepare_corpus(cfg, folder / "corpus.zarr")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``path`` exists; fail if ``proc`` (stdout piped) ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.01)


def write_tiny_stage2(path: Path, *, factor: int = 2, frames: int | None = None,
                      products: tuple[str, ...] = (), **extra_meta: str):
    """A random tiny areal-mean Stage II (non-zero output layer) saved as release weights for
    a corpus of ``factor``; ``frames`` makes it a temporal one (SpatioTemporalUNet),
    ``products`` a product-conditioned one (random embedding)."""
    import json
    from dataclasses import asdict

    import torch

    from precipdiff.models.temporal import SpatioTemporalUNet, TemporalConfig
    from precipdiff.models.unet import UNet, UNetConfig
    from precipdiff.training.checkpoint import save_weights

    torch.manual_seed(0)
    cfg = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), head_channels=8,
                     products=products)
    net = UNet(cfg) if frames is None else SpatioTemporalUNet(
        cfg, TemporalConfig(frames=frames, head_channels=8))
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    meta = {"stage": "downscale", "config": json.dumps({"train": {"stage": "downscale"}}),
            "model": json.dumps(asdict(cfg)),
            "transform": json.dumps(PrecipTransform(scale=1.0, sigma=1.5).to_dict()),
            "factor": str(factor), "pooling": "mean", "sigma_data": "0.5", "patch": "16",
            "version": "test", **extra_meta}
    if frames is not None:
        meta["temporal"] = json.dumps(asdict(net.temporal_cfg))
    return save_weights(path, net.state_dict(), metadata=meta)
