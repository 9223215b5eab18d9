"""EDM preconditioning (Karras et al. 2022, Table 1 and Eq. 7).

``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))`` with

- ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``
- ``c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``
- ``c_in   = 1 / sqrt(sigma^2 + sigma_data^2)``
- ``c_noise = ln(sigma) / 4``
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def edm_coefficients(
    sigma: Tensor, sigma_data: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of EDM Table 1 for noise levels ``sigma``."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def _work_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (half-precision inputs included)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _as_batch_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Noise level as a ``(B,)`` tensor on ``x``'s device (a scalar is broadcast to B)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=_work_dtype(x))
    return sigma.reshape(-1).expand(x.shape[0])


def _parameter_dtype(net: nn.Module, default: torch.dtype) -> torch.dtype:
    """Floating dtype of the network's first parameter (``default`` for parameter-free nets)."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


class EDMPrecond(nn.Module):
    """Denoiser ``D(x; sigma, cond)`` wrapping a raw network ``F`` with EDM preconditioning.

    ``net`` is called as ``net(c_in * x, c_noise, cond, **kwargs)`` (a
    :class:`~precipdiff.models.UNet`). ``sigma`` may be a scalar or a ``(B,)`` tensor. The
    coefficients are computed in float32 (float64 for float64 inputs), the network sees its own
    parameter dtype, and the result has the dtype of ``x``.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(
        self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None, **kwargs
    ) -> Tensor:
        sig = _as_batch_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sig, self.sigma_data)
        c_skip, c_out, c_in = (c[:, None, None, None] for c in (c_skip, c_out, c_in))
        xw = x.to(sig.dtype)
        dtype = _parameter_dtype(self.net, x.dtype)
        if cond is not None:
            cond = cond.to(dtype)
        f = self.net((c_in * xw).to(dtype), c_noise.to(dtype), cond, **kwargs)
        return (c_skip * xw + c_out * f.to(sig.dtype)).to(x.dtype)


class RegressionWrapper(nn.Module):
    """Conditional-mean predictor ``mu(cond) = net(None, None, cond)`` (CorrDiff regression stage).

    The wrapped network is a regression U-Net (``UNetConfig(regression=True)``): it has no noise
    input and no noise embedding, rather than a diffusion net fed zeros.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, cond: Tensor, **kwargs) -> Tensor:
        return self.net(None, None, cond, **kwargs)
