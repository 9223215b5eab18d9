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
    clip_shifts,
    fold_clips,
    time_features,
    translate,
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


def _moving_blob(frames: int, size: int, step: tuple[int, int]) -> torch.Tensor:
    """``(frames, 1, size, size)``: a Gaussian blob (transformed rain) moving ``step`` px/frame."""
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)),
                            indexing="ij")
    return torch.stack([2 * torch.exp(-((yy - 12 - step[0] * t) ** 2 + (xx - 10 - step[1] * t) ** 2)
                                      / 30)[None] for t in range(frames)])


def test_translate_moves_by_fractions_and_zero_is_the_identity():
    x = torch.zeros(2, 1, 16, 20)
    x[:, 0, 5, 7] = 1.0
    moved = translate(x, torch.tensor([[2 / 16, -3 / 20], [0.0, 0.0]]))
    assert moved[0, 0, 7, 4] == pytest.approx(1.0) and moved[0].sum() == pytest.approx(1.0)
    torch.testing.assert_close(moved[1], x[1], rtol=0, atol=1e-6)


def test_clip_shifts_follow_the_rain_and_stay_zero_without_it():
    cond = torch.cat([_moving_blob(T, 48, (2, 3)), torch.zeros(T, 1, 48, 48)])  # two clips
    shifts = clip_shifts(cond, T) * 48
    expect = torch.tensor([[2.0 * t, 3.0 * t] for t in range(T)])
    torch.testing.assert_close(shifts[:T], expect - expect.mean(0), rtol=0, atol=0.25)
    assert torch.equal(shifts[T:], torch.zeros(T, 2))
    cache: dict = {}
    twice = torch.cat([cond, cond[:T]])  # the moving clip again, as for a second member
    got = clip_shifts(twice, T, cache)
    assert len(cache) == 2 and torch.equal(got[2 * T:], got[:T])
    assert torch.equal(clip_shifts(cond, T, cache), shifts / 48)


def test_aligned_attention_on_a_moving_clip_is_fixed_attention_on_the_still_one_moved():
    """Motion alignment: attention over a clip whose features move ``d_t`` equals attention over
    the same features standing still, moved by ``d_t`` afterwards (integer moves, away from the
    borders, so the bilinear moves are exact)."""
    g = torch.Generator().manual_seed(7)
    block = TemporalAttention(16, 8, 8)
    with torch.no_grad():
        block.proj.weight.copy_(torch.randn(block.proj.weight.shape, generator=g) * 0.3)
    still = torch.zeros(T, 16, 24, 24)
    still[:, :, 6:12, 9:15] = torch.randn(1, 16, 6, 6, generator=g)  # one pattern, every frame
    still[:, :, 6:12, 9:15] += 0.3 * torch.randn(T, 16, 6, 6, generator=g)  # evolving a little
    d = torch.tensor([[2.0 * t, -2.0 * t] for t in range(T)])  # clip mean (3, -3): whole px
    shifts = (d - d.mean(0)) / 24
    moving = translate(still, d / 24)
    feats = time_features(torch.arange(T)[None] * 300.0, 8)
    with torch.no_grad():
        got = block(moving, T, feats, shifts)
        expect = translate(block(still, T, feats, None), d / 24)
        unaligned = block(moving, T, feats, None)
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
    assert (unaligned - expect).abs().max() > 1e-2  # without alignment the result differs


def test_aligned_model_without_motion_is_the_unaligned_model():
    net = _temporal(conv_levels=())
    _randomise(net, 6, ("proj.weight",))
    aligned = SpatioTemporalUNet(CFG, TemporalConfig(frames=T, head_channels=8, align=True))
    aligned.load_state_dict(net.state_dict())
    x, c, _ = _inputs(clips=1, size=16)
    still = _moving_blob(T, 16, (0, 0)).repeat(1, 2, 1, 1)
    moving = _moving_blob(T, 16, (1, 1)).repeat(1, 2, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(aligned.eval()(x, c, still), net(x, c, still),
                                   rtol=0, atol=1e-5)
        assert (aligned(x, c, moving) - net(x, c, moving)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs cond"):
        aligned(x, c, None)
