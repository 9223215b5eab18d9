"""Sequence inference: windows x tiles fused at every step, consistent, continuous, bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.diffusion.samplers import get_sampler, sampler_sigmas
from precipdiff.models.temporal import SpatioTemporalUNet, TemporalConfig
from precipdiff.models.unet import UNet, UNetConfig
from precipdiff.pipeline.sequence import (
    SequenceOptions,
    SpaceTimeDenoiser,
    downscale_sequence,
    frame_partition,
    frame_windows,
    sample_sequence,
    sequence_noise,
    window_sets,
)

CFG = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), head_channels=8)
N, H = 7, 12
TIMES = np.arange(N) * 300.0


def _nets(seed: int = 0) -> tuple[UNet, SpatioTemporalUNet]:
    torch.manual_seed(seed)
    per_frame = UNet(CFG)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        per_frame.conv_out.weight.copy_(torch.randn(per_frame.conv_out.weight.shape,
                                                    generator=g) * 0.2)
    net = SpatioTemporalUNet(CFG, TemporalConfig(frames=4, head_channels=8))
    net.load_per_frame(per_frame.state_dict())
    return per_frame.eval(), net.eval()


def _trained(net: SpatioTemporalUNet, seed: int = 5) -> SpatioTemporalUNet:
    """Random temporal output projections: a model that really mixes frames."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("temporal.") and name.endswith("proj.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def _cond(n: int = N, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, H, H, generator=torch.Generator().manual_seed(seed))


OPTS = SequenceOptions(members=2, steps=3, sampler="euler", window=4, overlap_frames=2, tile=8,
                       overlap=4, tile_batch=3)


def test_frame_windows_cover_the_record_and_ramp_in_overlaps():
    wins = frame_windows(10, 4, 2)
    assert wins[0].t0 == 0 and wins[-1].t1 == 10
    assert all(b.t0 < a.t1 for a, b in zip(wins, wins[1:], strict=False))  # overlapping
    assert wins[0].weight[0] == 1 and wins[0].weight[-1] < 1 and wins[-1].weight[-1] == 1
    assert [(w.t0, w.t1) for w in frame_windows(3, 4, 2)] == [(0, 3)]


def test_one_window_and_one_tile_is_the_plain_denoiser():
    _, net = _nets()
    d = EDMPrecond(_trained(net))
    x, cond = torch.randn(2 * 4, 1, H, H), _cond(4).repeat(2, 1, 1, 1)
    st = SpaceTimeDenoiser(d, frames=4, time_s=TIMES[:4], window=4, overlap_frames=2, tile=H,
                           overlap=4)
    with torch.no_grad():
        got = st(x, torch.full((8,), 0.9), cond)
        expect = d(x, torch.full((8,), 0.9), cond, time_offsets=torch.tensor(TIMES[:4]))
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    assert st.calls == 1


def test_record_that_fits_gives_the_same_result_with_a_larger_window():
    _, net = _nets()
    d = EDMPrecond(_trained(net))
    fits = sample_sequence(d, _cond(4), TIMES[:4], OPTS)
    larger = sample_sequence(d, _cond(4), TIMES[:4], SequenceOptions(**{**OPTS.__dict__,
                                                                         "window": 9}))
    torch.testing.assert_close(fits, larger, rtol=0, atol=0)


def test_windows_tiles_and_chunks_reduce_to_per_frame_sampling_for_a_per_frame_model():
    """Untrained temporal blocks: every frame is sampled as the per-frame model samples it,
    whatever the windows, tiles and chunks (fusion weights are normalised exactly, the noise
    of a member's frame does not depend on the window)."""
    per_frame, net = _nets()
    cond = _cond()
    opts = SequenceOptions(**{**OPTS.__dict__, "tile": H})  # one spatial tile: no tile blending
    got = sample_sequence(EDMPrecond(net), cond, TIMES, opts)
    chunked = sample_sequence(EDMPrecond(net), cond, TIMES,
                              SequenceOptions(**{**opts.__dict__, "chunk": 5, "chunk_halo": 1}))

    noise = sequence_noise(2, 0, N, H, H, seed=0).reshape(2, N, 1, H, H)
    assert not torch.equal(noise[:, 0], noise[:, 1])  # frames get different noise
    singles = []
    for t in range(N):
        x0 = noise[:, t] * 80.0
        sig = sampler_sigmas("euler", 3).float()
        singles.append(get_sampler("euler")(lambda x, s, c: EDMPrecond(per_frame)(x, s, c), x0,
                                            sig, cond=cond[t:t + 1].repeat(2, 1, 1, 1)))
    singles = torch.stack(singles, dim=1)
    torch.testing.assert_close(got, singles, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked, got, rtol=1e-4, atol=1e-4)


