"""Exponential moving average of model weights with a half-life in training samples.

EDM convention (Karras et al. 2022, "Elucidating the Design Space...", training loop): after a
step of ``batch_size`` samples the average moves with

    beta = 0.5 ** (batch_size / halflife),   ema <- beta * ema + (1 - beta) * weights

so the weights of ``halflife`` samples ago count half. With ``rampup_ratio`` the half-life is
capped at ``rampup_ratio * samples_seen`` early on, so the average is not dominated by the
random initialisation during the first part of training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_size: int, halflife_samples: float, samples_seen: int,
             rampup_ratio: float | None = None) -> float:
    """Decay factor for one step of ``batch_size`` samples (EDM convention)."""
    halflife = float(halflife_samples)
    if rampup_ratio is not None:
        halflife = min(halflife, samples_seen * rampup_ratio)
    if halflife <= 0:
        return 0.0
    return 0.5 ** (batch_size / halflife)


class EMA:
    """A frozen copy of ``model`` that tracks its weights; buffers are copied as they are."""

    def __init__(self, model: nn.Module, *, halflife_samples: float,
                 rampup_ratio: float | None = None) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.halflife_samples = halflife_samples
        self.rampup_ratio = rampup_ratio

    @torch.no_grad()
    def update(self, model: nn.Module, *, batch_size: int, samples_seen: int) -> float:
        """Blend in ``model``'s weights after a step (``samples_seen`` includes it); return beta."""
        beta = ema_beta(batch_size, self.halflife_samples, samples_seen, self.rampup_ratio)
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - beta)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        return beta

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
