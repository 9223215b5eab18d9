"""Invertible precipitation transform ``y = log1p(max(x, 0) / scale) / sigma``.

Rain rates (mm/h) are zero-inflated and heavy-tailed; models work in this log space, scaled to
unit spread. The parameters are stored in the training store and in the weights' metadata
(``to_dict``), so a model is never applied with the wrong normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import xarray as xr

from precipdiff.errors import ConfigError

__all__ = ["PrecipTransform"]

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor, xr.DataArray, float)

_KIND = "log1p"
_KEYS = {"kind", "scale", "sigma"}


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"PrecipTransform.{name} must be a number, found {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"PrecipTransform.{name} must be finite and > 0, found {value!r}")
    return float(value)


@dataclass(frozen=True)
class PrecipTransform:
    """``forward(x) = log1p(max(x, 0) / scale) / sigma``; ``inverse`` clips to >= 0.

    ``scale`` (mm/h) sets where the transform turns from linear to logarithmic; ``sigma``
    (dimensionless) divides the log values to give them unit spread (see :meth:`fit`).
    Accepts numpy arrays, torch tensors, DataArrays and floats and returns the same type
    (float dtype kept; integers become float32 tensors / float64 arrays). NaN passes through.
    """

    scale: float = 1.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _check_positive("scale", self.scale))
        object.__setattr__(self, "sigma", _check_positive("sigma", self.sigma))

    def forward(self, x: ArrayLike) -> ArrayLike:
        """Rain rate (mm/h) -> transformed value (dimensionless, >= 0); negatives count as 0."""
        if isinstance(x, xr.DataArray):
            return _wrap(x, self.forward(x.values), units="1")
        if isinstance(x, torch.Tensor):
            x = x if x.is_floating_point() else x.float()
            return torch.log1p(torch.clamp(x, min=0) / self.scale) / self.sigma
        a = np.asarray(x)
        a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)
        out = np.log1p(np.maximum(a, 0) / a.dtype.type(self.scale)) / a.dtype.type(self.sigma)
        return out if isinstance(x, np.ndarray) else out[()]

    def inverse(self, y: ArrayLike) -> ArrayLike:
        """Transformed value -> rain rate (mm/h), clipped to >= 0 for any real input."""
        if isinstance(y, xr.DataArray):
            return _wrap(y, self.inverse(y.values), units="mm/h")
        if isinstance(y, torch.Tensor):
            y = y if y.is_floating_point() else y.float()
            return torch.clamp(torch.expm1(y * self.sigma) * self.scale, min=0)
        a = np.asarray(y)
        a = a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)
        with np.errstate(over="ignore"):
            out = np.expm1(a * a.dtype.type(self.sigma)) * a.dtype.type(self.scale)
        out = np.maximum(out, 0)
        return out if isinstance(y, np.ndarray) else out[()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters: ``{"kind": "log1p", "scale": ..., "sigma": ...}``."""
        return {"kind": _KIND, "scale": self.scale, "sigma": self.sigma}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecipTransform:
        """Inverse of :meth:`to_dict`; ConfigError on unknown/missing keys or bad values."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"transform parameters must be a mapping, found {type(d).__name__}")
        keys = set(d)
        if keys - _KEYS or not {"scale", "sigma"} <= keys:
            raise ConfigError(
                f"transform parameters must have keys {sorted(_KEYS)} ('kind' optional), "
                f"found {sorted(map(str, keys))}"
            )
        if d.get("kind", _KIND) != _KIND:
            raise ConfigError(f"transform kind must be {_KIND!r}, found {d['kind']!r}")
        return cls(scale=d["scale"], sigma=d["sigma"])

    @classmethod
    def fit(cls, x: np.ndarray | torch.Tensor | xr.DataArray, scale: float = 1.0
            ) -> PrecipTransform:
        """``sigma`` = std of ``log1p(max(x, 0) / scale)`` over the finite pixels of ``x``."""
        scale = _check_positive("scale", scale)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        a = np.asarray(x.values if isinstance(x, xr.DataArray) else x, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size == 0:
            raise ConfigError("cannot fit PrecipTransform: the data holds no finite value")
        sigma = float(np.std(np.log1p(np.maximum(a, 0) / scale)))
        if not sigma > 0:
            raise ConfigError(
                f"cannot fit PrecipTransform: log1p(x/{scale}) has zero spread over {a.size} "
                "finite pixels (constant field, e.g. all dry); expected some rain"
            )
        return cls(scale=scale, sigma=sigma)


def _wrap(da: xr.DataArray, values: np.ndarray, *, units: str) -> xr.DataArray:
    """``da`` with new values and its ``units`` attribute replaced."""
    out = da.copy(data=values)
    out.attrs = {**da.attrs, "units": units}
    return out
