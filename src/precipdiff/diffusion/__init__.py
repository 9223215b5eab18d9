"""Diffusion core: EDM preconditioning, losses, noise schedules and samplers."""

from precipdiff.diffusion.loss import edm_loss, masked_mean, regression_loss
from precipdiff.diffusion.precond import EDMPrecond, RegressionWrapper, edm_coefficients
from precipdiff.diffusion.samplers import (
    get_sampler,
    nfe,
    sample,
    sample_ancestral,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
from precipdiff.diffusion.schedules import karras_sigmas, loglinear_sigmas

__all__ = [
    "EDMPrecond",
    "RegressionWrapper",
    "edm_coefficients",
    "edm_loss",
    "get_sampler",
    "karras_sigmas",
    "loglinear_sigmas",
    "masked_mean",
    "nfe",
    "regression_loss",
    "sample",
    "sample_ancestral",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
]
