"""EDM loss (Karras et al. 2022, Eq. 8): weighting, sigma distribution, masking, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precipdiff.diffusion import edm_loss, regression_loss
from precipdiff.diffusion.loss import sample_training_sigma

SD = 0.5


def c_skip_denoiser(x, sigma, cond):
    """An untrained preconditioned net (F = 0): D = c_skip x."""
    return x * SD**2 / (sigma[:, None, None, None] ** 2 + SD**2)


def test_untrained_loss_is_one_for_data_of_variance_sigma_data_squared():
    """With y ~ N(0, sigma_data^2) the effective target of F has unit variance at every sigma."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4096, 1, 8, 8, generator=g) * SD
    loss = edm_loss(c_skip_denoiser, y, None, generator=g)
    assert abs(loss.item() - 1.0) < 0.03


def test_ideal_denoiser_loss_matches_quadrature():
    """For y ~ N(0, v) the ideal D has weighted error E_sigma[lambda v sigma^2 / (v + sigma^2)]."""
    v = 0.09
    g = torch.Generator().manual_seed(1)
    y = torch.randn(8192, 1, 4, 4, generator=g) * math.sqrt(v)

    def ideal(x, sigma, cond):
        return x * v / (v + sigma[:, None, None, None] ** 2)

    loss = edm_loss(ideal, y, None, generator=g).item()
    z, w = np.polynomial.hermite_e.hermegauss(80)
    s = np.exp(-1.2 + 1.2 * z)
    lam = (s**2 + SD**2) / (s * SD) ** 2
    expected = np.sum(w * lam * v * s**2 / (v + s**2)) / np.sum(w)
    assert abs(loss - expected) < 0.03 * expected


def test_training_sigma_is_lognormal():
    g = torch.Generator().manual_seed(2)
    log_sigma = sample_training_sigma(200_000, generator=g, P_mean=-1.2, P_std=1.2).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.01
    assert abs(log_sigma.std().item() - 1.2) < 0.01


def test_masked_pixels_do_not_affect_loss():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(4, 1, 10, 10, generator=g)
    mask = torch.rand(4, 1, 10, 10, generator=g) > 0.3
    y2 = torch.where(mask, y, torch.full_like(y, 1e3))
    a = edm_loss(c_skip_denoiser, y, None, mask=mask, generator=torch.Generator().manual_seed(9))
    b = edm_loss(c_skip_denoiser, y2, None, mask=mask, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b)
    full = edm_loss(c_skip_denoiser, y, None, generator=torch.Generator().manual_seed(9))
    ones = torch.ones_like(mask)
    masked_all = edm_loss(
        c_skip_denoiser, y, None, mask=ones, generator=torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(full, masked_all)
    empty = torch.zeros_like(mask)
    assert edm_loss(c_skip_denoiser, y, None, mask=empty, generator=g).item() == 0.0


def test_masked_pixels_get_no_gradient_from_target():
    y = torch.randn(2, 1, 6, 6, requires_grad=True)
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    mask[:, :, :3] = True
    g = torch.Generator().manual_seed(0)
    edm_loss(c_skip_denoiser, y, None, mask=mask, generator=g).backward()
    assert torch.all(y.grad[:, :, 3:] == 0) and torch.any(y.grad[:, :, :3] != 0)


def test_same_generator_same_loss():
    y = torch.randn(3, 1, 5, 5)
    a = edm_loss(c_skip_denoiser, y, None, generator=torch.Generator().manual_seed(5))
    b = edm_loss(c_skip_denoiser, y, None, generator=torch.Generator().manual_seed(5))
    c = edm_loss(c_skip_denoiser, y, None, generator=torch.Generator().manual_seed(6))
    assert a.item() == b.item() != c.item()


def test_regression_loss_masked_mse():
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 100.0]]]])
    mask = torch.tensor([[[[True, True], [True, False]]]])
    assert regression_loss(pred, target, mask=mask).item() == pytest.approx((1 + 4 + 9) / 3)
    assert regression_loss(pred, target).item() == pytest.approx((1 + 4 + 9 + 1e4) / 4)
