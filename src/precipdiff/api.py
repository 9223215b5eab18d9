"""The xarray face of the pipeline: ``precipdiff.downscale(da) -> xr.Dataset``.

Works eagerly on in-memory inputs and lazily on dask-backed ones (one task per time step, via
:func:`xarray.map_blocks`), with the same results: each time step is predicted on its own, with
the seed of a one-step archive file (:func:`~precipdiff.pipeline.run.file_seed` of ``seed``,
the step's valid time and the grid), so ``predict --archive`` of a file holding just that step
gives the same ensemble. Compose it with ``xr.open_mfdataset`` and ``Dataset.to_zarr``::

    import precipdiff, xarray as xr
    src = xr.open_mfdataset("imerg/*.nc")["precip"].chunk(time=1)   # (time, lat, lon) mm/h
    out = precipdiff.downscale(src, members=8, steps=16)             # lazy
    out.to_zarr("ensembles.zarr")                                    # runs on the dask scheduler

Each worker process loads the weights once (:func:`~precipdiff.pipeline.archive.
worker_pipeline`). Inputs are checked as for ``precipdiff predict``
(:func:`~precipdiff.pipeline.inputs.check_input`): rates in mm/h (or a convertible unit),
dims ``(time, lat, lon)`` or ``(time, y, x)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.defaults import PREDICT
from precipdiff.errors import ConfigError

__all__ = ["downscale"]

#: Further ``precipdiff predict`` options that :func:`downscale` passes on.
OPTIONS = ("input_semantics", "mass_consistent", "allow_semantics_mismatch",
           "allow_spacing_mismatch", "product", "temporal_noise_correlation",
           "temporal_noise_drift")


def downscale(
    data: xr.DataArray | xr.Dataset,
    *,
    members: int = PREDICT.members,
    steps: int = PREDICT.steps,
    sampler: str = PREDICT.sampler,
    schedule: str | None = PREDICT.schedule,
    stages: Sequence[str] = ("correct", "downscale"),
    seed: int = PREDICT.seed,
    weights_correct: str | Path | None = None,
    weights_downscale: str | Path | None = None,
    variable: str | None = None,
    member_batch: int = PREDICT.member_batch,
    window: int = PREDICT.window,
    device: str = "cpu",
    precision: str = PREDICT.precision,
    time: str | slice | None = None,
    **options: object,
) -> xr.Dataset:
    """Correct and downscale coarse precipitation ``(time, lat, lon)`` mm/h into an ensemble.

    Parameters
    ----------
    data : DataArray, or Dataset with one data variable (else name it with ``variable``);
        dask-backed inputs give a lazy result, one task per time step.
    members, steps, sampler, schedule, stages, seed, member_batch, window, device, precision :
        as the options of ``precipdiff predict`` (checked the same way).
    weights_correct, weights_downscale : ``.safetensors`` files; None: the shipped weights.
    time : only the steps in ``"START/END"`` or ``slice(START, END)`` (UTC, both ends inclusive,
        either may be open; :mod:`precipdiff.pipeline.timesel`), as ``predict --time``;
        recorded in the result's ``time_selection`` attribute.
    **options : any of :data:`OPTIONS` (``input_semantics``, ``mass_consistent``, the
        ``allow_*_mismatch`` overrides, ``product``: the target radar product of
        product-conditioned Stage-II weights; ``temporal_noise_correlation`` and
        ``temporal_noise_drift`` for a temporal Stage II), as for ``precipdiff predict``.

    Returns
    -------
    Dataset with ``precip (time, member, y, x)``, ``ensemble_mean`` / ``ensemble_std``
    ``(time, y, x)`` on the fine grid (``lat``/``lon`` names for lat/lon inputs; absent
    without the downscale stage), ``corrected_lr (time, member, y_lr, x_lr)`` and
    ``seed (time,)``, all rates in mm/h.
    """
    from precipdiff.grid import Grid, spatial_dims
    from precipdiff.pipeline.archive import weights_key, worker_pipeline
    from precipdiff.pipeline.run import PredictRequest, resolve_device, time_attrs
    from precipdiff.pipeline.timesel import as_time_range

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"downscale: unknown option(s) {unknown}; expected {list(OPTIONS)}")
    da = _as_dataarray(data, variable)
    req = PredictRequest(**options,  # type: ignore[arg-type]
        inputs=(), output=Path("."), weights_correct=_path(weights_correct),
        weights_downscale=_path(weights_downscale), stages=tuple(stages), members=members,
        sampler=sampler, steps=steps, schedule=schedule, seed=seed, member_batch=member_batch,
        window=window, device=device, precision=precision, time=as_time_range(time),
    )
    device = resolve_device(req.device)
    key = weights_key(req, device)
    pipeline = worker_pipeline(req, device, key)  # checks the weights before any work
    ydim, xdim = spatial_dims(da)
    if da.dims != ("time", ydim, xdim):
        raise ConfigError(f"downscale: expected dims (time, {ydim}, {xdim}), got {da.dims}")
    if req.time is not None:
        da = req.time.select(da, f"the {da.name or 'input'} array", noun="the array")
    fine = None
    if pipeline.downscale is not None:
        fine = Grid.from_dataarray(da).refine(pipeline.factor)
    layout = _Layout(ydim, xdim, members, fine)
    if pipeline.temporal:  # one trajectory per member: the whole record in one call
        if da.chunks is not None:
            raise ConfigError(
                "downscale: a temporal Stage II samples whole records, not one time step per "
                "task; load the array into memory first (.load()) or use per-frame weights")
        out = _predict_record(da, req=req, device=device, key=key, layout=layout)
        return out.assign_attrs(time_attrs(req))
    step = partial(_predict_block, req=req, device=device, key=key, layout=layout)
    if da.chunks is None:
        out = xr.concat([step(da.isel(time=[t])) for t in range(da.sizes["time"])], "time")
    else:
        da = da.chunk({"time": 1, ydim: -1, xdim: -1})
        out = xr.map_blocks(step, da, template=layout.template(da))
    return out.assign_attrs(time_attrs(req))


def _path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)


def _as_dataarray(data: xr.DataArray | xr.Dataset, variable: str | None) -> xr.DataArray:
    if isinstance(data, xr.DataArray):
        return data
    names = [variable] if variable else list(data.data_vars)
    if len(names) != 1 or names[0] not in data.data_vars:
        raise ConfigError(
            f"downscale: pass variable= to choose one of the dataset's variables "
            f"{sorted(map(str, data.data_vars))}" if not variable else
            f"downscale: variable {variable!r} not in the dataset "
            f"(has {sorted(map(str, data.data_vars))})"
        )
    return data[names[0]]


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Names and shapes of the result (the same for every block)."""

    ydim: str
    xdim: str
    members: int
    fine: object | None  # precipdiff.grid.Grid

    def coords(self, src: xr.DataArray) -> dict:
        ylr, xlr = f"{self.ydim}_lr", f"{self.xdim}_lr"
        c = {"time": src["time"].values, "member": np.arange(self.members),
             ylr: src[self.ydim].values, xlr: src[self.xdim].values}
        if self.fine is not None:
            c[self.ydim], c[self.xdim] = self.fine.lat, self.fine.lon
        return c

    def dataset(self, src: xr.DataArray, arrays: dict[str, np.ndarray]) -> xr.Dataset:
        ylr, xlr = f"{self.ydim}_lr", f"{self.xdim}_lr"
        dims = {"precip": ("time", "member", self.ydim, self.xdim),
                "ensemble_mean": ("time", self.ydim, self.xdim),
                "ensemble_std": ("time", self.ydim, self.xdim),
                "corrected_lr": ("time", "member", ylr, xlr), "seed": ("time",)}
        units = {"units": "mm/h"}
        data = {name: (dims[name], a, {} if name == "seed" else units)
                for name, a in arrays.items()}
        return xr.Dataset(data, coords=self.coords(src))

    def template(self, src: xr.DataArray) -> xr.Dataset:
        """The lazy result's skeleton: dask arrays chunked one time step per chunk."""
        import dask.array as dsa

        nt = src.sizes["time"]
        shapes = {"corrected_lr": (nt, self.members, src.sizes[self.ydim],
                                   src.sizes[self.xdim]), "seed": (nt,)}
        if self.fine is not None:
            ny, nx = self.fine.shape
            shapes.update(precip=(nt, self.members, ny, nx), ensemble_mean=(nt, ny, nx),
                          ensemble_std=(nt, ny, nx))
        arrays = {
            name: dsa.empty(shape, dtype=np.int64 if name == "seed" else np.float32,
                            chunks=(1, *shape[1:]))
            for name, shape in shapes.items()
        }
        return self.dataset(src, arrays)


