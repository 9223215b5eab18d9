"""Sequence inference: long records in overlapping temporal windows, fused at every step.

The spatial tiler (:mod:`precipdiff.pipeline.tiling`) gains a time axis: a record of ``N``
frames is cut into windows of ``window`` frames (the clip length the temporal model was trained
on) overlapping by ``overlap_frames``, and the domain into spatial tiles. At *every* denoising
step the temporal denoiser runs on each window x tile (``members x window`` frames of one tile
at once) and the outputs are averaged where windows and tiles overlap, with separable raised-
cosine weights in time and space (MultiDiffusion, Bar-Tal et al. 2023; CorrDiff patching). A
member is one sampler state across the whole record, so it is one trajectory: the windows
cannot drift apart, and frames in a window's overlap see the same noise from every window.

``windows="alternate"`` (shifted windows, as Swin Transformer shifts its attention windows
between layers, Liu et al. 2021) evaluates every frame once per step instead: the record is
cut into windows that do not overlap, and on every other denoiser evaluation the cut moves by
half a window, so that information crosses each boundary on the next evaluation. It costs one
frame evaluation per frame and step, against ``window / (window - overlap_frames)`` and more
for overlapping windows (1.5x for windows of 6 sharing 2 on a 12-frame record).

Memory: the network sees at most ``tile_batch`` windows of ``window`` frames of one ``tile``
(activations bounded by window x tile). The sampler state is one *block*
(:func:`sample_block`): members x frames x pixels placed anywhere in the record by its
``start``, its starting noise depending on ``(seed, member, global frame, global pixel)`` only
(:func:`sequence_noise`, :func:`~precipdiff.pipeline.tiling.position_noise`), so blocks that
overlap start from the same values and are blended in their overlap, as the spatial windows of
:func:`~precipdiff.pipeline.tiling.windows` are. :func:`sample_sequence` cuts a record into
chunks of ``chunk`` frames in time (:func:`time_chunks`; default: the whole record);
:func:`precipdiff.pipeline.record.downscale_record` cuts members, time and space.

Layout: sampler tensors hold the frames of each member consecutively, ``(M*N, C, H, W)``
(row ``m*N + t``), the clip layout of :class:`~precipdiff.models.temporal.SpatioTemporalUNet`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor

from precipdiff.diffusion.samplers import get_sampler, sampler_options, sampler_sigmas
from precipdiff.interrupts import check_between_steps
from precipdiff.pipeline.tiling import (
    hashed_seed,
    make_tiles,
    position_noise,
    ramp_weights,
    tile_starts,
)

log = logging.getLogger(__name__)

#: How temporal windows cover a record (see the module docstring).
WINDOW_MODES = ("overlap", "alternate")
#: ``D(x, sigma, cond, *, time_offsets)`` on clips ``(B*T, C, h, w)``, offsets ``(B, T)`` s.
TemporalDenoiser = Callable[..., Tensor]


@dataclass(frozen=True)
class FrameWindow:
    """Frames ``[t0, t1)`` of a record and their blending weights in time ``(t1 - t0,)``."""

    t0: int
    t1: int
    weight: Tensor


def frame_windows(n: int, window: int, overlap: int) -> list[FrameWindow]:
    """Windows of ``window`` frames covering ``n`` frames with at least ``overlap`` shared."""
    window = min(window, n)
    overlap = min(overlap, window - 1) if window < n else 0
    out = []
    for t0 in tile_starts(n, window, overlap):
        t1 = t0 + window
        out.append(FrameWindow(t0, t1, ramp_weights(window, overlap, at_start=t0 == 0,
                                                    at_end=t1 == n).float()))
    return out


def frame_partition(n: int, window: int, offset: int = 0) -> list[FrameWindow]:
    """Windows of at most ``window`` frames that cut ``n`` frames at ``offset + k * window``
    (``0 <= offset < window``), each frame in exactly one (weight 1)."""
    cuts = [0, *range(offset % window or window, n, window), n]
    return [FrameWindow(a, b, torch.ones(b - a)) for a, b in pairwise(cuts) if b > a]


def window_sets(n: int, window: int, overlap: int, mode: str = "overlap"
                ) -> list[list[FrameWindow]]:
    """The window sets the denoiser's evaluations cycle through: one set of overlapping
    windows (``"overlap"``), or two partitions shifted by half a window (``"alternate"``; a
    record no longer than ``window`` stays one window)."""
    if mode == "overlap":
        return [frame_windows(n, window, overlap)]
    if mode != "alternate":
        raise ValueError(f"windows: got {mode!r}, expected one of {WINDOW_MODES}")
    if n <= window:
        return [frame_partition(n, n)]
    return [frame_partition(n, window), frame_partition(n, window, window // 2)]


class SpaceTimeDenoiser:
    """A temporal denoiser applied on windows x tiles (overlapping windows, or partitions that
    alternate between evaluations), blended where they overlap at every call.

    Parameters
    ----------
    denoiser : ``D(x, sigma, cond, *, time_offsets)`` on clips (see module docstring).
    frames : record length ``N`` (every call gets ``(M*N, C, H, W)``).
    time_s : ``(N,)`` valid times in seconds; each window sees offsets from its first frame.
    window, overlap_frames : temporal window and overlap (frames).
    tile, overlap : spatial tile and overlap (pixels).
    tile_batch : windows (members x tiles) of ``window`` frames per network call (shorter
        windows fill a call with as many frames).
    windows : ``"overlap"`` or ``"alternate"`` (:func:`window_sets`).
    """

    def __init__(self, denoiser: TemporalDenoiser, *, frames: int, time_s: np.ndarray,
                 window: int, overlap_frames: int, tile: int, overlap: int,
                 tile_batch: int = 4, windows: str = "overlap") -> None:
        if len(time_s) != frames:
            raise ValueError(f"time_s has {len(time_s)} values for {frames} frames")
        self.denoiser, self.frames = denoiser, int(frames)
        self.time_s = torch.as_tensor(np.asarray(time_s, np.float64))
        self.window_sets = window_sets(self.frames, window, overlap_frames, windows)
        self.window = max(len(w.weight) for w in self.window_sets[0])
        self.tile, self.overlap, self.tile_batch = tile, overlap, max(1, tile_batch)
        self.calls = 0  # network calls (for tests and cost accounting)
        self.evaluations = 0  # denoiser evaluations (the window set cycles with them)

    @property
    def windows(self) -> list[FrameWindow]:
        """The windows of the next evaluation."""
        return self.window_sets[self.evaluations % len(self.window_sets)]

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None) -> Tensor:
        n = self.frames
        if x.shape[0] % n:
            raise ValueError(f"batch {x.shape[0]} is not members x {n} frames")
        members, (h, w) = x.shape[0] // n, x.shape[-2:]
        xs = x.reshape(members, n, *x.shape[1:])
        ss = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(
            x.shape[0]).reshape(members, n)
        cs = None if cond is None else cond.reshape(members, n, *cond.shape[1:])
        tiles = make_tiles(h, w, self.tile, self.overlap)
        out = torch.zeros_like(xs)
        norm = torch.zeros((n, h, w), dtype=x.dtype, device=x.device)
        windows = self.windows
        for length in sorted({w.t1 - w.t0 for w in windows}, reverse=True):
            jobs = [(m, win, t) for win in windows if win.t1 - win.t0 == length
                    for t in tiles for m in range(members)]
            per_call = max(1, self.tile_batch * self.window // length)
            for k in range(0, len(jobs), per_call):
                chunk = jobs[k:k + per_call]
                d = self._run(chunk, xs, ss, cs)
                for (m, win, t), dm in zip(chunk, d, strict=True):
                    wt = self._weight(win, t, x)
                    out[m, win.t0:win.t1, :, t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] += dm * wt[:, None]
        for win in windows:
            for t in tiles:
                norm[win.t0:win.t1, t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] += self._weight(win, t, x)
        self.evaluations += 1
        return (out / norm[None, :, None]).reshape(x.shape)

    @staticmethod
    def _weight(win: FrameWindow, t, x: Tensor) -> Tensor:
        wt = win.weight.to(x)[:, None, None] * t.weight.to(x)[None]
        return wt  # (T, h, w)

    def _run(self, chunk, xs: Tensor, ss: Tensor, cs: Tensor | None) -> Tensor:
        """One network call on the clips of ``chunk``: (len, T, C, h, w)."""
        def cut(a: Tensor, m: int, win: FrameWindow, t) -> Tensor:
            return a[m, win.t0:win.t1, ..., t.y0:t.y0 + t.h, t.x0:t.x0 + t.w]

        frames = chunk[0][1].t1 - chunk[0][1].t0
        xb = torch.cat([cut(xs, m, win, t) for m, win, t in chunk])
        sb = torch.cat([ss[m, win.t0:win.t1] for m, win, _ in chunk])
        cb = None if cs is None else torch.cat([cut(cs, m, win, t) for m, win, t in chunk])
        offsets = torch.stack([self.time_s[win.t0:win.t1] - self.time_s[win.t0]
                               for _, win, _ in chunk]).to(device=xs.device, dtype=xs.dtype)
        self.calls += 1
        d = self.denoiser(xb, sb, cb, time_offsets=offsets)
        return d.reshape(len(chunk), frames, *d.shape[1:])


@dataclass(frozen=True)
class SequenceOptions:
    """How a record is sampled: members, seed, sampler, windows, tiles and chunks.

    ``chunk`` frames (with ``chunk_halo`` frames shared by neighbouring chunks) bound the
    sampler state; ``None`` samples the whole record as one state. ``windows``: overlapping
    temporal windows (``overlap_frames`` shared) or ``"alternate"`` partitions (module
    docstring). ``noise_correlation``: lag-1 correlation of the starting noise in time;
    ``noise_drift``: the rain's cumulative displacement per record frame (fine pixels), which
    the correlated noise follows, or None: fixed pixels (:func:`sequence_noise`).
    """

    members: int = 4
    seed: int = 0
    sampler: str = "heun"
    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    schedule: str | None = None
    window: int = 6
    overlap_frames: int = 2
    tile: int = 256
    overlap: int = 64
    tile_batch: int = 4
    chunk: int | None = None
    chunk_halo: int = 2
    windows: str = "overlap"
    noise_correlation: float = 0.0
    noise_drift: tuple[tuple[float, float], ...] | None = None


def clips_per_call(frames: int, images: int) -> int:
    """Clips of ``frames`` frames per network call so that a call holds at most ``images``
    frames (at least one clip): on CPU a frame costs more in bigger batches (BENCHMARKS.md,
    "Temporal model: cost")."""
    return max(1, int(images) // max(1, int(frames)))


def sequence_noise(members: int, t0: int, t1: int, h: int, w: int, *, seed: int,
                   channels: int = 1, correlation: float = 0.0, member0: int = 0,
                   y0: int = 0, x0: int = 0,
                   drift: np.ndarray | Sequence[tuple[float, float]] | None = None) -> Tensor:
    """Starting noise ``(M*(t1-t0), C, h, w)`` of members ``[member0, member0 + M)``, frames
    ``[t0, t1)`` and the pixels from ``(y0, x0)``: each value depends on ``(seed, member,
    global frame, global pixel)`` only.

    ``correlation`` ``phi`` in ``[0, 1)`` correlates each pixel's noise in time as a first-order
    autoregressive process, lag-``k`` correlation ``phi**k`` (a temporally correlated noise
    prior, as Ge et al. 2023, "Preserve Your Own Correlation", for video diffusion): frame
    ``t`` is ``sum_j phi**j e(t - j) / norm`` over the independent position noise ``e`` of
    frames ``t - j`` (truncated where ``phi**j < 1e-3``, renormalised: unit variance), so a
    window or chunk anywhere in the record gets the same values. 0: independent frames.

    ``drift (N, 2)``: the rain's cumulative displacement over the record's frames (fine pixels,
    ``(dy, dx)``, :func:`~precipdiff.pipeline.drift.rain_drift`; frames outside the record take
    the nearest end's). Frame ``t`` then takes the noise of frame ``t - j`` from where the rain
    was, ``e(t - j, x - round(drift[t] - drift[t - j]))``: the correlated part of the noise
    moves with the rain (each term is still unit normal, so the variance is kept)."""
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"noise correlation must be in [0, 1), got {correlation}")

    def e(m: int, t: int, dy: int = 0, dx: int = 0) -> Tensor:
        return position_noise(y0 - dy, x0 - dx, h, w, seed=seed, member=member0 + m,
                              time_index=t, channels=channels)

    if correlation == 0.0:
        return torch.stack([e(m, t) for m in range(members) for t in range(t0, t1)])
    taps = min(64, int(np.ceil(np.log(1e-3) / np.log(correlation))) + 1)
    weights = correlation ** np.arange(taps)
    weights = weights / np.sqrt((weights**2).sum())
    if drift is None:
        offsets = np.zeros((t1 - t0, taps, 2), np.int64)
    else:
        track = np.asarray(drift, np.float64)
        at = track[np.clip(np.arange(t0 - taps + 1, t1), 0, len(track) - 1)]
        now = at[taps - 1:]  # frames t0 .. t1-1
        offsets = np.stack([np.rint(now - at[taps - 1 - j: taps - 1 - j + t1 - t0])
                            for j in range(taps)], axis=1).astype(np.int64)
    cache: dict[tuple[int, int, int, int], Tensor] = {}  # one member's terms at a time

    def term(m: int, t: int, dy: int, dx: int) -> Tensor:
        if (m, t, dy, dx) not in cache:
            cache[(m, t, dy, dx)] = e(m, t, dy, dx)
        return cache[(m, t, dy, dx)]

    out = []
    for m in range(members):
        cache.clear()
        out += [sum(float(wj) * term(m, t - j, *offsets[t - t0, j])
                    for j, wj in enumerate(weights)) for t in range(t0, t1)]
    return torch.stack(out)


def time_chunks(n: int, chunk: int | None, halo: int) -> list[FrameWindow]:
    """Chunks of ``chunk`` frames covering ``n`` frames, neighbours sharing at least ``2 *
    halo`` (raised-cosine weights, as :func:`frame_windows`); ``None`` or ``chunk >= n``: the
    whole record, weight 1."""
    if chunk is None or chunk >= n:
        return [FrameWindow(0, n, torch.ones(n))]
    return frame_windows(n, chunk, 2 * halo)


def block_seed(seed: int, start: tuple[int, int, int, int]) -> int:
    """Seed of a block's generator (the fresh noise of stochastic samplers): ``seed`` for a
    block at the record's origin, else one derived from ``(seed, start)``, so that blocks at
    different places do not add the same noise pattern."""
    if not any(start):
        return int(seed)
    return hashed_seed(seed, *start) >> 1


@torch.no_grad()
def sample_block(denoiser: TemporalDenoiser, cond: Tensor, time_s: np.ndarray,
                 opts: SequenceOptions, *, sigma_data: float = 0.5, channels: int = 1,
                 start: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Tensor:
    """One block of a record, sampled as one state: ``(M, L, channels, h, w)`` for the
    conditioning ``cond (L, C, h, w)`` (shared by the members) or ``(M, L, C, h, w)``.

    ``start = (member0, t0, y0, x0)`` places the block in the record: its starting noise is
    that of members ``member0 + m``, frames ``t0 + t`` and pixels ``(y0 + i, x0 + j)``
    (:func:`sequence_noise`), so overlapping blocks start from the same values. ``opts.chunk``
    is ignored (the caller chunks: :func:`time_chunks`)."""
    length, (h, w) = cond.shape[-4], cond.shape[-2:]
    m = opts.members
    if cond.ndim == 5 and cond.shape[0] != m:
        raise ValueError(f"cond holds records of {cond.shape[0]} members, expected {m}")
    member0, t0, y0, x0 = start
    sigmas = sampler_sigmas(opts.sampler, opts.steps, sigma_min=opts.sigma_min,
                            sigma_max=opts.sigma_max, rho=opts.rho,
                            sigma_data=sigma_data, schedule=opts.schedule
                            ).to(device=cond.device, dtype=torch.float32)
    st = SpaceTimeDenoiser(denoiser, frames=length, time_s=np.asarray(time_s),
                           window=opts.window, overlap_frames=opts.overlap_frames,
                           tile=opts.tile, overlap=opts.overlap, tile_batch=opts.tile_batch,
                           windows=opts.windows)
    x = sequence_noise(m, t0, t0 + length, h, w, seed=opts.seed, channels=channels,
                       correlation=opts.noise_correlation, member0=member0, y0=y0, x0=x0,
                       drift=opts.noise_drift)
    x = x.to(cond.device) * float(sigmas[0])
    cc = (cond.repeat(m, 1, 1, 1) if cond.ndim == 4
          else cond.reshape(m * length, *cond.shape[2:]))
    gen = torch.Generator(device=cond.device).manual_seed(block_seed(opts.seed, start))
    y = get_sampler(opts.sampler)(st, x, sigmas, cond=cc, generator=gen,
                                  callback=check_between_steps,
                                  **sampler_options(opts.sampler, sigma_data)).float()
    log.debug("block %s (%d frames) sampled with %d network calls", start, length, st.calls)
    return y.reshape(m, length, channels, h, w)


@torch.no_grad()
def sample_sequence(denoiser: TemporalDenoiser, cond: Tensor, time_s: np.ndarray,
                    opts: SequenceOptions = SequenceOptions(), *, sigma_data: float = 0.5,
                    channels: int = 1) -> Tensor:
    """Sample ``(M, N, channels, H, W)`` for a record's conditioning ``cond (N, C, H, W)``,
    shared by the members, or ``(M, N, C, H, W)``, one record per member.

    The same seed gives the same members; a member is one trajectory over the record (see
    the module docstring for windows, tiles and chunks: :func:`sample_block` per chunk).
    """
    n, (h, w) = cond.shape[-4], cond.shape[-2:]
    m = opts.members
    out = torch.zeros((m, n, channels, h, w), dtype=torch.float32, device=cond.device)
    norm = torch.zeros(n, dtype=torch.float32, device=cond.device)
    for c in time_chunks(n, opts.chunk, opts.chunk_halo):
        block = cond[c.t0:c.t1] if cond.ndim == 4 else cond[:, c.t0:c.t1]
        y = sample_block(denoiser, block, np.asarray(time_s)[c.t0:c.t1], opts,
                         sigma_data=sigma_data, channels=channels, start=(0, c.t0, 0, 0))
        wt = c.weight.to(out)
        out[:, c.t0:c.t1] += y * wt[None, :, None, None, None]
        norm[c.t0:c.t1] += wt
    return out / norm[None, :, None, None, None]


def downscale_sequence(net: torch.nn.Module, lr_t: Tensor, time_s: np.ndarray, factor: int,
                       opts: SequenceOptions = SequenceOptions(), *,
                       sigma_data: float = 0.5) -> Tensor:
    """Stage II over a record in transformed space: ``up(T(LR)) + r`` members.

    ``lr_t (N, Y, X)`` is the transformed coarse field (NaN-free); returns ``(M, N, Y*f,
    X*f)``, still transformed (apply the transform's inverse for mm/h). ``net`` is a
    :class:`~precipdiff.models.temporal.SpatioTemporalUNet` with one conditioning channel.
    """
    from precipdiff.diffusion.precond import EDMPrecond
    from precipdiff.grid import upsample_tensor

    base = upsample_tensor(lr_t[:, None].float(), factor, method="bilinear")
    precond = EDMPrecond(net, sigma_data=sigma_data)
    r = sample_sequence(precond, base, time_s, opts, sigma_data=sigma_data)
    return base[None, :, 0] + r[:, :, 0]
