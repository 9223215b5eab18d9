"""Archive inference on dask.distributed: many input files, one task per file.

``precipdiff predict --archive`` submits one task per input file to a dask client: an embedded
:class:`distributed.LocalCluster` (``--workers`` processes, one thread each) unless a scheduler
address is given (``--scheduler`` or ``DASK_SCHEDULER_ADDRESS``). There is one code path for one
worker and for many. Each worker process loads the weights once and keeps them for every later
task (:func:`worker_pipeline`, keyed by the weights' sha256, the device and the stages).

Two outputs (``--format``):

* ``netcdf`` (default): ``OUTPUT/<input file name>.precipdiff.nc`` per input, written atomically
  (semantics in :mod:`precipdiff.pipeline.run`);
* ``zarr``: one zarr v3 store at ``OUTPUT`` with ``precip (time, member, y, x)``, ``ensemble_mean``
  / ``ensemble_std`` ``(time, y, x)``, ``exceedance_probability (time, threshold, y, x)``,
  ``corrected_lr (time, member, y_lr, x_lr)`` and ``source_lr (time, y_lr, x_lr)`` (``lat``/
  ``lon`` names for lat/lon inputs), CF attributes as in the NetCDF output, consolidated
  metadata, one time step per chunk. The store is created up front from every input's valid
  times and grid (all inputs must share one grid). A task writes only the time steps of its
  input (regions never overlap between tasks), then sets ``step_done[t] = 1``; a rerun (or a
  task rerun by dask after its worker died) recomputes exactly the steps not marked done, so the
  store ends complete with no half-written step. ``input_id`` and ``seed`` per time step record
  the input (hash of its absolute path) and the seed of its file (:func:`~precipdiff.pipeline.
  run.file_seed`): ``predict FILE --seed <seed>`` reproduces the step. ``volume_error`` per time
  step (with its sums ``fine_volume`` / ``coarse_volume``) is written with the step's fields;
  once every step is done the run's ``volume_error`` goes into the global attributes
  (:func:`finish_store`), as :class:`~precipdiff.pipeline.pipeline.RunTally` does for NetCDF.
  With a temporal Stage II each input file is one record (each member one trajectory over its
  steps): a task samples the file's whole record and writes its steps one by one; a resumed
  file samples the record again (same seed, same values) and writes the steps not yet done.

A bad input file is reported and skipped; the others complete and the run then fails with a
message listing the skipped files (exit status 2). Every run that gets to its tasks writes a JSON
run report beside the output (:mod:`precipdiff.pipeline.runreport`). The store's layout, checks
and run attributes are in :mod:`precipdiff.pipeline.archive_store`.

With ``--time`` (:mod:`precipdiff.pipeline.timesel`) each input is cut to the interval before
anything else (its seed is that of the steps kept); an input with no step in it is skipped (not
an error), and the store holds the selected steps only. With ``--time-factor N``
(:mod:`precipdiff.pipeline.time_refine`) each input file is refined in time on its own after
that, and the outputs (and the store's time axis) hold its sub-steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from precipdiff.cluster import dask_client
from precipdiff.errors import ConfigError, GridError, PrecipdiffError
from precipdiff.pipeline.archive_store import (
    InputInfo,
    all_times,
    check_one_grid,
    create_store,
    finish_store,
    open_store,
    run_settings,
    store_times,
)
from precipdiff.pipeline.timesel import EmptySelectionError

if TYPE_CHECKING:
    import xarray as xr

    from precipdiff.pipeline.pipeline import Pipeline, PredictOptions, RunTally
    from precipdiff.pipeline.run import PredictRequest
    from precipdiff.pipeline.runreport import ArchiveReport
    from precipdiff.progress import ProgressCallback

log = logging.getLogger(__name__)

FORMATS = ("netcdf", "zarr")
#: Number of weight loads in this process (one per distinct weights/device/stages key).
LOADS = {"count": 0}
_PIPELINES: dict[tuple, Pipeline] = {}

#: Called by zarr tasks after each region write: ``hook(event, store_time_index)`` with event
#: ``"step_written"`` (fields written, not yet marked done) or ``"step_done"``.
Hook = Callable[[str, int], None]


# ----------------------------------------------------------------------------- the client


def scheduler_address(req: PredictRequest) -> str | None:
    """``--scheduler`` if given, else ``DASK_SCHEDULER_ADDRESS``, else None (embedded cluster)."""
    return getattr(req, "scheduler", None) or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


# ----------------------------------------------------------------------------- worker side


def weights_key(req: PredictRequest, device: str) -> tuple:
    """``(device, (stage, sha256 of its weights file) ...)``: what a worker's pipeline is."""
    from precipdiff.pipeline.shipped import shipped_weights

    shipped = shipped_weights()
    parts: list[tuple[str, str]] = []
    for name, given in (("correct", req.weights_correct), ("downscale", req.weights_downscale)):
        if name in req.stages:
            path = given or shipped[name]
            parts.append((name, _sha256(Path(path)) if path is not None else ""))
    return (device, tuple(parts), req.product or "any")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def worker_device(device: str, *, name: object = None, gpus: int | None = None) -> str:
    """The device of this worker: ``"cuda"`` on a machine with several GPUs becomes
    ``"cuda:i"``, ``i`` the worker's name (its index in a LocalCluster) modulo the GPUs, so
    that N workers share N GPUs; anything else is returned as given. ``name``/``gpus``
    default to the running dask worker's name and ``torch.cuda.device_count()``."""
    if device != "cuda":
        return device
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus <= 1:
        return device
    if name is None:
        try:
            from distributed import get_worker

            name = get_worker().name
        except (ImportError, ValueError):  # not on a dask worker
            return device
    index = name if isinstance(name, int) else int.from_bytes(str(name).encode()[-4:], "big")
    return f"cuda:{index % gpus}"


