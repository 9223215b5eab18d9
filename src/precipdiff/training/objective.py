"""Per-sample noise, loss sums and a quick ensemble CRPS for the training loop.

The EDM loss (Karras et al. 2022, Eq. 8; the terms of :func:`precipdiff.diffusion.loss.edm_loss`) is
computed here as a *sum* over valid pixels with noise drawn per sample from a generator seeded
by the sample's serial number. Dividing by the number of valid pixels in the whole global batch
(all ranks and accumulation micro-steps together) gives exactly the masked mean of one process
with the same global batch, whatever the number of ranks or micro-steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from precipdiff.diffusion.loss import sample_training_sigma

_PRODUCT_STREAM = 0x70726F64  # seed word of the product-label dropout (independent of the noise)


def sample_generator(seed: int, serial: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one sample, independent across ``(seed, stream, serial)``."""
    state = np.random.SeedSequence([seed, stream, serial]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_noise(serials: list[int], shape: tuple[int, ...], *, seed: int, P_mean: float,
               P_std: float, stream: int = 0) -> tuple[Tensor, Tensor]:
    """EDM training noise for each sample: ``sigma (B,)`` with ``ln sigma ~ N(P_mean, P_std^2)``
    and a unit normal ``noise (B, *shape)``; sample ``i`` depends only on ``serials[i]``."""
    sigmas, noises = [], []
    for serial in serials:
        g = sample_generator(seed, serial, stream)
        sigmas.append(sample_training_sigma(1, generator=g, P_mean=P_mean, P_std=P_std))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(sigmas), torch.stack(noises)


def edm_loss_sum(denoiser: nn.Module, y: Tensor, cond: Tensor, mask: Tensor, sigma: Tensor,
                 noise: Tensor, *, sigma_data: float, product: Tensor | None = None) -> Tensor:
    """``sum_valid lambda(s) (D(y + s n; s) - y)^2``, ``lambda(s) = (s^2 + sd^2) / (s sd)^2``;
    ``product``: per-sample product labels for a product-conditioned net."""
    s = sigma[:, None, None, None].to(y.dtype)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    kwargs = {} if product is None else {"product": product}
    denoised = denoiser(y + noise * s, sigma, cond, **kwargs)
    return (weight * (denoised.float() - y) ** 2 * mask.to(y.dtype).expand_as(y)).sum()


def network_labels(net: nn.Module, networks: Sequence[str]) -> Tensor:
    """The product label of each of a corpus's ``networks`` for the product-conditioned
    ``net`` (0, "any product", for a network that is not one of its products): the ``lookup``
    of :func:`product_labels`."""
    return torch.tensor([net.product_label(n) if n in net.cfg.products else 0
                         for n in networks], dtype=torch.long)


def product_labels(networks: Tensor, lookup: Tensor, serials: list[int], *, seed: int,
                   dropout: float) -> Tensor:
    """Product label of each sample: ``lookup[network]``, replaced by 0 ("any product") with
    probability ``dropout``, drawn from ``serials`` alone (as the noise, :func:`draw_noise`)."""
    draws = [float(torch.rand(1, generator=sample_generator(seed, s, _PRODUCT_STREAM)))
             for s in serials]
    keep = torch.tensor([u >= dropout for u in draws])
    return torch.where(keep.to(networks.device), lookup.to(networks.device)[networks.long()], 0)


def regression_loss_sum(net: nn.Module, y: Tensor, cond: Tensor, mask: Tensor) -> Tensor:
    """``sum_valid (mu(cond) - y)^2`` for the CorrDiff regression net."""
    prediction = net(None, None, cond)
    return ((prediction.float() - y) ** 2 * mask.to(y.dtype).expand_as(y)).sum()


def crps_fair(members: Tensor, obs: Tensor, mask: Tensor) -> float:
    """Mean fair CRPS over valid pixels (Ferro 2014) of ``members (M, B, C, H, W)`` vs ``obs``.

    ``CRPS_fair = (1/M) sum_i |x_i - y| - 1/(2 M (M-1)) sum_ij |x_i - x_j|``, computed with the
    sorted-member identity ``sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)``.
    """
    m = members.shape[0]
    x = members.double().sort(dim=0).values
    skill = (x - obs.double()).abs().mean(0)
    weights = (2.0 * torch.arange(1, m + 1, dtype=torch.float64) - m - 1).view(-1, 1, 1, 1, 1)
    spread = (x * weights.to(x.device)).sum(0) / (m * (m - 1))
    valid = mask.expand_as(obs)
    if not bool(valid.any()):
        return float("nan")
    return float((skill - spread)[valid].mean())
