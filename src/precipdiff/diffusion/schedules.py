"""Noise-level schedules for sampling (decreasing sigmas with a trailing 0)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from precipdiff.errors import UnknownMethodError


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """EDM schedule (Karras et al. 2022, Eq. 5), ``n + 1`` values, the last one 0.

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    for ``i = 0..n-1``, then ``sigma_n = 0``. Computed in float64.
    """
    if n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1 steps, got {n}")
    if n == 1:
        body = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        body = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([body, body.new_zeros(1)]).to(dtype=dtype, device=device)


def loglinear_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform steps in ln(sigma) (the rho -> inf limit of EDM Eq. 5); n + 1 values, last 0."""
    if n < 1:
        raise ValueError(f"loglinear_sigmas needs n >= 1 steps, got {n}")
    body = torch.linspace(
        torch.tensor(sigma_max).log().item(), torch.tensor(sigma_min).log().item(), n,
        dtype=torch.float64,
    ).exp()
    return torch.cat([body, body.new_zeros(1)]).to(dtype=dtype, device=device)


def trig_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sigma_data: float = 0.5,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform steps in ``theta = arctan(sigma / sigma_data)``; n + 1 values, the last one 0.

    The TrigFlow time of Lu & Song (2024): with EDM preconditioning the probability-flow ODE is
    ``du/dtheta = -F`` in ``u = x / sqrt(sigma^2 + sigma_data^2)`` (see
    :func:`precipdiff.diffusion.samplers.sample_trig_pc`), so equal steps in ``theta`` are equal
    steps of that ODE. Most of the budget falls near ``sigma ~ sigma_data``, little above it.
    """
    if n < 1:
        raise ValueError(f"trig_sigmas needs n >= 1 steps, got {n}")
    if sigma_data <= 0:
        raise ValueError(f"trig_sigmas needs sigma_data > 0, got {sigma_data}")
    hi, lo = math.atan(sigma_max / sigma_data), math.atan(sigma_min / sigma_data)
    theta = torch.linspace(hi, lo, n, dtype=torch.float64) if n > 1 else torch.tensor([hi])
    body = torch.tan(theta.to(torch.float64)) * sigma_data
    return torch.cat([body, body.new_zeros(1)]).to(dtype=dtype, device=device)


SCHEDULES = {"karras": karras_sigmas, "loglinear": loglinear_sigmas, "trig": trig_sigmas}


def get_schedule(name: str):
    """Schedule by name: ``"karras"``, ``"loglinear"`` or ``"trig"``."""
    if name not in SCHEDULES:
        raise UnknownMethodError("schedule", name, SCHEDULES)
    return SCHEDULES[name]
