"""precipdiff: bias-corrected, 1-km precipitation ensembles with residual diffusion models."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", "downscale"]


def __getattr__(name: str):
    """``precipdiff.downscale`` (:mod:`precipdiff.api`), imported on first use only: ``import
    precipdiff`` stays light (no torch)."""
    if name == "downscale":
        from precipdiff.api import downscale

        return downscale
    raise AttributeError(f"module 'precipdiff' has no attribute {name!r}")
