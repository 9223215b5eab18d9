"""Predict defaults in one place: the CLI, :class:`~precipdiff.pipeline.run.PredictRequest`,
:class:`~precipdiff.pipeline.pipeline.PredictOptions`, the sampler settings and the demo read them.

Importing this module is cheap (no torch), so the CLI's ``--help`` can show the values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictDefaults:
    """Defaults of ``precipdiff predict``.

    members : ensemble size. sampler / steps / schedule : diffusion sampler name, steps per
    stage and noise schedule (``None``: the sampler's own, log-linear for DPM-Solver++(2M); 8
    steps: BENCHMARKS.md, "Sampler accuracy"). seed : base seed. member_batch : members sampled
    together. window / halo : fine-grid window and its halo (pixels); neighbouring windows
    overlap by ``2 * halo``, so a window below :attr:`min_window` would be mostly overlap (and
    the number of windows explodes). device : ``auto`` (CUDA when available) | ``cpu`` |
    ``cuda[:N]``. precision : ``auto`` | ``fp32`` | ``bf16``. thresholds : exceedance thresholds
    (mm/h). workers : processes across files in archive mode. threads : intra-op CPU threads of
    a single-file run, 0 = the idle cores (:mod:`precipdiff.threads`). window_workers :
    processes that sample a single-file CPU run's Stage-II windows side by side, one intra-op
    thread each; 0 = one per thread the threads rule gives (over a CONUS frame 1.10x faster
    than two threads in one process, for 7.1 instead of 4.1 GB: BENCHMARKS.md, "CONUS at 1
    km"), used only for time steps with enough rain to pay for starting them
    (:meth:`~precipdiff.pipeline.pipeline.Pipeline.block_workers`). mass_consistent : None
    (auto) rescales every coarse cell's 1-km block to its corrected value for areal-mean Stage
    II weights (lower volume error on all five held-out radar events, lower CRPS on four:
    BENCHMARKS.md, "Mass consistency by default"), not for block-maximum ones; True / False
    force it. temporal_windows : how a temporal Stage II covers a record, ``alternate``
    (partitions shifted by half a window on every other evaluation: each frame evaluated once a
    step, BENCHMARKS.md, "Temporal windows") or ``overlap`` (windows sharing a third, blended).
    temporal_noise_correlation : lag-1 correlation in time of a temporal Stage II's starting
    noise (AR(1), :func:`~precipdiff.pipeline.sequence.sequence_noise`); None: the one
    calibrated for the weights on training sequences (``temporal_noise_correlation_calibrated``
    note, :mod:`precipdiff.training.calibrate_time`), else the one they were trained with
    (``temporal_noise_correlation``), else 0. temporal_noise_drift : that noise moves with the
    coarse rain (:mod:`~precipdiff.pipeline.drift`) rather than standing at fixed pixels; None:
    as the weights' correlation was calibrated (``temporal_noise_drift`` note), else fixed.
    temporal_chunk : frames a temporal Stage II
    samples as one state (neighbouring chunks share a temporal window, blended); with
    ``member_batch`` and ``window`` it bounds the sampler's memory whatever the record's length
    (:mod:`precipdiff.pipeline.record`).
    """

    members: int = 16
    sampler: str = "dpmpp_2m"
    steps: int = 8
    schedule: str | None = None
    seed: int = 0
    member_batch: int = 8
    window: int = 512
    halo: int = 32
    device: str = "auto"
    precision: str = "auto"
    thresholds: tuple[float, ...] = (1.0, 5.0, 10.0)
    workers: int = 1
    threads: int = 0
    window_workers: int = 0
    mass_consistent: bool | None = None
    temporal_windows: str = "alternate"
    temporal_noise_correlation: float | None = None
    temporal_noise_drift: bool | None = None
    temporal_chunk: int = 24

    @property
    def min_window(self) -> int:
        """Smallest ``window`` accepted (pixels): four halos, so at most half a window overlaps."""
        return 4 * self.halo


#: The one instance everybody reads.
PREDICT = PredictDefaults()

#: Accepted ``precision`` values.
PRECISIONS = ("auto", "fp32", "bf16")
