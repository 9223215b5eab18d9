"""Loss sums agree with precipdiff.diffusion.loss; sample order and sharding; LR schedule."""

from __future__ import annotations

import pytest
import torch

from precipdiff.diffusion.loss import edm_loss, regression_loss
from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.models.unet import UNet, UNetConfig
from precipdiff.training.batches import BatchPlan, epoch_order
from precipdiff.training.config import OptimConfig
from precipdiff.training.objective import (
    crps_fair,
    draw_noise,
    edm_loss_sum,
    regression_loss_sum,
)
from precipdiff.training.optim import lr_at

TINY = {"model_channels": 8, "channel_mult": (1, 2), "attn_levels": (), "head_channels": 8}


@torch.no_grad()
def test_edm_loss_sum_matches_edm_loss():
    torch.manual_seed(0)
    denoiser = EDMPrecond(UNet(UNetConfig(**TINY)))
    y, cond = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    mask = torch.rand(3, 1, 16, 16) > 0.2
    expected = edm_loss(denoiser, y, cond, mask=mask, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    sigma = (torch.randn(3, generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(y.shape, generator=g)
    got = edm_loss_sum(denoiser, y, cond, mask, sigma, noise, sigma_data=0.5) / mask.sum()
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


@torch.no_grad()
def test_regression_loss_sum_matches():
    net = UNet(UNetConfig(**TINY, regression=True))
    y, cond = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    mask = torch.rand(2, 1, 16, 16) > 0.5
    expected = regression_loss(net(None, None, cond), y, mask=mask)
    got = regression_loss_sum(net, y, cond, mask) / mask.sum()
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_noise_depends_only_on_serial():
    s1, n1 = draw_noise([3, 4, 5], (1, 4, 4), seed=0, P_mean=-1.2, P_std=1.2)
    s2, n2 = draw_noise([5], (1, 4, 4), seed=0, P_mean=-1.2, P_std=1.2)
    assert torch.equal(s1[2:], s2) and torch.equal(n1[2:], n2)
    s3, _ = draw_noise([5], (1, 4, 4), seed=1, P_mean=-1.2, P_std=1.2)
    assert not torch.equal(s2, s3)


def test_shards_and_micro_batches_cover_the_global_batch():
    order = epoch_order(20, seed=0, epoch=3)
    full = BatchPlan(20, 8, 1, 0, 1, 0).step(order, 3, 1)[0]
    parts = [mb for r in range(2) for mb in BatchPlan(20, 8, 2, r, 2, 0).step(order, 3, 1)]
    assert sorted(i for mb in parts for i in mb.indices) == sorted(full.indices)
    assert sorted(s for mb in parts for s in mb.serials) == full.serials == list(range(68, 76))
    assert not (epoch_order(20, 0, 0) == epoch_order(20, 0, 1)).all()


def test_lr_schedule():
    cfg = OptimConfig(lr=1.0, warmup_samples=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, OptimConfig(lr=2.0, warmup_samples=10), 110) == 2.0


def test_crps_fair_of_known_ensemble():
    members = torch.tensor([0.0, 2.0]).view(2, 1, 1, 1, 1)
    obs = torch.ones(1, 1, 1, 1)
    # mean |x - y| = 1, spread term = |0 - 2| * 2 / (2 * 2 * 1) = 1  ->  CRPS_fair = 0
    assert crps_fair(members, obs, torch.ones(1, 1, 1, 1, dtype=torch.bool)) == pytest.approx(0.0)
    assert crps_fair(members, obs + 2, torch.ones(1, 1, 1, 1, dtype=torch.bool)) == \
        pytest.approx(1.0)
