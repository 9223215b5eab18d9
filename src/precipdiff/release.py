"""Release weights: one trained stage in one ``.safetensors`` file, and its format.

This module is the one home of the weights format: training writes a :class:`Release`, inference
(:mod:`precipdiff.pipeline`) reads one; neither knows the file layout.

Format ``precipdiff-weights/1``
-------------------------------
Tensors: the EMA weights of the trained U-Net under its own state-dict names (no prefix). A
``downscale`` stage trained around a frozen regression mean (CorrDiff style, ``train.mean_from``)
also holds that net's tensors under the prefix ``mean_net.``. A ``regression`` stage holds its
regression net without prefix. Every tensor is floating point and finite. The EDM preconditioning
has no weights; it is rebuilt from ``sigma_data``.

Metadata (safetensors header; every value a string, JSON where noted)::

    format      "precipdiff-weights/1"
    stage       "correct" | "downscale" | "regression"
    model       UNetConfig fields as a JSON object (the denoising net, or the regression net)
    transform   PrecipTransform.to_dict() as JSON, e.g. {"kind": "log1p", "scale": 1, "sigma": 0.23}
    factor      integer grid factor LR -> HR of the training store (e.g. "10")
    pooling     "max" | "mean": how the store coarsened the reference (block maximum | areal mean);
                files without it were trained on max pooling
    semantics   (optional) JSON {"aggregation": "block_maximum" | "areal_mean",
                "quantity": "rate", "units": "mm/h"}: what a coarse-grid value means to the model.
                Files without it (all written before it existed, the shipped ones included) get
                the aggregation of ``pooling``, whose own default is "max": the shipped weights
                were trained on max-pooled MRMS.
    sigma_data  (optional, default "0.5") EDM sigma_data, a positive float
    patch       (optional, default "64") training patch size in pixels (the nets apply to any size)
    extra_names (optional, default "[]") JSON list of the extra conditioning channels, in order
    extra_stats (optional, default "{}") JSON {name: {"mean": float, "std": float}}: the training
                store's statistics that standardise each extra channel (one per extra name)
    source_map  (optional) JSON of QuantileMapping.to_dict(): the pooled EQM a Stage I trained
                with ``data.source_map: eqm`` applies to its input first
    mean_model  (with mean_net.* tensors, and only then) UNetConfig JSON of the regression net
    temporal    (optional, ``downscale`` only, no mean net) TemporalConfig JSON: the file holds a
                spatiotemporal Stage II (:class:`~precipdiff.models.temporal.SpatioTemporalUNet`,
                its temporal blocks' tensors under ``temporal.``) that samples clips of frames
    distilled   (optional note) JSON {"sampler": "euler", "sigmas": [...], ...}: a few-step
                student (:mod:`precipdiff.training.distill`) that ``predict`` samples with one
                Euler step per interval of ``sigmas`` (then to 0)
    config      the resolved RunConfig as a JSON object (provenance; not needed to apply the stage)
    version     precipdiff version that wrote the file
    any other key (e.g. ``exported_from``) is kept as a free-form note

Checks on load (:meth:`Release.load`)
------------------------------------
Every problem is one :class:`~precipdiff.errors.CheckpointError` naming the file and the key:
unreadable files, missing or garbled JSON, wrong types, unknown stage kinds or poolings, absurd
sizes (bounds in :data:`LIMITS`, checked before any network is allocated: the nets are first built
on the ``meta`` device and their shapes compared with the file's tensors) and non-finite tensors.
Writes are atomic (temporary sibling, then rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from precipdiff import __version__
from precipdiff.atomic import atomic_path
from precipdiff.baselines.quantile_mapping import QuantileMapping
from precipdiff.data.transforms import PrecipTransform
from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.models.temporal import SpatioTemporalUNet, TemporalConfig
from precipdiff.models.unet import UNet, UNetConfig

WEIGHTS_FORMAT = "precipdiff-weights/1"
STAGE_KINDS = ("correct", "downscale", "regression")
POOLINGS = ("max", "mean")
AGGREGATION = {"max": "block_maximum", "mean": "areal_mean"}
QUANTITIES = ("rate",)
MEAN_PREFIX = "mean_net."
REQUIRED_METADATA = ("stage", "config", "model", "transform", "factor", "version")
KNOWN_METADATA = (*REQUIRED_METADATA, "format", "pooling", "semantics", "sigma_data", "patch",
                  "extra_names", "extra_stats", "source_map", "mean_model", "temporal")
# Sane upper bounds of a network config and the stage's sizes (refused before allocation).
LIMITS = {"model_channels": 1024, "channel_mult": 64, "levels": 8, "num_blocks": 16,
          "in_channels": 64, "cond_channels": 256, "out_channels": 64, "head_channels": 1024,
          "coord_frequencies": 64, "coord_channels": 16, "factor": 100, "patch": 4096,
          "width": 8192, "extras": 255, "frames": 64}


class _Bad(Exception):
    """A problem with one metadata key (turned into a CheckpointError naming the file)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"metadata {key!r}: {problem}")


