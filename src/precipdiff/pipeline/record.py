"""A temporal Stage II over a whole record: each member is one trajectory in time.

When the Stage-II release is temporal (``Stage.temporal``, a
:class:`~precipdiff.models.temporal.SpatioTemporalUNet`), :meth:`Pipeline.predict
<precipdiff.pipeline.pipeline.Pipeline.predict>` and :func:`~precipdiff.pipeline.output.
predict_to_file` downscale all time steps of the input at once with the sequence sampler
(:func:`~precipdiff.pipeline.sequence.sample_sequence`):

* member ``m`` is conditioned on its own corrected coarse sequence (Stage-I member ``m``, or
  the input when there is no Stage I), transformed and upsampled as the per-frame path does,
  ``base = up_bilinear(T(corrected))`` (NaN cells as 0), plus the standardised extra channels;
  the sample is ``base + r``;
* the network sees windows of ``temporal.frames`` frames and spatial tiles of the per-frame
  path's size (:meth:`~precipdiff.pipeline.stage.Stage.tiling`), fused at every denoising
  step; the windows cut the record into partitions shifted by half a window on every other
  evaluation (``opts.temporal_windows="alternate"``, the default) or overlap by
  :func:`frame_overlap` frames (``"overlap"``); a record shorter than a window (one time step
  included) is one clip of its own length;
* each frame then gets the per-frame path's post-processing
  (:meth:`~precipdiff.pipeline.pipeline.Pipeline.finish_band`: inverse transform, wet/dry rule,
  mass-consistent option, missing cells, volume tally).

Noise: the starting noise of a value depends on ``(seed + 1, member, global time index,
pixel)`` only, the per-frame Stage II's noise (:func:`~precipdiff.pipeline.tiling.
position_noise`), correlated in time as the weights were trained (:func:`noise_correlation`:
an AR(1) combination of it, :func:`~precipdiff.pipeline.sequence.sequence_noise`; where the
weights were calibrated so, :func:`noise_drift`, its correlated part moves with the rain of the
members' mean corrected record, :func:`~precipdiff.pipeline.drift.rain_drift`): the same
seed gives the same output, and with independent frames (0) a temporal model whose temporal
blocks are zero (as initialised) samples what the per-frame model samples on a domain that
fits one window and one tile (with a deterministic sampler).

Memory: the record is sampled in blocks of at most ``opts.member_batch`` members x
``opts.temporal_chunk`` frames x one fine-grid window of the per-frame path
(:func:`~precipdiff.pipeline.tiling.windows`, ``opts.window`` / ``opts.halo``); each block is
one sampler state whose starting noise is the record's own at those members, frames and pixels
(:func:`~precipdiff.pipeline.sequence.sample_block`), and blocks are blended where their
windows (in space) or chunks (in time, sharing a temporal window) overlap, as the per-frame
path blends its windows. The sampler state is bounded by ``member_batch x chunk x window``,
whatever the record's length and domain: a frame is finished and handed on (in row bands) once
every block covering it is done, and the blend sums of frames still open go to a scratch
folder on disk when they are larger than the per-frame path's in-memory limit.
:func:`check_record_memory` refuses a block above :data:`SEQUENCE_LIMIT` before any work.
A record that fits one block (one chunk, one window) is sampled as one state, as before.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.errors import ConfigError
from precipdiff.pipeline.accumulate import Accumulator
from precipdiff.pipeline.drift import as_track, rain_drift
from precipdiff.pipeline.dry import dry_block, dry_cells, wet_box
from precipdiff.pipeline.sequence import (
    FrameWindow,
    SequenceOptions,
    TemporalDenoiser,
    clips_per_call,
    sample_block,
    time_chunks,
)
from precipdiff.pipeline.tiling import Window, window_base, windows

if TYPE_CHECKING:
    from precipdiff.pipeline.pipeline import Pipeline, PredictOptions, RunTally
    from precipdiff.pipeline.stage import Stage

log = logging.getLogger(__name__)

#: Largest sampler state of one block of a record, bytes (environment variable
#: PRECIPDIFF_SEQUENCE_MB, MiB, overrides it; see :func:`check_record_memory`).
SEQUENCE_LIMIT = int(os.environ.get("PRECIPDIFF_SEQUENCE_MB", "8192")) * 2**20

#: float32 copies of a block's members x frames x window state the sampler holds at once
#: (state, denoised, fusion sum, the sampler's history, base, the output).
STATE_COPIES = 8


def frame_overlap(frames: int) -> int:
    """Frames shared by neighbouring temporal windows: a third of the window, at least 1."""
    return max(1, frames // 3)


def record_bytes(members: int, frames: int, height: int, width: int, channels: int = 1) -> int:
    """Estimated peak bytes of sampling a block of ``members`` x ``frames`` fine fields
    ``height`` x ``width`` with ``channels`` conditioning channels (:data:`STATE_COPIES`)."""
    return members * frames * height * width * 4 * (STATE_COPIES + channels)


def check_record_memory(stage: Stage, members: int, frames: int, height: int, width: int,
                        channels: int = 1) -> None:
    """:class:`~precipdiff.errors.ConfigError` when a block's :func:`record_bytes` exceeds
    :data:`SEQUENCE_LIMIT`, naming the weights, the sizes and the way out."""
    need = record_bytes(members, frames, height, width, channels)
    if need > SEQUENCE_LIMIT:
        raise ConfigError(
            f"{stage.source}: a temporal Stage II samples blocks of {members} members x "
            f"{frames} times x {height}x{width} fine pixels at once, about "
            f"{need / 2**20:.1f} MiB, above the limit of {SEQUENCE_LIMIT / 2**20:.1f} MiB "
            "(PRECIPDIFF_SEQUENCE_MB); use a smaller --member-batch, --temporal-chunk or "
            "--window"
        )


def record_seconds(times: np.ndarray) -> np.ndarray:
    """Valid times (datetime64) as float64 seconds since 1970 (only differences matter)."""
    return np.asarray(times).astype("datetime64[ms]").astype(np.int64) / 1000.0


def noise_correlation(stage: Stage, opts: PredictOptions) -> float:
    """Lag-1 correlation in time of the temporal Stage II's starting noise: ``opts``, else the
    one calibrated for its weights on training sequences (``temporal_noise_correlation_
    calibrated`` note, :mod:`precipdiff.training.calibrate_time`; for a product-conditioned
    Stage II its product's entry in ``..._calibrated_by_product`` first), else the one they
    were trained with (``temporal_noise_correlation``), else 0."""
    if opts.temporal_noise_correlation is not None:
        return float(opts.temporal_noise_correlation)
    calibrated, _ = stage.product_note("temporal_noise_correlation_calibrated")
    if calibrated is not None:
        return float(calibrated)
    return float(stage.metadata.get("temporal_noise_correlation", 0.0))


def noise_drift(stage: Stage, opts: PredictOptions) -> bool:
    """Whether the temporal Stage II's correlated starting noise moves with the coarse rain
    (:mod:`~precipdiff.pipeline.drift`): ``opts``, else as its correlation was calibrated
    (``temporal_noise_drift`` note of :mod:`precipdiff.training.calibrate_time`), else not."""
    if opts.temporal_noise_drift is not None:
        return bool(opts.temporal_noise_drift)
    return stage.metadata.get("temporal_noise_drift", "0") == "1"


def noise_drifts(stage: Stage, opts: PredictOptions) -> bool:
    """Whether the starting noise actually moves with the rain: :func:`noise_drift` and a
    correlation above 0 (independent noise has nothing to carry)."""
    return noise_correlation(stage, opts) > 0 and noise_drift(stage, opts)


def sequence_options(stage: Stage, opts: PredictOptions) -> SequenceOptions:
    """The sequence sampler's options for ``stage`` under the pipeline options ``opts``:
    window ``temporal.frames`` (``opts.temporal_windows``; overlap :func:`frame_overlap`), the
    per-frame tiles, at most
    ``opts.tile_batch`` frames per network call (one clip at least: :func:`clips_per_call`), the
    Stage-II sampler settings and seed, chunks of ``opts.temporal_chunk`` frames whose
    neighbours share a window (half a window of halo each side)."""
    assert stage.temporal is not None
    frames = stage.temporal.frames
    tile, overlap = stage.tiling(opts.tile, opts.overlap)
    s = opts.downscale
    return SequenceOptions(
        members=opts.members, seed=opts.seed + 1, sampler=s.sampler, steps=s.steps,
        sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=s.rho, schedule=s.schedule,
        window=frames, overlap_frames=frame_overlap(frames), tile=tile, overlap=overlap,
        tile_batch=clips_per_call(frames, opts.tile_batch), windows=opts.temporal_windows,
        noise_correlation=noise_correlation(stage, opts),
        chunk=opts.temporal_chunk, chunk_halo=max(1, frames // 2),
    )


def block_condition(stage: Stage, tcor: Tensor, extras: np.ndarray | None, win: Window,
                    ) -> tuple[Tensor, Tensor]:
    """``(base (M, L, h, w), cond (M, L, C, h, w))`` of a block: transformed corrected members
    ``tcor (M, L, Y, X)`` (NaN as 0) upsampled over the fine window ``win``
    (:func:`~precipdiff.pipeline.tiling.window_base`), then the standardised ``extras``
    (L, E, H, W) of the whole fine grid, cut to the window."""
    m, n = tcor.shape[:2]
    base = window_base(tcor.reshape(m * n, 1, *tcor.shape[-2:]), win, stage.factor)
    base = base.reshape(m, n, *base.shape[-2:])
    cond = base[:, :, None]
    if extras is not None:
        cut = extras[..., win.y0:win.y1, win.x0:win.x1]
        ext = np.stack([stage.standardise_extras(e) for e in cut])
        ext_t = torch.from_numpy(ext).to(tcor.device)[None].expand(m, -1, -1, -1, -1)
        cond = torch.cat([cond, ext_t], dim=2)
    stage.check_cond(cond.shape[2])
    return base, cond


def temporal_denoiser(stage: Stage, *, bf16: bool = False) -> TemporalDenoiser:
    """The preconditioned temporal net ``D(x, sigma, cond, *, time_offsets)`` (EDM), run under
    bfloat16 autocast when ``bf16`` (outputs float32)."""
    precond = EDMPrecond(stage.net, sigma_data=stage.sigma_data)

    def denoise(x: Tensor, sigma: Tensor, cond: Tensor | None, *,
                time_offsets: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return precond(x, sigma, cond, time_offsets=time_offsets).float()

    return denoise


def _blocks(n: int, h: int, w: int, f: int, members: int, seq: SequenceOptions,
            opts: PredictOptions) -> tuple[list[FrameWindow], list[Window], int]:
    """Time chunks, fine windows and the member batch of a record (module docstring)."""
    chunks = time_chunks(n, seq.chunk, seq.chunk_halo)
    wins = list(windows(h, w, opts.window, opts.halo, multiple=f))
    return chunks, wins, max(1, min(members, opts.member_batch))


def _bands(pipeline: Pipeline, acc: Accumulator, corrected: np.ndarray, opts: PredictOptions,
           dry_lr: np.ndarray, band: int, tally: RunTally | None
           ) -> Iterator[tuple[int, int, np.ndarray]]:
    """A finished frame's row bands in mm/h (:meth:`Pipeline.finish_band`)."""
    h = acc.wnorm.shape[0]
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        yield y0, y1, pipeline.finish_band(acc.band(y0, y1), corrected, y0, opts,
                                           dry_lr=dry_lr, tally=tally)
    acc.close()


def downscale_record(
    pipeline: Pipeline,
    corrected: np.ndarray,
    times: np.ndarray,
    opts: PredictOptions,
    *,
    extras: np.ndarray | None = None,
    tally: RunTally | None = None,
    on_window: Callable[[], None] | None = None,
    scratch: Path | None = None,
) -> Iterator[tuple[int, Iterator[tuple[int, int, np.ndarray]]]]:
    """Downscale corrected members (M, N, Y, X) mm/h at valid ``times`` (N,) with the
    pipeline's temporal Stage II; yields ``(t, bands)`` per time step in order, ``bands`` an
    iterator of fine row bands ``(y0, y1, (M, h, W) mm/h)`` as
    :meth:`~precipdiff.pipeline.pipeline.Pipeline.downscale_step` gives (read them before the
    next step).

    ``extras`` (N, E, H, W) are extra channels on the fine grid; ``tally`` collects the volume;
    ``on_window`` is called after each block; ``scratch`` holds blend sums too large for
    memory (see the module docstring).
    """
    stage = pipeline.downscale
    assert stage is not None and stage.temporal is not None
    m, n, ny, nx = corrected.shape
    f = stage.factor
    h, w = ny * f, nx * f
    channels = 1 + (0 if extras is None else extras.shape[1])
    seq = sequence_options(stage, opts)
    if noise_drifts(stage, opts):  # one track for all members
        with warnings.catch_warnings():  # all-NaN cells: dry for the track
            warnings.simplefilter("ignore", RuntimeWarning)
            track = rain_drift(np.nanmean(corrected, axis=0), f)
        seq = replace(seq, noise_drift=as_track(track))
        log.info("noise moves with the rain: %.1f, %.1f fine pixels (y, x) over the record",
                 *track[-1])
    chunks, wins, mb = _blocks(n, h, w, f, m, seq, opts)
    longest = max(c.t1 - c.t0 for c in chunks)  # frames open at once, at most
    check_record_memory(stage, mb, longest,
                        max(v.y1 - v.y0 for v in wins), max(v.x1 - v.x0 for v in wins), channels)
    tcor = torch.from_numpy(np.nan_to_num(stage.transform.forward(corrected), nan=0.0)
                            .astype(np.float32)).to(opts.device)
    seconds = record_seconds(times)
    denoiser = temporal_denoiser(stage, bf16=opts.bf16)
    log.info("temporal Stage II: %d member(s) x %d time step(s), windows of %d frames (%s), "
             "%d chunk(s) x %d fine window(s)", m, n, seq.window, seq.windows, len(chunks),
             len(wins))
    trace = pipeline.trace(opts)
    dry_lr = dry_cells(corrected, trace=trace, halo=opts.dry_halo)  # (M, N, Y, X)
    band = max(f, (opts.window // f) * f)
    open_frames: dict[int, Accumulator] = {}
    done = 0
    for i, c in enumerate(chunks):
        for t in range(c.t0, c.t1):
            if t not in open_frames:
                folder = None if scratch is None else Path(scratch) / f"frame{t}"
                open_frames[t] = Accumulator(m, h, w, folder, share=longest)
        for win in wins:
            box = (wet_box(dry_lr[:, c.t0:c.t1], win, f, opts.halo)  # of all members
                   if opts.crop_to_rain else win)
            for m0 in range(0, m, mb):
                mm = min(mb, m - m0)
                dry = dry_block(dry_lr[m0:m0 + mm, c.t0:c.t1], win, f)
                if tally is not None:
                    tally.count_block(dry)
                y = np.zeros((mm, c.t1 - c.t0, *win.weight.shape), np.float32)
                if not dry:  # (a dry block is zeroed by the rule: nothing to sample, exact)
                    if tally is not None:
                        tally.count_pixels(win.weight.numel(), box.weight.numel())
                    base, cond = block_condition(
                        stage, tcor[m0:m0 + mm, c.t0:c.t1],
                        None if extras is None else extras[c.t0:c.t1], box)
                    r = sample_block(denoiser, cond, seconds[c.t0:c.t1],
                                     replace(seq, members=mm), sigma_data=stage.sigma_data,
                                     start=(m0, c.t0, box.y0, box.x0))
                    y[(..., *box.slices_in(win))] = (
                        base + r[:, :, 0]).cpu().numpy()  # outside the box: dry cells only
                    del base, cond, r
                for k in range(c.t1 - c.t0):
                    open_frames[c.t0 + k].add(m0, win.y0, win.x0, y[:, k],
                                              win.weight.numpy() * float(c.weight[k]))
            if on_window is not None:
                on_window()
        last = chunks[i + 1].t0 if i + 1 < len(chunks) else n
        for t in range(done, last):
            yield t, _bands(pipeline, open_frames.pop(t), corrected[:, t], opts, dry_lr[:, t],
                            band, tally)
        done = last
