"""Spatiotemporal U-Net: clips of frames through the per-frame U-Net, mixed across time.

A clip of ``T`` frames is folded into the batch, ``(B*T, C, H, W)`` (frame-major inside each
clip: rows ``b*T .. b*T + T - 1`` are clip ``b``), and runs through the unchanged
:class:`~precipdiff.models.unet.UNet`. After every block that has spatial attention (the
levels in ``attn_levels`` and the middle block) a *factorised temporal attention* block lets
each spatial position attend across its clip's ``T`` frames (frames as tokens, with a
sinusoidal embedding of each frame's time offset in minutes): space and time are mixed in
turn, never jointly, as in video diffusion models (Ho et al. 2022, "Video Diffusion Models";
Blattmann et al. 2023) and STVD (Srivastava et al. 2024). At the fine levels a cheap temporal
convolution (kernel 3 in time) may be added (``conv_levels``); it is off by default.

With ``align`` the temporal attention is *motion-aligned*: a storm that moves 5 km between
5-min frames sits at different pixels in each frame, so attention across frames at a fixed pixel
mixes the core of one frame with the edge of the next. Each clip's rain displacement
``d_t`` (one translation per frame, :func:`~precipdiff.pipeline.drift.rain_drift` of the
conditioning field, relative to the clip's mean position) is found once per forward; before
attention frame ``t``'s features are moved back by ``d_t`` (a fraction of the frame, so it
serves every level; bilinear, border values outside), so the tokens of one pixel follow the
rain, and the attention output is moved forward again before it is added: flow-guided feature
alignment as video restoration networks use it (e.g. Chan et al. 2022, BasicVSR++), with one
translation per frame for a flow. Off by default: trained on the corpus it changed little
(BENCHMARKS.md, "Motion-aligned temporal attention").

Every temporal block is residual with a zero-initialised output projection, so a temporal
model loaded from per-frame weights (:meth:`SpatioTemporalUNet.load_per_frame`) is *exactly*
the per-frame model until it is trained. The temporal blocks are attached as forward hooks on
the U-Net's own blocks: the U-Net's code is not duplicated and its state-dict keys are kept
(temporal parameters live under ``temporal.``).

References
----------
- Srivastava et al. (2024), "Precipitation Downscaling with Spatiotemporal Video Diffusion".
- Ho et al. (2022), "Video Diffusion Models" (factorised space-time attention).
- Vaswani et al. (2017), sinusoidal position embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from precipdiff.errors import ConfigError
from precipdiff.models.unet import UNet, UNetConfig

#: Pooling of the conditioning field before its motion is found (:func:`clip_shifts`).
ALIGN_POOL = 4
#: Clips whose shifts a model keeps (oldest dropped first).
SHIFT_CACHE = 256
#: Default spacing of frames when no ``time_offsets`` are given (seconds): 5-min radar.
DEFAULT_STEP_S = 300.0


@dataclass(frozen=True)
class TemporalConfig:
    """Schema of the temporal part.

    Attributes
    ----------
    frames: clip length ``T`` used in training and as the inference window.
    attn_levels: levels with temporal attention after each block; ``None`` = the U-Net's own
        ``attn_levels`` (the coarse levels).
    mid: temporal attention after the middle block's attention.
    conv_levels: levels with a temporal convolution (kernel 3 in time) after each block.
    head_channels: channels per temporal-attention head.
    embed_channels: width of the sinusoidal time-offset embedding.
    time_unit_s: unit of the offsets fed to the embedding (60 = minutes).
    align: motion-aligned temporal attention (see the module docstring); ``False`` keeps the
        fixed-pixel attention of the models trained before it.
    """

    frames: int = 6
    attn_levels: tuple[int, ...] | None = None
    mid: bool = True
    conv_levels: tuple[int, ...] = ()
    head_channels: int = 32
    embed_channels: int = 32
    time_unit_s: float = 60.0
    align: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"temporal.frames: got {self.frames}, expected >= 1")
        if self.embed_channels < 2 or self.embed_channels % 2:
            raise ConfigError(f"temporal.embed_channels: got {self.embed_channels}, "
                              "expected even >= 2")
        if not self.time_unit_s > 0:
            raise ConfigError(f"temporal.time_unit_s: got {self.time_unit_s}, expected > 0")

    def resolved_attn_levels(self, unet: UNetConfig) -> tuple[int, ...]:
        levels = unet.attn_levels if self.attn_levels is None else self.attn_levels
        for lv in (*levels, *self.conv_levels):
            if not 0 <= lv < unet.levels:
                raise ConfigError(f"temporal levels: got {lv}, expected indices in "
                                  f"[0, {unet.levels})")
        return tuple(levels)


def time_features(offsets_s: Tensor, channels: int, *, unit_s: float = 60.0,
                  max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of time offsets: ``(..., T)`` seconds -> ``(..., T, channels)``.

    ``[cos(t w_k), sin(t w_k)]`` with ``t`` in ``unit_s`` units and ``w_k =
    max_period^(-k / half)``, ``k = 0 .. half-1`` (Vaswani et al. 2017).
    """
    half = channels // 2
    freqs = max_period ** (-torch.arange(half, dtype=torch.float32, device=offsets_s.device)
                           / half)
    arg = (offsets_s.float() / unit_s)[..., None] * freqs
    return torch.cat([arg.cos(), arg.sin()], dim=-1)