@dataclass(frozen=True)
class InputSemantics:
    """What a coarse-grid value means: ``aggregation`` of the fine field over the cell
    (``"block_maximum"`` for max pooling, ``"areal_mean"`` for mean pooling) and the ``quantity``
    (``"rate"`` in ``units`` mm/h; accumulations are turned into mean rates by ``prepare``)."""

    aggregation: str = "block_maximum"
    quantity: str = "rate"
    units: str = "mm/h"

    @classmethod
    def for_pooling(cls, pooling: str) -> InputSemantics:
        return cls(aggregation=AGGREGATION[pooling])

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Release:
    """One trained stage as shipped: tensors plus everything needed to apply them correctly.

    ``state`` holds the main net's tensors (``model``); ``mean_state`` those of the frozen
    regression mean (``mean_model``) of a CorrDiff-style ``downscale`` stage. ``extra_stats``
    maps each extra channel name to ``{"mean", "std"}``. ``notes`` are free-form metadata
    strings; ``path`` and ``sha256`` describe the file a release was loaded from.
    """

    stage: str
    model: UNetConfig
    state: Mapping[str, torch.Tensor]
    transform: PrecipTransform
    factor: int = 1
    pooling: str = "max"
    semantics: InputSemantics = field(default_factory=InputSemantics)
    sigma_data: float = 0.5
    patch: int = 64
    extra_names: tuple[str, ...] = ()
    extra_stats: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source_map: QuantileMapping | None = None
    mean_model: UNetConfig | None = None
    mean_state: Mapping[str, torch.Tensor] | None = None
    temporal: TemporalConfig | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    version: str = __version__
    notes: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""

    @property
    def distilled_sigmas(self) -> tuple[float, ...] | None:
        """The noise levels a distilled student steps between with Euler steps (its
        ``distilled`` note, :mod:`precipdiff.training.distill`), without the trailing 0;
        None for a release that is not distilled."""
        note = self.notes.get("distilled")
        return _distilled(note) if note else None

    # ------------------------------------------------------------------ writing
    def metadata(self) -> dict[str, str]:
        """The safetensors metadata of this release (see the module docstring)."""
        meta = {"format": WEIGHTS_FORMAT, "stage": self.stage,
                "config": json.dumps(dict(self.config), sort_keys=True),
                "model": json.dumps(dataclasses.asdict(self.model)),
                "transform": json.dumps(self.transform.to_dict()),
                "factor": str(self.factor), "pooling": self.pooling,
                "semantics": json.dumps(self.semantics.to_dict()),
                "sigma_data": repr(float(self.sigma_data)), "patch": str(self.patch),
                "extra_names": json.dumps(list(self.extra_names)),
                "extra_stats": json.dumps({k: dict(v) for k, v in self.extra_stats.items()}),
                "version": self.version}
        if self.source_map is not None:
            meta["source_map"] = json.dumps(self.source_map.to_dict())
        if self.mean_model is not None:
            meta["mean_model"] = json.dumps(dataclasses.asdict(self.mean_model))
        if self.temporal is not None:
            meta["temporal"] = json.dumps(dataclasses.asdict(self.temporal))
        return {**{k: v for k, v in self.notes.items() if k not in meta}, **meta}

    def tensors(self) -> dict[str, torch.Tensor]:
        """All tensors as stored: the main net's, then ``mean_net.``-prefixed ones."""
        out = {k: v.detach().cpu().contiguous().clone() for k, v in self.state.items()}
        for k, v in (self.mean_state or {}).items():
            out[MEAN_PREFIX + k] = v.detach().cpu().contiguous().clone()
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Check this release as :meth:`load` would, then write it atomically to ``path``."""
        from safetensors.torch import save_file

        tensors, meta = self.tensors(), self.metadata()
        parse_release(tensors, meta, str(path))  # never write what cannot be read back
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike) -> Release:
        """Read and check a release file; one CheckpointError naming the file and the problem."""
        tensors, meta, digest = _read(Path(path))
        return dataclasses.replace(parse_release(tensors, meta, str(path)), sha256=digest)

    def build_net(self) -> UNet:
        """The main net with its weights, in eval mode, gradients off (CPU); a
        :class:`SpatioTemporalUNet` when the release is temporal."""
        return _build(self.model, self.state, self.path, "model", self.temporal)

    def build_mean_net(self) -> UNet | None:
        """The frozen regression mean of a CorrDiff-style stage (None without one)."""
        if self.mean_model is None or self.mean_state is None:
            return None
        return _build(self.mean_model, self.mean_state, self.path, "mean_model")


# ----------------------------------------------------------------------------- low level
def save_weights(path: str | os.PathLike, ema_state: Mapping[str, torch.Tensor], *,
                 metadata: Mapping[str, str],
                 mean_state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write release weights from a state dict and metadata strings (checked as on load)."""
    tensors = dict(ema_state)
    if mean_state is not None:
        tensors.update({MEAN_PREFIX + k: v for k, v in mean_state.items()})
    return parse_release(tensors, {"format": WEIGHTS_FORMAT, **metadata}, str(path)).save(path)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read and check release weights: ``(tensors, metadata as stored)``."""
    tensors, meta, _ = _read(Path(path))
    parse_release(tensors, meta, str(path))
    return tensors, meta


def split_mean_net(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, torch.Tensor]]:
    """Separate ``mean_net.*`` tensors from the main net's: ``(net, mean_net)``."""
    net = {k: v for k, v in tensors.items() if not k.startswith(MEAN_PREFIX)}
    mean = {k[len(MEAN_PREFIX):]: v for k, v in tensors.items() if k.startswith(MEAN_PREFIX)}
    return net, mean


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{path}: corrupt or not a safetensors file ({first[:200]})") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return tensors, metadata, digest


