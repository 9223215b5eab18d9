"""EMA with a half-life in samples (EDM convention)."""

from __future__ import annotations

import pytest
import torch

from precipdiff.training.ema import EMA, ema_beta


def test_beta_is_half_after_one_halflife():
    beta_total = ema_beta(4, 100, samples_seen=10**9) ** (100 / 4)
    assert beta_total == pytest.approx(0.5)


def test_rampup_caps_halflife():
    assert ema_beta(4, 10_000, samples_seen=40, rampup_ratio=0.5) == pytest.approx(0.5 ** (4 / 20))
    assert ema_beta(4, 10_000, samples_seen=0, rampup_ratio=0.5) == 0.0


def test_update_moves_towards_weights():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, halflife_samples=8)
    with torch.no_grad():
        model.weight.fill_(1.0)
    beta = ema.update(model, batch_size=8, samples_seen=8)
    assert beta == pytest.approx(0.5)
    assert torch.allclose(ema.module.weight, torch.full_like(model.weight, 0.5))
    assert not ema.module.weight.requires_grad
    state = ema.state_dict()
    other = EMA(model, halflife_samples=8)
    other.load_state_dict(state)
    assert torch.equal(other.module.weight, ema.module.weight)