def worker_pipeline(req: PredictRequest, device: str, key: tuple) -> Pipeline:
    """This process's pipeline for ``key`` (:func:`weights_key`), loaded on first use only."""
    pipeline = _PIPELINES.get(key)
    if pipeline is None:
        import torch

        from precipdiff.allocator import keep_freed_memory
        from precipdiff.pipeline.run import load_pipeline

        torch.set_num_threads(1)  # one process per core beats threads on a shared CPU
        keep_freed_memory()
        pipeline = _PIPELINES[key] = load_pipeline(req, device)
        LOADS["count"] += 1
        log.info("worker %d loaded the weights (%s)", os.getpid(), key)
    return pipeline


def netcdf_task(
    req: PredictRequest, device: str, key: tuple, path: Path, target: Path
) -> tuple[Path, Path | None, str | None, int]:
    """One archive file to ``target`` (NetCDF): ``(input, output, error or None, time steps
    written)``; the output is None when no step of the input is in ``--time`` (nothing
    written)."""
    from precipdiff.pipeline.output import predict_to_file
    from precipdiff.pipeline.run import (
        INPUT_ATTR,
        _extras_for,
        _options,
        file_seed,
        input_id,
        time_attrs,
    )

    try:
        device = worker_device(device)
        pipeline = worker_pipeline(req, device, key)
        opts = _options(req, device)
        raw, src = read_prepared(req, pipeline, opts, path)
        own = dataclasses.replace(opts, seed=file_seed(opts.seed, raw))
        extras = _extras_for(pipeline, req, src)
        attrs = {INPUT_ATTR: input_id(path), "archive_base_seed": int(opts.seed),
                 **time_attrs(req)}
        predict_to_file(
            pipeline, src, target, own, thresholds=req.thresholds, extras=extras, attrs=attrs
        )
        return path, target, None, int(src.sizes["time"])
    except EmptySelectionError:
        return path, None, None, 0
    except PrecipdiffError as exc:
        return path, target, str(exc), 0