# ----------------------------------------------------------------------------- parsing
def parse_release(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                  path: str) -> Release:
    """Check tensors and metadata strings and build the :class:`Release` (CheckpointError)."""
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise CheckpointError(
            f"{path}: not precipdiff weights (metadata lacks {', '.join(missing)})")
    try:
        return _parse(tensors, meta, path)
    except _Bad as bad:
        raise CheckpointError(f"{path}: {bad}") from None


def _parse(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: str) -> Release:
    bad_types = sorted(k for k, v in meta.items() if not isinstance(v, str))
    if bad_types:
        key = bad_types[0]
        raise _Bad(key, f"values must be strings, found {type(meta[key]).__name__}")
    if meta.get("format", WEIGHTS_FORMAT) != WEIGHTS_FORMAT:
        raise _Bad("format", f"{meta['format']!r}, expected {WEIGHTS_FORMAT!r}")
    stage = _choice(meta, "stage", STAGE_KINDS)
    pooling = _choice({"pooling": "max", **meta}, "pooling", POOLINGS)
    model = _unet_config(meta, "model")
    mean_model = _unet_config(meta, "mean_model") if "mean_model" in meta else None
    extra_names = _extra_names(meta)
    temporal = _temporal_config(meta, model) if "temporal" in meta else None
    release = Release(
        stage=stage, model=model, state={}, transform=_transform(meta),
        factor=_bounded_int(meta, "factor", 1, LIMITS["factor"]), pooling=pooling,
        semantics=_semantics(meta, pooling),
        sigma_data=_positive_float(meta, "sigma_data", "0.5"),
        patch=_bounded_int(meta, "patch", 1, LIMITS["patch"], "64"),
        extra_names=extra_names, extra_stats=_extra_stats(meta, extra_names),
        source_map=_source_map(meta), mean_model=mean_model, temporal=temporal,
        config=_json_object(meta, "config"),
        version=meta["version"], path=path,
        notes={k: v for k, v in meta.items() if k not in KNOWN_METADATA})
    if stage != "regression" and model.regression:
        raise _Bad("model", f"a {stage!r} stage needs a denoising net, found regression=true")
    if stage == "regression" and not model.regression:
        raise _Bad("model", "a 'regression' stage needs regression=true")
    if mean_model is not None and (stage != "downscale" or not mean_model.regression):
        raise _Bad("mean_model", "only a 'downscale' stage may carry a regression mean net")
    if temporal is not None and (stage != "downscale" or mean_model is not None):
        raise _Bad("temporal", "only a 'downscale' stage without a regression mean may be "
                   "temporal")
    if "distilled" in meta:
        _distilled(meta["distilled"])
    state, mean_state = _check_tensors(tensors, release)
    return dataclasses.replace(release, state=state, mean_state=mean_state)


