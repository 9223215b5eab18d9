"""Training the spatiotemporal Stage II on clips (:mod:`precipdiff.models.temporal`).

``train_temporal(cfg)`` is a small single-process loop beside :func:`precipdiff.training.loop.
train` that reuses its pieces (the run config's ``data``/``model``/``diffusion``/``optim``/
``train`` sections, AdamW and the learning-rate schedule, the EMA, per-sample noise seeded by
the sample's serial number, the EDM loss sum): the denoiser sees the ``B*T`` frames of ``B``
clips folded into the batch, with each clip's frame time offsets.

Noise level (``noise``): ``"clip"`` (default) draws one ``sigma`` per clip, broadcast to its
frames, as video diffusion models do; ``"frame"`` draws one per frame (STVD's option). The
unit-normal noise is independent per frame, or with ``noise_correlation`` ``phi`` correlated
in time within the clip as a stationary AR(1) process (lag-``k`` correlation ``phi**k``; a
temporally correlated noise prior, Ge et al. 2023), the noise the sequence sampler starts
from (:func:`precipdiff.pipeline.sequence.sequence_noise`); ``noise_drift`` moves its
correlated part with each clip's rain (:func:`clip_drift`), as ``predict`` does for weights
trained so (note ``temporal_noise_drift``).

``train.init_from`` names a per-frame ``downscale`` release: the temporal model then starts as
exactly that model (zero-initialised temporal blocks) and ``freeze_spatial`` trains the
temporal blocks only; ``spatial_lr_ratio`` (0 to 1) trains the spatial weights too, at that
fraction of the learning rate (fine-tuning them to clips without forgetting the frames).
The EMA net is written as release weights with the ``temporal`` key
(:func:`save_temporal`, :mod:`precipdiff.release`); ``precipdiff train --config`` runs this
loop when the config has a ``temporal`` section (:func:`load_temporal_config`). Not yet here:
DDP, resume, a CorrDiff regression mean, validation during training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from precipdiff.errors import CheckpointError, ConfigError, PrecipdiffError
from precipdiff.models.temporal import SpatioTemporalUNet, TemporalConfig, fold_clips
from precipdiff.release import InputSemantics, Release
from precipdiff.training.config import RunConfig
from precipdiff.training.objective import (
    draw_noise,
    edm_loss_sum,
    network_labels,
    product_labels,
    sample_generator,
)

log = logging.getLogger(__name__)

NoiseMode = Literal["clip", "frame"]


@dataclass(frozen=True)
class TemporalRunConfig:
    """A temporal run: the per-frame run config plus the temporal network and noise mode."""

    run: RunConfig
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    noise: NoiseMode = "clip"
    freeze_spatial: bool = False
    spatial_lr_ratio: float = 1.0
    noise_correlation: float = 0.0
    noise_drift: bool = False

    def __post_init__(self) -> None:
        if self.noise not in ("clip", "frame"):
            raise ConfigError(f"temporal noise: got {self.noise!r}, expected 'clip' or 'frame'")
        if not 0.0 <= self.spatial_lr_ratio <= 1.0:
            raise ConfigError(f"temporal.spatial_lr_ratio: {self.spatial_lr_ratio} is not in "
                              "[0, 1]")
        if not 0.0 <= self.noise_correlation < 1.0:
            raise ConfigError(f"temporal.noise_correlation: {self.noise_correlation} is not "
                              "in [0, 1)")
        if self.run.train.stage != "downscale":
            raise ConfigError(f"train.stage: the temporal model is a 'downscale' stage, got "
                              f"{self.run.train.stage!r}")
        if self.run.train.mean_from:
            raise ConfigError("train.mean_from: a regression mean is not supported by the "
                              "temporal training yet")
        if self.noise_drift and self.noise_correlation == 0.0:
            raise ConfigError("temporal.noise_drift: needs a noise_correlation above 0 "
                              "(independent noise has nothing to carry with the rain)")
        if self.freeze_spatial and self.spatial_lr_ratio not in (0.0, 1.0):
            raise ConfigError("temporal: freeze_spatial and a spatial_lr_ratio between 0 and 1 "
                              "contradict each other; give one")

    @property
    def spatial_frozen(self) -> bool:
        """Only the temporal blocks train."""
        return self.freeze_spatial or self.spatial_lr_ratio == 0.0

    @property
    def spatial_kept(self) -> bool:
        """The spatial weights stay (nearly) those of ``train.init_from``: frozen or trained
        at a reduced learning rate."""
        return bool(self.run.train.init_from) and (self.spatial_frozen
                                                   or self.spatial_lr_ratio < 1.0)

    def to_dict(self) -> dict[str, Any]:
        """The run config's sections plus the ``temporal`` section (TemporalConfig fields,
        ``noise``, ``freeze_spatial``, ``spatial_lr_ratio``, ``noise_correlation``,
        ``noise_drift``): what :func:`load_temporal_config` reads, as plain JSON/YAML types."""
        temporal = {**dataclasses.asdict(self.temporal), "noise": self.noise,
                    "freeze_spatial": self.freeze_spatial,
                    "spatial_lr_ratio": self.spatial_lr_ratio,
                    "noise_correlation": self.noise_correlation,
                    "noise_drift": self.noise_drift}
        return json.loads(json.dumps({**self.run.to_dict(), "temporal": temporal}))


@dataclass
class TemporalResult:
    """What a run gives back: the trained net, its EMA copy and the loss of every step."""

    net: SpatioTemporalUNet
    ema: nn.Module
    losses: list[float]
    path: Path | None = None


def clip_noise(serials: list[int], frames: int, shape: tuple[int, ...], *, seed: int,
               mode: NoiseMode, P_mean: float, P_std: float, correlation: float = 0.0,
               drift: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-frame ``sigma (B*T,)`` and unit noise ``(B*T, *shape)`` of clips ``serials``.

    ``mode="clip"``: the clip's ``sigma`` (EDM, ``ln sigma ~ N(P_mean, P_std^2)``) repeated
    over its frames; ``"frame"``: ``T`` independent draws per clip (an extra stream).
    ``correlation`` ``phi``: the unit noise of frame ``t`` is ``phi n(t-1) + sqrt(1 - phi^2)
    e(t)`` (stationary AR(1), unit variance). ``drift (B, T, 2)``: each clip's rain
    displacement per frame (pixels of ``shape``, ``(dy, dx)``); ``n(t-1)`` is then moved by
    the rounded displacement between the frames (periodic), so the correlated part of the
    noise travels with the rain, as the sequence sampler's (:func:`~precipdiff.pipeline.
    sequence.sequence_noise` with a drift). Everything about clip ``i`` depends only on
    ``(seed, serials[i])`` (and its drift).
    """
    sigma, noise = draw_noise(serials, (frames, *shape), seed=seed, P_mean=P_mean, P_std=P_std)
    if correlation > 0:
        noise, fresh = noise.clone(), math.sqrt(1 - correlation**2)
        steps = None
        if drift is not None:
            at = torch.round(drift.detach().cpu().double()).long()
            steps = (at[:, 1:] - at[:, :-1]).tolist()  # (B, T-1, 2)
        for t in range(1, frames):
            before = noise[:, t - 1]
            if steps is not None:
                before = torch.stack([torch.roll(before[i], tuple(steps[i][t - 1]), dims=(-2, -1))
                                      for i in range(len(serials))])
            noise[:, t] = correlation * before + fresh * noise[:, t]
    if mode == "frame":
        sig = [torch.exp(torch.randn(frames, generator=sample_generator(seed, s, 2)) * P_std
                         + P_mean) for s in serials]
        per_frame = torch.cat(sig)
    else:
        per_frame = sigma.repeat_interleave(frames)
    return per_frame, fold_clips(noise)


