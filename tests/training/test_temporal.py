"""Temporal training: clip/frame noise levels, a smoke run that learns, per-frame start."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from precipdiff.data.transforms import PrecipTransform
from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.models.temporal import TemporalConfig
from precipdiff.models.unet import UNet
from precipdiff.release import Release
from precipdiff.training.config import RunConfig
from precipdiff.training.temporal import (
    TemporalRunConfig,
    build_temporal_net,
    clip_drift,
    clip_loss_sum,
    clip_noise,
    load_temporal,
    train_temporal,
)

FRAMES, PATCH = 3, 8


class MovingBlobs(torch.utils.data.Dataset):
    """Clips of a Gaussian blob moving one pixel a frame; ``cond`` is the blob blurred."""

    transform, factor = PrecipTransform(), 4

    def __init__(self, n: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.arange(PATCH), torch.arange(PATCH), indexing="ij")
        self.items = []
        for _ in range(n):
            y0, x0 = torch.randint(0, PATCH, (2,), generator=g).tolist()
            frames = torch.stack([torch.exp(-((yy - y0) ** 2 + (xx - x0 - t) ** 2) / 4.0)
                                  for t in range(FRAMES)])[:, None]
            cond = torch.nn.functional.avg_pool2d(frames, 4).repeat_interleave(4, -1) \
                .repeat_interleave(4, -2)
            self.items.append({"cond": cond, "target": frames - cond,
                               "mask": torch.ones_like(frames, dtype=torch.bool),
                               "time_offsets": torch.arange(FRAMES) * 300.0})

    def set_epoch(self, epoch: int) -> None:  # noqa: ARG002 - fixed items
        pass

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def _cfg(**train) -> TemporalRunConfig:
    run = RunConfig.from_dict({
        "data": {"store": "synthetic", "batch_size": 4, "patch": PATCH},
        "model": {"model_channels": 8, "channel_mult": [1, 2], "attn_levels": [1],
                  "head_channels": 8},
        "optim": {"lr": 3e-3, "warmup_samples": 0},
        "train": {"stage": "downscale", "steps": 40, "ema_halflife_samples": 8,
                  "log_every_steps": 10, **train}})
    return TemporalRunConfig(run=run, temporal=TemporalConfig(frames=FRAMES, head_channels=8))


def test_clip_noise_per_clip_or_per_frame():
    sig, noise = clip_noise([5, 6], FRAMES, (1, 4, 4), seed=0, mode="clip", P_mean=-1.2,
                            P_std=1.2)
    assert sig.shape == (6,) and noise.shape == (6, 1, 4, 4)
    assert torch.all(sig[:3] == sig[0]) and torch.all(sig[3:] == sig[3]) and sig[0] != sig[3]
    sig_f, noise_f = clip_noise([5, 6], FRAMES, (1, 4, 4), seed=0, mode="frame", P_mean=-1.2,
                                P_std=1.2)
    assert len(set(sig_f.tolist())) == 6 and torch.equal(noise_f, noise)
    again, _ = clip_noise([6], FRAMES, (1, 4, 4), seed=0, mode="frame", P_mean=-1.2, P_std=1.2)
    assert torch.equal(again, sig_f[3:])  # a clip's draws depend on its serial only
    with pytest.raises(ConfigError, match="temporal noise"):
        TemporalRunConfig(run=_cfg().run, noise="pixel")


def test_clip_noise_correlated_in_time():
    _, noise = clip_noise(list(range(40)), 4, (1, 32, 32), seed=1, mode="clip", P_mean=-1.2,
                          P_std=1.2, correlation=0.6)
    n = noise.reshape(40, 4, -1)
    assert abs(float(n.std()) - 1) < 0.02
    for k in (1, 2):
        r = float(torch.corrcoef(torch.stack([n[:, 1].flatten(), n[:, 1 + k].flatten()]))[0, 1])
        assert abs(r - 0.6**k) < 0.03, (k, r)
    _, independent = clip_noise(list(range(40)), 4, (1, 32, 32), seed=1, mode="clip",
                                P_mean=-1.2, P_std=1.2)
    assert torch.equal(noise.reshape(40, 4, -1)[:, 0], independent.reshape(40, 4, -1)[:, 0])
    with pytest.raises(ConfigError, match="noise_correlation"):
        TemporalRunConfig(run=_cfg().run, noise_correlation=1.0)
    with pytest.raises(ConfigError, match="noise_drift"):
        TemporalRunConfig(run=_cfg().run, noise_drift=True)  # nothing correlated to carry
    with pytest.raises(ConfigError, match="train.stage"):
        TemporalRunConfig(run=_cfg(stage="correct").run)


def test_clip_noise_moves_with_the_rain():
    drift = torch.tensor([[0.0, 0.0], [1.2, -2.9], [2.1, -6.1], [2.2, -9.0]]).expand(40, 4, 2)
    _, noise = clip_noise(list(range(40)), 4, (1, 32, 32), seed=1, mode="clip", P_mean=-1.2,
                          P_std=1.2, correlation=0.8, drift=drift)
    n = noise.reshape(40, 4, 32, 32)
    assert abs(float(n.std()) - 1) < 0.02

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    moved = [(1, -3), (1, -3), (0, -3)]  # rounded displacement of each frame step
    for t, (dy, dx) in enumerate(moved, start=1):
        back = torch.roll(n[:, t], (-dy, -dx), dims=(-2, -1))  # frame t where the rain was
        assert abs(corr(back, n[:, t - 1]) - 0.8) < 0.03, t
        assert abs(corr(n[:, t], n[:, t - 1])) < 0.05  # at fixed pixels: nothing left
    _, fixed = clip_noise(list(range(40)), 4, (1, 32, 32), seed=1, mode="clip", P_mean=-1.2,
                          P_std=1.2, correlation=0.8)
    assert torch.equal(fixed.reshape(40, 4, -1)[:, 0], n.reshape(40, 4, -1)[:, 0])


def test_clip_drift_follows_the_conditioning_rain():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")  # a patch
    blob = torch.stack([torch.exp(-((yy - 30 - 0.5 * t) ** 2 + (xx - 28 - 2 * t) ** 2) / 40.0)
                        for t in range(4)])
    cond = torch.log1p(3 * blob)[None, :, None]  # (1, T, 1, H, W), transformed rain
    d = clip_drift(cond)[0]
    assert d.shape == (4, 2) and torch.allclose(d.mean(0), torch.zeros(2), atol=1e-5)
    step = d[1:] - d[:-1]
    assert torch.allclose(step, torch.tensor([0.5, 2.0]).expand(3, 2), atol=0.2), step


@pytest.mark.parametrize("mode", ["clip", "frame"])
def test_smoke_training_lowers_the_loss(mode, tmp_path):
    import dataclasses

    from precipdiff.diffusion.precond import EDMPrecond

    cfg = dataclasses.replace(_cfg(), noise=mode)
    ds = MovingBlobs()
    batch = {k: torch.stack([ds[i][k] for i in range(8)]) for k in ds[0]}
    sigma, noise = clip_noise(list(range(1000, 1008)), FRAMES, (1, PATCH, PATCH), seed=9,
                              mode="clip", P_mean=-1.2, P_std=1.2)

    def fixed_loss(net) -> float:
        with torch.no_grad():
            return float(clip_loss_sum(EDMPrecond(net), batch, sigma, noise, sigma_data=0.5))

    result = train_temporal(cfg, dataset=ds, out=tmp_path / "t.safetensors")
    torch.manual_seed(0)
    from precipdiff.training.temporal import build_temporal_net

    start = fixed_loss(build_temporal_net(cfg, 1))
    assert fixed_loss(result.net) < 0.8 * start
    loaded, meta = load_temporal(result.path)
    assert meta["factor"] == 4 and meta["noise"] == mode
    release = meta["release"]
    assert release.temporal == cfg.temporal and release.stage == "downscale"
    assert any(k.startswith("temporal.") for k in release.state)
    for a, b in zip(loaded.state_dict().values(), result.ema.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_init_from_per_frame_release_and_freeze_spatial(tmp_path):
    cfg = _cfg()
    unet = cfg.run.model.unet_config(1)
    torch.manual_seed(3)
    per_frame = UNet(unet)
    with torch.no_grad():
        per_frame.conv_out.weight.normal_(0, 0.1)
    path = Release(stage="downscale", model=unet, state=per_frame.state_dict(),
                   transform=PrecipTransform(), factor=4, patch=96,
                   notes={"fine_threshold": "0.18", "fine_threshold_by_product": "{}",
                          "peak_envelope": "{}", "spread_inflation": "2.0"}).save(
                              tmp_path / "w.safetensors")
    import dataclasses

    from precipdiff.training.temporal import temporal_release

    frozen = dataclasses.replace(_cfg(init_from=str(path), steps=3), freeze_spatial=True)
    result = train_temporal(frozen, dataset=MovingBlobs(n=8))
    # the frozen spatial blocks keep the attention span they were trained with, and the
    # fine wet threshold calibrated for them
    kept = temporal_release(frozen, result.ema, MovingBlobs(n=2))
    assert kept.patch == 96 and kept.notes["fine_threshold"] == "0.18"
    assert {"fine_threshold_by_product", "peak_envelope"} <= set(kept.notes)
    assert "spread_inflation" not in kept.notes
    assert kept.notes["temporal_noise_correlation"] == "0.0"
    assert "temporal_noise_drift" not in kept.notes
    assert temporal_release(_cfg(steps=1), result.ema, MovingBlobs(n=2)).patch == PATCH
    drifting = dataclasses.replace(frozen, noise_correlation=0.5, noise_drift=True)
    moved = train_temporal(drifting, dataset=MovingBlobs(n=8))  # noise carried with the rain
    assert all(math.isfinite(v) for v in moved.losses) and moved.losses != result.losses
    notes = temporal_release(drifting, moved.ema, MovingBlobs(n=2)).notes
    assert notes["temporal_noise_drift"] == "1"  # predict's default for these weights
    assert notes["temporal_noise_correlation"] == "0.5"
    for name, p in result.net.named_parameters():
        if not name.startswith("temporal."):
            torch.testing.assert_close(p, per_frame.state_dict()[name], rtol=0, atol=0)
    assert any(p.abs().sum() > 0 for n, p in result.net.named_parameters()
               if n.endswith("proj.weight") and n.startswith("temporal."))
    bad = Release(stage="correct", model=unet, state=per_frame.state_dict(),
                  transform=PrecipTransform()).save(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="plain 'downscale' weights"):
        train_temporal(_cfg(init_from=str(bad), steps=1), dataset=MovingBlobs(n=4))
    with pytest.raises(CheckpointError, match="not a temporal checkpoint"):
        load_temporal(path)


def test_spatial_weights_train_at_a_fraction_of_the_learning_rate(tmp_path):
    import dataclasses

    from precipdiff.training.optim import set_lr
    from precipdiff.training.temporal import temporal_optimizer, temporal_release

    cfg = _cfg()
    unet = cfg.run.model.unet_config(1)
    torch.manual_seed(3)
    per_frame = UNet(unet)
    path = Release(stage="downscale", model=unet, state=per_frame.state_dict(),
                   transform=PrecipTransform(), factor=4, patch=96).save(tmp_path / "w.safetensors")
    slow = dataclasses.replace(_cfg(init_from=str(path), steps=2), spatial_lr_ratio=0.1)
    net = build_temporal_net(slow, 1)
    opt = temporal_optimizer(net, slow)
    set_lr(opt, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])
    result = train_temporal(slow, dataset=MovingBlobs(n=8))
    moved = [n for n, p in result.net.named_parameters() if not n.startswith("temporal.")
             and not torch.equal(p, per_frame.state_dict()[n])]
    assert moved  # the spatial weights train, slowly: the release keeps their span
    assert temporal_release(slow, result.ema, MovingBlobs(n=2)).patch == 96
    for bad in ({"spatial_lr_ratio": 1.5}, {"freeze_spatial": True, "spatial_lr_ratio": 0.5}):
        with pytest.raises(ConfigError, match="spatial_lr_ratio"):
            dataclasses.replace(slow, **bad)


def test_temporal_config_from_yaml(tmp_path):
    from precipdiff.training.temporal import is_temporal_config, load_temporal_config

    path = tmp_path / "t.yaml"
    path.write_text("data: {store: s, patch: 16, batch_size: 2}\n"
                    "train: {stage: downscale, steps: 3}\n"
                    "temporal: {frames: 4, head_channels: 8, noise: frame, "
                    "freeze_spatial: true, attn_levels: [1], noise_correlation: 0.5, "
                    "noise_drift: true}\n")
    assert is_temporal_config(path)
    cfg = load_temporal_config(path, ["temporal.frames=5"])
    assert cfg.temporal.frames == 5 and cfg.temporal.attn_levels == (1,)
    assert cfg.noise == "frame" and cfg.freeze_spatial and cfg.run.data.patch == 16
    assert cfg.noise_correlation == 0.5 and cfg.noise_drift
    path.write_text(yaml.safe_dump(cfg.to_dict()))  # what run dirs and releases record
    assert load_temporal_config(path) == cfg
    path.write_text("train: {stage: downscale}\ntemporal: {frame: 4}\n")
    with pytest.raises(ConfigError, match="temporal.frame"):
        load_temporal_config(path)
    path.write_text("data: {store: s}\ntrain: {stage: downscale, steps: 3}\n"
                    "temporal: {frames: 4}\ndistill: {teacher: t.safetensors}\n")
    with pytest.raises(ConfigError, match="distill.teacher"):
        load_temporal_config(path)


def test_temporal_release_metadata_is_checked(tmp_path):
    """A temporal file whose temporal config does not fit its tensors is refused on load."""
    import dataclasses

    from precipdiff.training.temporal import temporal_release

    cfg = _cfg(steps=1)
    net = build_temporal_net(cfg, 1)
    rel = temporal_release(cfg, net, MovingBlobs(n=2))
    path = rel.save(tmp_path / "t.safetensors")
    assert Release.load(path).temporal == cfg.temporal
    wrong = dataclasses.replace(rel, temporal=dataclasses.replace(cfg.temporal, mid=False))
    with pytest.raises(CheckpointError, match="do not fit"):
        wrong.save(tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()


class LabelledBlobs(MovingBlobs):
    """MovingBlobs from two networks of a corpus (``network`` indexes ``networks``)."""

    networks = ("north", "south")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.items[i], "network": torch.tensor(i % 2)}


def test_a_product_conditioned_per_frame_model_trains_its_temporal_blocks_with_labels(
        tmp_path):
    import dataclasses

    from precipdiff.training.temporal import clip_product_lookup, temporal_release

    cfg = _cfg(steps=2, product_dropout=0.0)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, model=dataclasses.replace(
        cfg.run.model, products=("south", "north"))))
    unet = cfg.run.model.unet_config(1)
    torch.manual_seed(4)
    per_frame = UNet(unet)
    with torch.no_grad():
        per_frame.conv_out.weight.normal_(0, 0.1)
        per_frame.product_embed.weight.normal_(0, 1.0)
    path = Release(stage="downscale", model=unet, state=per_frame.state_dict(),
                   transform=PrecipTransform(), factor=4, patch=PATCH).save(
                       tmp_path / "labelled.safetensors")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, train=dataclasses.replace(
        cfg.run.train, init_from=str(path))), freeze_spatial=True)
    ds = LabelledBlobs(n=8)
    net = build_temporal_net(cfg, 1)
    lookup = clip_product_lookup(net, ds)
    assert lookup.tolist() == [2, 1]  # north is the second product, south the first
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in
             ("cond", "target", "mask", "time_offsets", "network")}
    sigma, noise = clip_noise([0, 1], FRAMES, (1, PATCH, PATCH), seed=0, mode="clip",
                              P_mean=-1.2, P_std=1.2)
    from precipdiff.diffusion.precond import EDMPrecond

    model = EDMPrecond(net)
    with torch.no_grad():
        labelled = clip_loss_sum(model, batch, sigma, noise, sigma_data=0.5,
                                 product=lookup[batch["network"]])
        unlabelled = clip_loss_sum(model, batch, sigma, noise, sigma_data=0.5)
    assert not torch.isclose(labelled, unlabelled)  # the labels reach the frozen net
    result = train_temporal(cfg, dataset=ds)
    assert temporal_release(cfg, result.ema, ds).model.products == ("south", "north")
    assert clip_product_lookup(build_temporal_net(_cfg(steps=1), 1), ds) is None
