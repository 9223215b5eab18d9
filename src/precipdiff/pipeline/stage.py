"""One trained stage: a network, its transform, grid factor and sampler settings.

A stage is loaded from a release ``.safetensors`` file (format and checks in
:mod:`precipdiff.release`); it carries everything needed to apply it correctly (stage kind,
network config, precipitation transform, grid factor, pooling, input semantics, statistics of the
extra channels, ``sigma_data``), so a model cannot be applied with the wrong normalisation.

Stage kinds (PrecipDiff, Dai & Ushijima-Mwesigwa 2025; CorrDiff, Mardani et al. 2023):

* ``correct``: residual diffusion at the coarse grid, ``T(ref) = T(src) + r``,
  ``r ~ p(r | T(src))``; with a fitted ``source_map`` (quantile mapping ``Q``, trained with
  ``data.source_map: eqm``) ``T(ref) = T(Q(src)) + r``, ``r ~ p(r | T(Q(src)))``.
* ``downscale``: residual diffusion at the fine grid around ``base = up(T(LR))``, optionally plus a
  regression mean ``mu(cond)`` (CorrDiff), ``T(HR) = base + mu + r``.
* ``regression``: the deterministic conditional mean alone, ``T(HR) = base + mu``.

A ``downscale`` release with a ``temporal`` section is a spatiotemporal Stage II
(:class:`~precipdiff.models.temporal.SpatioTemporalUNet`): ``Stage.temporal`` is then its
:class:`~precipdiff.models.temporal.TemporalConfig` and the pipeline samples whole records with
it (:mod:`precipdiff.pipeline.record`), never frame by frame through :meth:`Stage.apply`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from precipdiff.baselines.quantile_mapping import QuantileMapping
from precipdiff.data.transforms import PrecipTransform
from precipdiff.defaults import PREDICT
from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.diffusion.samplers import (
    get_sampler,
    native_schedule,
    sampler_options,
    sampler_sigmas,
)
from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.interrupts import check_between_steps
from precipdiff.models.temporal import TemporalConfig
from precipdiff.models.unet import UNet
from precipdiff.pipeline.tiling import TiledDenoiser
from precipdiff.release import STAGE_KINDS, InputSemantics, Release

__all__ = ["STAGE_KINDS", "SamplerSettings", "Stage", "bf16_is_fast", "inference_attention_window"]


@dataclass(frozen=True)
class SamplerSettings:
    """How a diffusion stage is sampled: sampler name, steps and noise schedule.

    ``schedule`` ``None`` is the sampler's own (:func:`~precipdiff.diffusion.samplers.
    native_schedule`); ``rho`` shapes the ``karras`` schedule (EDM eq. 5). ``sigmas``: an
    explicit grid (without the trailing 0) instead of ``steps`` on a schedule. ``distilled``:
    a stage whose weights carry a distilled grid samples it with Euler steps
    (:meth:`Stage.sampling`); False samples it like any other.
    """

    sampler: str = PREDICT.sampler
    steps: int = PREDICT.steps
    schedule: str | None = PREDICT.schedule
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigmas: tuple[float, ...] | None = None
    distilled: bool = True

    def noise_levels(self, sigma_data: float) -> torch.Tensor:
        """The decreasing noise levels with the trailing 0 (float64): ``sigmas`` when given
        (a distilled student's own grid), else the sampler's schedule."""
        if self.sigmas is not None:
            return torch.tensor([*self.sigmas, 0.0], dtype=torch.float64)
        return sampler_sigmas(self.sampler, self.steps, sigma_min=self.sigma_min,
                              sigma_max=self.sigma_max, rho=self.rho, sigma_data=sigma_data,
                              schedule=self.schedule)

    @property
    def schedule_name(self) -> str:
        """``distilled`` for an explicit grid, else the schedule's name."""
        if self.sigmas is not None:
            return "distilled"
        return self.schedule or native_schedule(self.sampler)


def bf16_is_fast(device: str | torch.device) -> bool:
    """bfloat16 pays off on CUDA with native bf16 and on CPUs with oneDNN bf16 (AVX512-BF16/AMX)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def inference_attention_window(release: Release) -> int:
    """Attention span (pixels, 0 = global) a stage applies by default: the span the net was
    trained with (``model.attn_window``) if any, else for ``downscale`` and ``regression`` stages
    the training patch, so that every query attends over as many tokens as in training
    (neighbourhood attention, :mod:`precipdiff.models.attention`; BENCHMARKS.md, "Attention
    span"). ``correct`` stages keep global attention: their coarse tiles are small and their
    skill with a window has not been measured."""
    if release.model.attn_window > 0:
        return release.model.attn_window
    return release.patch if release.stage in ("downscale", "regression") else 0


@dataclass
class Stage:
    """A trained stage ready for inference (see module docstring for the kinds)."""

    kind: str
    transform: PrecipTransform
    factor: int = 1
    pooling: str = "max"
    net: UNet | None = None
    mean_net: UNet | None = None
    sigma_data: float = 0.5
    patch: int = 64
    extra_channels: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""
    source_map: QuantileMapping | None = None
    semantics: InputSemantics = field(default_factory=InputSemantics)
    extra_names: tuple[str, ...] = ()
    extra_stats: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    temporal: TemporalConfig | None = None
    distilled: tuple[float, ...] | None = None

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu",
             attn_window: int | None = None) -> Stage:
        """Load a stage from a ``.safetensors`` release file (``CheckpointError`` on a bad file;
        the format is :mod:`precipdiff.release`)."""
        return cls.from_release(Release.load(path), device=device, attn_window=attn_window)

    @classmethod
    def from_release(cls, release: Release, *, device: str | torch.device = "cpu",
                     attn_window: int | None = None) -> Stage:
        """A stage ready for inference from a checked :class:`~precipdiff.release.Release`.

        ``attn_window``: span of the nets' self-attention in pixels (0 = global); None takes
        :func:`inference_attention_window` of the release.
        """
        net: UNet | None = release.build_net()
        mean_net = release.build_mean_net()
        window = inference_attention_window(release) if attn_window is None else attn_window
        for n in (net, mean_net):
            if n is not None:
                n.set_attention_window(window)
        if release.stage == "regression":
            net, mean_net = None, net
        stage = cls(
            kind=release.stage,
            transform=release.transform,
            factor=release.factor if release.stage != "correct" else 1,
            pooling=release.pooling,
            net=net,
            mean_net=mean_net,
            sigma_data=release.sigma_data,
            patch=release.patch,
            metadata={**release.metadata(), "sha256": release.sha256},
            source=release.path,
            source_map=release.source_map,
            semantics=release.semantics,
            extra_names=release.extra_names,
            extra_stats=release.extra_stats,
            temporal=release.temporal,
            distilled=release.distilled_sigmas,
        )
        stage.extra_channels = stage._cond_channels() - 1
        return stage.to(device)

    @property
    def products(self) -> tuple[str, ...]:
        """Target products the denoising net can be conditioned on (``model.products``)."""
        return self.net.cfg.products if self.net is not None else ()

    @property
    def product(self) -> str:
        """The product the net is conditioned on now (``"any"`` without one)."""
        label = self.net.product if self.net is not None else 0
        return self.products[label - 1] if label else "any"

    def set_product(self, name: str | None) -> Stage:
        """Condition the denoising net on target product ``name`` (None/``"any"``: none);
        ConfigError naming the weights and the products they know."""
        if name in (None, "any"):
            if self.net is not None:
                self.net.set_product(None)
            return self
        if name not in self.products:
            known = (", ".join(self.products) if self.products
                     else "none: these weights were not trained with product conditioning")
            raise ConfigError(f"{self.source}: no target product {name!r}; the weights know "
                              f"{known}")
        assert self.net is not None
        self.net.set_product(name)
        return self

    def product_note(self, key: str) -> tuple[str | None, str]:
        """``(value, where)`` of calibration note ``key`` for the product the net is conditioned
        on: its entry in the ``<key>_by_product`` note (a JSON object) where there is one, else
        the ``key`` note (None if absent). ``where`` names the note for error messages."""
        table = self.metadata.get(f"{key}_by_product")
        if self.product != "any" and table is not None:
            try:
                by_product = json.loads(table)
            except json.JSONDecodeError:
                by_product = None
            if not isinstance(by_product, dict):
                raise CheckpointError(f"{self.source}: metadata '{key}_by_product' must be a "
                                      "JSON object of values by product")
            if self.product in by_product:
                return str(by_product[self.product]), f"{key}_by_product/{self.product}"
        return self.metadata.get(key), key

    def map_source(self, src: np.ndarray) -> np.ndarray:
        """Stage I's input map (mm/h -> mm/h): the fitted ``source_map`` if any, else identity."""
        return src if self.source_map is None else self.source_map.apply_values(src)

    def standardise_extras(self, extras: np.ndarray) -> np.ndarray:
        """Extra fields (E, H, W) as the network saw them in training: ``(x - mean) / std`` with
        the training store's statistics (``extra_stats`` in the metadata); NaN -> 0."""
        names, stats = self.extra_names, self.extra_stats
        if extras.shape[0] != len(names):
            raise CheckpointError(
                f"{self.source}: the model was trained with extras {names}, got {extras.shape[0]} "
                "extra fields"
            )
        mean = np.array([stats[n]["mean"] for n in names], np.float32)[:, None, None]
        std = np.array([stats[n]["std"] for n in names], np.float32)[:, None, None]
        return np.nan_to_num((extras - mean) / std).astype(np.float32)

    def tiling(self, tile: int | None = None, overlap: int | None = None) -> tuple[int, int]:
        """Network tile and overlap (pixels): the given ones, else ``max(4 x patch, 256)`` and
        a quarter of the tile."""
        tile = tile or max(self.patch * 4, 256)
        return tile, overlap if overlap is not None else tile // 4

    def check_cond(self, channels: int) -> None:
        """CheckpointError unless ``channels`` conditioning channels fit the network."""
        if channels != self._cond_channels():
            raise CheckpointError(
                f"{self.source}: the network expects {self._cond_channels()} conditioning channels "
                f"(field + {self._cond_channels() - 1} extras), got {channels}"
            )

    def _cond_channels(self) -> int:
        net = self.net if self.net is not None else self.mean_net
        assert net is not None
        return int(net.cfg.cond_channels)

    def to(self, device: str | torch.device) -> Stage:
        for net in (self.net, self.mean_net):
            if net is not None:
                net.to(device=device, memory_format=torch.channels_last)
        return self

    @property
    def device(self) -> torch.device:
        net = self.net if self.net is not None else self.mean_net
        return next(net.parameters()).device  # type: ignore[union-attr]

    def nfe(self, settings: SamplerSettings) -> int:
        """Network evaluations per sample (diffusion steps; +1 for the regression mean)."""
        from precipdiff.diffusion.samplers import nfe

        settings = self.sampling(settings)
        n = nfe(settings.sampler, settings.steps) if self.net is not None else 0
        return n + (1 if self.mean_net is not None else 0)

    def sampling(self, settings: SamplerSettings) -> SamplerSettings:
        """The settings this stage samples with: a distilled student (``distilled`` grid in its
        weights, :mod:`precipdiff.training.distill`) takes Euler steps on its own grid unless
        ``settings.distilled`` is False; every other stage takes ``settings`` as given."""
        if self.distilled is None or not settings.distilled:
            return settings
        return dataclasses.replace(settings, sampler="euler", steps=len(self.distilled),
                                   schedule=None, sigmas=self.distilled)

    @torch.no_grad()
    def apply(
        self,
        base: torch.Tensor,
        noise: torch.Tensor,
        *,
        extras: torch.Tensor | None = None,
        settings: SamplerSettings = SamplerSettings(),
        generator: torch.Generator | None = None,
        tile: int | None = None,
        overlap: int | None = None,
        tile_batch: int = 8,
        bf16: bool = False,
    ) -> torch.Tensor:
        """Return ``base + mu(cond) + r`` in transformed space, one sample per batch item.

        ``base`` (B, 1, H, W) is the field the residual is added to (``T(src)`` for ``correct``,
        ``up(T(LR))`` for ``downscale``); ``noise`` (B, 1, H, W) standard normal starting noise;
        ``extras`` (B, E, H, W) additional conditioning channels. ``bf16`` runs the network
        under bfloat16 autocast (the sampler state stays float32).
        """
        with torch.autocast(base.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self._apply(base, noise, extras, settings, generator, tile, overlap, tile_batch)

    def _apply(self, base, noise, extras, settings, generator, tile, overlap, tile_batch):
        cond = base if extras is None else torch.cat([base, extras], dim=1)
        self.check_cond(cond.shape[1])
        if self.temporal is not None:
            raise CheckpointError(
                f"{self.source}: a temporal Stage II samples whole records "
                "(precipdiff.pipeline.record.downscale_record), not single frames"
            )
        tile, overlap = self.tiling(tile, overlap)
        out = base.clone()
        if self.mean_net is not None:
            mean = TiledDenoiser(
                lambda x, s, c: self.mean_net(None, None, c),
                tile=tile,
                overlap=overlap,
                batch_size=tile_batch,
            )
            out = out + mean(base, torch.zeros(base.shape[0], device=base.device), cond).float()
        if self.net is not None:
            precond = EDMPrecond(self.net, sigma_data=self.sigma_data)

            def as_float(x: torch.Tensor, s: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
                return precond(x, s, c).float()

            denoiser = TiledDenoiser(as_float, tile=tile, overlap=overlap, batch_size=tile_batch)
            settings = self.sampling(settings)
            sigmas = settings.noise_levels(self.sigma_data).to(device=base.device,
                                                                dtype=torch.float32)
            x = noise.to(base) * float(sigmas[0])
            sample_fn = get_sampler(settings.sampler)
            opts = sampler_options(settings.sampler, self.sigma_data)
            out = out + sample_fn(denoiser, x, sigmas, cond=cond, generator=generator,
                                  callback=check_between_steps, **opts).float()
        return out
