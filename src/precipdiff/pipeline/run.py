"""``precipdiff predict``: files in, CF-NetCDF ensembles out (single file or archive mode).

Everything is checked before any work: the request (:meth:`PredictRequest.validate`, one
:class:`~precipdiff.errors.ConfigError` per impossible value), the inputs' existence and the
output's writability.

Archive mode writes ``OUTPUT/<input file name>.precipdiff.nc`` per input:

* two inputs with the same file name (in different folders) would write one output; they are
  refused before any work, naming both (rename them or run them into separate folders);
* an existing output is complete (writes are atomic) and is skipped, unless its global
  attribute ``precipdiff_input_id`` (a hash of the input's absolute path: no local path is
  written into the file) says it was made from another input: then that input fails
  (reported, the run exits 2) instead of being silently skipped;
* each file gets its own seed, derived from ``--seed`` and the input's valid times and grid
  (:func:`file_seed`): a rerun of the same input gives the same ensemble, different inputs
  (e.g. two dry frames) get different noise, and the result does not depend on the order of the
  inputs or on ``--workers``. The output's ``seed`` attribute is that file's seed
  (``archive_base_seed`` the ``--seed``), so ``predict FILE --seed <seed>`` reproduces it;
* the files are tasks on dask.distributed (:mod:`precipdiff.pipeline.archive`): an embedded
  LocalCluster of ``--workers`` processes, or the cluster at ``--scheduler`` /
  ``DASK_SCHEDULER_ADDRESS``; each worker loads the weights once. Worker processes die with the
  parent; a temporary file left by a killed run is removed by the next write of that output.

``--format zarr`` (archive mode only) writes one zarr v3 store at OUTPUT instead
(:mod:`precipdiff.pipeline.archive`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from precipdiff.atomic import check_writable
from precipdiff.defaults import PRECISIONS, PREDICT
from precipdiff.errors import CheckpointError, ConfigError, PrecipdiffError
from precipdiff.pipeline.inputs import AGGREGATIONS
from precipdiff.pipeline.output import predict_to_file
from precipdiff.pipeline.pipeline import Pipeline, PredictOptions
from precipdiff.pipeline.sequence import WINDOW_MODES
from precipdiff.pipeline.shipped import shipped_weights
from precipdiff.pipeline.spread import INFLATION_RANGE
from precipdiff.pipeline.stage import SamplerSettings, Stage
from precipdiff.pipeline.time_refine import METHODS as TIME_METHODS
from precipdiff.pipeline.time_refine import refine_time, refinement_meaning
from precipdiff.pipeline.timesel import TIME_SELECTION_MEANING, TimeRange
from precipdiff.progress import ProgressCallback
from precipdiff.threads import set_threads

log = logging.getLogger(__name__)


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
ARCHIVE_SUFFIX = ".precipdiff.nc"
INPUT_ATTR = "precipdiff_input_id"


@dataclass(frozen=True)
class PredictRequest:
    """Everything ``precipdiff predict`` was asked to do (defaults: :data:`~precipdiff.defaults.
    PREDICT`); checked on construction (:meth:`validate`)."""

    inputs: Sequence[Path]
    output: Path
    weights_correct: Path | None = None
    weights_downscale: Path | None = None
    stages: tuple[str, ...] = ("correct", "downscale")
    members: int = PREDICT.members
    sampler: str = PREDICT.sampler
    steps: int = PREDICT.steps
    schedule: str | None = PREDICT.schedule
    distilled: bool = True
    seed: int = PREDICT.seed
    bbox: tuple[float, float, float, float] | None = None
    reader: str | None = None
    variable: str | None = None
    member_batch: int = PREDICT.member_batch
    window: int = PREDICT.window
    device: str = PREDICT.device
    mass_consistent: bool | None = PREDICT.mass_consistent
    thresholds: tuple[float, ...] = PREDICT.thresholds
    archive: bool = False
    precision: str = PREDICT.precision
    workers: int = PREDICT.workers
    threads: int = PREDICT.threads
    window_workers: int = PREDICT.window_workers
    extras: tuple[Path, ...] = ()
    archive_format: str = "netcdf"
    scheduler: str | None = None
    input_semantics: str = "areal_mean"
    coarsen: int = 1
    allow_semantics_mismatch: bool = False
    allow_spacing_mismatch: bool = False
    time: TimeRange | None = None
    fine_threshold: float | None = None
    spread_inflation: float | None = None
    product: str | None = None
    cap_peaks: bool = True
    time_factor: int = 1
    time_interp: str = "motion"
    time_conserve: bool = True
    temporal_windows: str = PREDICT.temporal_windows
    temporal_noise_correlation: float | None = PREDICT.temporal_noise_correlation
    temporal_noise_drift: bool | None = PREDICT.temporal_noise_drift
    temporal_chunk: int = PREDICT.temporal_chunk

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option, the value and what is expected."""
        from precipdiff.diffusion.samplers import SAMPLERS
        from precipdiff.diffusion.schedules import SCHEDULES
        from precipdiff.io.registry import READERS

        for name in ("members", "steps", "member_batch", "workers", "coarsen", "time_factor",
                     "temporal_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                  f"got {value!r}")
        if self.temporal_windows not in WINDOW_MODES:
            raise ConfigError(f"--temporal-windows must be one of {', '.join(WINDOW_MODES)}, "
                              f"got {self.temporal_windows!r}")
        phi = self.temporal_noise_correlation
        if phi is not None and not (isinstance(phi, int | float) and 0 <= phi < 1):
            raise ConfigError(f"--temporal-noise-correlation must be in [0, 1), got "
                              f"{self.temporal_noise_correlation!r}")
        if self.fine_threshold is not None and not 0 <= self.fine_threshold <= 50:
            raise ConfigError(f"--fine-threshold must be a rain rate in [0, 50] mm/h, got "
                              f"{self.fine_threshold!r}")
        lo, hi = INFLATION_RANGE
        if self.spread_inflation is not None and not lo < self.spread_inflation <= hi:
            raise ConfigError(f"--spread-inflation must be in ({lo:g}, {hi:g}] (1: none), got "
                              f"{self.spread_inflation!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) \
                or self.threads < 0:
            raise ConfigError(f"--threads must be an integer >= 0 (0: the idle cores), got "
                              f"{self.threads!r}")
        if isinstance(self.window_workers, bool) or not isinstance(self.window_workers, int) \
                or self.window_workers < 0:
            raise ConfigError(f"--window-workers must be an integer >= 0 (0: one per thread), "
                              f"got {self.window_workers!r}")
        if not isinstance(self.window, int) or self.window < PREDICT.min_window:
            raise ConfigError(f"--window must be >= {PREDICT.min_window} fine-grid pixels (the "
                              f"windows overlap by {2 * PREDICT.halo}), got {self.window!r}")
        if not self.stages or set(self.stages) - {"correct", "downscale"}:
            raise ConfigError("--stages must name 'correct' and/or 'downscale' "
                              f"(comma-separated), got {','.join(self.stages)!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler {self.sampler!r} is unknown; expected one of "
                              f"{', '.join(sorted(SAMPLERS))}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r} is unknown; expected one of "
                              f"{', '.join(sorted(SCHEDULES))}")
        if self.reader is not None and self.reader not in READERS:
            raise ConfigError(f"--reader {self.reader!r} is unknown; expected one of "
                              f"{', '.join(sorted(READERS))}")
        if self.input_semantics not in AGGREGATIONS:
            raise ConfigError(f"--input-semantics {self.input_semantics!r} is unknown; expected "
                              f"one of {', '.join(AGGREGATIONS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is unknown; expected one of "
                              f"{', '.join(PRECISIONS)}")
        if not _DEVICE.match(str(self.device)):
            raise ConfigError(f"--device {self.device!r} is unknown; expected auto, cpu, "
                              "cuda, cuda:N or mps")
        if self.archive_format not in ("netcdf", "zarr"):
            raise ConfigError(f"--format {self.archive_format!r} is unknown; expected netcdf "
                              "or zarr")
        if self.archive_format == "zarr" and not self.archive:
            raise ConfigError("--format zarr writes one store for many inputs: it needs --archive")
        if self.time_interp not in TIME_METHODS:
            raise ConfigError(f"--time-interp {self.time_interp!r} is unknown; expected one of "
                              f"{', '.join(TIME_METHODS)}")
        if self.time is not None and not isinstance(self.time, TimeRange):
            raise ConfigError(f"--time must be a TimeRange (timesel.parse_time_range), "
                              f"got {self.time!r}")
        bad = [t for t in self.thresholds if not math.isfinite(t) or t < 0]
        if bad:
            raise ConfigError(f"--thresholds must be finite rates >= 0 mm/h, got {bad}")
        if self.bbox is not None:
            x0, y0, x1, y1 = self.bbox
            if not all(map(math.isfinite, self.bbox)) or x0 >= x1 or y0 >= y1:
                raise ConfigError("--bbox must be finite lon_min,lat_min,lon_max,lat_max with "
                                  f"min < max, got {','.join(f'{v:g}' for v in self.bbox)}")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device must exist."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} requested but no CUDA device is available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "device(s) are available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps requested but no MPS device is available")
    return device


def load_pipeline(req: PredictRequest, device: str) -> Pipeline:
    """Load the requested stages (the shipped weights where no path is given; with a
    ``product`` and no Stage-II weights, the shipped product-conditioned Stage II)."""
    shipped = shipped_weights()
    named = req.product not in (None, "any")
    stages: dict[str, Stage | None] = {"correct": None, "downscale": None}
    for name, given in (("correct", req.weights_correct), ("downscale", req.weights_downscale)):
        if name not in req.stages:
            continue
        # --product alone: the shipped product-conditioned Stage II
        default = "downscale_product" if name == "downscale" and named else name
        path = given or shipped[default]
        if path is None:
            raise CheckpointError(
                f"no {name} weights given and none shipped: pass --weights-{name} FILE.safetensors"
            )
        stages[name] = Stage.load(path, device=device)
    if named:
        if stages["downscale"] is None:
            raise ConfigError(f"--product {req.product}: conditions Stage II, which this run "
                              f"does not use (--stages {','.join(req.stages)})")
        if not stages["downscale"].products:
            raise ConfigError(
                f"--product {req.product}: {stages['downscale'].source} was not trained with "
                "product conditioning; pass --weights-downscale with product weights, e.g. the "
                f"shipped {shipped['downscale_product'] or 'stage2_downscale_mean_product'} "
                "(`precipdiff info` lists them)")
        stages["downscale"].set_product(req.product)
    return Pipeline(stages["correct"], stages["downscale"])


def _options(req: PredictRequest, device: str) -> PredictOptions:
    settings = SamplerSettings(sampler=req.sampler, steps=req.steps, schedule=req.schedule,
                               distilled=req.distilled)
    return PredictOptions(
        members=req.members,
        correct=settings,
        downscale=settings,
        seed=req.seed,
        member_batch=req.member_batch,
        window=req.window,
        mass_consistent=req.mass_consistent,
        input_semantics=req.input_semantics,
        coarsen=req.coarsen,
        allow_semantics_mismatch=req.allow_semantics_mismatch,
        allow_spacing_mismatch=req.allow_spacing_mismatch,
        fine_threshold=req.fine_threshold,
        spread_inflation=req.spread_inflation,
        cap_peaks=req.cap_peaks,
        temporal_windows=req.temporal_windows,
        temporal_noise_correlation=req.temporal_noise_correlation,
        temporal_noise_drift=req.temporal_noise_drift,
        temporal_chunk=req.temporal_chunk,
        device=device,
        precision=req.precision,
    )


def check_inputs(paths: Sequence[Path]) -> None:
    """Every input exists (:class:`PrecipdiffError` listing the missing ones)."""
    if not paths:
        raise ConfigError("no input files given")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise PrecipdiffError(f"input file(s) not found: {', '.join(missing)}")


def archive_targets(inputs: Sequence[Path], output: Path) -> list[tuple[Path, Path]]:
    """``(input, OUTPUT/<file name>.precipdiff.nc)`` per input; :class:`ConfigError` when two
    different inputs would write the same output (the same file repeated is kept once)."""
    seen: dict[Path, Path] = {}
    for path in map(Path, inputs):
        target = output / f"{path.name}{ARCHIVE_SUFFIX}"
        first = seen.setdefault(target, path)
        if first != path and first.resolve() != path.resolve():
            raise ConfigError(
                f"--archive: inputs {first} and {path} have the same file name and would both "
                f"write {target}; rename one or run them into separate output folders"
            )
    return [(path, target) for target, path in seen.items()]


def input_id(path: Path) -> str:
    """Identity of an input file in archive outputs: sha256 of its absolute path (16 hex)."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def _made_from(target: Path) -> str | None:
    """The input id recorded in an existing archive output (None when not recorded)."""
    import netCDF4

    try:
        with netCDF4.Dataset(target) as ds:
            return str(ds.getncattr(INPUT_ATTR)) if INPUT_ATTR in ds.ncattrs() else None
    except OSError:
        return None


def file_seed(seed: int, src) -> int:
    """The seed of one archive file: a hash of ``seed``, the input's valid times and its grid
    (first and last coordinate of each spatial axis), as a non-negative 63-bit integer."""
    h = hashlib.sha256(f"precipdiff-archive:{int(seed)}".encode())
    h.update(np.asarray(src["time"].values, "datetime64[ns]").astype(np.int64).tobytes())
    for dim in src.dims[-2:]:
        c = np.asarray(src[dim].values, np.float64)
        h.update(np.round(c[[0, -1]], 6).tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def select_time(req: PredictRequest, src, inputs: Sequence[Path]):
    """The steps of ``src`` (read from ``inputs``) within ``--time`` (all without it)."""
    if req.time is None:
        return src
    names = _names(inputs)
    return req.time.select(src, names if len(inputs) == 1 else f"the inputs ({names})")


def time_attrs(req: PredictRequest) -> dict[str, str]:
    """Output attributes recording ``--time`` and ``--time-factor`` (none without them)."""
    attrs = {}
    if req.time is not None:
        attrs |= {"time_selection": req.time.text,
                  "time_selection_meaning": TIME_SELECTION_MEANING}
    if req.time_factor > 1:
        attrs |= {"time_factor": str(req.time_factor),
                  "time_refinement": refinement_meaning(req.time_interp, req.time_conserve)}
    return attrs


def _names(inputs: Sequence[Path]) -> str:
    return ", ".join(Path(p).name for p in inputs)


def _extras_for(pipeline: Pipeline, req: PredictRequest, src) -> object:
    """Extra channels on the output grid when the Stage-II model uses them, else None."""
    import json

    from precipdiff.grid import Grid
    from precipdiff.pipeline.extras import load_extras

    stage = pipeline.downscale
    names = json.loads(stage.metadata.get("extra_names", "[]")) if stage is not None else []
    if not names and not req.extras:
        return None
    if not req.extras:
        raise PrecipdiffError(
            f"{stage.source}: the Stage-II model needs extra fields {names}: pass --extras FILE"
        )
    fine = Grid.from_dataarray(src).refine(pipeline.factor)
    return load_extras(req.extras, names, fine, src["time"].values)


def run_predict(req: PredictRequest, *,
                progress: ProgressCallback | None = None) -> Iterator[Path]:
    """Run the pipeline; yields each output path as it is completed. ``progress(done, total)``
    follows the input files of an archive run."""
    from precipdiff.io import read, read_many

    check_inputs(req.inputs)
    check_writable(req.output, directory=req.archive)
    if req.archive and req.archive_format == "netcdf":
        archive_targets(req.inputs, req.output)  # same-name inputs refused before any work
    device = resolve_device(req.device)
    pipeline = load_pipeline(req, device)
    opts = _options(req, device)
    kw = {"reader": req.reader, "variable": req.variable, "bbox": req.bbox}
    if not req.archive:
        if device == "cpu":
            threads = set_threads(req.threads)
            opts = dataclasses.replace(opts, window_workers=req.window_workers or threads)
            log.info("Stage-II window workers: up to %d", opts.window_workers)
        src = read_many(req.inputs, **kw) if len(req.inputs) > 1 else read(req.inputs[0], **kw)
        src = select_time(req, src, req.inputs)
        src = pipeline.prepare_input(src, opts)  # semantics and spacing, before any work
        if req.time_factor > 1:
            src = refine_time(src, req.time_factor, method=req.time_interp,
                              conserve=req.time_conserve, name=_names(req.inputs))
        extras = _extras_for(pipeline, req, src)
        yield predict_to_file(pipeline, src, req.output, opts, thresholds=req.thresholds,
                              extras=extras, attrs=time_attrs(req))
        return
    from precipdiff.pipeline.archive import run_archive

    yield from run_archive(req, pipeline, opts, progress=progress)
