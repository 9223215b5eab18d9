"""Inference: trained stages, the two-stage pipeline, tiling and NetCDF output."""

from precipdiff.pipeline.pipeline import Pipeline, PredictOptions
from precipdiff.pipeline.stage import SamplerSettings, Stage

__all__ = ["Pipeline", "PredictOptions", "SamplerSettings", "Stage"]