def _distilled(note: str) -> tuple[float, ...]:
    """The noise levels of a ``distilled`` note: positive, strictly decreasing, finite."""
    try:
        sigmas = tuple(float(v) for v in json.loads(note)["sigmas"])
    except (ValueError, TypeError, KeyError) as exc:
        raise _Bad("distilled", f"not a JSON object with a list 'sigmas' ({exc})") from None
    ok = 0 < len(sigmas) <= 1000 and all(math.isfinite(v) and v > 0 for v in sigmas)
    if not ok or any(b >= a for a, b in zip(sigmas[:-1], sigmas[1:], strict=False)):
        raise _Bad("distilled", f"sigmas must be positive and strictly decreasing, got "
                   f"{list(sigmas)[:8]}")
    return sigmas


def _choice(meta: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str:
    if meta[key] not in allowed:
        raise _Bad(key, f"{meta[key][:80]!r}, expected one of {', '.join(allowed)}")
    return meta[key]


def _json(meta: Mapping[str, str], key: str, default: str | None = None) -> Any:
    text = meta.get(key, default)
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise _Bad(key, f"not valid JSON ({str(exc)[:80]})") from None


def _json_object(meta: Mapping[str, str], key: str) -> dict[str, Any]:
    value = _json(meta, key)
    if not isinstance(value, dict):
        raise _Bad(key, f"expected a JSON object, found {type(value).__name__}")
    return value


def _bounded_int(meta: Mapping[str, str], key: str, low: int, high: int,
                 default: str | None = None) -> int:
    text = meta.get(key, default)
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise _Bad(key, f"expected an integer, found {str(text)[:40]!r}") from None
    if not low <= value <= high:
        raise _Bad(key, f"{value} outside the sane range [{low}, {high}]")
    return value


def _positive_float(meta: Mapping[str, str], key: str, default: str) -> float:
    text = meta.get(key, default)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _Bad(key, f"expected a number, found {str(text)[:40]!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise _Bad(key, f"must be finite and > 0, found {value}")
    return value


def _transform(meta: Mapping[str, str]) -> PrecipTransform:
    try:
        return PrecipTransform.from_dict(_json(meta, "transform"))
    except ConfigError as exc:
        raise _Bad("transform", str(exc)) from None


def _semantics(meta: Mapping[str, str], pooling: str) -> InputSemantics:
    if "semantics" not in meta:
        return InputSemantics.for_pooling(pooling)
    d = _json_object(meta, "semantics")
    fields = {f.name for f in dataclasses.fields(InputSemantics)}
    if set(d) != fields or not all(isinstance(v, str) for v in d.values()):
        raise _Bad("semantics", f"expected string keys {sorted(fields)}, found {sorted(d)}")
    sem = InputSemantics(**d)
    if sem.aggregation != AGGREGATION[pooling]:
        raise _Bad("semantics", f"aggregation {sem.aggregation!r} contradicts pooling {pooling!r}")
    if sem.quantity not in QUANTITIES or sem.units != "mm/h":
        raise _Bad("semantics", f"quantity {sem.quantity!r} in {sem.units!r}, expected a rate "
                   "in 'mm/h'")
    return sem


def _extra_names(meta: Mapping[str, str]) -> tuple[str, ...]:
    names = _json(meta, "extra_names", "[]")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _Bad("extra_names", "expected a JSON list of strings")
    if len(names) > LIMITS["extras"] or len(set(names)) != len(names):
        raise _Bad("extra_names", f"{len(names)} names, expected at most {LIMITS['extras']} "
                   "distinct ones")
    return tuple(names)


def _extra_stats(meta: Mapping[str, str], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    stats = _json(meta, "extra_stats", "{}")
    if not isinstance(stats, dict):
        raise _Bad("extra_stats", f"expected a JSON object, found {type(stats).__name__}")
    out = {}
    for name in names:
        s = stats.get(name)
        ok = isinstance(s, dict) and all(
            isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)
            and math.isfinite(s[k]) for k in ("mean", "std"))
        if not ok or s["std"] <= 0:
            raise _Bad("extra_stats", f"extra {name!r} needs a finite mean and a positive std, "
                       f"found {str(s)[:80]}")
        out[name] = {"mean": float(s["mean"]), "std": float(s["std"])}
    return out


def _source_map(meta: Mapping[str, str]) -> QuantileMapping | None:
    if "source_map" not in meta:
        return None
    d = _json(meta, "source_map")
    try:
        qm = QuantileMapping.from_dict(d)
    except (ConfigError, AttributeError, TypeError, ValueError) as exc:
        raise _Bad("source_map", str(exc)[:200]) from None
    if not (qm.q_src is not None and torch.isfinite(torch.as_tensor(qm.q_src)).all()
            and torch.isfinite(torch.as_tensor(qm.q_ref)).all()):
        raise _Bad("source_map", "quantiles must be finite")
    return qm


_UNET_TYPES = typing.get_type_hints(UNetConfig)


def _unet_config(meta: Mapping[str, str], key: str) -> UNetConfig:
    """UNetConfig from JSON with the field types and :data:`LIMITS` checked (nothing allocated)."""
    d = _json_object(meta, key)
    unknown = sorted(set(d) - set(_UNET_TYPES))
    if unknown:
        raise _Bad(key, f"unknown network field {unknown[0]!r}")
    fields = {name: _field(key, name, value) for name, value in d.items()}
    try:
        cfg = UNetConfig(**fields)
    except (ConfigError, TypeError, ValueError) as exc:
        raise _Bad(key, str(exc)[:200]) from None
    levels = len(cfg.channel_mult)
    sizes = {"model_channels": cfg.model_channels, "channel_mult": max(cfg.channel_mult, default=1),
             "levels": levels, "num_blocks": cfg.num_blocks, "in_channels": cfg.in_channels,
             "cond_channels": cfg.cond_channels, "out_channels": cfg.out_channels,
             "head_channels": cfg.head_channels, "coord_frequencies": cfg.coord_frequencies,
             "coord_channels": cfg.coord_channels,
             "width": cfg.model_channels * max(cfg.channel_mult, default=1)}
    low = {"coord_frequencies": 0, "coord_channels": 0}
    for name, value in sizes.items():
        if not low.get(name, 1) <= value <= LIMITS[name]:
            raise _Bad(key, f"{name} = {value} outside the sane range "
                       f"[{low.get(name, 1)}, {LIMITS[name]}]")
    if not all(0 <= a < levels for a in cfg.attn_levels) or not 0 <= cfg.dropout < 1:
        raise _Bad(key, f"attn_levels {cfg.attn_levels} / dropout {cfg.dropout} out of range")
    return cfg


_TEMPORAL_TYPES = typing.get_type_hints(TemporalConfig)


def _temporal_config(meta: Mapping[str, str], model: UNetConfig) -> TemporalConfig:
    """TemporalConfig from JSON, field types and sizes checked against the U-Net's levels."""
    d = _json_object(meta, "temporal")
    unknown = sorted(set(d) - set(_TEMPORAL_TYPES))
    if unknown:
        raise _Bad("temporal", f"unknown field {unknown[0]!r}")
    fields = {}
    for name, value in d.items():
        if name == "attn_levels" and value is None:
            fields[name] = None
        elif name in ("attn_levels", "conv_levels"):
            if not isinstance(value, list) or not all(_is_int(v) for v in value):
                raise _Bad("temporal", f"{name}: expected a list of integers")
            if not all(0 <= v < len(model.channel_mult) for v in value):
                raise _Bad("temporal", f"{name} {value} outside the U-Net's levels")
            fields[name] = tuple(value)
        else:
            fields[name] = _field("temporal", name, value, _TEMPORAL_TYPES)
    try:
        cfg = TemporalConfig(**fields)
    except (ConfigError, TypeError, ValueError) as exc:
        raise _Bad("temporal", str(exc)[:200]) from None
    for name, high in (("frames", LIMITS["frames"]), ("head_channels", LIMITS["head_channels"]),
                       ("embed_channels", LIMITS["head_channels"])):
        if not 1 <= getattr(cfg, name) <= high:
            raise _Bad("temporal", f"{name} = {getattr(cfg, name)} outside [1, {high}]")
    return cfg


def _field(key: str, name: str, value: Any, types: Mapping[str, Any] = _UNET_TYPES) -> Any:
    tp = types[name]
    if tp == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 64
                                                  for v in value) or len(value) > 64:
            raise _Bad(key, f"{name}: expected a list of names, found {str(value)[:40]}")
        return tuple(value)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            raise _Bad(key, f"{name}: expected a list of integers, found {str(value)[:40]}")
        return tuple(value)
    ok = {int: _is_int(value), bool: isinstance(value, bool), str: isinstance(value, str),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}[tp]
    if not ok:
        raise _Bad(key, f"{name}: expected {tp.__name__}, found {str(value)[:40]!r}")
    return float(value) if tp is float else value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_tensors(tensors: Mapping[str, torch.Tensor], release: Release
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Split, then compare names and shapes with the configs (nets built on ``meta``) and
    refuse non-floating or non-finite tensors."""
    state, mean_state = split_mean_net(tensors)
    if bool(mean_state) != (release.mean_model is not None):
        raise _Bad("mean_model", "mean_net.* tensors and 'mean_model' must come together")
    _fits(release.model, state, "model", release.temporal)
    if release.mean_model is not None:
        _fits(release.mean_model, mean_state, "mean_model")
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise _Bad("model", f"tensor {name!r} has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{release.path}: tensor {name!r} holds NaN or Inf values; "
                                  "the weights are broken (diverged training?)")
    return state, (mean_state or None)


def _net(cfg: UNetConfig, temporal: TemporalConfig | None) -> UNet:
    return UNet(cfg) if temporal is None else SpatioTemporalUNet(cfg, temporal)


def _fits(cfg: UNetConfig, state: Mapping[str, torch.Tensor], key: str,
          temporal: TemporalConfig | None = None) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in _net(cfg, temporal).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        what = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}")
        raise _Bad(key, f"the tensors do not fit the network config ({what}; "
                   f"{len(missing)} missing, {len(unexpected)} unexpected)")
    wrong = [k for k in expected if expected[k] != found[k]]
    if wrong:
        raise _Bad(key, f"the tensors do not fit the network config (tensor {wrong[0]!r} has "
                   f"shape {found[wrong[0]]}, expected {expected[wrong[0]]})")


def _build(cfg: UNetConfig, state: Mapping[str, torch.Tensor], path: str, key: str,
           temporal: TemporalConfig | None = None) -> UNet:
    net = _net(cfg, temporal)
    try:
        net.load_state_dict(dict(state))
    except RuntimeError as exc:  # shapes were checked on load; this is a programming error
        raise CheckpointError(f"{path}: {key}: weights do not fit ({str(exc)[:200]})") from None
    return net.eval().requires_grad_(False)


__all__ = ["InputSemantics", "Release", "load_weights", "parse_release", "save_weights",
           "split_mean_net"]
