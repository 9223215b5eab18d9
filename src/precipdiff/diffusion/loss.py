"""Training losses: the EDM denoising loss (Karras et al. 2022, Eq. 8, Table 1) and masked MSE."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[..., Tensor]


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` over pixels where ``mask`` is True (broadcast over channels).

    With no valid pixel the result is 0 (and still differentiable), not NaN.
    """
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def sample_training_sigma(
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
) -> Tensor:
    """EDM training noise levels: ``ln(sigma) ~ N(P_mean, P_std^2)`` (Table 1), shape ``(B,)``."""
    gen_device = generator.device if generator is not None else device
    rnd = torch.randn(batch, generator=generator, device=gen_device)
    return (rnd * P_std + P_mean).exp().to(device)


def edm_loss(
    denoiser: Denoiser,
    y: Tensor,
    cond: Tensor | None,
    *,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 0.5,
) -> Tensor:
    """EDM loss ``E[lambda(sigma) ||D(y + n; sigma) - y||^2]`` (Karras et al. 2022, Eq. 8).

    ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, ``n ~ N(0, sigma^2 I)``,
    ``ln(sigma) ~ N(P_mean, P_std^2)``. The mean runs over valid pixels only (``mask`` True),
    so the targets at masked pixels never affect the loss or its gradient. Returns a scalar.
    """
    sigma = sample_training_sigma(
        y.shape[0], generator=generator, device=y.device, P_mean=P_mean, P_std=P_std
    )
    gen_device = generator.device if generator is not None else y.device
    noise = torch.randn(y.shape, generator=generator, device=gen_device, dtype=y.dtype).to(y.device)
    s = sigma[:, None, None, None].to(y.dtype)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    denoised = denoiser(y + noise * s, sigma, cond)
    return masked_mean(weight * (denoised - y) ** 2, mask)


def regression_loss(prediction: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Masked mean squared error over valid pixels (CorrDiff regression stage, L2 loss)."""
    return masked_mean((prediction - target) ** 2, mask)
