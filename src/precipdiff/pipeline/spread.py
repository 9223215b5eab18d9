"""Ensemble spread inflation for an under-dispersed Stage II.

A Stage II whose members vary less than their error is too sure of itself (spread/skill < 1;
the shipped models hold a fraction of the radar's sub-grid variance, BENCHMARKS.md). The
standard remedy of ensemble data assimilation and post-processing is multiplicative inflation
about the ensemble mean (Anderson & Anderson 1999):

    x_k' = xbar + a (x_k - xbar),    xbar = (1/M) sum_k x_k,

which keeps the ensemble mean and scales the unbiased member variance by ``a**2`` (for any
``M``; one member is left as it is). Rain is then kept physical: values below 0 or below the
fine wet threshold become 0, so a pixel dry in every member stays dry, and a pixel where one
member is dry and the mean is small is not made wet. With mass consistency the pipeline
rescales the blocks afterwards, so every coarse cell keeps its corrected value exactly.

The factor is a property of a model: calibrated on training frames
(:func:`precipdiff.training.calibrate.calibrate_spread`) and stored in the weights
(``spread_inflation`` note), where :meth:`precipdiff.pipeline.Pipeline.spread_inflation`
finds it.
"""

from __future__ import annotations

import numpy as np

#: Accepted inflation factors: below 1 deflates an over-dispersed ensemble; 5 is far beyond
#: any calibration seen (1.0-2.5) and would mostly make noise.
INFLATION_RANGE = (0.0, 5.0)


def inflate_spread(members: np.ndarray, factor: float, *, threshold: float = 0.0) -> np.ndarray:
    """Members (M, ...) in mm/h inflated about their mean by ``factor``; values below
    ``threshold`` (mm/h, and all negative ones) set to 0. NaN stays NaN. Returns a new array
    (the input itself when ``factor`` is 1 or there is one member)."""
    if not INFLATION_RANGE[0] < factor <= INFLATION_RANGE[1]:
        raise ValueError(f"spread inflation must be in ({INFLATION_RANGE[0]:g}, "
                         f"{INFLATION_RANGE[1]:g}], got {factor!r}")
    if factor == 1.0 or members.shape[0] < 2:
        return members
    mean = members.mean(axis=0, keepdims=True)
    out = mean + factor * (members - mean)
    out[out < max(threshold, 0.0)] = 0.0  # NaN compares False: missing stays missing
    return out.astype(members.dtype, copy=False)
