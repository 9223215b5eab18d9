"""Samplers as pure functions over a denoiser ``D(x, sigma, cond)`` in the EDM sigma framework.

The probability-flow ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma`` (Karras et al. 2022, Eq. 3
with ``sigma(t) = t``, ``s(t) = 1``). Every sampler takes ``(denoiser, x, sigmas, *, cond,
generator, callback, disable, **opts)``, where ``x`` is the initial noise already scaled by
``sigmas[0]`` and ``sigmas`` is decreasing with a trailing 0; it returns the sample at sigma 0.
The denoiser is called with ``sigma`` as a ``(B,)`` tensor of ``x``'s dtype.

References
----------
- Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models"
  (Algorithm 1 Euler/Heun, Algorithm 2 stochastic Heun).
- Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
  Models" (Algorithm 2, multistep second order, data prediction).
- Ho et al. (2020), DDPM; Song, Meng & Ermon (2021), DDIM.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from precipdiff.diffusion.schedules import get_schedule
from precipdiff.errors import UnknownMethodError

log = logging.getLogger(__name__)

Denoiser = Callable[..., Tensor]
Callback = Callable[[dict], None]


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draws from ``generator`` (on the generator's device), moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def denoise(denoiser: Denoiser, x: Tensor, sigma: float, cond: Tensor | None) -> Tensor:
    """Call ``D(x; sigma, cond)`` with ``sigma`` broadcast to a ``(B,)`` tensor."""
    return denoiser(x, x.new_full((x.shape[0],), sigma), cond)


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """ODE derivative ``dx/dsigma = (x - D(x; sigma)) / sigma`` (EDM Eq. 3, Algorithm 1 line 4)."""
    return (x - denoised) / sigma


def _report(callback: Callback | None, i: int, x: Tensor, sigma: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


def _sigma_list(sigmas: Tensor | Sequence[float]) -> list[float]:
    values = [float(s) for s in sigmas]
    pairs = zip(values[:-1], values[1:], strict=True)
    if len(values) < 2 or any(b >= a for a, b in pairs):
        raise ValueError(f"sigmas must be strictly decreasing, >= 2 values; got {values[:4]}...")
    return values


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """Euler method on the probability-flow ODE (EDM Algorithm 1 without the Heun correction).

    First order; one network evaluation per step.
    """
    sig = _sigma_list(sigmas)
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = denoise(denoiser, x, s, cond)
        x = x + to_d(x, s, denoised) * (s_next - s)
        _report(callback, i, x, s, denoised)
    return x


def churn_gamma(sigma: float, steps: int, S_churn: float, S_min: float, S_max: float) -> float:
    """EDM Algorithm 2 line 4: ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` inside [S_min, S_max]."""
    if S_churn <= 0 or not S_min <= sigma <= S_max:
        return 0.0
    return min(S_churn / steps, math.sqrt(2.0) - 1.0)


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> Tensor:
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2); deterministic Heun when churn is 0.

    Each step optionally raises the noise level to ``sigma_hat = sigma (1 + gamma)`` by adding fresh
    noise of std ``sqrt(sigma_hat^2 - sigma^2) S_noise``, takes an Euler step to ``sigma_next`` and
    corrects it with the trapezoidal rule unless ``sigma_next = 0``. Second order; ``2N - 1``
    network evaluations for ``N`` steps.
    """
    sig = _sigma_list(sigmas)
    steps = len(sig) - 1
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        gamma = churn_gamma(s, steps, S_churn, S_min, S_max)
        s_hat = s * (1.0 + gamma)
        if gamma > 0:
            eps = randn(x.shape, generator, device=x.device, dtype=x.dtype)
            x = x + eps * (S_noise * math.sqrt(s_hat**2 - s**2))
        denoised = denoise(denoiser, x, s_hat, cond)
        d = to_d(x, s_hat, denoised)
        x_next = x + d * (s_next - s_hat)
        if s_next > 0:
            d_next = to_d(x_next, s_next, denoise(denoiser, x_next, s_next, cond))
            x_next = x + (d + d_next) * (0.5 * (s_next - s_hat))
        x = x_next
        _report(callback, i, x, s_hat, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in the sigma / data-prediction form.

    With ``lambda = -ln(sigma)`` and ``h_i = lambda_{i+1} - lambda_i`` the update is
    ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h_i) D_i'`` where ``D_i' = D_i`` on the first
    step and ``D_i' = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1}``, ``r_i = h_{i-1}/h_i``, after it.
    The step to ``sigma = 0`` returns the denoised estimate. Second order; ``N`` evaluations.
    """
    sig = _sigma_list(sigmas)
    old_denoised: Tensor | None = None
    h_last: float | None = None
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = denoise(denoiser, x, s, cond)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            if old_denoised is None or h_last is None:
                d_eff = denoised
            else:
                half_inv_r = h / (2.0 * h_last)
                d_eff = denoised * (1.0 + half_inv_r) - old_denoised * half_inv_r
            x = x * (s_next / s) - d_eff * math.expm1(-h)
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, s, denoised)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of a DDPM/DDIM step from ``sigma`` to ``sigma_next``.

    ``sigma_up = eta * sigma_next sqrt(sigma^2 - sigma_next^2) / sigma`` (capped at sigma_next) and
    ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)``. With ``eta = 1`` the step draws exactly from
    the DDPM posterior ``q(x_next | x, x0 = D)`` in variance-exploding form (Ho et al. 2020, Eq. 7);
    with ``eta = 0`` it is the deterministic DDIM step (Song et al. 2021, Eq. 12).
    """
    if sigma_next == 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma)
    return math.sqrt(sigma_next**2 - up**2), up


@torch.no_grad()
def sample_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DDPM (``eta = 1``) / DDIM (``eta = 0``) ancestral sampler in the sigma framework.

    Each step moves deterministically to ``sigma_down`` along the ODE direction and adds fresh noise
    of std ``sigma_up`` (see :func:`ancestral_step`). First order; ``N`` evaluations.
    """
    sig = _sigma_list(sigmas)
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        denoised = denoise(denoiser, x, s, cond)
        s_down, s_up = ancestral_step(s, s_next, eta)
        x = x + to_d(x, s, denoised) * (s_down - s)
        if s_up > 0:
            x = x + randn(x.shape, generator, device=x.device, dtype=x.dtype) * (s_noise * s_up)
        _report(callback, i, x, s, denoised)
    return x


def trig_u(x: Tensor, sigma: float, sigma_data: float) -> Tensor:
    """TrigFlow state ``u = x / sqrt(sigma^2 + sigma_data^2)`` (= EDM's ``c_in x``)."""
    return x / math.sqrt(sigma**2 + sigma_data**2)


def trig_velocity(denoised: Tensor, x: Tensor, sigma: float, sigma_data: float) -> Tensor:
    """Network output ``F = (D - c_skip x) / c_out`` recovered from the denoiser (EDM Table 1)."""
    s2 = sigma**2 + sigma_data**2
    c_skip, c_out = sigma_data**2 / s2, sigma * sigma_data / math.sqrt(s2)
    return (denoised - c_skip * x) / c_out


@torch.no_grad()
def sample_trig_pc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    sigma_data: float = 0.5,
) -> Tensor:
    """Second-order predictor-corrector on the TrigFlow form of the probability-flow ODE.

    With EDM preconditioning ``D = c_skip x + c_out F`` (Karras et al. 2022, Table 1) and the
    change of variables ``u = x / sqrt(sigma^2 + sigma_data^2)``,
    ``theta = arctan(sigma / sigma_data)``, the ODE ``dx/dsigma = (x - D) / sigma`` becomes
    ``du/dtheta = -F`` (the TrigFlow ODE of Lu & Song 2024). The Gaussian part of the data is
    integrated exactly (``F = 0`` for Gaussian data of std ``sigma_data``); what remains is
    smooth in ``theta``. Each step predicts with two-step Adams–Bashforth,
    ``u' = u_i - h (F_i + (F_i - F_{i-1}) h / (2 h_{i-1}))``, evaluates ``F`` at ``u'`` and
    corrects with the trapezoidal rule ``u_{i+1} = u_i - h (F_i + F(u')) / 2``; the evaluation
    at ``u'`` is reused by the next step (the UniPC idea of Zhao et al. 2023), so ``N`` steps
    cost ``N`` network evaluations. Use it with :func:`~precipdiff.diffusion.schedules.
    trig_sigmas` (uniform in ``theta``) and the ``sigma_data`` the network was trained with.
    """
    sig = _sigma_list(sigmas)
    theta = [math.atan(s / sigma_data) for s in sig]
    u = trig_u(x, sig[0], sigma_data)
    denoised = denoise(denoiser, x, sig[0], cond)
    f = trig_velocity(denoised, x, sig[0], sigma_data)
    f_old: Tensor | None = None
    h_old = 0.0
    for i, s_next in enumerate(sig[1:]):
        h = theta[i + 1] - theta[i]
        f_pred = f if f_old is None else f + (f - f_old) * (h / (2.0 * h_old))
        u_pred = u - h * f_pred
        if s_next == 0:
            u = u_pred
            _report(callback, i, u * sigma_data, sig[i], denoised)
            break
        scale_next = math.sqrt(s_next**2 + sigma_data**2)
        x_pred = u_pred * scale_next
        denoised_next = denoise(denoiser, x_pred, s_next, cond)
        f_next = trig_velocity(denoised_next, x_pred, s_next, sigma_data)
        u = u - h * 0.5 * (f + f_next)
        _report(callback, i, u * scale_next, sig[i], denoised)
        f_old, f, h_old, denoised = f, f_next, h, denoised_next
    return u * math.sqrt(sig[-1] ** 2 + sigma_data**2)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "ancestral": sample_ancestral,
    "ddpm": functools.partial(sample_ancestral, eta=1.0),
    "ddim": functools.partial(sample_ancestral, eta=0.0),
    "trig_pc": sample_trig_pc,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Sampler by name: ``euler | heun | dpmpp_2m | ancestral | ddpm | ddim | trig_pc``."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise UnknownMethodError("sampler", name, SAMPLERS) from None


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations of ``sampler`` for ``steps`` steps ending at sigma 0 (Heun: 2N - 1)."""
    get_sampler(sampler)
    return 2 * steps - 1 if sampler == "heun" else steps


#: The schedule each sampler is meant for (``sampler_sigmas``'s default): DPM-Solver++ steps
#: uniformly in log-sigma (Lu et al. 2022 use uniform log-SNR), trig_pc uniformly in
#: arctan(sigma / sigma_data), the rest on the EDM schedule (Karras et al. 2022, Eq. 5).
NATIVE_SCHEDULE = {"dpmpp_2m": "loglinear", "trig_pc": "trig"}


def native_schedule(sampler: str) -> str:
    """Name of the schedule ``sampler`` uses unless told otherwise (see ``NATIVE_SCHEDULE``)."""
    get_sampler(sampler)
    return NATIVE_SCHEDULE.get(sampler, "karras")


def sampler_sigmas(
    sampler: str,
    steps: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    sigma_data: float = 0.5,
    schedule: str | None = None,
) -> Tensor:
    """The noise levels for ``sampler`` (float64, decreasing, trailing 0).

    ``schedule`` (``karras`` | ``loglinear`` | ``trig``) defaults to the sampler's own
    (:func:`native_schedule`). Log-linear steps treat every noise scale alike, which matters for
    precipitation, whose residual spans scales far below and above ``sigma_data``: with exact
    Gaussian denoisers of std 0.03 to 4, DPM-Solver++(2M) at 8-10 steps is within +4.3 % in
    std on the log-linear schedule and +3 to +19 % on the EDM one (``bench_sampler.py``); on
    mixtures with a rare, wide heavy mode it is 8-11.5 % too narrow at 8 steps, and no choice
    of steps brings it within 2 % (``bench_schedule_search.py``).
    """
    name = schedule or native_schedule(sampler)
    fn = get_schedule(name)
    kw: dict[str, float] = {"rho": rho} if name == "karras" else {}
    if name == "trig":
        kw["sigma_data"] = sigma_data
    return fn(steps, sigma_min, sigma_max, dtype=torch.float64, **kw)


def sampler_options(sampler: str, sigma_data: float) -> dict[str, float]:
    """Keyword options a sampler needs from the network's preconditioning (``sigma_data``)."""
    return {"sigma_data": sigma_data} if sampler == "trig_pc" else {}


def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    cond: Tensor | None = None,
    steps: int = 32,
    sampler: str = "heun",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    sigma_data: float = 0.5,
    schedule: str | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callback | None = None,
    disable: bool | None = None,
    **opts,
) -> Tensor:
    """Draw samples: ``x_T = sigma_max * N(0, I)``, then ``sampler`` on its schedule.

    The schedule is :func:`sampler_sigmas` (the sampler's own unless ``schedule`` names one;
    ``trig_pc`` also receives ``sigma_data``). The same ``generator`` state gives the same
    samples. ``cond`` must have ``shape[0]`` rows (repeat it for an ensemble). ``opts`` go to the
    sampler (e.g. ``S_churn`` for Heun, ``eta``).
    """
    fn = get_sampler(sampler)
    sigmas = sampler_sigmas(sampler, steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                            sigma_data=sigma_data, schedule=schedule)
    if not disable:
        log.debug("sampling %s with %s: %d steps, %d NFE", tuple(shape), sampler, steps,
                  nfe(sampler, steps))
    x = randn(shape, generator, device=device, dtype=dtype) * sigma_max
    opts = {**sampler_options(sampler, sigma_data), **opts}
    return fn(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback,
              disable=disable, **opts)
