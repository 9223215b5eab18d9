"""Run configuration: frozen dataclasses are the schema, YAML files hold experiments.

``load_config(path, ["optim.lr=1e-4", "model.channel_mult=[1,2,2]"])`` reads a YAML file (sections
``data``, ``model``, ``diffusion``, ``optim``, ``train``), applies ``--set section.key=value``
overrides (values parsed as YAML) and validates everything before any work starts: unknown keys,
wrong types and impossible values raise a one-line :class:`~precipdiff.errors.ConfigError` that
names the key. ``RunConfig.to_dict()`` / ``RunConfig.from_dict()`` round-trip through JSON/YAML.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from precipdiff.errors import ConfigError
from precipdiff.yamlfile import apply_overrides, parse_override, read_yaml_mapping

Stage = Literal["correct", "downscale", "regression"]


@dataclass(frozen=True)
class DataConfig:
    """Where the patches come from.

    ``batch_size`` is the global batch (all ranks together); an epoch is ``samples_per_epoch``
    random patches; ``rain_weighted`` is the fraction of patches centred on a wet pixel;
    ``val_patches`` fixed patches of the ``val`` split are used for validation.
    ``source_map="eqm"`` (Stage I only) first maps the source through a pooled empirical
    quantile mapping fitted on the store's train split (``source_map_quantiles`` levels) and
    learns the residual around that: ``corrected = EQM(source) + sampled residual``; the
    mapping travels in the release metadata. ``store`` may also be a corpus store
    (``precipdiff prepare`` with ``sources:``): ``weighting`` then says how often each network
    is drawn, ``"frames"`` (in proportion to its train frames) or ``"equal"``, and
    ``networks`` which of its networks train (default all; a leave-one-network-out run names
    the others).
    """

    store: str = ""
    patch: int = 128
    batch_size: int = 8
    samples_per_epoch: int = 10_000
    num_workers: int = 0
    rain_weighted: float = 0.5
    augment: bool = True
    val_patches: int = 8
    source_map: str | None = None
    source_map_quantiles: int = 100
    weighting: Literal["frames", "equal"] = "frames"
    networks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The :class:`precipdiff.models.unet.UNetConfig` fields.

    ``cond_channels=None`` takes the channel count from the store (1 + number of extras);
    ``regression`` is resolved from the stage.
    """

    in_channels: int = 1
    cond_channels: int | None = None
    out_channels: int = 1
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 1
    attn_levels: tuple[int, ...] = (2,)
    dropout: float = 0.0
    noise_embedding: Literal["fourier", "positional"] = "fourier"
    regression: bool = False
    head_channels: int = 64
    products: tuple[str, ...] = ()

    def unet_config(self, cond_channels: int | None = None) -> Any:
        """The :class:`~precipdiff.models.unet.UNetConfig` (``cond_channels`` fills ``None``)."""
        from precipdiff.models.unet import UNetConfig

        fields = dataclasses.asdict(self)
        fields["cond_channels"] = self.cond_channels or cond_channels or 1
        return UNetConfig(**fields)


@dataclass(frozen=True)
class DiffusionConfig:
    """EDM noise distribution and the quick validation sampler."""

    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    val_sampler: str = "heun"
    val_steps: int = 8
    val_members: int = 4


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, linear warm-up then constant or cosine decay, clipping, gradient accumulation."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_samples: int = 10_000
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    accumulate: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """Stage, duration (samples or optimiser steps), EMA, checkpoint/validation cadence, output."""

    stage: Stage = "correct"
    duration_samples: int | None = None
    steps: int | None = None
    ema_halflife_samples: int = 50_000
    ema_rampup_ratio: float | None = 0.05
    checkpoint_every_samples: int = 50_000
    val_every_samples: int = 50_000
    log_every_steps: int = 10
    seed: int = 0
    bf16: bool = False
    out_dir: str = "runs/train"
    mean_from: str | None = None
    init_from: str | None = None
    tensorboard: bool = False
    product_dropout: float = 0.2


