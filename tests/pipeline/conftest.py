"""Tiny stage weights for pipeline tests (random networks: the tests check plumbing, not skill)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from precipdiff.data.transforms import PrecipTransform
from precipdiff.models.temporal import SpatioTemporalUNet, TemporalConfig
from precipdiff.models.unet import UNet, UNetConfig
from precipdiff.release import Release
from precipdiff.training.checkpoint import save_weights

FACTOR = 4


def write_tiny_weights(
    path: Path,
    stage: str,
    *,
    factor: int = FACTOR,
    seed: int = 0,
    mean: bool = False,
    extras: tuple[str, ...] = (),
    pooling: str = "mean",
    coarse_spacing: float | None = 0.1,
) -> Path:
    """A randomly initialised tiny U-Net (non-zero output layer) saved as release weights,
    trained (so its metadata says) on ``pooling`` at a coarse spacing of ``coarse_spacing``
    degrees (the 0.1 deg of :func:`coarse_field`; None: no ``coarse_spacing`` note)."""
    torch.manual_seed(seed)
    regression = stage == "regression"
    cfg = UNetConfig(
        model_channels=8,
        channel_mult=(1, 2),
        attn_levels=(1,),
        regression=regression,
        cond_channels=1 + len(extras),
    )
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    meta = {
        "stage": stage,
        "config": json.dumps({"train": {"stage": stage}}),
        "model": json.dumps(asdict(cfg)),
        "transform": json.dumps(PrecipTransform(scale=1.0, sigma=1.5).to_dict()),
        "factor": str(factor if stage != "correct" else 1),
        "pooling": pooling,
        "sigma_data": "0.5",
        "patch": "16",
        "version": "test",
        "extra_names": json.dumps(list(extras)),
        "extra_stats": json.dumps({n: {"mean": 280.0, "std": 10.0} for n in extras}),
    }
    if coarse_spacing is not None:
        meta["coarse_spacing"] = json.dumps(
            {"y": coarse_spacing, "x": coarse_spacing, "units": "degrees"})
    mean_state = None
    if mean:
        mcfg = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(), regression=True)
        mean_state = UNet(mcfg).state_dict()
        meta["mean_model"] = json.dumps(asdict(mcfg))
    return save_weights(path, net.state_dict(), metadata=meta, mean_state=mean_state)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    return {
        "correct": write_tiny_weights(root / "correct.safetensors", "correct", seed=1),
        "downscale": write_tiny_weights(root / "downscale.safetensors", "downscale", seed=2),
        "corrdiff": write_tiny_weights(
            root / "corrdiff.safetensors", "downscale", seed=3, mean=True
        ),
        "regression": write_tiny_weights(root / "regression.safetensors", "regression", seed=4),
    }


def coarse_field(ny: int = 12, nx: int = 20, n_time: int = 2, seed: int = 0) -> xr.DataArray:
    """A coarse (0.1°) rain field with a missing block, (time, lat, lon) mm/h."""
    rng = np.random.default_rng(seed)
    data = rng.gamma(0.6, 2.0, size=(n_time, ny, nx)).astype(np.float32)
    data[data < 0.8] = 0.0
    data[:, 2:4, 3:6] = np.nan
    return xr.DataArray(
        data,
        dims=("time", "lat", "lon"),
        coords={
            "time": np.array(["2019-06-10T00:00", "2019-06-10T00:30"], "datetime64[ns]")[:n_time],
            "lat": 40.05 + 0.1 * np.arange(ny),
            "lon": -100.95 + 0.1 * np.arange(nx),
        },
        attrs={"units": "mm/h"},
    )


def write_temporal(per_frame: Path, path: Path, *, trained: bool, frames: int = 3) -> Path:
    """The per-frame release ``per_frame`` as a temporal release of ``frames`` frames: zero temporal
    blocks (exactly the per-frame model) or random ones (``trained``)."""
    rel = Release.load(per_frame)
    net = SpatioTemporalUNet(rel.model, TemporalConfig(frames=frames, head_channels=8))
    net.load_per_frame(rel.state)
    if trained:
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.startswith("temporal.") and name.endswith("proj.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return dataclasses.replace(rel, state=net.state_dict(), temporal=net.temporal_cfg).save(path)


def assert_cut_to_the_rain(cut: xr.Dataset, whole: xr.Dataset, *, wet_cols: int = 6) -> None:
    """Outputs of a field wet in its western ``wet_cols`` coarse columns only, sampled with
    windows cut to the rain (``cut``) and whole (``whole``): less was sampled, the east (beyond
    the one-cell dry neighbourhood) is exactly dry in both, the rain is there, and the same
    cells are missing."""
    assert cut.attrs["stage2_sampled_fraction"] < 0.9
    assert whole.attrs["stage2_sampled_fraction"] == 1.0
    a, b = cut["precip"].values, whole["precip"].values
    east = (wet_cols + 1) * FACTOR
    assert np.all(a[..., east:] == 0) and np.all(b[..., east:] == 0)
    assert (np.nan_to_num(a[..., : wet_cols * FACTOR]) > 0).mean() > 0.2  # the rain is there
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))  # missing cells stay missing


def stage_with_notes(weights: Path, folder: Path, **notes: str):
    """The release ``weights`` saved in ``folder`` with extra metadata ``notes``, loaded as a
    pipeline stage (tensors unchanged)."""
    from precipdiff.pipeline import Stage

    rel = Release.load(weights)
    path = folder / f"noted_{'_'.join(sorted(notes))}.safetensors"
    dataclasses.replace(rel, notes={**rel.notes, **notes}).save(path)
    return Stage.load(path)