def clip_drift(cond: Tensor) -> Tensor:
    """Each clip's rain displacement ``(B, T, 2)`` in pixels of its patch (``(dy, dx)``,
    relative to the clip's mean position) from the conditioning clips ``cond (B, T, C, H,
    W)``: :func:`~precipdiff.models.temporal.clip_shifts`, the aligned attention's."""
    from precipdiff.models.temporal import clip_shifts

    b, t, _, h, w = cond.shape
    frac = clip_shifts(fold_clips(cond), t).reshape(b, t, 2)
    return frac * torch.tensor([h, w], dtype=frac.dtype, device=frac.device)


def clip_loss_sum(model: nn.Module, batch: dict[str, Tensor], sigma: Tensor, noise: Tensor,
                  *, sigma_data: float, product: Tensor | None = None) -> Tensor:
    """EDM loss sum over the valid pixels of a batch of clips ``(B, T, ...)``; ``product``:
    one product label per clip for a product-conditioned net."""
    offsets = batch["time_offsets"]
    y, cond, mask = (fold_clips(batch[k]) for k in ("target", "cond", "mask"))
    frames = batch["target"].shape[1]
    kwargs = {} if product is None else {"product": product.repeat_interleave(frames)}

    def denoiser(x: Tensor, s: Tensor, c: Tensor) -> Tensor:
        return model(x, s, c, time_offsets=offsets, **kwargs)

    return edm_loss_sum(denoiser, y, cond, mask, sigma, noise, sigma_data=sigma_data)