@dataclass(frozen=True)
class DistillConfig:
    """Few-step distillation (:mod:`precipdiff.training.distill`): with a ``teacher`` release,
    the run trains a student whose one Euler step on each interval of ``sigmas`` (then to 0)
    matches ``substeps`` DPM-Solver++(2M) steps of the teacher; start the student from the
    teacher with ``train.init_from``."""

    teacher: str | None = None
    sigmas: tuple[float, ...] = (80.0, 5.04, 0.317, 0.02)
    substeps: int = 6


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "distill": DistillConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """One training run: every section with its defaults."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists), JSON- and YAML-serialisable."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build and validate; raises ConfigError naming the first bad key."""
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a mapping of sections, got {type(d).__name__}")
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ConfigError(
                f"unknown config section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        parts = {name: _build_section(name, SECTIONS[name], d.get(name) or {}) for name in SECTIONS}
        cfg = cls(**parts)
        _check_values(cfg)
        return _resolve(cfg)

    @property
    def total_samples(self) -> int:
        """Training length in samples (``steps`` × global batch when given in steps)."""
        if self.train.steps is not None:
            return self.train.steps * self.data.batch_size
        return int(self.train.duration_samples or 0)

    @property
    def total_steps(self) -> int:
        return math.ceil(self.total_samples / self.data.batch_size)


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{name}.{key}' (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists → tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    return _coerce_scalar(key, value, tp)


def _coerce_scalar(key: str, value: Any, tp: type) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        if number is not None:
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if isinstance(value, str):
            return value
    got = "null" if value is None else f"{type(value).__name__} {value!r}"
    raise ConfigError(f"{key}: expected {tp.__name__}, got {got}")


def _known_sampler(name: str) -> bool:
    from precipdiff.diffusion.samplers import SAMPLERS

    return name in SAMPLERS


def _sampler_names() -> str:
    from precipdiff.diffusion.samplers import SAMPLERS

    return ", ".join(sorted(SAMPLERS))


def _check_values(cfg: RunConfig) -> None:
    """Impossible values → ConfigError naming the key; sizes beyond the release format's
    :data:`~precipdiff.release.LIMITS` are refused before anything is allocated."""
    from precipdiff.release import LIMITS

    d, m, o, t, f, g = cfg.data, cfg.model, cfg.optim, cfg.train, cfg.diffusion, cfg.distill
    levels = len(m.channel_mult)
    width = m.model_channels * max(m.channel_mult, default=1)
    checks = [
        ("data.store", bool(d.store), "must name a prepared store"),
        ("data.patch", d.patch > 0 and d.patch % 8 == 0,
         f"must be a positive multiple of 8, got {d.patch}"),
        ("data.patch", d.patch % 2 ** (levels - 1) == 0,
         f"must be a multiple of 2**(len(model.channel_mult)-1) = {2 ** (levels - 1)}"),
        ("data.batch_size", 0 < d.batch_size <= 65536,
         f"must lie in [1, 65536], got {d.batch_size}"),
        ("data.num_workers", d.num_workers >= 0, f"must be >= 0, got {d.num_workers}"),
        ("data.samples_per_epoch", d.samples_per_epoch >= d.batch_size,
         f"must be >= data.batch_size, got {d.samples_per_epoch}"),
        ("data.rain_weighted", 0 <= d.rain_weighted <= 1,
         f"must lie in [0, 1] (fraction of wet-centred patches), got {d.rain_weighted}"),
        ("data.val_patches", 0 <= d.val_patches <= 4096,
         f"must lie in [0, 4096], got {d.val_patches}"),
        ("data.source_map", d.source_map in (None, "eqm"),
         f"must be null or 'eqm' (pooled empirical quantile mapping), got {d.source_map!r}"),
        ("data.source_map", d.source_map is None or t.stage == "correct",
         f"applies to the 'correct' stage only, this run trains {t.stage!r}"),
        ("data.source_map_quantiles", d.source_map_quantiles >= 2,
         f"must be >= 2, got {d.source_map_quantiles}"),
        ("data.patch", d.patch <= LIMITS["patch"],
         f"must be <= {LIMITS['patch']}, got {d.patch}"),
        ("model.model_channels", m.model_channels > 0 and m.model_channels % 2 == 0,
         f"must be positive and even, got {m.model_channels}"),
        ("model.model_channels", m.model_channels <= LIMITS["model_channels"],
         f"must be <= {LIMITS['model_channels']}, got {m.model_channels}"),
        ("model.channel_mult", levels <= LIMITS["levels"] and width <= LIMITS["width"],
         f"at most {LIMITS['levels']} levels and model_channels * max(channel_mult) <= "
         f"{LIMITS['width']}, got {levels} levels and {width}"),
        ("model.num_blocks", m.num_blocks <= LIMITS["num_blocks"],
         f"must be <= {LIMITS['num_blocks']}, got {m.num_blocks}"),
        ("model.head_channels", m.head_channels <= LIMITS["head_channels"],
         f"must be <= {LIMITS['head_channels']}, got {m.head_channels}"),
        ("model.cond_channels", (m.cond_channels or 1) <= LIMITS["cond_channels"],
         f"must be <= {LIMITS['cond_channels']}, got {m.cond_channels}"),
        ("model.in_channels", 0 < m.in_channels <= LIMITS["in_channels"],
         f"must lie in [1, {LIMITS['in_channels']}], got {m.in_channels}"),
        ("model.out_channels", 0 < m.out_channels <= LIMITS["out_channels"],
         f"must lie in [1, {LIMITS['out_channels']}], got {m.out_channels}"),
        ("model.head_channels", m.head_channels > 0, f"must be positive, got {m.head_channels}"),
        ("model.channel_mult", levels > 0 and min(m.channel_mult) > 0,
         "must be non-empty and positive"),
        ("model.attn_levels", all(0 <= a < levels for a in m.attn_levels),
         f"levels must lie in [0, {levels})"),
        ("model.num_blocks", m.num_blocks > 0, f"must be positive, got {m.num_blocks}"),
        ("model.dropout", 0.0 <= m.dropout < 1.0, f"must lie in [0, 1), got {m.dropout}"),
        ("model.cond_channels", m.cond_channels is None or m.cond_channels > 0, "must be positive"),
        ("diffusion.sigma_data", f.sigma_data > 0, f"must be positive, got {f.sigma_data}"),
        ("diffusion.P_std", f.P_std > 0, f"must be positive, got {f.P_std}"),
        ("diffusion.val_steps", 0 < f.val_steps <= 1000,
         f"must lie in [1, 1000], got {f.val_steps}"),
        ("diffusion.val_sampler", _known_sampler(f.val_sampler),
         f"unknown sampler {f.val_sampler!r} (known: {_sampler_names()})"),
        ("diffusion.val_members", 2 <= f.val_members <= 256,
         f"must lie in [2, 256] (>= 2 for CRPS), got {f.val_members}"),
        ("optim.lr", o.lr > 0, f"must be positive, got {o.lr}"),
        ("optim.betas", all(0 <= b < 1 for b in o.betas), f"must lie in [0, 1), got {o.betas}"),
        ("optim.weight_decay", o.weight_decay >= 0, f"must be >= 0, got {o.weight_decay}"),
        ("optim.warmup_samples", o.warmup_samples >= 0, f"must be >= 0, got {o.warmup_samples}"),
        ("optim.min_lr_ratio", 0 <= o.min_lr_ratio <= 1,
         f"must lie in [0, 1], got {o.min_lr_ratio}"),
        ("optim.grad_clip", o.grad_clip >= 0, f"must be >= 0 (0 = off), got {o.grad_clip}"),
        ("optim.accumulate", o.accumulate > 0, f"must be positive, got {o.accumulate}"),
        ("optim.accumulate", d.batch_size % max(o.accumulate, 1) == 0,
         f"must divide data.batch_size={d.batch_size}, got {o.accumulate}"),
        ("train.steps", (t.steps is None) != (t.duration_samples is None),
         "give exactly one of train.steps and train.duration_samples"),
        ("train.steps", t.steps is None or t.steps > 0, f"must be positive, got {t.steps}"),
        ("train.duration_samples", t.duration_samples is None or t.duration_samples > 0,
         f"must be positive, got {t.duration_samples}"),
        ("train.ema_halflife_samples", t.ema_halflife_samples > 0, "must be positive"),
        ("train.ema_rampup_ratio", t.ema_rampup_ratio is None or t.ema_rampup_ratio > 0,
         "must be positive or null"),
        ("train.checkpoint_every_samples", t.checkpoint_every_samples > 0, "must be positive"),
        ("train.val_every_samples", t.val_every_samples > 0, "must be positive"),
        ("train.log_every_steps", t.log_every_steps > 0, "must be positive"),
        ("train.out_dir", bool(t.out_dir), "must name a directory"),
        ("train.mean_from", t.mean_from is None or t.stage == "downscale",
         f"only applies to stage 'downscale', not {t.stage!r}"),
        ("distill.teacher", g.teacher is None or t.stage != "regression",
         "applies to the diffusion stages only, not 'regression'"),
        ("distill.sigmas", len(g.sigmas) > 0 and all(s > 0 for s in g.sigmas) and all(
            b < a for a, b in zip(g.sigmas[:-1], g.sigmas[1:], strict=False)),
         f"must be positive and strictly decreasing, got {list(g.sigmas)}"),
        ("model.products", not m.products or t.stage != "regression",
         "a regression net has no noise embedding to condition on a product"),
        ("train.product_dropout", 0 <= t.product_dropout <= 1,
         f"must lie in [0, 1] (share of samples trained as 'any product'), got "
         f"{t.product_dropout}"),
        ("distill.substeps", 0 < g.substeps <= 64, f"must lie in [1, 64], got {g.substeps}"),
    ]
    for key, ok, message in checks:
        if not ok:
            raise ConfigError(f"{key}: {message}")


def _resolve(cfg: RunConfig) -> RunConfig:
    """Derived fields: ``model.regression`` follows the stage."""
    regression = cfg.train.stage == "regression"
    if cfg.model.regression != regression:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, regression=regression))
    return cfg


def load_config(path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read ``path`` (YAML, optional), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path, "run config")
    for item in overrides:
        section = parse_override(item)[0][0]
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {item!r}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping, got {type(raw[section]).__name__}")
    return RunConfig.from_dict(apply_overrides(raw, overrides, depth=2))


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from precipdiff.atomic import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return Path(path)
