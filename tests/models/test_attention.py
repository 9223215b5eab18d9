"""Neighbourhood attention: exact against a brute-force mask, identical to global attention on
maps within the span, local beyond it; the U-Net's ``attn_window`` and its release default."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from precipdiff.data.transforms import PrecipTransform
from precipdiff.errors import ConfigError
from precipdiff.models import UNet, UNetConfig
from precipdiff.models.attention import attention_2d, global_attention, neighbourhood_attention
from precipdiff.models.layers import SelfAttention
from precipdiff.pipeline.stage import Stage, inference_attention_window
from precipdiff.release import Release

SMALL = dict(model_channels=8, channel_mult=(1, 2, 2), attn_levels=(2,), head_channels=4)


def _qkv(shape, *, batch=2, heads=2, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, d, *shape, generator=g, dtype=dtype) for _ in range(3)]


def _brute_force(q, k, v, window):
    """Every query attends to the window x window keys around it (centred, shifted inwards)."""
    height, width = q.shape[-2:]

    def allowed(size):
        i = torch.arange(size)
        lo = (i - window // 2).clamp(0, max(size - window, 0))
        return (i[None, :] >= lo[:, None]) & (i[None, :] < lo[:, None] + window)

    mask = (allowed(height)[:, None, :, None] & allowed(width)[None, :, None, :])
    mask = mask.reshape(height * width, height * width)
    flat = [t.flatten(-2).transpose(-1, -2) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*flat, attn_mask=mask)
    return out.transpose(-1, -2).reshape(q.shape)


@pytest.mark.parametrize(
    ("shape", "window", "block"),
    [((13, 17), 5, None), ((13, 17), 5, 1), ((13, 17), 5, 3), ((40, 9), 8, None),
     ((9, 9), 4, 2), ((33, 64), 32, None), ((7, 30), 12, 16)],
)
def test_neighbourhood_attention_is_exact(shape, window, block):
    q, k, v = _qkv(shape)
    out = neighbourhood_attention(q, k, v, window, block)
    torch.testing.assert_close(out, _brute_force(q, k, v, window), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (5, 8), (8, 3), (1, 1)])
def test_within_the_span_is_global_bit_for_bit(shape):
    q, k, v = _qkv(shape, dtype=torch.float32)
    assert torch.equal(attention_2d(q, k, v, window=8), global_attention(q, k, v))
    # the blockwise path gives the same numbers too (not bitwise: other kernel calls)
    torch.testing.assert_close(neighbourhood_attention(q, k, v, 8), global_attention(q, k, v),
                               rtol=1e-6, atol=1e-6)


def test_beyond_the_span_attention_is_local():
    """A query does not see keys outside its neighbourhood; global attention does."""
    q, k, v = _qkv((20, 20))
    k2, v2 = k.clone(), v.clone()
    k2[..., 15:, 15:] += 3.0
    v2[..., 15:, 15:] -= 5.0
    window = 6  # the query (2, 2) sees rows/cols 0..5
    near = neighbourhood_attention(q, k, v, window)[..., 2, 2]
    assert torch.equal(near, neighbourhood_attention(q, k2, v2, window)[..., 2, 2])
    assert not torch.allclose(global_attention(q, k, v)[..., 2, 2],
                              global_attention(q, k2, v2)[..., 2, 2])


def test_bf16_runs_and_is_close():
    q, k, v = _qkv((24, 20), dtype=torch.float32)
    ref = neighbourhood_attention(q, k, v, 8)
    low = neighbourhood_attention(*(t.bfloat16() for t in (q, k, v)), 8)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)


def test_unet_window_within_span_equals_global():
    """A net with attn_window = P gives the same numbers as the global net on inputs <= P."""
    torch.manual_seed(0)
    glob = UNet(UNetConfig(**SMALL)).eval()
    with torch.no_grad():
        glob.conv_out.weight.normal_(0, 0.1)
    win = UNet(UNetConfig(**SMALL, attn_window=32)).eval()
    win.load_state_dict(glob.state_dict())
    for shape in [(32, 32), (29, 32), (17, 5)]:
        x, cond, c_noise = torch.randn(2, 1, *shape), torch.randn(2, 1, *shape), torch.randn(2)
        with torch.no_grad():
            assert torch.equal(win(x, c_noise, cond), glob(x, c_noise, cond))
    x, cond = torch.randn(1, 1, 64, 48), torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        a, b = win(x, torch.zeros(1), cond), glob(x, torch.zeros(1), cond)
    assert (a - b).abs().max() > 1e-6  # beyond the span the window takes effect


def test_set_attention_window_and_tokens_per_level():
    net = UNet(UNetConfig(**SMALL))
    spans = {m.level: m.window for m in net.modules() if isinstance(m, SelfAttention)}
    assert spans == {2: 0}
    net.set_attention_window(128)
    assert net.cfg.attn_window == 128
    assert {m.window for m in net.modules() if isinstance(m, SelfAttention)} == {32}
    assert UNetConfig(attn_window=24).attention_tokens(2) == 6
    assert UNetConfig(attn_window=130).attention_tokens(2) == 33  # padded like the inputs: 132
    assert UNetConfig(attn_window=130).attention_tokens(0) == 132
    assert net.set_attention_window(0).cfg.attention_tokens(2) == 0
    with pytest.raises(ConfigError, match="attn_window"):
        UNetConfig(attn_window=-1)


def test_gradient_flows_through_windowed_attention():
    torch.manual_seed(1)
    net = UNet(UNetConfig(**SMALL, attn_window=8))
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.1)
    out = net(torch.randn(2, 1, 24, 20), torch.randn(2), torch.randn(2, 1, 24, 20))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def _release(stage: str, cfg: UNetConfig, patch: int) -> Release:
    return Release(stage=stage, model=cfg, state=UNet(cfg).state_dict(),
                   transform=PrecipTransform(), factor=10, patch=patch)


@pytest.mark.parametrize(
    ("stage", "attn_window", "patch", "expected"),
    [("downscale", 0, 128, 128), ("correct", 0, 24, 0), ("downscale", 64, 128, 64),
     ("correct", 16, 24, 16)],
)
def test_release_default_window(tmp_path, stage, attn_window, patch, expected):
    """Old files (no attn_window) load as global and get the training patch as the inference
    span of a downscale stage; a span trained with is kept; the field survives a round trip."""
    rel = _release(stage, UNetConfig(**SMALL, attn_window=attn_window), patch)
    path = rel.save(tmp_path / "w.safetensors")
    loaded = Release.load(path)
    assert loaded.model.attn_window == attn_window
    assert inference_attention_window(loaded) == expected
    st = Stage.load(path)
    assert st.net is not None and st.net.cfg.attn_window == expected
    assert Stage.load(path, attn_window=0).net.cfg.attn_window == 0


def test_file_without_the_field_loads(tmp_path):
    from safetensors.torch import save_file

    rel = _release("downscale", UNetConfig(**SMALL), 64)
    meta = rel.metadata()
    model = json.loads(meta["model"])
    del model["attn_window"]
    save_file(rel.tensors(), str(tmp_path / "old.safetensors"),
              metadata={**meta, "model": json.dumps(model)})
    loaded = Release.load(tmp_path / "old.safetensors")
    assert loaded.model == dataclasses.replace(rel.model, attn_window=0)


def test_windowed_unet_under_bf16_autocast_and_channels_last():
    """The pipeline's settings: bf16 autocast and channels_last, on a map beyond the span."""
    torch.manual_seed(3)
    net = UNet(UNetConfig(**SMALL, attn_window=16)).eval()
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.1)
    x, cond, c_noise = torch.randn(2, 1, 40, 36), torch.randn(2, 1, 40, 36), torch.randn(2)
    with torch.no_grad():
        ref = net(x, c_noise, cond)
        net = net.to(memory_format=torch.channels_last)
        xs, cs = (t.to(memory_format=torch.channels_last) for t in (x, cond))
        torch.testing.assert_close(net(xs, c_noise, cs), ref, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(xs, c_noise, cs)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()
