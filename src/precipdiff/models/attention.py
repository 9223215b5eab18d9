"""Self-attention over a 2-D token map: global, or restricted to a neighbourhood of fixed span.

A network trained on ``P``-pixel patches attends, at a level downsampled ``2**l``, over at most
``n = P / 2**l`` tokens per side. Applied to a larger tile, global attention sees more tokens than
in training (a train/inference mismatch) at a cost per pixel that grows with the tile area.
:func:`neighbourhood_attention` lets every query attend to the ``n x n`` tokens around it
(Hassani et al. 2023, "Neighborhood Attention Transformer"): the window is centred on the query
and shifted inwards at the map's borders, so every query sees exactly ``n x n`` keys, as in
training, and the cost per pixel is flat in the tile size. The neighbourhood moves with the
query, so there are no window borders and no seams (unlike fixed, Swin-style windows).

Computed blockwise with :func:`torch.nn.functional.scaled_dot_product_attention` only (no custom
kernels, any device): the map is cut into ``b x b`` query blocks; each block gathers the
``(b + n - 1)``-sided key region that holds the neighbourhoods of all its queries, and an
additive mask keeps each query to its own ``n x n`` keys. Maps no larger than ``n`` per side
take the global path unchanged (then both are the same computation, bit for bit).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_2d(q: Tensor, k: Tensor, v: Tensor, window: int = 0) -> Tensor:
    """Self-attention over an ``H x W`` map: ``(B, heads, d, H, W)`` each -> the same shape.

    ``window`` 0 (or a map no larger than ``window`` per side): global attention; otherwise
    :func:`neighbourhood_attention` with ``window`` tokens per side.
    """
    b, heads, d, height, width = q.shape
    if window <= 0 or (height <= window and width <= window):
        return global_attention(q, k, v)
    return neighbourhood_attention(q, k, v, window)


def global_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of every token to every token, ``(B, heads, d, H, W)`` -> the same shape."""
    b, heads, d, height, width = q.shape
    # (b, heads, hw, d), contiguous: the fused CPU/CUDA kernels need a unit-stride last dim and
    # otherwise fall back to the unfused math path (3.6x slower at 4096 tokens on CPU).
    q, k, v = (t.flatten(-2).transpose(-1, -2).contiguous() for t in (q, k, v))
    a = F.scaled_dot_product_attention(q, k, v)
    return a.transpose(-1, -2).reshape(b, heads, d, height, width)


def neighbourhood_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, block: int | None = None
) -> Tensor:
    """Neighbourhood attention with a ``window x window`` token span (see module docstring).

    Parameters
    ----------
    q, k, v : (B, heads, d, H, W) queries, keys and values.
    window : tokens per side of each query's neighbourhood (>= 1).
    block : query block side; default :func:`query_block` (a smaller block gathers more
        overlapping keys, a larger one computes more masked-out scores).

    Returns
    -------
    (B, heads, d, H, W); equal to global attention when ``H, W <= window``.
    """
    b, heads, d, height, width = q.shape
    block = block or query_block(height, width, window)
    (qy, ky, my), (qx, kx, mx) = (_axis(n, window, block) for n in (height, width))
    mask = _mask(height, width, window, block, heads, q.dtype, str(q.device))
    qside, kside = (my.shape[1], mx.shape[1]), (my.shape[2], mx.shape[2])
    qb = _gather(q, qy, qx, qside)
    kb, vb = (_gather(t, ky, kx, kside) for t in (k, v))
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    return _scatter(out, qy, qx, qside, q.shape)


@functools.lru_cache(maxsize=64)
def query_block(height: int, width: int, window: int) -> int:
    """Query block side with the least estimated work on an ``height x width`` map.

    Work = scores computed (masked ones included) + 32 x keys copied into blocks, the weight
    fitted to CPU timings (bf16 and fp32, window 32, maps of 50-128 tokens: blocks 8-10 were
    fastest, 16 up to 1.7x slower at 50 tokens; ``benchmarks/bench_attention.py``)."""

    def work(b: int) -> int:
        per_axis = []
        for size in (height, width):
            bq = min(b, size)
            nb, lk = len(_starts(size, bq, bq)), min(size, bq + window - 1)
            per_axis.append((nb * bq * lk, nb * lk))
        (sy, ky), (sx, kx) = per_axis
        return sy * sx + 32 * ky * kx

    return min(range(1, max(window, 1) + 1), key=work)