def read_selected(req: PredictRequest, path: Path) -> xr.DataArray:
    """One input as read for prediction, cut to ``--time`` (:class:`EmptySelectionError` when
    none of its steps is in it)."""
    from precipdiff.io import read
    from precipdiff.pipeline.run import select_time

    raw = read(path, reader=req.reader, variable=req.variable, bbox=req.bbox)
    return select_time(req, raw, [path])


def read_prepared(req: PredictRequest, pipeline: Pipeline, opts: PredictOptions,
                  path: Path) -> tuple[xr.DataArray, xr.DataArray]:
    """``(raw, src)``: one input cut to ``--time`` (:func:`read_selected`; its seed comes from
    it) and as predicted: checked and pooled (:meth:`Pipeline.prepare_input`), then refined in
    time with ``--time-factor`` (each file on its own: its first and last intervals are
    extrapolated along the nearest motion)."""
    from precipdiff.pipeline.time_refine import refine_time

    raw = read_selected(req, path)
    src = pipeline.prepare_input(raw, opts)
    if req.time_factor > 1:
        src = refine_time(src, req.time_factor, method=req.time_interp,
                          conserve=req.time_conserve, name=Path(path).name)
    return raw, src


def scan_task(req: PredictRequest, device: str, key: tuple,
              path: Path) -> InputInfo | str | None:
    """Read one input's times (within ``--time``) and grid (prepared as for prediction); its
    error message, or None when none of its steps is in ``--time``."""
    from precipdiff.pipeline.run import _options

    try:
        device = worker_device(device)
        pipeline = worker_pipeline(req, device, key)
        _, src = read_prepared(req, pipeline, _options(req, device), path)
    except EmptySelectionError:
        return None
    except PrecipdiffError as exc:
        return str(exc)
    ydim, xdim = src.dims[-2:]
    return InputInfo(Path(path), np.asarray(src["time"].values, "datetime64[ns]"),
                     (str(ydim), str(xdim)), np.asarray(src[ydim].values, np.float64),
                     np.asarray(src[xdim].values, np.float64))


def zarr_task(
    req: PredictRequest, device: str, key: tuple, path: Path, store: Path,
    hook: bytes | None = None,
) -> tuple[Path, str | None]:
    """Predict the time steps of ``path`` not yet done in ``store`` and write them by region.

    ``hook``: a :data:`Hook` serialised with cloudpickle (so that one defined in a notebook or
    a test module reaches the workers). Returns ``(input, error or None)``; never raises a user
    error.
    """
    import cloudpickle
    import zarr

    from precipdiff.pipeline.run import _extras_for, _options, file_seed, input_id

    call = None if hook is None else cloudpickle.loads(hook)
    try:
        device = worker_device(device)
        pipeline = worker_pipeline(req, device, key)
        opts = _options(req, device)
        raw, src = read_prepared(req, pipeline, opts, path)
        seed = file_seed(req.seed, raw)  # as in --format netcdf: predict FILE --seed reproduces
        opts = dataclasses.replace(opts, seed=seed)
        root = _Arrays(zarr.open_group(store, mode="r+", use_consolidated=False))
        index = _time_index(root, src["time"].values, path)
        done = np.asarray(root["step_done"][:])
        extras = _extras_for(pipeline, req, src)
        ident = int(input_id(path), 16) >> 1

        def finish(i: int, tally: RunTally) -> None:
            _record_volume(root, i, tally)
            if call is not None:
                call("step_written", int(i))
            root["input_id"][i] = ident
            root["seed"][i] = seed
            root["step_done"][i] = 1  # last: a step is complete only once this is set
            if call is not None:
                call("step_done", int(i))

        if pipeline.temporal:
            from precipdiff.pipeline.pipeline import scratch_dir

            with scratch_dir() as scratch:
                _write_record(root, pipeline, opts, src, index, done, req.thresholds, extras,
                              finish, Path(scratch))
            return path, None
        for t, i in enumerate(index):
            if done[i]:
                continue
            ext = None if extras is None else extras.isel(time=t).values
            tally = pipeline.new_tally()
            _write_step(root, pipeline, opts, src.isel(time=t).values, t, i, req.thresholds, ext,
                        tally)
            finish(i, tally)
        return path, None
    except PrecipdiffError as exc:
        return path, str(exc)