def _predict_record(da: xr.DataArray, *, req, device: str, key: tuple,
                    layout: _Layout) -> xr.Dataset:
    """A whole record through a pipeline with a temporal Stage II
    (:func:`~precipdiff.pipeline.record.downscale_record`): one seed for the record."""
    from precipdiff.pipeline.archive import worker_pipeline
    from precipdiff.pipeline.run import _options, file_seed

    pipeline = worker_pipeline(req, device, key)
    seed = file_seed(req.seed, da)
    ds = pipeline.predict(da.load(), dataclasses.replace(_options(req, device), seed=seed))
    hr = np.asarray(ds["precip"].values, np.float32).swapaxes(0, 1)  # (time, member, y, x)
    arrays: dict[str, np.ndarray] = {
        "corrected_lr": np.asarray(ds["corrected_lr"].values, np.float32).swapaxes(0, 1),
        "seed": np.full(da.sizes["time"], seed, np.int64),
        **_ensemble_arrays(hr),
    }
    return layout.dataset(da, arrays)


def _ensemble_arrays(hr: np.ndarray) -> dict[str, np.ndarray]:
    """``precip`` and its ``ensemble_mean`` / ``ensemble_std`` (0 for one member) of members
    ``hr`` (time, member, y, x)."""
    std = hr.std(axis=1, ddof=1) if hr.shape[1] > 1 else np.zeros_like(hr[:, 0])
    return {"precip": hr, "ensemble_mean": hr.mean(axis=1),
            "ensemble_std": std.astype(np.float32)}


