"""``precipdiff predict``: files in, CF-NetCDF ensembles out (single file or archive mode)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from precipdiff.errors import CheckpointError, PrecipdiffError
from precipdiff.pipeline.output import predict_to_file
from precipdiff.pipeline.pipeline import Pipeline, PredictOptions
from precipdiff.pipeline.shipped import shipped_weights
from precipdiff.pipeline.stage import SamplerSettings, Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictRequest:
    """Everything ``precipdiff predict`` was asked to do."""

    inputs: Sequence[Path]
    output: Path
    weights_correct: Path | None = None
    weights_downscale: Path | None = None
    stages: tuple[str, ...] = ("correct", "downscale")
    members: int = 16
    sampler: str = "dpmpp_2m"
    steps: int = 12
    seed: int = 0
    bbox: tuple[float, float, float, float] | None = None
    reader: str | None = None
    variable: str | None = None
    member_batch: int = 8
    window: int = 512
    device: str = "auto"
    mass_consistent: bool = False
    thresholds: tuple[float, ...] = (1.0, 5.0, 10.0)
    archive: bool = False
    precision: str = "auto"
    workers: int = 1
    extras: tuple[Path, ...] = ()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrecipdiffError(f"--device {device} requested but no CUDA device is available")
    return device


def load_pipeline(req: PredictRequest, device: str) -> Pipeline:
    """Load the requested stages (the shipped weights where no path is given)."""
    unknown = set(req.stages) - {"correct", "downscale"}
    if unknown or not req.stages:
        raise PrecipdiffError(f"--stages must name 'correct' and/or 'downscale', got {req.stages}")
    shipped = shipped_weights()
    stages: dict[str, Stage | None] = {"correct": None, "downscale": None}
    for name, given in (("correct", req.weights_correct), ("downscale", req.weights_downscale)):
        if name not in req.stages:
            continue
        path = given or shipped[name]
        if path is None:
            raise CheckpointError(
                f"no {name} weights given and none shipped: pass --weights-{name} FILE.safetensors"
            )
        stages[name] = Stage.load(path, device=device)
    return Pipeline(stages["correct"], stages["downscale"])


def _options(req: PredictRequest, device: str) -> PredictOptions:
    settings = SamplerSettings(sampler=req.sampler, steps=req.steps)
    return PredictOptions(
        members=req.members,
        correct=settings,
        downscale=settings,
        seed=req.seed,
        member_batch=req.member_batch,
        window=req.window,
        mass_consistent=req.mass_consistent,
        device=device,
        precision=req.precision,
    )


def check_inputs(paths: Sequence[Path]) -> None:
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise PrecipdiffError(f"input file(s) not found: {', '.join(missing)}")


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


def run_predict(req: PredictRequest) -> Iterator[Path]:
    """Run the pipeline; yields each output path as it is completed."""
    from precipdiff.io import read, read_many

    check_inputs(req.inputs)
    device = resolve_device(req.device)
    pipeline = load_pipeline(req, device)
    opts = _options(req, device)
    kw = {"reader": req.reader, "variable": req.variable, "bbox": req.bbox}
    if not req.archive:
        src = read_many(req.inputs, **kw) if len(req.inputs) > 1 else read(req.inputs[0], **kw)
        extras = _extras_for(pipeline, req, src)
        yield predict_to_file(
            pipeline, src, req.output, opts, thresholds=req.thresholds, extras=extras
        )
        return
    req.output.mkdir(parents=True, exist_ok=True)
    todo = []
    for path in req.inputs:
        target = req.output / f"{Path(path).name}.precipdiff.nc"
        if target.exists():
            log.info("skip %s: output exists and is complete", path)
        else:
            todo.append((Path(path), target))
    failed: list[str] = []
    if req.workers > 1 and len(todo) > 1:
        results = _archive_parallel(req, todo)
    else:
        results = (_archive_one(pipeline, opts, req, src, target) for src, target in todo)
    for path, target, error in results:
        if error is None:
            yield target
        else:
            log.error("skipped %s: %s", path, error)
            failed.append(f"{path} ({error})")
    if failed:
        raise PrecipdiffError(
            f"{len(failed)} input file(s) failed and were skipped: {'; '.join(failed)}"
        )


def _archive_one(
    pipeline: Pipeline, opts: PredictOptions, req: PredictRequest, path: Path, target: Path
) -> tuple[Path, Path, str | None]:
    """One archive file: ``(input, output, error message or None)``; never raises a user error."""
    from precipdiff.io import read

    try:
        src = read(path, reader=req.reader, variable=req.variable, bbox=req.bbox)
        extras = _extras_for(pipeline, req, src)
        predict_to_file(pipeline, src, target, opts, thresholds=req.thresholds, extras=extras)
        return path, target, None
    except PrecipdiffError as exc:
        return path, target, str(exc)


_WORKER: dict = {}


def _worker_init(req: PredictRequest, device: str) -> None:
    torch.set_num_threads(1)  # one process per core beats threads on a shared CPU
    _WORKER["pipeline"] = load_pipeline(req, device)
    _WORKER["opts"] = _options(req, device)
    _WORKER["req"] = req


def _worker_run(job: tuple[Path, Path]) -> tuple[Path, Path, str | None]:
    return _archive_one(_WORKER["pipeline"], _WORKER["opts"], _WORKER["req"], *job)


def _archive_parallel(
    req: PredictRequest, todo: list[tuple[Path, Path]]
) -> Iterator[tuple[Path, Path, str | None]]:
    """Archive files spread over ``req.workers`` processes, each with its own pipeline."""
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    device = resolve_device(req.device)
    with cf.ProcessPoolExecutor(
        req.workers, mp_context=ctx, initializer=_worker_init, initargs=(req, device)
    ) as pool:
        yield from pool.map(_worker_run, todo)
