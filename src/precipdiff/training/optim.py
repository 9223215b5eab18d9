"""AdamW and the learning-rate schedule as a pure function of samples seen.

``lr(s) = lr * min(1, s / warmup_samples) * decay(s)`` with ``decay = 1`` (``constant``) or
``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2`` (``cosine``), where
``p = (s - warmup) / (total - warmup)`` clipped to [0, 1]. Being a function of the sample count,
the schedule needs no state of its own to resume exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from precipdiff.training.config import OptimConfig


def lr_at(samples_seen: int, cfg: OptimConfig, total_samples: int) -> float:
    """Learning rate for the step that starts after ``samples_seen`` samples."""
    warm = 1.0 if cfg.warmup_samples <= 0 else min(1.0, (samples_seen + 1) / cfg.warmup_samples)
    if cfg.schedule == "constant":
        return cfg.lr * warm
    span = max(total_samples - cfg.warmup_samples, 1)
    p = min(max((samples_seen - cfg.warmup_samples) / span, 0.0), 1.0)
    decay = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    return cfg.lr * warm * decay


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    groups: list[dict] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, or over parameter ``groups`` (each may carry an
    ``lr_ratio``, see :func:`set_lr`); the learning rate is set every step by :func:`lr_at`."""
    params = groups if groups is not None else [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr`` times its ``lr_ratio`` (1 if none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)