def translate(x: Tensor, shift: Tensor) -> Tensor:
    """``x`` (N, C, H, W) moved by ``shift`` (N, 2) ``(dy, dx)`` in fractions of its height and
    width: ``out(p) = x(p - shift)``, bilinear, border values where ``p - shift`` falls outside
    (fractions, so that one shift serves every level of the U-Net)."""
    n, _, height, width = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -2.0 * shift.flip(-1).to(x.dtype)  # (x, y) order, [-1, 1] spans the side
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def clip_shifts(cond: Tensor, frames: int, cache: dict[bytes, np.ndarray] | None = None
                ) -> Tensor:
    """Each frame's rain position ``(B*T, 2)`` (``(dy, dx)``, fractions of ``cond``'s height and
    width) relative to its clip's mean, from the conditioning channel 0 (the upsampled coarse
    field, transformed: ``>= 0``, dry 0): :func:`~precipdiff.pipeline.drift.rain_drift` of
    ``expm1(cond[:, 0])``, so that its ``log1p`` sees the transformed field itself, averaged over
    ``ALIGN_POOL`` pixels square (the resolution of the coarse levels that attend across time;
    16x fewer pixels for the Lucas-Kanade iterations). ``cache`` maps a clip's pooled field
    (its bytes) to its shifts: a sampler sees the same clips at every step and for every member.
    """
    from precipdiff.pipeline.drift import rain_drift

    field = torch.nan_to_num(cond[:, :1].detach().float()).clamp(0, 30)
    if min(field.shape[-2:]) >= 4 * ALIGN_POOL:
        field = F.avg_pool2d(field, ALIGN_POOL, ceil_mode=True)
    field = field[:, 0].cpu().numpy()
    out = []
    for clip in field.reshape(-1, frames, *field.shape[1:]):
        key = clip.tobytes()
        d = None if cache is None else cache.get(key)
        if d is None:
            d = rain_drift(np.expm1(clip), 1)
            d = (d - d.mean(axis=0)) / np.array(clip.shape[1:])
            if cache is not None:
                if len(cache) >= SHIFT_CACHE:
                    cache.pop(next(iter(cache)))
                cache[key] = d
        out.append(d)
    return torch.as_tensor(np.concatenate(out), dtype=torch.float32, device=cond.device)


class _TemporalSite(nn.Module):
    """Base of a temporal block hooked after a U-Net block; the context is set per forward:
    ``(frames, time features, shifts or None)``."""

    def __init__(self) -> None:
        super().__init__()
        self.context: tuple[int, Tensor, Tensor | None] | None = None

    def after_block(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """Forward hook: mix ``output`` across time (identity outside a temporal forward)."""
        if self.context is None:
            return output
        return self(output, *self.context)


class TemporalAttention(_TemporalSite):
    """Each pixel attends across its clip's frames: ``h + proj(attn(norm(h) + emb(t)))``.

    ``h`` (B*T, C, H, W); the tokens of pixel ``(y, x)`` of clip ``b`` are its ``T`` frames;
    ``emb(t)`` is a linear map of the time-offset features. ``proj`` starts at zero, so the
    block starts as the identity (no ``1/sqrt(2)`` rescaling, unlike the spatial blocks).
    With ``shifts`` (B*T, 2) (fractions of the frame, :func:`clip_shifts`) the attention runs
    on features moved back by each frame's shift; its output is moved forward again.
    """

    def __init__(self, channels: int, head_channels: int, embed_channels: int):
        super().__init__()
        from precipdiff.models.layers import group_norm

        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels)
        self.time = nn.Linear(embed_channels, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, frames: int, feats: Tensor,
                shifts: Tensor | None = None) -> Tensor:
        bt, c, height, width = h.shape
        b, n = bt // frames, height * width
        z = self.norm(h)
        if shifts is not None:
            z = translate(z, -shifts)
        z = z.reshape(b, frames, c, n).permute(0, 3, 1, 2)  # (b, n, T, C)
        z = z + self.time(feats.to(z.dtype))[:, None]
        d = c // self.heads
        q, k, v = self.qkv(z).reshape(b, n, frames, 3, self.heads, d).permute(3, 0, 1, 4, 2, 5)
        a = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        a = a.permute(0, 1, 3, 2, 4).reshape(b, n, frames, c)
        out = self.proj(a).permute(0, 2, 3, 1).reshape(bt, c, height, width)
        if shifts is not None:
            out = translate(out, shifts)
        return h + out