class _Arrays:
    """A zarr group's arrays, each opened once."""

    def __init__(self, group) -> None:
        self.group, self.arrays = group, {}

    def __getitem__(self, name: str):
        if name not in self.arrays:
            self.arrays[name] = self.group[name]
        return self.arrays[name]


def _time_index(root, times: np.ndarray, path: Path) -> np.ndarray:
    """Positions of ``times`` on the store's time axis (GridError when one is not there)."""
    axis = store_times(root)
    pos = np.searchsorted(axis, times.astype("datetime64[ns]"))
    pos = np.clip(pos, 0, len(axis) - 1)
    if len(axis) == 0 or np.any(axis[pos] != times.astype("datetime64[ns]")):
        raise GridError(f"{path}: its valid times are not in the store's time axis")
    return pos


def _write_step(root, pipeline: Pipeline, opts: PredictOptions, field: np.ndarray, t: int,
                i: int, thresholds: Sequence[float], extras: np.ndarray | None,
                tally: RunTally | None = None) -> None:
    """Time step ``t`` of the input into the store's step ``i`` (band by band); ``tally``
    collects the step's volume sums."""
    from precipdiff.pipeline.pipeline import scratch_dir

    root["source_lr"][i] = field
    corrected = pipeline.correct_step(field, t, opts, tally)
    root["corrected_lr"][i] = corrected
    if pipeline.downscale is None:
        return
    with scratch_dir() as scratch:
        for y0, y1, hr in pipeline.downscale_step(corrected, t, opts, extras=extras,
                                                  scratch=Path(scratch), tally=tally):
            _write_band(root, i, y0, y1, hr, thresholds)


def _write_band(root, i: int, y0: int, y1: int, hr: np.ndarray,
                thresholds: Sequence[float]) -> None:
    """Fine rows ``[y0, y1)`` of the store's step ``i``: members and their summaries."""
    from precipdiff.pipeline.output import band_summaries

    root["precip"][i, :, y0:y1] = hr
    mean, std, probs = band_summaries(hr, thresholds)
    root["ensemble_mean"][i, y0:y1] = mean
    root["ensemble_std"][i, y0:y1] = std
    for k, prob in enumerate(probs):
        root["exceedance_probability"][i, k, y0:y1] = prob


def _write_record(root, pipeline: Pipeline, opts: PredictOptions, src: xr.DataArray,
                  index: np.ndarray, done: np.ndarray, thresholds: Sequence[float],
                  extras: xr.DataArray | None, finish: Callable[[int, RunTally], None],
                  scratch: Path) -> None:
    """A temporal Stage II over the input's whole record (:mod:`precipdiff.pipeline.record`),
    written step by step; ``finish(i, tally)`` marks the store's step ``i`` done.

    Each member is one trajectory over the record, so a resumed file samples the whole record
    again (Stage I of every step, Stage II of all): the same seed gives the same values, and
    only the steps not yet done are written."""
    from precipdiff.pipeline.record import downscale_record

    if done[index].all():
        return
    tallies, corrected = [], []
    for t, i in enumerate(index):
        field = src.isel(time=t).values
        tallies.append(pipeline.new_tally())
        corrected.append(pipeline.correct_step(field, t, opts, tallies[-1]))
        if not done[i]:
            root["source_lr"][i] = field
            root["corrected_lr"][i] = corrected[-1]
    record = pipeline.new_tally()
    ext = None if extras is None else np.asarray(extras.values, np.float32)
    fine, coarse = 0.0, 0.0
    for t, bands in downscale_record(pipeline, np.stack(corrected, axis=1), src["time"].values,
                                     opts, extras=ext, tally=record, scratch=scratch):
        i = int(index[t])
        for y0, y1, hr in bands:
            if not done[i]:
                _write_band(root, i, y0, y1, hr, thresholds)
        step = tallies[t]  # this step's share of the record's volume sums
        step.volume, step.pooling = record.volume, record.pooling
        step.fine_sum, step.coarse_sum = record.fine_sum - fine, record.coarse_sum - coarse
        fine, coarse = record.fine_sum, record.coarse_sum
        if not done[i]:
            finish(i, step)