def test_blended_output_is_continuous_across_window_joins():
    """A toy denoiser that returns each window's mean of x for all its frames: hard
    switching between windows would jump at the joins; the blend moves by small steps."""
    n = 10

    def window_mean(x, s, c, time_offsets):  # noqa: ARG001
        frames = time_offsets.shape[1]
        clips = x.reshape(-1, frames, *x.shape[1:])
        return clips.mean(1, keepdim=True).expand_as(clips).reshape(x.shape)

    st = SpaceTimeDenoiser(window_mean, frames=n, time_s=np.arange(n) * 300.0, window=4,
                           overlap_frames=2, tile=8, overlap=4)
    ramp = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 8, 8)
    out = st(ramp.clone(), torch.ones(n))[:, 0, 0, 0]
    wins = st.windows
    means = [float(ramp[w.t0:w.t1, 0, 0, 0].mean()) for w in wins]
    hard = torch.tensor([means[max(i for i, w in enumerate(wins) if w.t0 <= t)]
                         for t in range(n)])
    assert out.diff().abs().max() < 0.75 * hard.diff().abs().max()
    assert torch.all(out.diff() >= 0)  # monotone, like the record
    assert out.min() >= min(means) and out.max() <= max(means)


def test_alternate_windows_partition_the_record_and_shift_every_evaluation():
    assert [(w.t0, w.t1) for w in frame_partition(12, 6)] == [(0, 6), (6, 12)]
    assert [(w.t0, w.t1) for w in frame_partition(12, 6, 3)] == [(0, 3), (3, 9), (9, 12)]
    assert len(window_sets(5, 6, 2, "alternate")) == 1  # a record that fits stays whole
    with pytest.raises(ValueError, match="alternate"):
        window_sets(12, 6, 2, "rolling")
    seen = []

    def recording(x, s, c, time_offsets):  # noqa: ARG001
        seen.append(int(time_offsets.shape[1]) * int(time_offsets.shape[0]))
        return x * 2

    st = SpaceTimeDenoiser(recording, frames=12, time_s=np.arange(12) * 300.0, window=6,
                           overlap_frames=2, tile=8, overlap=4, tile_batch=1,
                           windows="alternate")
    x = torch.randn(2 * 12, 1, 8, 8)
    for _ in range(2):  # each frame evaluated once per evaluation, whatever the cut
        before = len(seen)
        torch.testing.assert_close(st(x, torch.ones(24)), 2 * x)
        assert sum(seen[before:]) == 2 * 12
    # 2 members x (2 six-frame windows), then x (1 six-frame window + 2 three-frame windows,
    # two of which fill one call): every call holds 6 frames
    assert seen == [6] * 8 and st.evaluations == 2


def test_alternate_windows_sample_seeded_records():
    _, net = _nets()
    lr = torch.rand(10, 3, 3)
    opts = SequenceOptions(**{**OPTS.__dict__, "windows": "alternate"})
    times = np.arange(10) * 300.0
    a = downscale_sequence(net, lr, times, 4, opts)
    torch.testing.assert_close(a, downscale_sequence(net, lr, times, 4, opts))
    assert a.shape == (2, 10, 12, 12) and torch.isfinite(a).all()


def test_correlated_noise_is_ar1_in_time_and_the_same_in_any_window():
    n = sequence_noise(3, 0, 10, 64, 64, seed=2, correlation=0.6).reshape(3, 10, -1)
    assert abs(float(n.std()) - 1) < 0.02
    for k in (1, 2, 4):
        r = float(torch.corrcoef(torch.stack([n[:, 3].flatten(), n[:, 3 + k].flatten()]))[0, 1])
        assert abs(r - 0.6**k) < 0.03, (k, r)
    part = sequence_noise(3, 4, 7, 64, 64, seed=2, correlation=0.6).reshape(3, 3, -1)
    torch.testing.assert_close(part, n[:, 4:7], rtol=0, atol=1e-6)
    independent = sequence_noise(3, 0, 10, 64, 64, seed=2).reshape(3, 10, -1)
    assert torch.equal(sequence_noise(3, 0, 10, 64, 64, seed=2, correlation=0.0).reshape(
        3, 10, -1), independent)
    with pytest.raises(ValueError, match="noise correlation"):
        sequence_noise(1, 0, 2, 8, 8, seed=0, correlation=1.0)


