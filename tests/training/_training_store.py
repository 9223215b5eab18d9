"""A tiny synthetic training store for the training tests (built with the store's own writer)."""

from __future__ import annotations

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