def _record_volume(root, i: int, tally: RunTally) -> None:
    """Step ``i``'s volume error and its two sums (stores made before they existed: none)."""
    if not tally.volume or "volume_error" not in root.group:
        return
    root["fine_volume"][i] = tally.fine_sum
    root["coarse_volume"][i] = tally.coarse_sum
    root["volume_error"][i] = tally.volume_error


# ----------------------------------------------------------------------------- the parent


def run_archive(req: PredictRequest, pipeline: Pipeline, opts: PredictOptions,
                *, hook: Hook | None = None,
                progress: ProgressCallback | None = None) -> Iterator[Path]:
    """Archive mode on a dask client; yields each completed output (the store once, at the
    end, for ``--format zarr``), writes the run report (:mod:`precipdiff.pipeline.runreport`)
    and raises :class:`PrecipdiffError` listing the skipped inputs. ``progress(done, total)``
    is called as the input tasks complete (first with 0)."""
    from precipdiff.pipeline.runreport import ArchiveReport, worker_count

    fmt = getattr(req, "archive_format", "netcdf")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is unknown; expected one of {', '.join(FORMATS)}")
    key = weights_key(req, opts.device)
    address = scheduler_address(req)
    report = ArchiveReport(fmt, Path(req.output), scheduler=address or "embedded")
    with dask_client(req.workers, address) as client:
        if fmt == "netcdf":
            yield from _run_netcdf(client, req, opts.device, key, report, progress)
        else:
            yield from _run_zarr(client, req, pipeline, opts, key, report, hook, progress)
        report.workers = worker_count(client)
    report.write()
    failure = report.failure()
    if failure:
        raise PrecipdiffError(failure)


def check_some_selected(req: PredictRequest, outside: Sequence[str], n_inputs: int) -> None:
    """:class:`EmptySelectionError` when ``--time`` leaves no step of any input."""
    if req.time is not None and n_inputs and len(outside) == n_inputs:
        raise EmptySelectionError(
            f"--time {req.time.text}: no time step of any of the {n_inputs} input(s) in "
            f"{req.time.describe()}"
        )


def _steps_in(target: Path) -> int:
    """Time steps of an existing archive output (0 when it cannot be read)."""
    import netCDF4

    try:
        with netCDF4.Dataset(target) as ds:
            return len(ds.dimensions["time"])
    except (OSError, KeyError):
        return 0


def _completed(futures: Sequence, progress: ProgressCallback | None) -> Iterator:
    """``futures`` as they complete, calling ``progress(done, total)`` (first with 0)."""
    from distributed import as_completed

    if progress is not None:
        progress(0, len(futures))
    for done, future in enumerate(as_completed(futures), 1):
        yield future
        if progress is not None:
            progress(done, len(futures))