def clip_product_lookup(net: SpatioTemporalUNet, ds: Any) -> Tensor | None:
    """Product label of each network of a clip corpus (0 where not a product of the net);
    None for a net without products or clips without networks."""
    if not net.cfg.products or not hasattr(ds, "networks"):
        return None
    return network_labels(net, ds.networks)


def open_clips(cfg: TemporalRunConfig, split: str = "train") -> Any:
    """The clip dataset of ``data.store``: a corpus (:class:`CorpusClipDataset`) or a paired
    store with an ``event`` array or one event (:class:`ClipDataset`)."""
    from precipdiff.data.clips import ClipDataset, CorpusClipDataset
    from precipdiff.data.corpus import is_corpus

    d, frames = cfg.run.data, cfg.temporal.frames
    common = {"split": split, "stage": "downscale", "patch": d.patch,
              "samples_per_epoch": d.samples_per_epoch, "frames": frames,
              "rain_weighted": d.rain_weighted, "augment": d.augment, "seed": cfg.run.train.seed}
    if is_corpus(d.store):
        return CorpusClipDataset(d.store, networks=d.networks, **common)
    return ClipDataset(d.store, **common)


def build_temporal_net(cfg: TemporalRunConfig, cond_channels: int) -> SpatioTemporalUNet:
    """The network of ``cfg`` (started from ``train.init_from`` when set)."""
    unet = cfg.run.model.unet_config(cond_channels)
    torch.manual_seed(cfg.run.train.seed)
    net = SpatioTemporalUNet(unet, cfg.temporal)
    if cfg.run.train.init_from:
        from precipdiff.release import Release

        release = Release.load(cfg.run.train.init_from)
        if release.stage != "downscale" or release.mean_state is not None:
            raise CheckpointError(f"{cfg.run.train.init_from}: a temporal model starts from "
                                  f"plain 'downscale' weights, got stage {release.stage!r}"
                                  + (" with a regression mean" if release.mean_state else ""))
        if release.model != unet:
            raise CheckpointError(f"{cfg.run.train.init_from}: network {release.model} differs "
                                  f"from model {unet}")
        net.load_per_frame(release.state)
    if cfg.spatial_frozen:
        for name, p in net.named_parameters():
            p.requires_grad_(name.startswith("temporal."))
    return net


