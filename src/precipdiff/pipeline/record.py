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
an AR(1) combination of it, :func:`~precipdiff.pipeline.sequence.sequence_noise`): the same
seed gives the same output, and with independent frames (0) a temporal model whose temporal
blocks are zero (as initialised) samples what the per-frame model samples on a domain that
fits one window and one tile (with a deterministic sampler).

Memory: the network's activations are bounded by window x tile as in the per-frame path, but the
sampler state of the whole record, members x time x fine grid, is in memory (about
:data:`STATE_COPIES` float32 copies: state, denoised, fusion sum, the sampler's history, plus the
conditioning). :func:`check_record_memory` refuses a record above :data:`SEQUENCE_LIMIT` before
any work; split such a record in time (several input files) or the domain (``--bbox``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.errors import ConfigError
from precipdiff.grid import upsample_tensor
from precipdiff.pipeline.dry import dry_cells
from precipdiff.pipeline.sequence import (
    SequenceOptions,
    TemporalDenoiser,
    clips_per_call,
    sample_sequence,
)

if TYPE_CHECKING:
    from precipdiff.pipeline.pipeline import Pipeline, PredictOptions, RunTally
    from precipdiff.pipeline.stage import Stage

log = logging.getLogger(__name__)

#: Largest sampler state of a record, bytes (environment variable PRECIPDIFF_SEQUENCE_MB,
#: MiB, overrides it; see :func:`check_record_memory`).
SEQUENCE_LIMIT = int(os.environ.get("PRECIPDIFF_SEQUENCE_MB", "8192")) * 2**20

#: float32 copies of the members x time x fine-grid state the sampler holds at once
#: (state, denoised, fusion sum, the sampler's history, base, the output).
STATE_COPIES = 8


def frame_overlap(frames: int) -> int:
    """Frames shared by neighbouring temporal windows: a third of the window, at least 1."""
    return max(1, frames // 3)


def record_bytes(members: int, frames: int, height: int, width: int, channels: int = 1) -> int:
    """Estimated peak bytes of sampling ``members`` records of ``frames`` fine fields
    ``height`` x ``width`` with ``channels`` conditioning channels (:data:`STATE_COPIES`)."""
    return members * frames * height * width * 4 * (STATE_COPIES + channels)


def check_record_memory(stage: Stage, members: int, frames: int, height: int, width: int,
                        channels: int = 1) -> None:
    """:class:`~precipdiff.errors.ConfigError` when :func:`record_bytes` exceeds
    :data:`SEQUENCE_LIMIT`, naming the weights, the sizes and the way out."""
    need = record_bytes(members, frames, height, width, channels)
    if need > SEQUENCE_LIMIT:
        raise ConfigError(
            f"{stage.source}: a temporal Stage II holds the whole record in memory: {members} "
            f"members x {frames} times x {height}x{width} fine pixels need about "
            f"{need / 2**20:.0f} MiB, above the limit of {SEQUENCE_LIMIT / 2**20:.0f} MiB "
            "(PRECIPDIFF_SEQUENCE_MB); use fewer members, fewer times per input file or a "
            "smaller --bbox"
        )


def record_seconds(times: np.ndarray) -> np.ndarray:
    """Valid times (datetime64) as float64 seconds since 1970 (only differences matter)."""
    return np.asarray(times).astype("datetime64[ms]").astype(np.int64) / 1000.0


def noise_correlation(stage: Stage, opts: PredictOptions) -> float:
    """Lag-1 correlation in time of the temporal Stage II's starting noise: ``opts``, else the
    one its weights were trained with (``temporal_noise_correlation`` note), else 0."""
    if opts.temporal_noise_correlation is not None:
        return float(opts.temporal_noise_correlation)
    return float(stage.metadata.get("temporal_noise_correlation", 0.0))


def sequence_options(stage: Stage, opts: PredictOptions) -> SequenceOptions:
    """The sequence sampler's options for ``stage`` under the pipeline options ``opts``:
    window ``temporal.frames`` (``opts.temporal_windows``; overlap :func:`frame_overlap`), the
    per-frame tiles, at most
    ``opts.tile_batch`` frames per network call (one clip at least: :func:`clips_per_call`), the
    Stage-II sampler settings and seed."""
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
    )


def record_condition(stage: Stage, corrected: np.ndarray, extras: np.ndarray | None,
                     device: str | torch.device) -> tuple[Tensor, Tensor]:
    """``(base (M, N, H, W), cond (M, N, C, H, W))`` of corrected members (M, N, Y, X) mm/h:
    ``base = up_bilinear(T(corrected))`` (NaN as 0), ``cond`` = base then the standardised
    ``extras`` (N, E, H, W) on the fine grid."""
    m, n, ny, nx = corrected.shape
    tcor = np.nan_to_num(stage.transform.forward(corrected), nan=0.0).astype(np.float32)
    lr = torch.from_numpy(tcor).reshape(m * n, 1, ny, nx).to(device)
    base = upsample_tensor(lr, stage.factor, method="bilinear")
    base = base.reshape(m, n, *base.shape[-2:])
    cond = base[:, :, None]
    if extras is not None:
        ext = np.stack([stage.standardise_extras(e) for e in extras])
        ext_t = torch.from_numpy(ext).to(device)[None].expand(m, -1, -1, -1, -1)
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


def downscale_record(
    pipeline: Pipeline,
    corrected: np.ndarray,
    times: np.ndarray,
    opts: PredictOptions,
    *,
    extras: np.ndarray | None = None,
    tally: RunTally | None = None,
    on_window: Callable[[], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Downscale corrected members (M, N, Y, X) mm/h at valid ``times`` (N,) with the
    pipeline's temporal Stage II; yields ``(t, (M, Y*f, X*f) mm/h)`` per time step.

    ``extras`` (N, E, H, W) are extra channels on the fine grid; ``tally`` collects the volume;
    ``on_window`` is called once, when the record is sampled (see the module docstring).
    """
    stage = pipeline.downscale
    assert stage is not None and stage.temporal is not None
    m, n, ny, nx = corrected.shape
    f = stage.factor
    channels = 1 + (0 if extras is None else extras.shape[1])
    check_record_memory(stage, m, n, ny * f, nx * f, channels)
    seq = sequence_options(stage, opts)
    base, cond = record_condition(stage, corrected, extras, opts.device)
    log.info("temporal Stage II: %d member(s) x %d time step(s), windows of %d frames (%s)",
             m, n, seq.window, seq.windows)
    r = sample_sequence(temporal_denoiser(stage, bf16=opts.bf16), cond, record_seconds(times),
                        seq, sigma_data=stage.sigma_data)
    sample = (base + r[:, :, 0]).cpu().numpy()
    del base, cond, r
    if on_window is not None:
        on_window()
    trace = pipeline.trace(opts)
    for t in range(n):
        dry_lr = dry_cells(corrected[:, t], trace=trace, halo=opts.dry_halo)
        yield t, pipeline.finish_band(sample[:, t], corrected[:, t], 0, opts, dry_lr=dry_lr,
                                      tally=tally)