def _predict_block(block: xr.DataArray, *, req, device: str, key: tuple,
                   layout: _Layout) -> xr.Dataset:
    """One time step (a block of one step) through the pipeline; plain numpy results."""
    from precipdiff.pipeline.archive import worker_pipeline
    from precipdiff.pipeline.pipeline import scratch_dir
    from precipdiff.pipeline.run import _options, file_seed

    if block.sizes["time"] != 1:
        raise ConfigError(f"downscale: blocks must hold one time step, got {block.sizes['time']}")
    block = block.load()
    pipeline = worker_pipeline(req, device, key)
    seed = file_seed(req.seed, block)
    opts = dataclasses.replace(_options(req, device), seed=seed)
    src = pipeline.prepare_input(block, opts)
    field = np.asarray(src.isel(time=0).values, np.float32)
    corrected = pipeline.correct_step(field, 0, opts)
    arrays: dict[str, np.ndarray] = {
        "corrected_lr": corrected[None].astype(np.float32),
        "seed": np.array([seed], np.int64),
    }
    if layout.fine is not None:
        ny, nx = layout.fine.shape
        hr = np.empty((req.members, ny, nx), np.float32)
        with scratch_dir() as scratch:
            for y0, y1, band in pipeline.downscale_step(corrected, 0, opts,
                                                        scratch=Path(scratch)):
                hr[:, y0:y1] = band
        arrays.update(_ensemble_arrays(hr[None]))
    return layout.dataset(block, arrays)