def _channels_last(t: Tensor) -> Tensor:
    """(B, heads, d, H, W) -> (B, heads, H, W, d), contiguous (a view when the network runs in
    ``channels_last``, else one copy that makes the block copies below contiguous runs)."""
    return t.permute(0, 1, 3, 4, 2).contiguous()


def _gather(t: Tensor, ys: tuple[int, ...], xs: tuple[int, ...], side: tuple[int, int]
            ) -> Tensor:
    """``side = (ly, lx)`` blocks of ``t`` (B, heads, d, H, W) starting at rows ``ys`` and
    columns ``xs`` -> (B, blocks * heads, ly * lx, d), contiguous, one copy (blocks ride in the
    head dimension so that one mask broadcasts over the batch)."""
    b, heads, d = t.shape[:3]
    ly, lx = side
    tl = _channels_last(t)
    g = torch.stack([tl[:, :, y:y + ly, x:x + lx] for y in ys for x in xs], dim=1)
    return g.reshape(b, len(ys) * len(xs) * heads, ly * lx, d)


def _scatter(out: Tensor, ys: tuple[int, ...], xs: tuple[int, ...], side: tuple[int, int],
             shape: torch.Size) -> Tensor:
    """Query blocks (B, blocks * heads, ly * lx, d) back into a (B, heads, d, H, W) map.
    Blocks overlap only where the last one is shifted inwards; the overlapping queries get the
    same values from both, so the order of the writes does not matter."""
    b, heads, d, height, width = shape
    ly, lx = side
    o = out.reshape(b, len(ys), len(xs), heads, ly, lx, d)
    result = out.new_empty(b, heads, height, width, d)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            result[:, :, y:y + ly, x:x + lx] = o[:, i, j]
    return result.permute(0, 1, 4, 2, 3)


def _starts(size: int, span: int, step: int) -> tuple[int, ...]:
    """Starts of ``span``-long blocks every ``step`` covering ``[0, size)``, the last shifted in."""
    starts = list(range(0, size - span + 1, step))
    if starts[-1] + span < size:
        starts.append(size - span)
    return tuple(starts)


def _neighbourhood_start(i: Tensor, size: int, window: int) -> Tensor:
    """First index of the ``window``-long neighbourhood of positions ``i`` on an axis of ``size``
    (centred, ``i - window // 2``, shifted inwards at the ends)."""
    return (i - window // 2).clamp(0, max(size - window, 0))


@functools.lru_cache(maxsize=32)
def _axis(size: int, window: int, block: int) -> tuple[tuple[int, ...], tuple[int, ...], Tensor]:
    """Query blocks along one axis: their starts, the starts of their key ranges, and whether
    each query may see each key, (blocks, bq, lk) with ``bq = min(block, size)`` and
    ``lk = min(size, bq + window - 1)``."""
    bq = min(block, size)
    lk = min(size, bq + window - 1)
    q_start = torch.tensor(_starts(size, bq, bq))
    k_start = _neighbourhood_start(q_start, size, window).clamp(max=size - lk)
    qpos = q_start[:, None] + torch.arange(bq)
    kpos = k_start[:, None] + torch.arange(lk)
    lo = _neighbourhood_start(qpos, size, window)
    allowed = (kpos[:, None, :] >= lo[:, :, None]) & (kpos[:, None, :] < lo[:, :, None] + window)
    return tuple(q_start.tolist()), tuple(k_start.tolist()), allowed


@functools.lru_cache(maxsize=4)
def _mask(height: int, width: int, window: int, block: int, heads: int, dtype: torch.dtype,
          device: str) -> Tensor:
    """Additive mask (1, blocks * heads, Lq, Lk): 0 where a query sees a key, -inf elsewhere
    (a float mask keeps SDPA on its fused CPU kernel; cached per shape, dtype and device)."""
    my, mx = _axis(height, window, block)[2], _axis(width, window, block)[2]
    (nby, ly, ky), (nbx, lx, kx) = my.shape, mx.shape
    # allowed[(by, bx), (qy, qx), (ky, kx)] = my[by, qy, ky] & mx[bx, qx, kx]
    allowed = my[:, None, :, None, :, None] & mx[None, :, None, :, None, :]
    allowed = allowed.reshape(nby * nbx, 1, ly * lx, ky * kx).expand(-1, heads, -1, -1)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, float("-inf"))
    return mask.reshape(1, nby * nbx * heads, ly * lx, ky * kx).to(device)
