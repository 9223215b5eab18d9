"""Building blocks of the DDPM++ / EDM U-Net.

References
----------
- Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations"
  (DDPM++: BigGAN-style residual blocks with resampling, skip scaling 1/sqrt(2), Fourier features).
- Ho et al. (2020), "Denoising Diffusion Probabilistic Models" (sinusoidal positional embedding).
- Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
  Appendix F.2 (adaptive scale/shift of the noise embedding, ``c_noise`` input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from precipdiff.models.attention import attention_2d

SKIP_SCALE = 1.0 / math.sqrt(2.0)


def num_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Largest group count <= ``max_groups`` dividing ``channels``, >= 4 channels a group."""
    limit = max(1, min(max_groups, channels // min_channels_per_group))
    for groups in range(limit, 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm whose group count divides ``channels`` (see :func:`num_groups`)."""
    return nn.GroupNorm(num_groups(channels), channels, eps=eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the noise level (Vaswani et al. 2017; Ho et al. 2020, DDPM)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        if channels % 2:
            raise ValueError(f"PositionalEmbedding needs an even channel count, got {channels}")
        half = channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise level (Tancik et al. 2020; Song et al. 2021, NCSN++).

    Frequencies ``f ~ N(0, scale^2)`` are drawn once at construction and stored as a buffer;
    the embedding is ``[cos(2 pi f c), sin(2 pi f c)]``.
    """

    def __init__(self, channels: int, scale: float = 16.0):
        super().__init__()
        if channels % 2:
            raise ValueError(f"FourierEmbedding needs an even channel count, got {channels}")
        # drawn on the CPU even where a net is built on the meta device to check a release's
        # shapes: a random draw on "meta" imports torch's symbolic-shape machinery (~3 s)
        self.register_buffer("freqs", torch.randn(channels // 2, device="cpu") * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = (2.0 * math.pi) * c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


def coordinate_features(coords: Tensor, num_frequencies: int) -> Tensor:
    """Fixed sin/cos encodings of coordinates in degrees (NeRF-style, Mildenhall et al. 2020).

    ``coords`` is ``(B, K, H, W)`` (e.g. lat and lon); the result is ``(B, 2*K*F, H, W)`` with
    ``sin(2^k * rad(coords))`` and ``cos(2^k * rad(coords))`` for ``k = 0..F-1``. Derived from
    absolute coordinates only, so overlapping tiles see identical features.
    """
    rad = torch.deg2rad(coords.float())
    scales = 2.0 ** torch.arange(num_frequencies, device=coords.device, dtype=torch.float32)
    arg = rad[:, :, None] * scales[None, None, :, None, None]
    arg = arg.flatten(1, 2)
    return torch.cat([arg.sin(), arg.cos()], dim=1)


def resample(x: Tensor, mode: str | None) -> Tensor:
    """2x average-pool (``"down"``), 2x nearest upsampling (``"up"``) or identity (``None``)."""
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class ResBlock(nn.Module):
    """DDPM++ residual block (Song et al. 2021, BigGAN-style), with EDM adaptive scale/shift.

    ``h = conv0(resample(silu(norm0(x))))``; ``h = silu(norm1(h) * (1 + scale) + shift)`` where
    ``(scale, shift) = affine(emb)`` (no affine when ``emb_channels == 0``, the regression net);
    ``h = conv1(dropout(h))``; ``out = (h + skip(resample(x))) / sqrt(2)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        dropout: float = 0.0,
        resample_mode: str | None = None,
    ):
        super().__init__()
        self.resample_mode = resample_mode
        self.norm0 = group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels) if emb_channels > 0 else None
        self.norm1 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.conv0(resample(F.silu(self.norm0(x)), self.resample_mode))
        h = self.norm1(h)
        if self.affine is not None and emb is not None:
            scale, shift = self.affine(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift, h, scale + 1)
        h = self.conv1(self.dropout(F.silu(h)))
        return (h + self.skip(resample(x, self.resample_mode))) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention over pixels (DDPM++): ``(x + proj(attn(norm(x)))) / sqrt(2)``.

    ``window`` is the span in tokens per side: 0 attends globally, ``n > 0`` restricts every
    query to the ``n x n`` tokens around it (:func:`~precipdiff.models.attention.attention_2d`;
    identical to global attention on maps no larger than ``n``); ``level`` is the resolution
    level it runs at (the map is downsampled ``2**level``), for :meth:`UNet.set_attention_window`.
    Uses
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels where the backend has
    them).
    """

    def __init__(self, channels: int, head_channels: int = 64, window: int = 0, *,
                 level: int = 0):
        super().__init__()
        self.level = level
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.window = window
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h, w)
        a = attention_2d(*qkv.unbind(1), window=self.window)
        return (x + self.proj(a.reshape(b, c, h, w))) * SKIP_SCALE