def temporal_optimizer(net: SpatioTemporalUNet, cfg: TemporalRunConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: the temporal blocks at the scheduled learning rate,
    the spatial weights at ``spatial_lr_ratio`` of it (the ``lr_ratio`` of their group)."""
    from precipdiff.training.optim import build_optimizer

    temporal = [p for n, p in net.named_parameters() if p.requires_grad
                and n.startswith("temporal.")]
    spatial = [p for n, p in net.named_parameters() if p.requires_grad
               and not n.startswith("temporal.")]
    groups = [{"params": temporal, "lr_ratio": 1.0}]
    if spatial:
        groups.append({"params": spatial, "lr_ratio": cfg.spatial_lr_ratio})
    return build_optimizer(net, cfg.run.optim, groups)


def run_temporal(cfg: TemporalRunConfig) -> Path:
    """``precipdiff train`` for a temporal config: train, then write ``config.yaml`` and
    ``weights.safetensors`` into ``train.out_dir``; returns the run directory."""
    from precipdiff.atomic import atomic_path

    out = Path(cfg.run.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "config.yaml") as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    train_temporal(cfg, out=out / "weights.safetensors")
    return out


def train_temporal(cfg: TemporalRunConfig, *, dataset: Any = None,
                   out: str | Path | None = None) -> TemporalResult:
    """Train the temporal model for ``cfg.run.total_steps`` steps; see the module docstring.

    ``dataset``: clips (items as :mod:`precipdiff.data.clips`), default :func:`open_clips`.
    ``out``: where to write the EMA weights (``.safetensors``, :func:`load_temporal`), or
    nothing.
    """
    from precipdiff.diffusion.precond import EDMPrecond
    from precipdiff.training.ema import EMA
    from precipdiff.training.optim import lr_at, set_lr

    run = cfg.run
    ds = dataset if dataset is not None else open_clips(cfg)
    first = ds[0]
    frames = int(first["target"].shape[0])
    if frames != cfg.temporal.frames:
        raise ConfigError(f"temporal.frames: {cfg.temporal.frames}, the clips have {frames}")
    net = build_temporal_net(cfg, int(first["cond"].shape[1]))
    model = EDMPrecond(net, run.diffusion.sigma_data)
    ema = EMA(net, halflife_samples=run.train.ema_halflife_samples,
              rampup_ratio=run.train.ema_rampup_ratio)
    optimizer = temporal_optimizer(net, cfg)
    lookup = clip_product_lookup(net, ds)
    b, d = run.data.batch_size, run.diffusion
    shape = tuple(first["target"].shape[1:])
    losses: list[float] = []
    serial = 0
    for step in range(run.total_steps):
        epoch, start = divmod(step * b, len(ds))
        ds.set_epoch(epoch)
        order = np.random.default_rng([run.train.seed, epoch]).permutation(len(ds))
        idx = [int(order[(start + i) % len(ds)]) for i in range(b)]
        keys = ("cond", "target", "mask", "time_offsets", *(("network",) if lookup is not None
                                                             else ()))
        items = [ds[i] for i in idx]  # one read per clip
        batch = {k: torch.stack([it[k] for it in items]) for k in keys}
        serials = list(range(serial, serial + b))
        drift = clip_drift(batch["cond"]) if cfg.noise_drift else None
        sigma, noise = clip_noise(serials, frames, shape, seed=run.train.seed, mode=cfg.noise,
                                  P_mean=d.P_mean, P_std=d.P_std,
                                  correlation=cfg.noise_correlation, drift=drift)
        valid = batch["mask"].sum().clamp_min(1).float()
        product = None if lookup is None else product_labels(
            batch["network"], lookup, serials, seed=run.train.seed,
            dropout=run.train.product_dropout)
        loss = clip_loss_sum(model, batch, sigma, noise, sigma_data=d.sigma_data,
                             product=product) / valid
        loss.backward()
        clip = run.optim.grad_clip if run.optim.grad_clip > 0 else math.inf
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], clip)
        set_lr(optimizer, lr_at(serial, run.optim, run.total_samples))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        serial += b
        ema.update(net, batch_size=b, samples_seen=serial)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise ConfigError(f"temporal training diverged at step {step + 1} (loss "
                              f"{losses[-1]}); lower optim.lr")
        if (step + 1) % run.train.log_every_steps == 0:
            log.info("step %d loss %.4f", step + 1, losses[-1])
    path = save_temporal(out, cfg, ema.module, ds) if out is not None else None
    return TemporalResult(net=net, ema=ema.module, losses=losses, path=path)


def _store_pooling(ds: Any, store: str) -> str:
    """How the training store coarsened the reference (``pooling`` attribute of the dataset or
    of the store/corpus at ``store``; ``"mean"`` for a dataset with neither)."""
    if getattr(ds, "pooling", None):
        return str(ds.pooling)
    from precipdiff.data.corpus import is_corpus, open_corpus
    from precipdiff.data.store import open_store

    try:
        return open_corpus(store).pooling if is_corpus(store) else open_store(store).pooling
    except (OSError, PrecipdiffError, KeyError, ValueError):
        return "mean"


def temporal_release(cfg: TemporalRunConfig, net: SpatioTemporalUNet, ds: Any) -> Release:
    """The :class:`~precipdiff.release.Release` of a trained temporal net (weights format
    ``precipdiff-weights/1`` with the ``temporal`` key; ``temporal_noise`` as a note). Its
    ``patch`` (the attention span applied at inference) is the clip patch, or, with kept
    spatial weights (frozen or at a reduced learning rate), the larger patch those were
    trained on (``train.init_from``), whose calibrated ``fine_threshold`` notes (per product
    too) and bound on 1-km peaks (``peak_envelope``, a property of the training radar) it
    inherits; its spread factor is not (the temporal members' spread is their own)."""
    pooling = _store_pooling(ds, cfg.run.data.store)
    patch = cfg.run.data.patch
    notes = {"temporal_noise": cfg.noise,
             "temporal_noise_correlation": str(cfg.noise_correlation)}
    if cfg.noise_drift:  # predict's default: the correlated noise moves with the rain
        notes["temporal_noise_drift"] = "1"
    if cfg.spatial_kept:  # the spatial span it was trained with, and its fine wet threshold
        init = Release.load(cfg.run.train.init_from)
        patch = max(patch, init.patch)
        notes |= {k: v for k, v in init.notes.items()
                  if k.startswith(("fine_threshold", "peak_envelope"))}
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return Release(stage="downscale", model=net.cfg, state=state, transform=ds.transform,
                   factor=int(ds.factor), pooling=pooling,
                   semantics=InputSemantics.for_pooling(pooling),
                   sigma_data=cfg.run.diffusion.sigma_data, patch=patch,
                   temporal=cfg.temporal, config=cfg.to_dict(),
                   notes=notes)


def save_temporal(path: str | Path, cfg: TemporalRunConfig, net: SpatioTemporalUNet,
                  ds: Any) -> Path:
    """Write ``net`` as release weights (``.safetensors``, atomic; :func:`temporal_release`)."""
    return temporal_release(cfg, net, ds).save(path)


def load_temporal(path: str | Path) -> tuple[SpatioTemporalUNet, dict[str, Any]]:
    """A temporal release: the network (eval mode) and its metadata (``transform``,
    ``factor``, ``noise``, ``config``, ``release``). CheckpointError naming the file when the
    file is not temporal release weights."""
    release = Release.load(path)
    if release.temporal is None:
        raise CheckpointError(f"{path}: not a temporal checkpoint (no 'temporal' metadata: "
                              "per-frame weights)")
    net = release.build_net()
    assert isinstance(net, SpatioTemporalUNet)
    meta = {"transform": release.transform.to_dict(), "factor": release.factor,
            "noise": release.notes.get("temporal_noise", "clip"), "config": dict(release.config),
            "release": release}
    return net, meta


TEMPORAL_KEYS = ("noise", "freeze_spatial", "spatial_lr_ratio", "noise_correlation",
                 "noise_drift")


def load_temporal_config(path: str | Path | None,
                         overrides: list[str] | tuple[str, ...] = ()) -> TemporalRunConfig:
    """A run config whose ``temporal`` section (TemporalConfig fields plus ``noise`` and
    ``freeze_spatial``) makes it a temporal run; ``--set temporal.frames=8`` works too."""
    from precipdiff.training.config import RunConfig
    from precipdiff.yamlfile import apply_overrides, read_yaml_mapping

    raw: dict[str, Any] = read_yaml_mapping(path, "run config") if path is not None else {}
    raw = apply_overrides(raw, list(overrides), depth=2)
    section = raw.pop("temporal", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"temporal: expected a mapping, got {type(section).__name__}")
    known = {f.name for f in dataclasses.fields(TemporalConfig)}
    unknown = sorted(set(section) - known - set(TEMPORAL_KEYS))
    if unknown:
        raise ConfigError(f"unknown config key 'temporal.{unknown[0]}' (known: "
                          f"{', '.join(sorted(known | set(TEMPORAL_KEYS)))})")
    tcfg = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in known}
    try:
        temporal = TemporalConfig(**tcfg)
    except TypeError as exc:
        raise ConfigError(f"temporal: {exc}") from None
    run = RunConfig.from_dict(raw)
    if run.distill.teacher:
        raise ConfigError("distill.teacher: distilling a temporal Stage II is not supported; "
                          "distil the per-frame Stage II (a config without 'temporal')")
    return TemporalRunConfig(run=run, temporal=temporal, noise=section.get("noise", "clip"),
                             freeze_spatial=bool(section.get("freeze_spatial", False)),
                             spatial_lr_ratio=float(section.get("spatial_lr_ratio", 1.0)),
                             noise_correlation=float(section.get("noise_correlation", 0.0)),
                             noise_drift=bool(section.get("noise_drift", False)))


def is_temporal_config(path: str | Path | None) -> bool:
    """Whether the YAML at ``path`` has a ``temporal`` section."""
    from precipdiff.yamlfile import read_yaml_mapping

    return path is not None and "temporal" in read_yaml_mapping(path, "run config")