def test_noise_that_drifts_moves_with_the_rain_and_agrees_across_windows():
    phi, n = 0.6, 8
    track = np.stack([-1.0 * np.arange(n), 2.6 * np.arange(n)], axis=1)  # fine pixels
    moved = sequence_noise(2, 0, n, 64, 80, seed=4, correlation=phi, drift=track)
    assert abs(float(moved.std()) - 1) < 0.02  # every term is unit normal: variance kept
    a, b = moved.reshape(2, n, 64, 80)[:, 3], moved.reshape(2, n, 64, 80)[:, 5]
    # frame 5 holds frame 3's noise from two steps upwind, b(y, x) ~ a(y + 2, x - 5): the
    # track moved (-2, 5.2) fine pixels in between
    carried = torch.corrcoef(torch.stack([a[:, 2:, :-5].flatten(), b[:, :-2, 5:].flatten()]))
    in_place = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))
    assert abs(float(carried[0, 1]) - phi**2) < 0.04
    assert abs(float(in_place[0, 1])) < 0.03
    # any window of the record, in time and space, gets the same values
    part = sequence_noise(2, 2, 6, 20, 30, seed=4, correlation=phi, drift=track, y0=10, x0=25)
    torch.testing.assert_close(part.reshape(2, 4, 20, 30),
                               moved.reshape(2, n, 64, 80)[:, 2:6, 10:30, 25:55],
                               rtol=0, atol=1e-6)
    still = sequence_noise(2, 0, n, 64, 80, seed=4, correlation=phi)
    assert torch.equal(sequence_noise(2, 0, n, 64, 80, seed=4, correlation=phi,
                                      drift=np.zeros((n, 2))), still)


def test_memory_is_bounded_by_window_and_tile():
    shapes = []

    def recording(x, s, c, time_offsets):
        shapes.append((tuple(x.shape), tuple(time_offsets.shape)))
        assert float(time_offsets[:, 0].abs().max()) == 0.0  # offsets from the window start
        return x * 0

    st = SpaceTimeDenoiser(recording, frames=9, time_s=np.arange(9) * 120.0, window=4,
                           overlap_frames=1, tile=8, overlap=2, tile_batch=2)
    st(torch.randn(3 * 9, 1, 20, 20), torch.ones(27), torch.randn(27, 2, 20, 20))
    assert max(s[0][0] for s in shapes) <= 2 * 4 and max(s[0][-1] for s in shapes) <= 8
    with pytest.raises(ValueError, match="members x 9 frames"):
        st(torch.randn(10, 1, 20, 20), torch.ones(10))


def test_downscale_sequence_is_seeded_and_shaped():
    _, net = _nets()
    lr = torch.rand(5, 3, 3)
    a = downscale_sequence(net, lr, TIMES[:5], 4, OPTS)
    b = downscale_sequence(net, lr, TIMES[:5], 4, OPTS)
    assert a.shape == (2, 5, 12, 12) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # members differ


def test_per_member_conditioning_records():
    """``cond (M, N, C, H, W)``: each member sampled on its own record; identical records give
    the shared-record result, different ones change only their member."""
    _, net = _nets()
    d = EDMPrecond(_trained(net))
    cond = _cond(5)
    shared = sample_sequence(d, cond, TIMES[:5], OPTS)
    same = sample_sequence(d, cond[None].repeat(2, 1, 1, 1, 1), TIMES[:5], OPTS)
    torch.testing.assert_close(same, shared, rtol=1e-5, atol=1e-5)
    other = torch.stack([cond, _cond(5, seed=9)])
    mixed = sample_sequence(d, other, TIMES[:5], OPTS)
    torch.testing.assert_close(mixed[0], shared[0], rtol=1e-5, atol=1e-5)
    assert (mixed[1] - shared[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="3 members, expected 2"):
        sample_sequence(d, cond[None].repeat(3, 1, 1, 1, 1), TIMES[:5], OPTS)


def test_clips_per_call_keeps_a_call_within_the_frame_budget() -> None:
    from precipdiff.pipeline.sequence import clips_per_call

    assert clips_per_call(6, 8) == 1 and clips_per_call(3, 8) == 2 and clips_per_call(4, 8) == 2
    assert clips_per_call(12, 8) == 1  # one clip at least


def test_blocks_away_from_the_origin_get_their_own_generator_seed():
    from precipdiff.pipeline.sequence import block_seed

    assert block_seed(5, (0, 0, 0, 0)) == 5  # a whole record: as before blocks existed
    seeds = {block_seed(5, s) for s in [(0, 0, 0, 16), (0, 0, 16, 0), (0, 24, 0, 0),
                                        (8, 0, 0, 0), (0, 0, 0, 32)]}
    assert len(seeds) == 5 and 5 not in seeds
    assert block_seed(5, (0, 0, 0, 16)) == block_seed(5, (0, 0, 0, 16))
    assert all(0 <= s < 2**63 for s in seeds)
