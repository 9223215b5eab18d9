"""Conditional DDPM++ U-Net (Song et al. 2021) as used by EDM (Karras et al. 2022) and CorrDiff.

The network ``F(x, c_noise, cond)`` sees the noisy residual ``x`` concatenated with the
conditioning channels ``cond`` along the channel axis. In regression mode (CorrDiff's
conditional-mean net, Mardani et al. 2023) it sees ``cond`` only and has no noise embedding at all.
Inputs of any size are padded (reflect, or replicate where reflect is impossible) to a multiple of
``2 ** (levels - 1)`` and cropped back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from precipdiff.errors import ConfigError
from precipdiff.models.layers import (
    FourierEmbedding,
    PositionalEmbedding,
    ResBlock,
    SelfAttention,
    coordinate_features,
    group_norm,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UNetConfig:
    """Schema of the U-Net.

    Attributes
    ----------
    in_channels: channels of the noisy input ``x`` (ignored when ``regression``).
    cond_channels: conditioning channels concatenated to ``x``.
    out_channels: output channels.
    model_channels: width of the first level; level ``i`` has ``model_channels * channel_mult[i]``.
    channel_mult: one multiplier per resolution level (level ``i`` is downsampled ``2**i``).
    num_blocks: residual blocks per level in the encoder (the decoder has one more).
    attn_levels: level indices with self-attention after every block.
    dropout: dropout probability inside the residual blocks.
    noise_embedding: ``"fourier"`` (NCSN++) or ``"positional"`` (DDPM++).
    regression: no noisy input and no noise embedding; ``forward(None, None, cond)``.
    coord_frequencies: number of fixed sin/cos frequencies of ``coords`` (0 = none); adds
        ``2 * coord_channels * coord_frequencies`` input channels; forward then needs ``coords``.
    coord_channels: number of coordinate channels passed as ``coords`` (e.g. 2 for lat, lon).
    head_channels: channels per attention head.
    attn_window: span of self-attention in input pixels, 0 = global. With ``P > 0`` a query at
        level ``l`` attends to the ``P / 2**l`` tokens per side around it (neighbourhood
        attention, :mod:`precipdiff.models.attention`): set it to the training patch so that
        larger tiles at inference see what the network saw in training, at a cost per pixel
        that does not grow with the tile. Inputs no larger than ``P`` are unaffected. Older
        weight files lack the field and load as global; :meth:`UNet.set_attention_window`
        changes it on a built net (the weights do not depend on it).
    products: names of the target products (e.g. radar networks) the net can be conditioned
        on: a learned vector per product, times sqrt(embedding channels), is added to the noise
        embedding, as class labels in EDM (Karras et al. 2022, Appendix F.2, which scales its
        one-hot labels the same way so that they learn at the pace of the noise embedding).
        Label 0 ("any product") has its own vector. All start at zero. Empty: none.
    """

    in_channels: int = 1
    cond_channels: int = 1
    out_channels: int = 1
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 1
    attn_levels: tuple[int, ...] = (2,)
    dropout: float = 0.0
    noise_embedding: str = "fourier"
    regression: bool = False
    coord_frequencies: int = 0
    coord_channels: int = 2
    head_channels: int = 64
    attn_window: int = 0
    products: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.noise_embedding not in ("fourier", "positional"):
            raise ConfigError(
                f"model.noise_embedding: got {self.noise_embedding!r}, "
                "expected 'fourier' or 'positional'"
            )
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError(
                f"model.channel_mult: got {self.channel_mult}, expected positive ints"
            )
        if any(not 0 <= lv < len(self.channel_mult) for lv in self.attn_levels):
            raise ConfigError(
                f"model.attn_levels: got {self.attn_levels}, expected indices "
                f"in [0, {len(self.channel_mult)})"
            )
        if self.model_channels % 2 or self.model_channels < 2:
            raise ConfigError(
                f"model.model_channels: got {self.model_channels}, expected even >= 2"
            )
        if self.attn_window < 0:
            raise ConfigError(
                f"model.attn_window: got {self.attn_window}, expected 0 (global) or a positive "
                "span in pixels"
            )
        if len(set(self.products)) != len(self.products) or "any" in self.products:
            raise ConfigError(f"model.products: got {list(self.products)}, expected distinct "
                              "names other than 'any'")
        if self.products and self.regression:
            raise ConfigError("model.products: a regression net has no embedding to condition")
        if self.regression and self.cond_channels < 1:
            raise ConfigError("model.cond_channels: a regression net needs >= 1 cond channel")

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    def attention_tokens(self, level: int) -> int:
        """Tokens per side of the attention span at ``level`` (0 = global): ``attn_window``
        padded as the net pads its inputs (to a multiple of ``2 ** (levels - 1)``), over
        ``2 ** level``."""
        if self.attn_window <= 0:
            return 0
        multiple = 2 ** (self.levels - 1)
        return -(-self.attn_window // multiple) * multiple // 2**level

    @property
    def input_channels(self) -> int:
        """Channels entering the first convolution."""
        noisy = 0 if self.regression else self.in_channels
        coords = 2 * self.coord_channels * self.coord_frequencies
        return noisy + self.cond_channels + coords


class UNet(nn.Module):
    """DDPM++ U-Net with noise embedding, residual blocks, attention and skip connections."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_ch = 0 if cfg.regression else 4 * mc
        self.embed, self.map = self._build_embedding(cfg, emb_ch)
        self.product = 0  # label used when forward gets none (:meth:`set_product`)
        if cfg.products:  # zero-initialised: a net fine-tuned from unlabelled weights starts there
            self.product_embed = nn.Embedding(len(cfg.products) + 1, emb_ch)
            nn.init.zeros_(self.product_embed.weight)
        self.conv_in = nn.Conv2d(cfg.input_channels, mc, 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [mc]
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            if level > 0:
                self.enc.append(ResBlock(ch, ch, emb_ch, dropout=cfg.dropout, resample_mode="down"))
                skips.append(ch)
            for _ in range(cfg.num_blocks):
                self.enc.append(self._block(ch, mc * mult, emb_ch, level))
                ch = mc * mult
                skips.append(ch)
        self.mid = nn.ModuleList([
            self._block(ch, ch, emb_ch, cfg.levels - 1, attention=True),
            ResBlock(ch, ch, emb_ch, dropout=cfg.dropout),
        ])
        self.dec = nn.ModuleList()
        for level in reversed(range(cfg.levels)):
            out = mc * cfg.channel_mult[level]
            for _ in range(cfg.num_blocks + 1):
                self.dec.append(self._block(ch + skips.pop(), out, emb_ch, level))
                ch = out
            if level > 0:
                self.dec.append(ResBlock(ch, ch, emb_ch, dropout=cfg.dropout, resample_mode="up"))
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _build_embedding(cfg: UNetConfig, emb_ch: int) -> tuple[nn.Module | None, nn.Module | None]:
        """Noise embedding + 2-layer MLP (EDM Appendix F.2); ``(None, None)`` for regression."""
        if cfg.regression:
            return None, None
        mc = cfg.model_channels
        fourier = cfg.noise_embedding == "fourier"
        embed = FourierEmbedding(mc) if fourier else PositionalEmbedding(mc)
        mlp = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch), nn.SiLU())
        return embed, mlp

    def _block(
        self, cin: int, cout: int, emb_ch: int, level: int = -1, attention: bool = False
    ) -> nn.Module:
        """A residual block, followed by self-attention on attention levels."""
        res = ResBlock(cin, cout, emb_ch, dropout=self.cfg.dropout)
        if attention or level in self.cfg.attn_levels:
            window = self.cfg.attention_tokens(level)
            attn = SelfAttention(cout, self.cfg.head_channels, window, level=level)
            return _BlockWithAttention(res, attn)
        return _BlockWithAttention(res, None)

    def set_attention_window(self, pixels: int) -> UNet:
        """Set the span of every attention layer to ``pixels`` input pixels (0 = global), in
        place; ``cfg.attn_window`` follows. Returns the net."""
        self.cfg = dataclasses.replace(self.cfg, attn_window=int(pixels))
        for module in self.modules():
            if isinstance(module, SelfAttention):
                module.window = self.cfg.attention_tokens(module.level)
        return self

    def product_label(self, name: str | None) -> int:
        """Label of product ``name`` (0 for None or ``"any"``); ValueError naming the known ones."""
        if name is None or name == "any":
            return 0
        if name not in self.cfg.products:
            known = list(self.cfg.products) or "none: the weights carry no product embedding"
            raise ValueError(f"unknown target product {name!r}; the weights know {known}")
        return self.cfg.products.index(name) + 1

    def set_product(self, name: str | None) -> UNet:
        """Condition every later call without explicit labels on product ``name``, in place."""
        self.product = self.product_label(name)
        return self

    def _inputs(
        self, x: Tensor | None, cond: Tensor | None, coords: Tensor | None
    ) -> Tensor:
        """Concatenate ``x``, ``cond`` and coordinate features along channels."""
        cfg = self.cfg
        parts = []
        if not cfg.regression:
            if x is None:
                raise ValueError("a diffusion UNet (regression=False) needs the noisy input x")
            parts.append(x)
        if cfg.cond_channels:
            if cond is None:
                raise ValueError(f"UNet expects cond with {cfg.cond_channels} channels, got None")
            parts.append(cond.to(parts[0].dtype) if parts else cond)
        if cfg.coord_frequencies:
            if coords is None:
                raise ValueError("UNet has coord_frequencies > 0 but coords is None")
            ref = parts[0]
            parts.append(coordinate_features(coords, cfg.coord_frequencies).to(ref.dtype))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if h.shape[1] != cfg.input_channels:
            raise ValueError(f"UNet input has {h.shape[1]} channels, expected {cfg.input_channels}")
        return h

    def _embedding(self, c_noise: Tensor | None, batch: int, ref: Tensor,
                   product: Tensor | None = None) -> Tensor | None:
        """Noise embedding of ``c_noise`` (scalar or ``(B,)``) plus the product embedding of
        ``product`` (labels, scalar or ``(B,)``; default :attr:`product`); None in regression."""
        if self.cfg.regression:
            return None
        if c_noise is None:
            raise ValueError("a diffusion UNet (regression=False) needs c_noise")
        c_noise = torch.as_tensor(c_noise, device=ref.device).reshape(-1).expand(batch)
        emb = self.map(self.embed(c_noise).to(self.map[0].weight.dtype))
        if not self.cfg.products:
            if product is not None and bool(torch.as_tensor(product).ne(0).any()):
                raise ValueError("product labels given to a UNet without products")
            return emb
        labels = torch.as_tensor(self.product if product is None else product,
                                 device=ref.device, dtype=torch.long).reshape(-1).expand(batch)
        gain = self.product_embed.embedding_dim ** 0.5
        return emb + gain * self.product_embed(labels).to(emb.dtype)

    def forward(
        self,
        x: Tensor | None,
        c_noise: Tensor | None,
        cond: Tensor | None,
        *,
        coords: Tensor | None = None,
        product: Tensor | None = None,
    ) -> Tensor:
        """``F(x, c_noise, cond)``: (B, in, H, W), (B,), (B, cond, H, W) -> (B, out, H, W);
        ``product``: labels (:meth:`product_label`) per sample, default :attr:`product`."""
        h = self._inputs(x, cond, coords)
        height, width = h.shape[-2:]
        h = pad_to_multiple(h, 2 ** (self.cfg.levels - 1))
        emb = self._embedding(c_noise, h.shape[0], h, product)
        h = self.conv_in(h)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.dec:
            if not (isinstance(block, ResBlock) and block.resample_mode == "up"):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h[..., :height, :width]


class _BlockWithAttention(nn.Module):
    """A :class:`ResBlock` optionally followed by :class:`SelfAttention`."""

    def __init__(self, res: ResBlock, attn: SelfAttention | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad H, W at the bottom/right to a multiple (reflect, replicate where reflect cannot)."""
    height, width = x.shape[-2:]
    ph, pw = (-height) % multiple, (-width) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < height and pw < width else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
