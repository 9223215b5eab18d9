"""EDM preconditioning (Karras et al. 2022, Table 1): coefficient identities and limits."""

from __future__ import annotations

import math

import pytest
import torch

from precipdiff.diffusion import EDMPrecond, RegressionWrapper, edm_coefficients
from precipdiff.models import UNet, UNetConfig


class ConstantNet(torch.nn.Module):
    """F = a fixed random field, recording the inputs it was given."""

    def __init__(self, shape):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("field", torch.randn(shape, generator=g))
        self.seen: dict = {}

    def forward(self, x, c_noise, cond):
        self.seen = {"x": x, "c_noise": c_noise, "cond": cond}
        return self.field.to(x.dtype).expand_as(x)


def test_coefficients_match_table_1():
    sigma, sd = torch.tensor([0.01, 0.5, 3.0]), 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-6)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-6)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-6)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-6)
    # unit variance of the network input and of its effective training target (EDM Eq. 8 analysis)
    torch.testing.assert_close(c_in**2 * (sd**2 + sigma**2), torch.ones(3))
    eff_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(eff_var, torch.ones(3))


def test_denoiser_is_identity_as_sigma_goes_to_zero():
    net = ConstantNet((1, 1, 6, 7))
    D = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(2, 1, 6, 7, dtype=torch.float64)
    for sigma in (1e-3, 1e-5, 1e-8):
        # |D - x| <= c_out |F| + (1 - c_skip)|x| = sigma |F| + O(sigma^2)
        assert (D(x, sigma) - x).abs().max() < sigma * (net.field.abs().max() + 0.01)


def test_denoiser_is_network_output_as_sigma_goes_to_infinity():
    net = ConstantNet((1, 1, 6, 7))
    D = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(2, 1, 6, 7, dtype=torch.float64)
    for sigma in (1e2, 1e4, 1e6):
        out = D(x * sigma, sigma)  # noisy inputs scale with sigma
        # c_skip -> 0 and c_out -> sigma_data: D -> sigma_data * F(c_in x)
        assert (out - 0.5 * net.field).abs().max() < 5.0 / sigma
        assert net.seen["x"].abs().max() < 1.01 * x.abs().max()  # c_in x stays O(1)


def test_sigma_scalar_or_batch_and_cond_passed_through():
    net = ConstantNet((1, 1, 4, 4))
    D = EDMPrecond(net)
    x, cond = torch.randn(3, 1, 4, 4), torch.randn(3, 2, 4, 4)
    a = D(x, 0.7, cond)
    b = D(x, torch.full((3,), 0.7), cond)
    torch.testing.assert_close(a, b)
    assert net.seen["cond"] is cond
    torch.testing.assert_close(net.seen["c_noise"], torch.full((3,), math.log(0.7) / 4))
    per_sample = D(x, torch.tensor([0.1, 1.0, 10.0]), cond)
    for i, s in enumerate((0.1, 1.0, 10.0)):
        torch.testing.assert_close(per_sample[i : i + 1], D(x[i : i + 1], s, cond[i : i + 1]))


def test_untrained_unet_denoiser_is_c_skip_x():
    torch.manual_seed(0)
    D = EDMPrecond(UNet(UNetConfig(model_channels=8)), sigma_data=0.5)
    x, cond = torch.randn(2, 1, 9, 11), torch.randn(2, 1, 9, 11)
    torch.testing.assert_close(D(x, 2.0, cond), x * 0.25 / (4.0 + 0.25))
    assert D(x.double(), 2.0, cond.double()).dtype == torch.float64  # float32 net, float64 x
    # bf16 autocast keeps the caller's dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert D(x, 2.0, cond).dtype == torch.float32


def test_regression_wrapper():
    torch.manual_seed(0)
    net = UNet(UNetConfig(model_channels=8, regression=True, cond_channels=2))
    mean = RegressionWrapper(net)(torch.randn(2, 2, 10, 12))
    assert mean.shape == (2, 1, 10, 12)
