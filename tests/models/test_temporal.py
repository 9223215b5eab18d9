"""Spatiotemporal U-Net: exactly the per-frame model at init, mixing within clips only."""

from __future__ import annotations

import copy

import pytest
import torch

from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.errors import ConfigError
from precipdiff.models.temporal import (
    SpatioTemporalUNet,
    TemporalAttention,
    TemporalConfig,
    attention_cost_ratio,
    block_sites,
    fold_clips,
    time_features,
    unfold_clips,
)
from precipdiff.models.unet import UNet, UNetConfig

CFG = UNetConfig(model_channels=8, channel_mult=(1, 2, 2), attn_levels=(2,), head_channels=8,
                 cond_channels=2)
T = 4


def _randomise(module: torch.nn.Module, seed: int, names: tuple[str, ...]) -> None:
    """Give the zero-initialised output layers (``names`` suffixes) random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _per_frame_net() -> UNet:
    torch.manual_seed(0)
    net = UNet(CFG)
    _randomise(net, 1, ("conv_out.weight",))
    return net.eval()


def _inputs(clips: int = 2, size: int = 12, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    n = clips * T
    return (torch.randn(n, 1, size, size, generator=g), torch.randn(n, generator=g),
            torch.randn(n, 2, size, size, generator=g))


def _temporal(conv_levels=(0,)) -> SpatioTemporalUNet:
    net = SpatioTemporalUNet(CFG, TemporalConfig(frames=T, head_channels=8,
                                                 conv_levels=conv_levels))
    net.load_per_frame(_per_frame_net().state_dict())
    return net.eval()


def test_initialised_from_per_frame_weights_is_the_per_frame_model():
    per_frame, net = _per_frame_net(), _temporal()
    x, c, cond = _inputs()
    with torch.no_grad():
        expect = per_frame(x, c, cond)
        got = net(x, c, cond, time_offsets=torch.tensor([[0, 300, 600, 900], [0, 120, 240, 360]]))
    assert expect.abs().max() > 0.01  # a real output, not the zero-initialised one
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)


def test_trained_temporal_blocks_mix_frames_within_a_clip_only():
    net = _temporal()
    _randomise(net, 3, ("proj.weight", "conv.weight"))
    x, c, cond = _inputs()
    with torch.no_grad():
        base = net(x, c, cond)
        x2 = x.clone()
        x2[3] += 1.0  # last frame of clip 0
        changed = net(x2, c, cond)
    diff = (changed - base).abs().flatten(1).amax(1)
    assert diff[0] > 1e-4  # frame 0 of clip 0 sees frame 3 of its clip
    assert torch.all(diff[T:] == 0)  # clip 1 never sees clip 0


def test_attention_only_model_is_equivariant_to_frame_order():
    """Frames are tokens with their own time offsets: permuting both permutes the output."""
    net = _temporal(conv_levels=())
    _randomise(net, 4, ("proj.weight",))
    x, c, cond = _inputs(clips=1)
    offsets = torch.tensor([[0.0, 300.0, 600.0, 900.0]])
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        out = net(x, c, cond, time_offsets=offsets)
        out_p = net(x[perm], c[perm], cond[perm], time_offsets=offsets[:, perm])
    torch.testing.assert_close(out_p, out[perm], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the time offsets matter once the blocks are trained
        other = net(x, c, cond, time_offsets=offsets * 3)
    assert (other - out).abs().max() > 1e-5


def test_sites_and_parameters():
    net = _temporal()
    assert set(net.temporal) == {"enc_0", "enc_4", "mid_0", "dec_0", "dec_1", "dec_6", "dec_7"}
    assert all(isinstance(net.temporal[k], TemporalAttention)
               for k in ("enc_4", "mid_0", "dec_0", "dec_1"))
    assert [s for s in block_sites(CFG) if s[0] == "mid"] == [("mid", 0, -1)]
    assert 0 < attention_cost_ratio(CFG, net.temporal_cfg, 64) < 0.5


def test_gradients_reach_temporal_blocks_and_deepcopy_keeps_its_own_hooks():
    net = _temporal()
    _randomise(net, 5, ("proj.weight", "conv.weight"))
    x, c, cond = _inputs()
    net(x, c, cond).square().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters() if n.startswith("temporal.")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    twin = copy.deepcopy(net)  # what the EMA does
    with torch.no_grad():
        before = net(x, c, cond)
        for p in twin.temporal.parameters():
            p.add_(0.5)
        assert torch.equal(net(x, c, cond), before)  # the copy's hooks use the copy's blocks
        assert not torch.equal(twin(x, c, cond), before)


def test_through_the_edm_preconditioner_and_fold_helpers():
    net = _temporal()
    x, c, cond = _inputs()
    clip = unfold_clips(x, T)
    assert clip.shape == (2, T, 1, 12, 12) and torch.equal(fold_clips(clip), x)
    d = EDMPrecond(net)
    with torch.no_grad():
        out = d(x, torch.full((8,), 0.7), cond, time_offsets=torch.arange(T) * 300.0)
    assert out.shape == x.shape


def test_errors():
    net = _temporal()
    x, c, cond = _inputs()
    with pytest.raises(ValueError, match="not a whole number of clips"):
        net(x[:6], c[:6], cond[:6])
    with pytest.raises(ValueError, match="time_offsets for 3 clips"):
        net(x, c, cond, time_offsets=torch.zeros(3, T))
    with pytest.raises(ConfigError, match="temporal.frames"):
        TemporalConfig(frames=0)
    with pytest.raises(ConfigError, match="temporal levels"):
        SpatioTemporalUNet(CFG, TemporalConfig(attn_levels=(5,)))
    with pytest.raises(ValueError, match="does not fit"):
        net.load_per_frame({"conv_in.weight": torch.zeros(1)})
    feats = time_features(torch.tensor([[0.0, 60.0]]), 8)
    assert feats.shape == (1, 2, 8) and torch.allclose(feats[0, 0, :4], torch.ones(4))
