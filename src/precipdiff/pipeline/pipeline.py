"""The two-stage pipeline: coarse biased precipitation in, fine-scale ensembles out.

``src (LR) --Stage I--> corrected LR --upsample--> Stage II --> HR ensemble``

Each Stage-I member feeds its own Stage-II member, so the uncertainty of the correction propagates
into the downscaled ensemble. Either stage may be absent: without Stage I the input is downscaled
as it is; without Stage II the corrected coarse field is the output.

Memory: Stage I runs on the whole coarse domain (100x fewer pixels than the fine grid for a 10x
factor). Stage II runs window by window (:func:`precipdiff.pipeline.tiling.windows`) with starting
noise that depends on the global pixel only, and the windows are blended into an accumulator that
lives in memory for small domains and in a temporary zarr array on disk for large ones, so peak
memory is set by the window and the member batch, not by the domain. A temporal Stage II
(``Stage.temporal``) instead samples the whole record at once, each member one trajectory in time
(:mod:`precipdiff.pipeline.record`; its state, members x time x fine grid, is in memory).

Inputs are checked before any work (:func:`precipdiff.pipeline.inputs.check_input`; and by
:meth:`Pipeline.prepare_input` against the models: declared input semantics and grid spacing,
:mod:`precipdiff.pipeline.inputs`), and every output obeys the wet/dry rule of
:mod:`precipdiff.pipeline.dry` (dry stays dry, no trace values).
Stage I is bounded: no corrected value exceeds ``max(ratio x M, M + add)``, ``M`` the source
maximum around the cell (:data:`STAGE1_BOUND`, :meth:`Pipeline.bound_corrected`); the clip count
and the domain volume error are output attributes (:class:`RunTally`).
Projected ``(time, y, x)`` inputs stay projected: the output has ``y``/``x`` (fine) and
``y_lr``/``x_lr`` (coarse) in the input's units and CRS; lat/lon inputs get ``lat``/``lon`` and
``lat_lr``/``lon_lr``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
import xarray as xr

from precipdiff.defaults import PREDICT
from precipdiff.errors import CheckpointError, GridError
from precipdiff.grid import Grid, spatial_dims
from precipdiff.pipeline.accumulate import Accumulator
from precipdiff.pipeline.blocks import Block, BlockPool, BlockSettings, sample_blocks
from precipdiff.pipeline.dry import (
    AREAL_MEAN_TRACE_MM_H,
    DEFAULT_HALO,
    DEFAULT_TRACE_MM_H,
    dry_block,
    dry_cells,
    dry_coarse,
    dry_fine,
    wet_boxes,
)
from precipdiff.pipeline.inputs import (
    check_input,
    check_semantics,
    check_spacing,
    coarsen_input,
)
from precipdiff.pipeline.peaks import PeakEnvelope, cap_peaks
from precipdiff.pipeline.record import downscale_record, noise_correlation, noise_drifts
from precipdiff.pipeline.spread import INFLATION_RANGE, inflate_spread
from precipdiff.pipeline.stage import SamplerSettings, Stage, bf16_is_fast
from precipdiff.pipeline.tiling import Window, position_noise, window_base, windows

log = logging.getLogger(__name__)

#: Member-pixel network evaluations per worker below which a time step's Stage-II blocks are
#: sampled in this process rather than in a :class:`~precipdiff.pipeline.blocks.BlockPool`:
#: about two whole 512-px windows of 8 members at 4 steps per worker. A worker starts in ~5 s;
#: two one-thread workers were 1.10x faster than two threads over CONUS (74 wet windows) and
#: 0.90x on four windows (BENCHMARKS.md, "CONUS at 1 km").
POOL_MIN_WORK = 16_000_000

#: Default Stage-I bound per pooling of the weights: ``(ratio, add)`` in
#: ``corrected <= max(ratio * M, M + add)`` with ``M`` the source maximum over the cell's
#: ``(2 halo + 1)²`` neighbourhood (mm/h). An areal mean rarely exceeds 3x the largest biased
#: satellite mean around it (IMERG underestimates heavy rain by a factor of ~2); a 10-km block
#: maximum of a 1-km field reaches 5-10x the areal mean in convective cells. Weights may carry
#: their own bound (``stage1_bound`` note, JSON ``{"ratio": r, "add_mm_h": a}``, e.g. from the
#: training store's statistics).
STAGE1_BOUND = {"mean": (3.0, 10.0), "max": (10.0, 20.0)}

@dataclass(frozen=True)
class PredictOptions:
    """Inference options.

    members : ensemble size; seed : base seed (same seed -> bit-identical output on one machine);
    member_batch : members sampled together; window/halo : fine-grid window size and halo (pixels);
    tile/overlap : network tile size and overlap (pixels; default from the stage's patch size);
    mass_consistent : rescale each fine block so that pooling it (the Stage-II model's pooling)
    reproduces the corrected coarse value: for a mean-pooled model every coarse cell's fine-grid
    mean equals the corrected value (exact conservation), for a max-pooled one its block maximum.
    None (``predict``'s default): on for a mean-pooled Stage II, off for a max-pooled one
    (:meth:`Pipeline.mass_consistent`).
    input_semantics : what a coarse input value is, ``areal_mean`` (satellites, reanalyses, gauge
    analyses; the ``predict`` command's default) or ``block_maximum``; a declared semantics and
    the input's grid spacing are checked against the weights (:meth:`Pipeline.prepare_input`).
    None (the library default) declares nothing and checks neither: the caller vouches for the
    input (benchmarks that feed a model other inputs on purpose).
    coarsen : pool the input by this factor first (mean pooling, or max for ``block_maximum``).
    allow_semantics_mismatch / allow_spacing_mismatch : log instead of refusing a mismatch.
    trace_threshold : mm/h below which outputs are 0 (:mod:`precipdiff.pipeline.dry`); None: the
    weights' ``trace_threshold`` metadata if present, else 0.1 mm/h. fine_threshold : mm/h below
    which *fine-grid* outputs are 0 (at least the trace threshold; None: the Stage-II weights'
    ``fine_threshold`` metadata if present, else the trace threshold): a wet/dry threshold
    calibrated so that the fine wet area matches the truth's (``precipdiff.training.calibrate``).
    spread_inflation : factor by which the Stage-II members are spread about their mean
    (:mod:`~precipdiff.pipeline.spread`); None: the weights' calibrated ``spread_inflation``
    note if present, else 1 (none).
    cap_peaks : hold every fine block's peak below the bound of the Stage-II weights'
    ``peak_envelope`` note, keeping its mean (:mod:`~precipdiff.pipeline.peaks`; areal-mean
    weights that carry the note only).
    dry_halo : coarse cells of the dry-neighbourhood rule. temporal_windows : how a temporal
    Stage II covers a record (:data:`~precipdiff.pipeline.sequence.WINDOW_MODES`).
    temporal_noise_correlation : lag-1 correlation in time of its starting noise; None: what
    the weights were trained with (:func:`~precipdiff.pipeline.record.noise_correlation`).
    temporal_noise_drift : that noise moves with the coarse rain; None: as the weights say
    (:func:`~precipdiff.pipeline.record.noise_drift`).
    temporal_chunk : frames it samples as one state (:mod:`precipdiff.pipeline.record`).
    crop_to_rain : Stage II samples only the part of each window around its wet coarse cells
    (:func:`~precipdiff.pipeline.dry.wet_boxes`: the boxes of the groups of cells wet in any
    member, ``halo`` pixels of context around each), the rest being zeroed by the dry rule
    anyway; False samples whole windows.
    window_workers : worker processes that sample a time step's Stage-II blocks side by side on
    a CPU (:mod:`~precipdiff.pipeline.blocks`), each with ``max(1, threads // window_workers)``
    intra-op threads; used when the step has enough rain to pay for starting them
    (:meth:`Pipeline.block_workers`); 1 samples them here.
    """

    members: int = PREDICT.members
    correct: SamplerSettings = SamplerSettings()
    downscale: SamplerSettings = SamplerSettings()
    seed: int = 0
    member_batch: int = PREDICT.member_batch
    window: int = PREDICT.window
    halo: int = PREDICT.halo
    tile: int | None = None
    overlap: int | None = None
    tile_batch: int = 8
    mass_consistent: bool | None = False
    device: str = "cpu"
    precision: str = "auto"
    trace_threshold: float | None = None
    fine_threshold: float | None = None
    spread_inflation: float | None = None
    cap_peaks: bool = True
    dry_halo: int = DEFAULT_HALO
    input_semantics: str | None = None
    coarsen: int = 1
    allow_semantics_mismatch: bool = False
    allow_spacing_mismatch: bool = False
    temporal_windows: str = PREDICT.temporal_windows
    temporal_noise_correlation: float | None = PREDICT.temporal_noise_correlation
    temporal_noise_drift: bool | None = PREDICT.temporal_noise_drift
    temporal_chunk: int = PREDICT.temporal_chunk
    crop_to_rain: bool = True
    window_workers: int = 1

    @property
    def bf16(self) -> bool:
        """bfloat16 autocast for the networks: ``auto`` uses it where the hardware is fast at it."""
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        return self.precision == "bf16" or (self.precision == "auto" and bf16_is_fast(self.device))


@dataclass
class RunTally:
    """Sums over a run that go into the output's attributes.

    ``fine_sum`` / ``coarse_sum``: rain summed over the valid fine pixels (divided by ``f``²) and
    over the corrected coarse cells they downscale, all members and times; their ratio minus 1 is
    the domain volume error (fine mean / corrected coarse mean - 1).
    """

    fine_sum: float = 0.0
    coarse_sum: float = 0.0
    pooling: str = "mean"
    volume: bool = False
    clipped: int | None = None
    bound: str = ""
    blocks_sampled: int = 0
    blocks_dry: int = 0
    pixels_window: int = 0
    pixels_sampled: int = 0

    def count_block(self, dry: bool) -> None:
        """Count one Stage-II block (members x window, x frames for a record): sampled, or
        skipped because every coarse cell under it is dry (:func:`dry_block`)."""
        if dry:
            self.blocks_dry += 1
        else:
            self.blocks_sampled += 1

    def count_pixels(self, window: int, sampled: int) -> None:
        """Fine pixels of one block's window and of the part of it sampled (:func:`wet_boxes`)."""
        self.pixels_window += window
        self.pixels_sampled += sampled

    def add_volume(self, hr: np.ndarray, lr: np.ndarray, factor: int) -> None:
        """Add one band: fine members ``hr`` (M, h, w) and their coarse cells ``lr`` (M, h/f, w/f)
        (cells NaN in ``hr`` are left out of both sums)."""
        self.volume = True
        m, ny, nx = lr.shape
        blocks = hr.reshape(m, ny, factor, nx, factor)
        valid = np.isfinite(blocks).all(axis=(2, 4)) & np.isfinite(lr)
        self.fine_sum += float(np.nansum(blocks, axis=(2, 4), dtype=np.float64)[valid].sum()
                               / factor**2)
        self.coarse_sum += float(lr[valid].sum(dtype=np.float64))

    @property
    def volume_error(self) -> float:
        """Fine-grid mean / corrected coarse mean - 1 (0 when both are dry)."""
        if self.coarse_sum <= 0:
            return 0.0 if self.fine_sum <= 0 else float("inf")
        return self.fine_sum / self.coarse_sum - 1.0

    def add_clipped(self, n: int, bound: str) -> None:
        """Count Stage-I values clipped to the bound described by ``bound``."""
        self.clipped = (self.clipped or 0) + int(n)
        self.bound = bound

    def attrs(self) -> dict[str, float | int | str]:
        """Output attributes: ``volume_error`` and what it means for this model's pooling; the
        number of Stage-I values clipped to their bound (``stage1_clipped``) and the bound."""
        out: dict[str, float | int | str] = {}
        if self.clipped is not None:
            out.update(stage1_clipped=self.clipped, stage1_bound=self.bound)
        if self.blocks_sampled or self.blocks_dry:
            out.update(stage2_blocks_sampled=self.blocks_sampled,
                       stage2_blocks_dry=self.blocks_dry)
        if self.pixels_window:
            out["stage2_sampled_fraction"] = round(self.pixels_sampled / self.pixels_window, 4)
        if not self.volume:
            return out
        meaning = ("fine-grid mean divided by the corrected coarse mean, minus 1 (all members and "
                   "times)")
        if self.pooling == "max":
            meaning += ("; the Stage-II model was trained on block maxima, so the corrected "
                        "coarse values are not areal means and this is not a volume error")
        return {**out, "volume_error": self.volume_error, "volume_error_meaning": meaning}


@dataclass
class StepResult:
    """One time step: corrected LR members (M, Y, X) and an iterator of HR row bands."""

    corrected_lr: np.ndarray
    hr_bands: Iterator[tuple[int, int, np.ndarray]] | None = None
    stats: dict[str, float] = field(default_factory=dict)


def _nan_to_zero(a: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    valid = np.isfinite(a)
    return torch.from_numpy(np.where(valid, a, 0.0).astype(np.float32)), valid


class Pipeline:
    """Stage I (correct) then Stage II (downscale); either may be ``None``."""

    def __init__(self, correct: Stage | None = None, downscale: Stage | None = None):
        if correct is None and downscale is None:
            raise ValueError("a pipeline needs at least one stage")
        if correct is not None and correct.kind != "correct":
            raise GridError(
                f"{correct.source}: Stage I needs 'correct' weights, got {correct.kind!r}"
            )
        if downscale is not None and downscale.kind not in ("downscale", "regression"):
            raise GridError(
                f"{downscale.source}: Stage II needs 'downscale' or 'regression' weights, "
                f"got {downscale.kind!r}"
            )
        self.correct = correct
        self.downscale = downscale

    @property
    def temporal(self) -> bool:
        """Whether Stage II is temporal: it then samples whole records
        (:func:`~precipdiff.pipeline.record.downscale_record`), not frame by frame."""
        return self.downscale is not None and self.downscale.temporal is not None

    @property
    def factor(self) -> int:
        return self.downscale.factor if self.downscale is not None else 1

    def trace(self, opts: PredictOptions) -> float:
        """The trace threshold (mm/h): ``opts``, else the weights' metadata, else the default:
        :data:`~precipdiff.pipeline.dry.AREAL_MEAN_TRACE_MM_H` when an areal-mean input goes
        to a mean-pooled Stage II as it is (no Stage I), else
        :data:`~precipdiff.pipeline.dry.DEFAULT_TRACE_MM_H`."""
        if opts.trace_threshold is not None:
            return float(opts.trace_threshold)
        for stage in (self.downscale, self.correct):
            if stage is not None and "trace_threshold" in stage.metadata:
                return float(stage.metadata["trace_threshold"])
        if self.correct is None and self.downscale is not None \
                and self.downscale.pooling == "mean":
            return AREAL_MEAN_TRACE_MM_H
        return DEFAULT_TRACE_MM_H

    def mass_consistent(self, opts: PredictOptions) -> bool:
        """Whether fine blocks are rescaled to the corrected coarse values: ``opts``, or with
        None (auto) for a Stage II trained on areal means (``pooling == "mean"``)."""
        if opts.mass_consistent is not None:
            return bool(opts.mass_consistent)
        return self.downscale is not None and self.downscale.pooling == "mean"

    def fine_threshold(self, opts: PredictOptions) -> float:
        """The fine-grid wet threshold (mm/h): ``opts``, else the Stage-II weights' metadata
        (for the product Stage II is conditioned on where calibrated per product), else the
        trace threshold but at least :data:`~precipdiff.pipeline.dry.DEFAULT_TRACE_MM_H` (the
        lower areal-mean trace is a coarse-grid rule: no 1-km value ends below 0.1 mm/h);
        never below the trace threshold."""
        value = opts.fine_threshold
        if value is None and self.downscale is not None:
            value, _ = self.downscale.product_note("fine_threshold")
        trace = self.trace(opts)
        if value is None:
            return trace if opts.trace_threshold is not None else max(trace, DEFAULT_TRACE_MM_H)
        return max(trace, float(value))

    def spread_inflation(self, opts: PredictOptions) -> float:
        """The Stage-II spread inflation factor: ``opts``, else the weights' calibrated factor
        for the product Stage II is conditioned on (``spread_inflation_by_product`` note), else
        their ``spread_inflation`` note, else 1 (:mod:`~precipdiff.pipeline.spread`)."""
        if opts.spread_inflation is not None:
            return float(opts.spread_inflation)
        stage = self.downscale
        if stage is None:
            return 1.0
        note, key = stage.product_note("spread_inflation")
        if note is None:
            return 1.0
        try:
            value = float(note)
        except ValueError:
            value = float("nan")
        lo, hi = INFLATION_RANGE
        if not lo < value <= hi:
            raise CheckpointError(f"{stage.source}: metadata '{key}' must "
                                  f"be a number in ({lo:g}, {hi:g}], got {note!r}")
        return value

    def inflate(self, hr: np.ndarray, corrected: np.ndarray, opts: PredictOptions) -> np.ndarray:
        """Fine members ``hr`` (M, h, w) mm/h after the wet/dry rule and mass consistency,
        inflated about their mean (:func:`~precipdiff.pipeline.spread.inflate_spread`) and, with
        mass consistency, rescaled to the corrected coarse cells ``corrected`` (M, h/f, w/f)
        again (the members before inflation rank the pixels of a block it dried)."""
        factor = self.spread_inflation(opts)
        if factor == 1.0 or hr.shape[0] < 2:
            return hr
        stage = self.downscale
        assert stage is not None
        threshold = self.fine_threshold(opts)
        out = inflate_spread(hr, factor, threshold=threshold)
        if self.mass_consistent(opts):
            out = mass_consistent(out, corrected, self.factor, stage.pooling,
                                  threshold=threshold, ranking=hr)
        return out

    def peak_envelope(self, opts: PredictOptions) -> PeakEnvelope | None:
        """The bound on fine peaks (:mod:`~precipdiff.pipeline.peaks`) from the Stage-II
        weights' ``peak_envelope`` note, for areal-mean weights with ``opts.cap_peaks``."""
        stage = self.downscale
        if not opts.cap_peaks or stage is None or stage.pooling != "mean":
            return None
        note = stage.metadata.get("peak_envelope")
        if note is None:
            return None
        try:
            return PeakEnvelope.from_note(note)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{stage.source}: metadata 'peak_envelope' is not a peak "
                                  f"envelope ({exc})") from None

    # ---------------------------------------------------------------- checks
    def prepare_input(self, src: xr.DataArray, opts: PredictOptions) -> xr.DataArray:
        """The checked input (:func:`~precipdiff.pipeline.inputs.check_input`), pooled by
        ``opts.coarsen``, after refusing a declared semantics or a grid spacing the models were
        not trained for (:class:`~precipdiff.errors.InputFileError`, one line naming both and
        the override). With ``opts.input_semantics`` None neither is checked."""
        src = check_input(src)
        src = coarsen_input(src, opts.coarsen, opts.input_semantics or "areal_mean")
        if opts.input_semantics is None:
            log.debug("input semantics not declared: semantics and grid spacing not checked")
            return src
        stages = [(n, s.semantics) for n, s in (("Stage-I (correct)", self.correct),
                                                ("Stage-II (downscale)", self.downscale))
                  if s is not None]
        check_semantics(src, opts.input_semantics, stages, allow=opts.allow_semantics_mismatch)
        first = self.correct if self.correct is not None else self.downscale
        assert first is not None
        check_spacing(src, first.metadata, allow=opts.allow_spacing_mismatch)
        return src

    def new_tally(self) -> RunTally:
        """An empty :class:`RunTally` for one run of this pipeline."""
        return RunTally(pooling=self.downscale.pooling if self.downscale is not None else "mean")

    # ---------------------------------------------------------------- Stage I
    def stage1_bound(self) -> tuple[float, float]:
        """``(ratio, add)`` of the Stage-I bound: the weights' ``stage1_bound`` note, else
        :data:`STAGE1_BOUND` for their pooling."""
        stage = self.correct
        assert stage is not None
        note = stage.metadata.get("stage1_bound")
        if note:
            try:
                d = json.loads(note)
                ratio, add = float(d["ratio"]), float(d["add_mm_h"])
                if ratio >= 1 and add >= 0:
                    return ratio, add
            except (TypeError, ValueError, KeyError):
                pass
            log.warning("%s: unreadable stage1_bound note %r; default bound used",
                        stage.source, note[:80])
        return STAGE1_BOUND[stage.pooling]

    def bound_corrected(self, corrected: np.ndarray, source: np.ndarray, halo: int
                        ) -> tuple[np.ndarray, int, str]:
        """Clip Stage-I members (M, Y, X) to ``max(ratio * M, M + add)``, ``M`` the maximum of
        ``source`` (Y, X; the larger of the raw and the mapped source) over each cell's
        ``(2 halo + 1)²`` neighbourhood: ``(clipped members, number clipped, description)``."""
        ratio, add = self.stage1_bound()
        nb = ndi.maximum_filter(np.nan_to_num(source, nan=0.0), size=2 * halo + 1,
                                mode="nearest")
        bound = np.maximum(ratio * nb, nb + add).astype(np.float32)
        over = corrected > bound[None]
        text = (f"max({ratio:g} x source neighbourhood max, source neighbourhood max + "
                f"{add:g} mm h-1) over {2 * halo + 1}x{2 * halo + 1} coarse cells")
        return np.where(over, bound[None], corrected), int(over.sum()), text

    def correct_step(self, src: np.ndarray, t: int, opts: PredictOptions,
                     tally: RunTally | None = None) -> np.ndarray:
        """Corrected coarse members (M, Y, X) in mm/h for one source field ``src`` (Y, X) mm/h,
        bounded (:meth:`bound_corrected`; the count goes to ``tally``)."""
        m = opts.members
        trace = self.trace(opts)
        if self.correct is None:
            repeated = np.repeat(src[None].astype(np.float32), m, axis=0)
            return dry_coarse(repeated, src, trace=trace, halo=opts.dry_halo)
        stage = self.correct
        mapped = stage.map_source(src)
        x, valid = _nan_to_zero(stage.transform.forward(mapped))
        base = x[None, None].to(opts.device)
        out = []
        for m0 in range(0, m, opts.member_batch):
            mb = min(opts.member_batch, m - m0)
            noise = torch.stack(
                [
                    position_noise(0, 0, *src.shape, seed=opts.seed, member=m0 + i, time_index=t)
                    for i in range(mb)
                ]
            )
            y = stage.apply(
                base.expand(mb, -1, -1, -1),
                noise,
                settings=opts.correct,
                tile=opts.tile,
                overlap=opts.overlap,
                tile_batch=opts.tile_batch,
                bf16=opts.bf16,
            )
            out.append(stage.transform.inverse(y[:, 0].cpu().numpy()))
        corrected = np.concatenate(out).astype(np.float32)
        corrected, n_clipped, bound = self.bound_corrected(
            corrected, np.fmax(src, mapped), max(opts.dry_halo, 1))
        if n_clipped:
            log.info("Stage I: %d value(s) clipped to %s", n_clipped, bound)
        if tally is not None:
            tally.add_clipped(n_clipped, bound)
        corrected[:, ~valid] = np.nan
        return dry_coarse(corrected, src, trace=trace, halo=opts.dry_halo)

    # ---------------------------------------------------------------- Stage II
    def downscale_step(
        self,
        corrected: np.ndarray,
        t: int,
        opts: PredictOptions,
        *,
        extras: np.ndarray | None = None,
        scratch: Path | None = None,
        on_window: Callable[[], None] | None = None,
        tally: RunTally | None = None,
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Downscale corrected members (M, Y, X) mm/h; yields fine row bands (y0, y1, (M, h, W)).

        ``extras`` (E, H, W) are extra conditioning channels already on the fine grid; ``tally``
        collects the domain volume (:class:`RunTally`).
        """
        stage, f = self.downscale, self.factor
        assert stage is not None
        if stage.temporal is not None:
            raise CheckpointError(
                f"{stage.source}: a temporal Stage II samples whole records, not one time step: "
                "use Pipeline.predict or predict_to_file (precipdiff predict, --archive with "
                "NetCDF output)"
            )
        m, ny, nx = corrected.shape
        h, w = ny * f, nx * f
        tcor, _ = _nan_to_zero(stage.transform.forward(corrected))
        trace = self.trace(opts)
        dry_lr = dry_cells(corrected, trace=trace, halo=opts.dry_halo)
        acc = Accumulator(m, h, w, scratch)
        lr = tcor[:, None].to(opts.device)
        wins = list(windows(h, w, opts.window, opts.halo, multiple=f))
        # the boxes of all members, so that a member's sample does not depend on the member
        # batch it falls in
        boxes_of = [self._boxes(dry_lr, win, opts) for win in wins]

        def blocks() -> Iterator[tuple[tuple[Window, int, Window | None, bool], Block | None]]:
            """Per window, member batch and wet box (:func:`wet_boxes`): the block to sample,
            keyed by the window, the first member, the box and whether it is the batch's last
            box; a batch dry in all its cells is one None block (the rule zeroes it, exactly)."""
            for win, boxes in zip(wins, boxes_of, strict=True):
                base_all = window_base(lr, win, f)
                for m0 in range(0, m, opts.member_batch):
                    mb = min(opts.member_batch, m - m0)
                    dry = dry_block(dry_lr[m0 : m0 + mb], win, f)
                    if tally is not None:
                        tally.count_block(dry)
                        if not dry:
                            tally.count_pixels(win.weight.numel(),
                                               sum(b.weight.numel() for b in boxes))
                    if dry:
                        yield (win, m0, None, True), None
                        continue
                    for i, box in enumerate(boxes):
                        by, bx = box.slices_in(win)
                        ext = None if extras is None else np.repeat(stage.standardise_extras(
                            extras[:, box.y0 : box.y1, box.x0 : box.x1])[None], mb, axis=0)
                        block = Block(t, m0, box.y0, box.x0,
                                      base_all[m0 : m0 + mb, :, by, bx].cpu().numpy(), ext)
                        yield (win, m0, box, i == len(boxes) - 1), block

        cfg = BlockSettings(opts.downscale, opts.seed, opts.tile, opts.overlap,
                            opts.tile_batch, opts.bf16, str(opts.device))
        workers = self.block_workers(opts, dry_lr, wins, boxes_of)
        threads = max(1, torch.get_num_threads() // workers)
        if workers > 1:
            log.info("Stage II, time step %d: %d worker processes x %d thread(s)", t, workers,
                     threads)
        out = None
        with (BlockPool(stage, cfg, workers, threads=threads) if workers > 1
              else contextlib.nullcontext()) as pool:
            for (win, m0, box, done), y in sample_blocks(stage, blocks(), cfg, pool):
                if out is None:
                    out = np.zeros((min(opts.member_batch, m - m0), *win.weight.shape),
                                   np.float32)
                if y is not None:  # outside the boxes: dry cells only
                    out[(slice(None), *box.slices_in(win))] = y
                if done:
                    acc.add(m0, win.y0, win.x0, out, win.weight.numpy())
                    out = None
                    if m0 + opts.member_batch >= m and on_window is not None:
                        on_window()
        band = max(f, (opts.window // f) * f)
        for y0 in range(0, h, band):
            y1 = min(h, y0 + band)
            yield y0, y1, self.finish_band(acc.band(y0, y1), corrected, y0, opts,
                                           dry_lr=dry_lr, tally=tally)

    def _boxes(self, dry_lr: np.ndarray, win: Window, opts: PredictOptions) -> list[Window]:
        """The parts of ``win`` Stage II samples: its wet boxes (:func:`wet_boxes`) when
        ``opts.crop_to_rain``, else the whole window."""
        if not opts.crop_to_rain:
            return [win]
        return wet_boxes(dry_lr, win, self.factor, opts.halo)

    def block_workers(self, opts: PredictOptions, dry_lr: np.ndarray, wins: list[Window],
                      boxes_of: list[list[Window]]) -> int:
        """Worker processes for one time step's Stage-II blocks: ``opts.window_workers`` on a
        CPU when the step's wet boxes (``boxes_of``, per window of ``wins``) hold at least
        :data:`POOL_MIN_WORK` member-pixel network evaluations per worker, else 1 (sampled in
        this process)."""
        n = opts.window_workers
        if n < 2 or torch.device(opts.device).type != "cpu":
            return 1
        f, stage = self.factor, self.downscale
        assert stage is not None
        nfe = stage.nfe(opts.downscale)
        work = 0
        for win, boxes in zip(wins, boxes_of, strict=True):
            pixels = sum(b.weight.numel() for b in boxes)
            for m0 in range(0, opts.members, opts.member_batch):
                members = dry_lr[m0 : m0 + opts.member_batch]
                if not dry_block(members, win, f):
                    work += len(members) * pixels * nfe
        return n if work > 0 and work >= POOL_MIN_WORK * n else 1

    def finish_band(self, sample: np.ndarray, corrected: np.ndarray, y0: int,
                    opts: PredictOptions, *, dry_lr: np.ndarray,
                    tally: RunTally | None = None) -> np.ndarray:
        """Fine rows ``[y0, y0 + h)`` of Stage-II members ``sample`` (M, h, W), transformed
        space, to mm/h: inverse transform, wet/dry rule (``dry_lr`` (M, Y, X) from
        :func:`~precipdiff.pipeline.dry.dry_cells` of ``corrected``), the mass-consistent
        option, the spread inflation (:meth:`inflate`), the bound on peaks
        (:meth:`peak_envelope`), missing corrected cells as NaN, the volume tally.
        ``corrected`` (M, Y, X) mm/h is the whole coarse field the rows downscale."""
        stage, f = self.downscale, self.factor
        assert stage is not None
        y1 = y0 + sample.shape[-2]
        ly0, ly1 = y0 // f, -(-y1 // f)
        hr = stage.transform.inverse(sample).astype(np.float32)
        threshold = self.fine_threshold(opts)
        rescale = self.mass_consistent(opts)
        raw = hr.copy() if rescale else None  # where a cell's rain goes if the rule dried it
        hr = dry_fine(hr, dry_lr[:, ly0:ly1], f, trace=threshold)
        if rescale:
            hr = mass_consistent(hr, corrected[:, ly0 : y1 // f], f, stage.pooling,
                                 threshold=threshold, ranking=raw)
        hr = self.inflate(hr, corrected[:, ly0 : y1 // f], opts)
        envelope = self.peak_envelope(opts)
        if envelope is not None:
            hr = cap_peaks(hr, f, envelope)
        band_valid = np.isfinite(corrected[:, ly0:ly1])
        mask = np.repeat(np.repeat(band_valid, f, axis=-2), f, axis=-1)[:, : y1 - y0]
        hr[~mask] = np.nan
        if tally is not None:
            tally.add_volume(hr, corrected[:, ly0:ly1], f)
        return hr

    # ---------------------------------------------------------------- both
    def predict(
        self,
        src: xr.DataArray,
        opts: PredictOptions = PredictOptions(),
        *,
        extras: xr.DataArray | None = None,
        on_window: Callable[[], None] | None = None,
    ) -> xr.Dataset:
        """Run the pipeline on ``src`` (time, lat, lon) in mm/h and return an in-memory Dataset.

        Variables: ``precip`` (member, time, lat, lon) on the fine grid and ``corrected_lr``
        (member, time, lat_lr, lon_lr); ``(y, x)`` / ``(y_lr, x_lr)`` for projected inputs. The
        input is checked first (:func:`~precipdiff.pipeline.inputs.check_input`). For domains
        that do not fit in memory use :func:`precipdiff.pipeline.output.predict_to_file`. A
        temporal Stage II downscales all time steps together, after Stage I
        (:func:`~precipdiff.pipeline.record.downscale_record`).
        """
        src = self.prepare_input(src, opts)
        grid = Grid.from_dataarray(src)
        fine = grid.refine(self.factor)
        check_extras(src, extras, fine)
        times = src["time"].values
        m = opts.members
        hr = np.full((m, len(times), fine.nlat, fine.nlon), np.nan, np.float32)
        lr = np.full((m, len(times), grid.nlat, grid.nlon), np.nan, np.float32)
        tally = self.new_tally()
        for t in range(len(times)):
            lr[:, t] = self.correct_step(src.isel(time=t).values, t, opts, tally)
            if self.downscale is None or self.temporal:
                continue
            ext = None if extras is None else extras.isel(time=t).values
            for y0, y1, band in self.downscale_step(
                lr[:, t], t, opts, extras=ext, on_window=on_window, tally=tally
            ):
                hr[:, t, y0:y1] = band
        if self.temporal:
            ext = None if extras is None else extras.values
            for t, bands in downscale_record(self, lr, times, opts, extras=ext, tally=tally,
                                             on_window=on_window):
                for y0, y1, band in bands:
                    hr[:, t, y0:y1] = band
        ds = self._dataset(src, grid, fine, lr, hr if self.downscale is not None else None, opts)
        return ds.assign_attrs(tally.attrs())

    def _dataset(self, src, grid, fine, lr, hr, opts) -> xr.Dataset:
        time = src["time"].values
        ydim, xdim = spatial_dims(src)
        keep = ("crs", "crs_wkt", "xy_units") if ydim == "y" else ()
        extra = {k: src.attrs[k] for k in keep if k in src.attrs}
        data = {
            "corrected_lr": _member_field(
                lr,
                time,
                (f"{ydim}_lr", grid.lat),
                (f"{xdim}_lr", grid.lon),
                "Stage-I corrected precipitation rate (coarse grid)",
            ).assign_attrs(extra)
        }
        if hr is not None:
            data["precip"] = _member_field(
                hr,
                time,
                (ydim, fine.lat),
                (xdim, fine.lon),
                "downscaled precipitation rate ensemble",
            ).assign_attrs(extra)
        return xr.Dataset(data, attrs=self.provenance(opts))

    def provenance(self, opts: PredictOptions) -> dict[str, str | int | float]:
        """Attributes that say which models, sampler, steps and seed made an output."""
        from precipdiff import __version__

        attrs: dict[str, str | int | float] = {
            "precipdiff_version": __version__,
            "seed": opts.seed,
            "precision": "bf16" if opts.bf16 else "fp32",
            "members": opts.members,
            "mass_consistent": int(self.mass_consistent(opts)),
            "trace_threshold": self.trace(opts),
            "trace_threshold_units": "mm h-1",
            "fine_threshold": self.fine_threshold(opts),
            "fine_threshold_units": "mm h-1",
            "spread_inflation": self.spread_inflation(opts),
            "peak_cap": "fine values at most R(c) times their coarse block's mean c, R from the "
                        "Stage-II weights' peak_envelope note" if self.peak_envelope(opts)
                        else "none",
            "dry_rule": (
                f"values below trace_threshold (fine-grid values below fine_threshold) are 0; "
                f"a coarse cell (fine pixel) is 0 where the "
                f"source (corrected) coarse cells within {opts.dry_halo} cell(s) are all below it"
            ),
            "dry_halo_cells": opts.dry_halo,
            "input_semantics": opts.input_semantics or "undeclared (not checked)",
            "input_coarsened_by": opts.coarsen,
        }
        if opts.allow_semantics_mismatch:
            attrs["input_semantics_check"] = "overridden (--allow-semantics-mismatch)"
        if opts.allow_spacing_mismatch:
            attrs["input_spacing_check"] = "overridden (--allow-spacing-mismatch)"
        for name, stage, s in (
            ("correct", self.correct, opts.correct),
            ("downscale", self.downscale, opts.downscale),
        ):
            if stage is None:
                attrs[f"{name}_model"] = "none"
                continue
            attrs[f"{name}_model"] = Path(stage.source).name
            attrs[f"{name}_pooling"] = stage.pooling
            semantics = getattr(stage, "semantics", None)
            if semantics is not None:
                attrs[f"{name}_input_semantics"] = f"{semantics.aggregation} {semantics.quantity}"
            attrs[f"{name}_weights_sha256"] = stage.metadata.get("sha256", "")
            used = stage.sampling(s)
            attrs[f"{name}_sampler"] = used.sampler
            attrs[f"{name}_steps"] = used.steps
            attrs[f"{name}_schedule"] = used.schedule_name
            if used.sigmas is not None:
                attrs[f"{name}_sigmas"] = ", ".join(f"{v:g}" for v in used.sigmas)
            attrs[f"{name}_nfe"] = stage.nfe(s)
            if stage.products:
                attrs[f"{name}_product"] = stage.product
            if stage.temporal is not None:
                attrs[f"{name}_temporal_frames"] = stage.temporal.frames
                attrs[f"{name}_temporal_windows"] = opts.temporal_windows
                attrs[f"{name}_temporal_noise_correlation"] = noise_correlation(stage, opts)
                attrs[f"{name}_temporal_noise_drift"] = int(noise_drifts(stage, opts))
        return attrs


def check_extras(src: xr.DataArray, extras: xr.DataArray | None, fine: Grid) -> None:
    """Extras must lie on the output grid: same spatial dims as ``src`` and the fine shape.

    (Extras are regridded in lat/lon; on a projected input they would be misplaced.)
    """
    if extras is None:
        return
    dims = spatial_dims(src)
    if tuple(extras.dims[-2:]) != dims or tuple(extras.shape[-2:]) != fine.shape:
        raise GridError(
            f"extra fields have dims {extras.dims} and shape {extras.shape}; expected "
            f"(time, var, {dims[0]}, {dims[1]}) on the output grid {fine.shape} (extras are "
            "supported for lat/lon inputs only)"
        )


def _member_field(
    values: np.ndarray, time: np.ndarray, lat: tuple, lon: tuple, long_name: str
) -> xr.DataArray:
    """(member, time, lat, lon) rain-rate DataArray; ``lat``/``lon`` are (dim name, centres)."""
    return xr.DataArray(
        values,
        dims=("member", "time", lat[0], lon[0]),
        coords={"member": np.arange(values.shape[0]), "time": time, lat[0]: lat[1], lon[0]: lon[1]},
        attrs={"units": "mm/h", "long_name": long_name},
    )


def mass_consistent(hr: np.ndarray, lr: np.ndarray, factor: int, pooling: str, *,
                    threshold: float = 0.0, ranking: np.ndarray | None = None) -> np.ndarray:
    """Rescale each ``factor``² block of ``hr`` (M, h, w) so its pooled value equals ``lr``.

    Multiplicative per block: ``hr * lr / pool(hr)``, ``pool`` = block max (``pooling="max"``) or
    block mean (``"mean"``). A scaling below 1 can push values under the wet ``threshold``
    (mm/h): those are zeroed and the block rescaled once more, which only scales up.

    A block whose pooled value is 0 while ``lr > 0`` (the wet/dry rule dried all of it: a light
    cell whose every pixel fell below ``threshold``) is filled: for mean pooling with a
    ``threshold``, its volume goes to the ``k = floor(lr f² / threshold)`` pixels ranked highest
    by ``ranking`` (the sample before the rule; else the first ``k``), each ``lr f² / k >=
    threshold``, so the mean is kept and no value ends in ``(0, threshold)``; a cell lighter
    than ``threshold / f²`` stays dry. Otherwise (max pooling, no threshold) it is filled
    uniformly with ``lr``, which satisfies both poolings.

    In the pipeline this runs after the wet/dry rule (:mod:`precipdiff.pipeline.dry`): a wet
    corrected cell (``lr >= trace``) is never in a dry neighbourhood, so the rule only zeroes
    values below the threshold inside it, and the rescaling restores the cell's mean (or
    maximum) exactly; dry cells have ``lr = 0`` and stay 0.
    """
    m, h, w = hr.shape
    # float64 inside: the block means of the float32 result then match ``lr`` to ~1e-7
    blocks = hr.reshape(m, h // factor, factor, w // factor, factor).astype(np.float64)
    target = lr.astype(np.float64)
    out = _rescale_blocks(blocks, target, pooling)
    if threshold > 0:
        low = (out > 0) & (out < threshold)
        if low.any():
            out[low] = 0.0
            out = _rescale_blocks(out, target, pooling)
        if pooling == "mean":
            rank = None if ranking is None else ranking.reshape(blocks.shape)
            out = _concentrate(out, target, threshold, rank)
    return out.reshape(m, h, w).astype(np.float32)


def _concentrate(out: np.ndarray, lr: np.ndarray, threshold: float,
                 ranking: np.ndarray | None) -> np.ndarray:
    """Blocks (M, Y, f, X, f) of ``out`` filled uniformly below ``threshold`` (every value
    under it while ``lr > 0``): their mean ``lr`` on the ``k`` top-ranked pixels instead."""
    f2 = out.shape[2] * out.shape[4]
    with np.errstate(invalid="ignore"):
        filled = (out < threshold).all(axis=(2, 4)) & (lr > 0)
    if not filled.any():
        return out
    idx = np.nonzero(filled)
    volume = lr[idx] * f2  # (E,) mm/h x pixels
    k = np.minimum(np.floor(volume / threshold + 1e-9), f2).astype(np.int64)
    if ranking is None:
        score = np.zeros((len(volume), f2))
    else:
        score = np.nan_to_num(ranking.transpose(0, 1, 3, 2, 4)[idx].reshape(-1, f2), nan=-np.inf)
    ranks = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1)
    values = np.where(ranks < k[:, None], (volume / np.maximum(k, 1))[:, None], 0.0)
    blocks = out.transpose(0, 1, 3, 2, 4).copy()
    blocks[idx] = values.reshape(len(values), out.shape[2], out.shape[4])
    return blocks.transpose(0, 1, 3, 2, 4)


def _rescale_blocks(blocks: np.ndarray, lr: np.ndarray, pooling: str) -> np.ndarray:
    """Blocks (M, Y, f, X, f) scaled so that each one's pooled value is ``lr`` (M, Y, X)."""
    with warnings.catch_warnings():  # all-missing blocks pool to NaN and stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = (np.nanmax(blocks, axis=(2, 4)) if pooling == "max"
                  else np.nanmean(blocks, axis=(2, 4)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(pooled > 0, lr / pooled, 0.0)
    out = blocks * ratio[:, :, None, :, None]
    empty = (pooled <= 0) & (lr > 0)
    if empty.any():
        fill = np.broadcast_to(lr[:, :, None, :, None], out.shape)
        mask = np.broadcast_to(empty[:, :, None, :, None], out.shape)
        out = np.where(mask, fill, out)
    return out


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary directory for on-disk accumulators."""
    return tempfile.TemporaryDirectory(prefix="precipdiff-acc-")
