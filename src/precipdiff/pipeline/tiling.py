"""Tiled inference: any domain size with a network trained on patches.

Two levels, both with smooth blending so no seams appear:

* :class:`TiledDenoiser` wraps a denoiser ``D(x, sigma, cond)`` and evaluates it on overlapping
  tiles, averaging the tile outputs in the overlaps with separable ramp weights. Because the sampler
  calls the wrapped denoiser at *every* step, the tiles are fused at every denoising step
  (MultiDiffusion, Bar-Tal et al. 2023; CorrDiff patching), so neighbouring tiles cannot drift
  apart the way independently sampled tiles do.
* :func:`windows` cuts a very large domain into windows with a halo; each window is sampled on its
  own with :class:`TiledDenoiser` and starting noise from :func:`position_noise`, which depends on
  the global pixel position only. Overlapping windows therefore start from identical noise and, with
  a deterministic sampler, agree closely in their halos, where they are blended. Peak memory is set
  by the window, not by the domain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, n)`` with at least ``overlap``."""
    if tile >= n:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    stride = tile - overlap
    count = int(np.ceil((n - tile) / stride)) + 1
    starts = np.linspace(0, n - tile, count).round().astype(int)
    return sorted(set(starts.tolist()))


def ramp_weights(length: int, overlap: int, *, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights: raised-cosine ramps over ``overlap`` pixels at inner edges, else 1.

    Edges on the domain border (``at_start``/``at_end``) are not ramped, so the border pixels keep
    full weight. Weights are strictly positive so every pixel has a defined average.
    """
    w = torch.ones(length, dtype=torch.float64)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        t = (torch.arange(ramp_len, dtype=torch.float64) + 0.5) / ramp_len
        ramp = 0.5 - 0.5 * torch.cos(torch.pi * t)
        if not at_start:
            w[:ramp_len] = ramp
        if not at_end:
            w[length - ramp_len :] = ramp.flip(0)
    return w.clamp_min(1e-3)


@dataclass(frozen=True)
class Tile:
    """One tile: the slice ``[y0:y0+h, x0:x0+w]`` and its blending weight (h, w)."""

    y0: int
    x0: int
    h: int
    w: int
    weight: torch.Tensor


def make_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles covering a (height, width) domain, each with its separable blending weight."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    tiles = []
    for y0 in ys:
        wy = ramp_weights(th, overlap, at_start=y0 == 0, at_end=y0 + th == height)
        for x0 in xs:
            wx = ramp_weights(tw, overlap, at_start=x0 == 0, at_end=x0 + tw == width)
            tiles.append(Tile(y0, x0, th, tw, (wy[:, None] * wx[None, :]).float()))
    return tiles


class TiledDenoiser:
    """A denoiser evaluated on overlapping tiles and blended at every call.

    Parameters
    ----------
    denoiser : callable ``D(x, sigma, cond)`` on (B, C, h, w) tensors.
    tile : tile size in pixels (the training patch size or a multiple of it).
    overlap : overlap between neighbouring tiles in pixels.
    batch_size : how many tiles (over all batch items) go through the network at once.
    """

    def __init__(self, denoiser: Denoiser, *, tile: int, overlap: int, batch_size: int = 8):
        self.denoiser = denoiser
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, _, h, w = x.shape
        if h <= self.tile and w <= self.tile:
            return self.denoiser(x, sigma, cond)
        sigma = (
            torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(b)
            if torch.as_tensor(sigma).ndim == 0
            else sigma
        )
        tiles = make_tiles(h, w, self.tile, self.overlap)
        out = torch.zeros_like(x)
        norm = torch.zeros((1, 1, h, w), dtype=x.dtype, device=x.device)
        jobs = [(i, t) for t in tiles for i in range(b)]
        for k in range(0, len(jobs), self.batch_size):
            chunk = jobs[k : k + self.batch_size]
            xs = torch.stack([x[i, :, t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] for i, t in chunk])
            ss = torch.stack([sigma[i] for i, _ in chunk])
            cs = None
            if cond is not None:
                cs = torch.stack(
                    [cond[i, :, t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] for i, t in chunk]
                )
            ds = self.denoiser(xs, ss, cs)
            for (i, t), d in zip(chunk, ds, strict=True):
                wt = t.weight.to(device=x.device, dtype=x.dtype)
                out[i, :, t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] += d * wt
        for t in tiles:
            wt = t.weight.to(device=x.device, dtype=x.dtype)
            norm[0, 0, t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] += wt
        return out / norm


def hashed_seed(*parts: int) -> int:
    """A 64-bit generator seed from integers (counter-based: the same parts, the same seed)."""
    key = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def position_noise(
    y0: int,
    x0: int,
    h: int,
    w: int,
    *,
    seed: int,
    member: int,
    time_index: int = 0,
    channels: int = 1,
    cell: int = 64,
) -> torch.Tensor:
    """Standard normal noise (channels, h, w) for the window at global offset (y0, x0).

    The value at a global pixel depends only on ``(seed, member, time_index, pixel)``: the domain is
    divided into ``cell``×``cell`` blocks, each drawn from its own counter-based generator, so any
    two windows that overlap see the same noise in the overlap.
    """
    out = torch.empty((channels, h, w), dtype=torch.float32)
    for cy in range(y0 // cell, (y0 + h - 1) // cell + 1):
        for cx in range(x0 // cell, (x0 + w - 1) // cell + 1):
            g = torch.Generator().manual_seed(hashed_seed(seed, member, time_index, cy, cx))
            block = torch.randn((channels, cell, cell), generator=g)
            ya, yb = max(y0, cy * cell), min(y0 + h, (cy + 1) * cell)
            xa, xb = max(x0, cx * cell), min(x0 + w, (cx + 1) * cell)
            out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = block[
                :, ya - cy * cell : yb - cy * cell, xa - cx * cell : xb - cx * cell
            ]
    return out


@dataclass(frozen=True)
class Window:
    """A window ``[y0:y1, x0:x1]`` of a large domain plus the blending weight of its pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    weight: torch.Tensor  # (y1 - y0, x1 - x0)

    def slices_in(self, outer: Window) -> tuple[slice, slice]:
        """This window's rows and columns as slices of ``outer``'s arrays (it lies inside)."""
        return (slice(self.y0 - outer.y0, self.y1 - outer.y0),
                slice(self.x0 - outer.x0, self.x1 - outer.x0))


def balanced_size(n: int, size: int, overlap: int, multiple: int = 1) -> int:
    """The smallest window length (a multiple of ``multiple``, at most ``size``) that covers
    ``n`` pixels with as many windows as ``size`` needs, overlapping by ``overlap``: a domain
    just above one window gets two windows of about half its length, not two full windows that
    overlap by almost all of it (each window is sampled on its own, so overlap is work)."""
    if size >= n:
        return size
    count = int(np.ceil((n - size) / (size - overlap))) + 1
    need = -(-(n + (count - 1) * overlap) // count)
    return min(size, -(-need // multiple) * multiple)


def windows(
    height: int, width: int, size: int, halo: int, *, multiple: int = 1
) -> Iterator[Window]:
    """Windows of at most ``size`` pixels overlapping by ``2*halo`` and their blend weights
    (as few as cover the domain, each as long as needed: :func:`balanced_size`).

    ``multiple`` rounds the window starts and sizes to a multiple (the grid factor, so a fine-grid
    window maps onto whole coarse cells).
    """
    size = max(multiple, size // multiple * multiple)
    overlap = min(2 * halo, size - multiple) // multiple * multiple
    sy = balanced_size(height, size, overlap, multiple)
    sx = balanced_size(width, size, overlap, multiple)
    ys = [s // multiple * multiple for s in tile_starts(height, sy, overlap)]
    xs = [s // multiple * multiple for s in tile_starts(width, sx, overlap)]
    for y0 in ys:
        y1 = min(height, y0 + sy)
        wy = ramp_weights(y1 - y0, overlap, at_start=y0 == 0, at_end=y1 == height)
        for x0 in xs:
            x1 = min(width, x0 + sx)
            wx = ramp_weights(x1 - x0, overlap, at_start=x0 == 0, at_end=x1 == width)
            yield Window(y0, y1, x0, x1, (wy[:, None] * wx[None, :]).float())


def window_base(lr: torch.Tensor, win: Window, factor: int) -> torch.Tensor:
    """Bilinear upsampling ``(B, C, h, w)`` of the coarse field ``lr (B, C, Y, X)`` over the
    fine window ``win``, with one coarse cell of margin so that the weights at the window's
    edges see the real neighbours (as a whole-domain upsampling does), cropped to the window."""
    from precipdiff.grid import upsample_tensor

    f, (ny, nx) = factor, lr.shape[-2:]
    ly0, ly1, lx0, lx1 = win.y0 // f, -(-win.y1 // f), win.x0 // f, -(-win.x1 // f)
    my0, mx0 = max(ly0 - 1, 0), max(lx0 - 1, 0)
    up = upsample_tensor(lr[..., my0 : min(ly1 + 1, ny), mx0 : min(lx1 + 1, nx)], f,
                         method="bilinear")
    oy, ox = (ly0 - my0) * f, (lx0 - mx0) * f
    return up[..., oy : oy + win.y1 - win.y0, ox : ox + win.x1 - win.x0]
