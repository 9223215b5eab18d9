"""precipdiff: bias-corrected, 1-km precipitation ensembles with residual diffusion models."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
