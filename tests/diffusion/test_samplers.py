"""Samplers driven by closed-form ideal denoisers (Gaussian and two-component Gaussian mixture).

For data ``y ~ N(mu, s^2)`` per pixel the ideal denoiser is ``D(x; sigma) = (s^2 x + sigma^2 mu) /
(s^2 + sigma^2)`` and the probability-flow ODE has the exact solution
``x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2)``. Every sampler here
ends with the step ``sigma_min -> 0`` that returns ``D(x; sigma_min)``, so the exact output of any
deterministic sampler in the limit of infinitely many steps is ``D(x(sigma_min); sigma_min)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precipdiff.diffusion import get_sampler, karras_sigmas, nfe, sample
from precipdiff.diffusion.samplers import SAMPLERS, sampler_options, sampler_sigmas

MU, S = 0.4, 0.6
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SHAPE = (128, 1, 16, 16)  # 32768 iid pixels: Monte-Carlo std error of the std ~ 0.0023


def gaussian_denoiser(x, sigma, cond=None):
    s2 = sigma[:, None, None, None] ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def exact_output(x_T: torch.Tensor) -> torch.Tensor:
    """``D(x(sigma_min); sigma_min)`` with ``x(sigma)`` the exact ODE solution from ``x_T``."""
    x_min = MU + (x_T - MU) * math.sqrt(S**2 + SIGMA_MIN**2) / math.sqrt(S**2 + SIGMA_MAX**2)
    return gaussian_denoiser(x_min, x_T.new_full((x_T.shape[0],), SIGMA_MIN))


def draw(sampler: str, steps: int, seed: int = 0, denoiser=gaussian_denoiser, **opts):
    g = torch.Generator().manual_seed(seed)
    return sample(denoiser, SHAPE, steps=steps, sampler=sampler, generator=g,
                  dtype=torch.float64, **opts)


# (steps, tolerance on mean and std): second-order samplers are accurate with few steps.
MOMENT_CASES = {"heun": (64, 0.01), "dpmpp_2m": (64, 0.01), "euler": (256, 0.02),
                "ddim": (256, 0.02), "ancestral": (256, 0.02), "ddpm": (256, 0.02),
                "trig_pc": (64, 0.01)}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gaussian_moments(name):
    steps, tol = MOMENT_CASES[name]
    x = draw(name, steps)
    # x_T = sigma_max N(0,1) instead of N(mu, s^2 + sigma_max^2) biases the mean by mu s / sigma_max
    assert abs(x.mean().item() - MU) < tol
    assert abs(x.std().item() - S) < tol


# trig_pc is within Monte-Carlo noise of N(mu, s^2) at 8 steps already; its pathwise error is
# checked in test_trig_pc_is_second_order.
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"trig_pc"}))
def test_gaussian_error_shrinks_with_steps(name):
    errors = [abs(draw(name, n).std().item() - S) for n in (8, 32, 128)]
    assert errors[0] > errors[1] > errors[2], errors


def test_heun_with_churn_moments_and_randomness():
    """EDM Algorithm 2 with S_churn > 0 adds fresh noise: still N(mu, s^2), seed-dependent."""
    opts = dict(S_churn=5.0, S_min=0.05, S_max=50.0, S_noise=1.0)
    x = draw("heun", 64, **opts)
    assert abs(x.mean().item() - MU) < 0.012 and abs(x.std().item() - S) < 0.012
    assert torch.equal(x, draw("heun", 64, **opts))
    assert not torch.equal(x, draw("heun", 64, seed=1, **opts))
    # churn must change the trajectory relative to the deterministic sampler from the same x_T
    assert not torch.allclose(x, draw("heun", 64))


def _convergence_order(name: str, steps=(16, 32, 64, 128)) -> tuple[float, list[float]]:
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64) * SIGMA_MAX
    ref = exact_output(x_T)
    errors = []
    for n in steps:
        sigmas = karras_sigmas(n, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
        errors.append((get_sampler(name)(gaussian_denoiser, x_T.clone(), sigmas) - ref).abs().max())
    slope = -np.polyfit(np.log(steps), np.log([float(e) for e in errors]), 1)[0]
    return float(slope), [float(e) for e in errors]


def test_reference_agrees_with_high_step_heun():
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64) * SIGMA_MAX
    sigmas = karras_sigmas(2048, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    high = get_sampler("heun")(gaussian_denoiser, x_T, sigmas)
    assert (high - exact_output(x_T)).abs().max() < 2e-5  # ~ 30 / N^2, extrapolated from N=128


@pytest.mark.parametrize("name,low,high", [
    ("euler", 0.85, 1.2),    # observed ~0.98 (16..128 steps, Karras rho=7)
    ("ddim", 0.85, 1.2),     # observed ~0.98: DDIM in sigma form is exactly Euler
    ("heun", 1.8, 2.4),      # observed ~2.1
    ("dpmpp_2m", 1.8, 2.4),  # observed ~2.1
])
def test_convergence_order(name, low, high):
    """Max error against the exact solution ~ C N^-p; p fitted over N = 16, 32, 64, 128.

    Observed orders: Euler 0.98, DDIM 0.98, Heun 2.1, DPM-Solver++(2M) 2.1.
    """
    order, errors = _convergence_order(name)
    assert low < order < high, (order, errors)


def test_ddim_equals_euler():
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64) * SIGMA_MAX
    sigmas = karras_sigmas(10, dtype=torch.float64)
    a = get_sampler("ddim")(gaussian_denoiser, x_T, sigmas)
    torch.testing.assert_close(a, get_sampler("euler")(gaussian_denoiser, x_T, sigmas))


# Two-component Gaussian mixture: w1 N(m1, s^2) + w2 N(m2, s^2) per pixel.
W, M, SM = (0.3, 0.7), (-1.0, 1.5), 0.25


def mixture_denoiser(x, sigma, cond=None):
    """Posterior mean E[y | x] = sum_k r_k(x) (s^2 x + sigma^2 m_k) / (s^2 + sigma^2)."""
    s2 = sigma[:, None, None, None] ** 2
    var = SM**2 + s2
    pairs = zip(W, M, strict=True)
    logits = torch.stack([math.log(w) - (x - m) ** 2 / (2 * var) for w, m in pairs])
    resp = torch.softmax(logits, dim=0)
    means = torch.stack([(SM**2 * x + s2 * m) / var for m in M])
    return (resp * means).sum(0)


@pytest.mark.parametrize("name,steps", [("heun", 32), ("dpmpp_2m", 32), ("euler", 128),
                                        ("ddpm", 128)])
def test_mixture_mode_weights(name, steps):
    x = draw(name, steps, denoiser=mixture_denoiser)
    low = x < (M[0] + M[1]) / 2
    assert abs(low.double().mean().item() - W[0]) < 0.015  # 6 Monte-Carlo std errors
    assert abs(x[low].mean().item() - M[0]) < 0.02 and abs(x[~low].mean().item() - M[1]) < 0.02
    assert abs(x[low].std().item() - SM) < 0.02 and abs(x[~low].std().item() - SM) < 0.02


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_callback_and_determinism(name):
    calls = []

    def counting(x, sigma, cond):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        assert cond is not None and cond.shape[0] == x.shape[0]
        calls.append(float(sigma[0]))
        return gaussian_denoiser(x, sigma)

    seen = []
    cond = torch.zeros(3, 1, 5, 7)
    kw = dict(cond=cond, steps=7, sampler=name, callback=seen.append)
    a = sample(counting, (3, 1, 5, 7), generator=torch.Generator().manual_seed(4), **kw)
    assert len(calls) == nfe(name, 7)
    assert [d["i"] for d in seen] == list(range(7))
    b = sample(counting, (3, 1, 5, 7), generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b)
    c = sample(counting, (3, 1, 5, 7), generator=torch.Generator().manual_seed(5), **kw)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "ddim"])
def test_batch_members_are_independent(name):
    """An ensemble in one batch equals its members sampled one by one (deterministic samplers)."""
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(6)) * SIGMA_MAX
    sigmas = karras_sigmas(6)
    batched = get_sampler(name)(gaussian_denoiser, x_T, sigmas)
    single = torch.cat([get_sampler(name)(gaussian_denoiser, x_T[i : i + 1], sigmas)
                        for i in range(4)])
    torch.testing.assert_close(batched, single)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("plms")
    assert nfe("heun", 18) == 35 and nfe("dpmpp_2m", 18) == 18


# ---------------------------------------------------------------- few-step accuracy (<= 10 NFE)
FEW_NFE = 10


def _gaussian(mu: float, s: float):
    def d(x, sigma, cond=None):
        s2 = sigma[:, None, None, None] ** 2
        return (s**2 * x + s2 * mu) / (s**2 + s2)

    return d


def _few_step_errors(name: str, denoiser, reference, *, steps: int = FEW_NFE,
                     schedule: str | None = None) -> tuple[float, float]:
    """(relative std error, W1) of ``name`` at ``steps`` steps against ``reference(x_T)``."""
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(SHAPE, generator=g, dtype=torch.float64) * SIGMA_MAX
    sigmas = sampler_sigmas(name, steps, schedule=schedule)
    out = get_sampler(name)(denoiser, x_T.clone(), sigmas, **sampler_options(name, 0.5))
    ref = reference(x_T)
    w1 = (out.flatten().sort().values - ref.flatten().sort().values).abs().mean().item()
    return out.std().item() / ref.std().item() - 1.0, w1


def _gaussian_reference(mu: float, s: float):
    def ref(x_T):
        return mu + (x_T - mu) * s / math.sqrt(s**2 + SIGMA_MAX**2)

    return ref


def _mixture_reference(x_T):
    sigmas = karras_sigmas(512, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    return get_sampler("heun")(mixture_denoiser, x_T.clone(), sigmas)


@pytest.mark.parametrize("mu,s", [(0.0, 0.25), (0.0, 0.5), (0.4, 0.6), (0.0, 1.0)])
def test_trig_pc_few_step_gaussian(mu, s):
    """<= 10 NFE: std within 2 % and W1 <= 0.02 for data std 0.5x to 2x sigma_data (0.5).

    Observed at 10 NFE: +1.2 % (s=0.25), exact (0.5), <1 % (0.6, 1.0).
    """
    err, w1 = _few_step_errors("trig_pc", _gaussian(mu, s), _gaussian_reference(mu, s))
    assert abs(err) <= 0.02 and w1 <= 0.02, (err, w1)


def test_trig_pc_few_step_mixture():
    err, w1 = _few_step_errors("trig_pc", mixture_denoiser, _mixture_reference)
    assert abs(err) <= 0.02 and w1 <= 0.02, (err, w1)


def test_dpmpp_2m_karras_is_not_accurate_at_few_steps():
    """Why DPM-Solver++(2M) no longer runs on the EDM schedule: it widens a Gaussian by > 10 %."""
    err, _ = _few_step_errors("dpmpp_2m", _gaussian(0.0, 0.5), _gaussian_reference(0.0, 0.5),
                              schedule="karras")
    assert err > 0.10, err


def test_dpmpp_2m_native_schedule_is_log_linear():
    sig = sampler_sigmas("dpmpp_2m", 8)
    ratios = sig[:-2] / sig[1:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios)) and sig[-1] == 0


@pytest.mark.parametrize("s", [0.03, 0.25, 1.0, 4.0])
def test_dpmpp_2m_log_linear_is_uniform_across_scales(s):
    """The default (8 steps, log-linear): within 5 % in std for data 0.06x to 8x sigma_data,
    where trig_pc's theta-uniform schedule is off by +100 % (0.03) and -30 % (4.0).

    Observed: -3.7 % (0.03), +2.3 % (0.25), +3.8 % (1.0), +4.2 % (4.0)."""
    err, _ = _few_step_errors("dpmpp_2m", _gaussian(0.0, s), _gaussian_reference(0.0, s), steps=8)
    assert abs(err) <= 0.05, err
    trig, _ = _few_step_errors("trig_pc", _gaussian(0.0, s), _gaussian_reference(0.0, s), steps=8)
    if s in (0.03, 4.0):
        assert abs(trig) > 0.2, trig


def test_trig_pc_is_second_order():
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64) * SIGMA_MAX
    d, ref = _gaussian(MU, S), _gaussian_reference(MU, S)(x_T)
    steps = (8, 16, 32, 64)
    errors = [float((get_sampler("trig_pc")(d, x_T.clone(), sampler_sigmas("trig_pc", n))
                     - ref).abs().max()) for n in steps]
    order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 1.7 < order < 3.5, (order, errors)