class TemporalConv(_TemporalSite):
    """Cheap temporal mixing: ``h + conv_t(silu(norm(h)))``, a (3, 1, 1) convolution in time.

    Zero-initialised, so it starts as the identity; clips shorter than 3 frames are padded
    with zeros in time.
    """

    def __init__(self, channels: int):
        super().__init__()
        from precipdiff.models.layers import group_norm

        self.norm = group_norm(channels)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: Tensor, frames: int, feats: Tensor,  # noqa: ARG002
                shifts: Tensor | None = None) -> Tensor:  # noqa: ARG002
        bt, c, height, width = h.shape
        z = F.silu(self.norm(h)).reshape(bt // frames, frames, c, height, width)
        out = self.conv(z.transpose(1, 2)).transpose(1, 2).reshape(bt, c, height, width)
        return h + out


def block_sites(cfg: UNetConfig) -> list[tuple[str, int, int]]:
    """``(container, index, level)`` of every non-resampling block of :class:`UNet`, in order.

    Mirrors the U-Net's construction (``enc``: a down block then ``num_blocks`` blocks per
    level; ``mid``: attention block, plain block; ``dec``: ``num_blocks + 1`` blocks per level
    then an up block); the middle blocks have level ``-1``.
    """
    sites, i = [], 0
    for level in range(cfg.levels):
        i += 1 if level > 0 else 0
        for _ in range(cfg.num_blocks):
            sites.append(("enc", i, level))
            i += 1
    sites.append(("mid", 0, -1))
    i = 0
    for level in reversed(range(cfg.levels)):
        for _ in range(cfg.num_blocks + 1):
            sites.append(("dec", i, level))
            i += 1
        i += 1 if level > 0 else 0
    return sites


class SpatioTemporalUNet(UNet):
    """The U-Net over clips: ``F(x, c_noise, cond; time_offsets)`` on ``(B*T, ., H, W)``.

    ``forward(x, c_noise, cond, *, frames=None, time_offsets=None, coords=None)``:
    ``time_offsets`` (B, T) seconds of each frame (any origin; only differences matter to a
    trained model, the embedding sees them as given); without it the frames are
    ``DEFAULT_STEP_S`` apart and ``frames`` (default ``temporal.frames``) sets ``T``.
    ``c_noise`` is per frame, ``(B*T,)`` (broadcast a clip's noise level to its frames).
    """

    def __init__(self, cfg: UNetConfig = UNetConfig(), temporal: TemporalConfig = TemporalConfig()):
        super().__init__(cfg)
        self.temporal_cfg = temporal
        self._shift_cache: dict[bytes, np.ndarray] = {}
        attn_levels = temporal.resolved_attn_levels(cfg)
        self._check_structure(cfg)
        mc = cfg.model_channels
        self.temporal = nn.ModuleDict()
        for name, index, level in block_sites(cfg):
            width = mc * cfg.channel_mult[level if level >= 0 else -1]
            if (level >= 0 and level in attn_levels) or (level < 0 and temporal.mid):
                site: _TemporalSite = TemporalAttention(width, temporal.head_channels,
                                                        temporal.embed_channels)
            elif level in temporal.conv_levels:
                site = TemporalConv(width)
            else:
                continue
            key = f"{name}_{index}"
            self.temporal[key] = site
            getattr(self, name)[index].register_forward_hook(site.after_block)

    def _check_structure(self, cfg: UNetConfig) -> None:
        """The hooked blocks must be the U-Net's non-resampling blocks (see block_sites)."""
        sites = block_sites(cfg)
        for name in ("enc", "dec"):
            count = max(i for n, i, _ in sites if n == name) + 1
            blocks = getattr(self, name)
            resampling = [i for n, i, _ in sites if n == name
                          and getattr(blocks[i], "resample_mode", None) is not None]
            if len(blocks) != count or resampling:  # the U-Net was restructured
                raise RuntimeError(f"SpatioTemporalUNet: UNet.{name} has {len(blocks)} blocks "
                                   f"(expected {count}), resampling at {resampling}; update "
                                   "block_sites")

    @property
    def frames(self) -> int:
        return self.temporal_cfg.frames

    def forward(self, x: Tensor | None, c_noise: Tensor | None, cond: Tensor | None, *,
                frames: int | None = None, time_offsets: Tensor | None = None,
                **kwargs) -> Tensor:
        ref = x if x is not None else cond
        assert ref is not None
        batch = ref.shape[0]
        if time_offsets is not None:
            time_offsets = torch.as_tensor(time_offsets, device=ref.device)
            if time_offsets.ndim == 1:
                time_offsets = time_offsets[None]
            frames = int(time_offsets.shape[-1])
        frames = frames or self.frames
        if batch % frames:
            raise ValueError(f"SpatioTemporalUNet: batch {batch} is not a whole number of "
                             f"clips of {frames} frames")
        clips = batch // frames
        if time_offsets is None:
            time_offsets = (torch.arange(frames, device=ref.device) * DEFAULT_STEP_S)[None]
        if time_offsets.shape[0] not in (1, clips):
            raise ValueError(f"SpatioTemporalUNet: time_offsets for {time_offsets.shape[0]} "
                             f"clips, the batch holds {clips} clips of {frames} frames")
        time_offsets = time_offsets.expand(clips, frames)
        feats = time_features(time_offsets, self.temporal_cfg.embed_channels,
                              unit_s=self.temporal_cfg.time_unit_s)
        shifts = self._shifts(cond, frames) if self.temporal_cfg.align else None
        sites = list(self.temporal.values())
        for site in sites:
            site.context = (frames, feats, shifts)
        try:
            return super().forward(x, c_noise, cond, **kwargs)
        finally:
            for site in sites:
                site.context = None

    def _shifts(self, cond: Tensor | None, frames: int) -> Tensor:
        """:func:`clip_shifts` of ``cond``, with this model's cache of clips seen before."""
        if cond is None:
            raise ValueError("SpatioTemporalUNet: motion-aligned attention needs cond")
        return clip_shifts(cond, frames, self._shift_cache)

    def load_per_frame(self, state: Mapping[str, Tensor]) -> None:
        """Load a per-frame :class:`UNet` state dict; the temporal blocks keep their (zero)
        initialisation. ValueError when ``state`` is not a state dict of the same U-Net."""
        try:
            result = self.load_state_dict(dict(state), strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"per-frame state does not fit the U-Net: {exc}") from exc
        missing = [k for k in result.missing_keys if not k.startswith("temporal.")]
        if missing or result.unexpected_keys:
            raise ValueError(f"per-frame state does not fit the U-Net: missing {missing[:4]}, "
                             f"unexpected {result.unexpected_keys[:4]}")

    def temporal_parameters(self) -> int:
        """Number of parameters in the temporal blocks."""
        return sum(p.numel() for p in self.temporal.parameters())


def fold_clips(x: Tensor) -> Tensor:
    """``(B, T, C, H, W)`` -> ``(B*T, C, H, W)`` (frame-major within each clip)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold_clips(x: Tensor, frames: int) -> Tensor:
    """``(B*T, C, H, W)`` -> ``(B, T, C, H, W)``."""
    return x.reshape(x.shape[0] // frames, frames, *x.shape[1:])


def attention_cost_ratio(cfg: UNetConfig, temporal: TemporalConfig, patch: int) -> float:
    """Rough multiply-add ratio (temporal blocks / U-Net convolutions) for ``patch`` frames.

    Counts the 3x3 convolutions of the residual blocks and the temporal blocks' linear maps
    (the attention products are ``T/C`` of those and left out); a planning aid, not a timing.
    """
    mc, conv, extra = cfg.model_channels, 0.0, 0.0
    levels = temporal.resolved_attn_levels(cfg)
    for _, _, level in block_sites(cfg):
        lv = level if level >= 0 else cfg.levels - 1
        pixels = (patch / 2**lv) ** 2
        c = mc * cfg.channel_mult[lv]
        conv += pixels * 2 * 9 * c * c
        if (level >= 0 and level in levels) or (level < 0 and temporal.mid):
            extra += pixels * 5 * c * c
        elif level in temporal.conv_levels:
            extra += pixels * 3 * c * c
    return extra / conv if conv else math.nan