def _run_netcdf(client, req, device, key, report: ArchiveReport,
                progress: ProgressCallback | None) -> Iterator[Path]:
    from precipdiff.pipeline.run import _made_from, archive_targets, input_id
    from precipdiff.pipeline.runreport import task_retries

    created = not req.output.exists()
    req.output.mkdir(parents=True, exist_ok=True)
    todo = []
    targets = archive_targets(req.inputs, req.output)
    for path, target in targets:
        if not target.exists():
            todo.append((path, target))
            continue
        made_from = _made_from(target)
        if made_from is not None and made_from != input_id(path):
            report.skip(path, f"{target} exists but was made from another input named "
                        f"{path.name} (in another folder); move it away or write into another "
                        "folder")
        else:
            log.info("skip %s: output exists and is complete", path)
            report.complete_before.append(str(path))
            report.steps_present += _steps_in(target)
    futures = [client.submit(netcdf_task, req, device, key, p, t, pure=False) for p, t in todo]
    report.submitted = len(futures)
    for future in _completed(futures, progress):
        path, target, error, steps = future.result()
        if target is None:
            log.info("skip %s: no time step in --time %s", path, req.time.text)
            report.outside_time.append(str(path))
        elif error is None:
            report.done.append(str(path))
            report.steps_written += steps
            yield target
        else:
            report.skip(path, error)
    report.retried = task_retries(client, futures, [p for p, _ in todo])
    if created and len(report.outside_time) == len(targets):
        req.output.rmdir()  # nothing selected: leave nothing behind
    check_some_selected(req, report.outside_time, len(targets))


def _store_for(store: Path, req: PredictRequest, pipeline: Pipeline, opts: PredictOptions,
               key: tuple, infos: Sequence[InputInfo]) -> tuple[np.ndarray, ...]:
    """The inputs' times, and the store's time axis and ``step_done``: the existing store
    checked against this run, or a new one laid out for these inputs."""
    from precipdiff.pipeline.run import time_attrs

    check_one_grid(infos)
    times = all_times(infos)
    settings = run_settings(req, key)
    if store.exists():
        return (times, *open_store(store, settings, times))
    _, first = read_prepared(req, pipeline, opts, infos[0].path)
    create_store(store, pipeline, first, opts, times, req.thresholds, settings, time_attrs(req))
    return times, times, np.zeros(len(times), np.int8)


def _run_zarr(client, req, pipeline, opts, key, report: ArchiveReport, hook: Hook | None,
              progress: ProgressCallback | None) -> Iterator[Path]:
    import cloudpickle

    from precipdiff.pipeline.runreport import task_retries

    store = Path(req.output)
    inputs = list({Path(p).resolve(): Path(p) for p in req.inputs}.values())
    infos: list[InputInfo] = []
    n = len(inputs)
    scans = client.gather(client.map(scan_task, [req] * n, [opts.device] * n, [key] * n, inputs,
                                     pure=False))
    for path, info in zip(inputs, scans, strict=True):
        if info is None:
            log.info("skip %s: no time step in --time %s", path, req.time.text)
            report.outside_time.append(str(path))
        elif isinstance(info, str):
            report.skip(path, info)
        else:
            infos.append(info)
    check_some_selected(req, report.outside_time, n)
    if not infos:
        return
    times, axis, done = _store_for(store, req, pipeline, opts, key, infos)
    mine = np.searchsorted(axis, times)  # this run's steps on the store's axis
    before = done[mine] == 1
    report.steps_present = int(before.sum())
    todo = []
    for info in infos:
        if done[np.searchsorted(axis, info.times)].all():
            log.info("skip %s: its time steps are complete in %s", info.path, store)
            report.complete_before.append(str(info.path))
        else:
            todo.append(info.path)
    shipped = None if hook is None else cloudpickle.dumps(hook)
    futures = [client.submit(zarr_task, req, opts.device, key, p, store, shipped, pure=False)
               for p in todo]
    report.submitted = len(futures)
    for future in _completed(futures, progress):
        path, error = future.result()
        if error is None:
            log.info("done %s", path)
            report.done.append(str(path))
        else:
            report.skip(path, error)
    report.retried = task_retries(client, futures, todo)
    after = finish_store(store, pipeline)
    report.steps_written = int(((after[mine] == 1) & ~before).sum())
    yield store
