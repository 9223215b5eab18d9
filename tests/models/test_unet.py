"""U-Net: shapes for odd sizes, dtypes, zero-init output, gradient flow, regression mode."""

from __future__ import annotations

import pytest
import torch

from precipdiff.errors import ConfigError
from precipdiff.models import UNet, UNetConfig, count_parameters
from precipdiff.models.layers import ResBlock, coordinate_features, num_groups
from precipdiff.models.unet import pad_to_multiple

SMALL = dict(model_channels=8, channel_mult=(1, 2, 2), attn_levels=(2,))


def _randomise_output(net: UNet, seed: int = 0) -> None:
    """The final conv is zero-initialised; give it weights so gradients reach every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.conv_out.weight.copy_(torch.randn(net.conv_out.weight.shape, generator=g) * 0.1)


@pytest.mark.parametrize("shape", [(37, 53), (16, 16), (1, 3), (5, 4)])
def test_forward_any_size(shape):
    torch.manual_seed(0)
    net = UNet(UNetConfig(**SMALL, cond_channels=3))
    x, cond = torch.randn(2, 1, *shape), torch.randn(2, 3, *shape)
    out = net(x, torch.randn(2), cond)
    assert out.shape == (2, 1, *shape)


def test_output_is_zero_at_init():
    """Zero-initialised last conv: the preconditioned denoiser starts at c_skip * x."""
    net = UNet(UNetConfig(**SMALL))
    out = net(torch.randn(2, 1, 12, 12), torch.randn(2), torch.randn(2, 1, 12, 12))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_gradient_reaches_every_parameter(embedding):
    torch.manual_seed(1)
    net = UNet(UNetConfig(**SMALL, noise_embedding=embedding, dropout=0.1))
    _randomise_output(net)
    out = net(torch.randn(3, 1, 13, 9), torch.randn(3), torch.randn(3, 1, 13, 9))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_noise_level_changes_output():
    torch.manual_seed(2)
    net = UNet(UNetConfig(**SMALL))
    _randomise_output(net)
    x, cond = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    a, b = net(x, torch.tensor([-1.0]), cond), net(x, torch.tensor([0.5]), cond)
    assert (a - b).abs().max() > 1e-4
    scalar = net(x, torch.tensor(-1.0), cond)  # scalar c_noise broadcasts over the batch
    torch.testing.assert_close(scalar, a)


def test_regression_mode_has_no_noise_input():
    torch.manual_seed(3)
    net = UNet(UNetConfig(**SMALL, regression=True, cond_channels=2))
    assert net.embed is None and net.map is None
    assert all(blk.affine is None for blk in net.modules() if isinstance(blk, ResBlock))
    cond = torch.randn(2, 2, 21, 19)
    assert net(None, None, cond).shape == (2, 1, 21, 19)
    assert net.conv_in.in_channels == 2  # cond only: no zero-filled noise channel


def test_diffusion_mode_requires_noise_input():
    net = UNet(UNetConfig(**SMALL))
    with pytest.raises(ValueError, match="noisy input"):
        net(None, torch.zeros(1), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.zeros(1, 1, 8, 8), None, torch.zeros(1, 1, 8, 8))


def test_dtypes_float64_and_bf16_autocast():
    torch.manual_seed(4)
    net = UNet(UNetConfig(**SMALL))
    _randomise_output(net)
    x, cond, c = torch.randn(2, 1, 10, 10), torch.randn(2, 1, 10, 10), torch.randn(2)
    ref = net(x, c, cond)
    out64 = net.double()(x.double(), c.double(), cond.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-5)
    net.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = net(x, c, cond)
    assert out16.dtype == torch.bfloat16
    assert (out16.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3


def test_channels_last_matches():
    torch.manual_seed(5)
    net = UNet(UNetConfig(**SMALL))
    _randomise_output(net)
    x, cond, c = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.randn(2)
    ref = net(x, c, cond)
    net = net.to(memory_format=torch.channels_last)
    cl = torch.channels_last
    out = net(x.to(memory_format=cl), c, cond.to(memory_format=cl))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_coordinate_features_are_tile_consistent():
    """Fixed coordinate encodings: a crop of the domain sees the same features as the whole."""
    torch.manual_seed(6)
    net = UNet(UNetConfig(**{**SMALL, "attn_levels": ()}, coord_frequencies=3))
    assert net.conv_in.in_channels == 1 + 1 + 2 * 2 * 3
    lat, lon = torch.meshgrid(torch.linspace(40, 41, 16), torch.linspace(-5, -4, 16), indexing="ij")
    coords = torch.stack([lat, lon])[None]
    whole = coordinate_features(coords, 3)
    crop = coordinate_features(coords[..., 4:9, 3:11], 3)
    torch.testing.assert_close(crop, whole[..., 4:9, 3:11])
    out = net(torch.randn(1, 1, 16, 16), torch.zeros(1), torch.randn(1, 1, 16, 16), coords=coords)
    assert out.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="coords"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1), torch.randn(1, 1, 16, 16))


def test_config_validation_and_helpers():
    with pytest.raises(ConfigError, match="attn_levels"):
        UNetConfig(channel_mult=(1, 2), attn_levels=(2,))
    with pytest.raises(ConfigError, match="noise_embedding"):
        UNetConfig(noise_embedding="learned")
    for ch in (8, 12, 24, 32, 48, 64, 96, 100):
        assert ch % num_groups(ch) == 0 and ch // num_groups(ch) >= 4
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    padded = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (4, 8)
    torch.testing.assert_close(padded[..., :3, :5], x)
    assert count_parameters(UNet(UNetConfig())) > 100_000
