"""Baselines usable like a model: interpolation, quantile mapping, RainFARM (pysteps style).

``get_baseline(name)`` returns a callable:

- ``"nearest" | "bilinear" | "bicubic"``: ``f(lr, factor) -> hr`` (:mod:`.interpolation`);
- ``"eqm" | "qdm"`` (+ ``"_pooled"``): ``f(src, ref) -> QuantileMapping`` fitted on a train
  split; call ``.apply(src)`` (:mod:`.quantile_mapping`);
- ``"rainfarm"``: ``f(lr, factor, *, members, rng) -> (member, time, lat, lon)`` (needs the
  ``[baselines]`` extra, pysteps, imported on the first call).

An unknown name raises :class:`~precipdiff.errors.UnknownMethodError` listing the known ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from precipdiff.errors import UnknownMethodError

from .interpolation import INTERPOLATION_METHODS, interpolate
from .quantile_mapping import QuantileMapping
from .rainfarm import rainfarm

__all__ = ["BASELINES", "QuantileMapping", "get_baseline", "interpolate"]


def _fit_qm(src, ref, *, method: str, pooled: bool, **kw) -> QuantileMapping:
    return QuantileMapping(method=method, pooled=pooled, **kw).fit(src, ref)


BASELINES: dict[str, Callable] = {
    **{m: functools.partial(interpolate, method=m) for m in INTERPOLATION_METHODS},
    "eqm": functools.partial(_fit_qm, method="eqm", pooled=False),
    "qdm": functools.partial(_fit_qm, method="qdm", pooled=False),
    "eqm_pooled": functools.partial(_fit_qm, method="eqm", pooled=True),
    "qdm_pooled": functools.partial(_fit_qm, method="qdm", pooled=True),
    "rainfarm": rainfarm,
}


def get_baseline(name: str) -> Callable:
    """The baseline callable registered as ``name`` (see the module docstring)."""
    try:
        return BASELINES[name.lower()]
    except (KeyError, AttributeError):
        raise UnknownMethodError("baseline", name, BASELINES) from None
