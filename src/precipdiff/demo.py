"""``precipdiff demo``: the whole job on a synthetic scene, with no data and no downloads.

1. A seeded synthetic 1-km rain scene (:mod:`precipdiff.data.synth`, 200 x 200 km like the
   PrecipDiff Seattle case) and its IMERG-like 0.1 deg view (:mod:`precipdiff.data.emulate`).
2. Both stages with the shipped weights, as an ensemble, written to CF-NetCDF.
3. Verification against the synthetic truth and the baselines (interpolation, quantile mapping
   fitted on other synthetic scenes, RainFARM when pysteps is installed): tables and figures.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.baselines import get_baseline
from precipdiff.data.emulate import emulate_satellite
from precipdiff.data.synth import synthetic_scene
from precipdiff.defaults import PREDICT
from precipdiff.evaluation.run import VerificationInputs, verify
from precipdiff.grid import coarsen
from precipdiff.io import write_netcdf
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings
from precipdiff.pipeline.output import predict_to_file
from precipdiff.pipeline.run import PredictRequest, load_pipeline, resolve_device
from precipdiff.pipeline.tiling import windows
from precipdiff.progress import progress_bar
from precipdiff.threads import set_threads

log = logging.getLogger(__name__)

FACTOR = 10
SHAPE = (200, 200)


def demo_scene(
    seed: int, *, n_time: int = 1, shape: tuple[int, int] = SHAPE
) -> tuple[xr.DataArray, xr.DataArray]:
    """Synthetic fine truth (time, lat, lon) and its emulated coarse satellite view, seeded."""
    rng = np.random.default_rng(seed)
    truth = synthetic_scene(rng=rng, n_time=n_time, shape=shape, lat0=47.005, lon0=-122.995)
    src = emulate_satellite(truth, factor=FACTOR, rng=rng)
    return truth, src


def _fit_quantile_mapping(seed: int, pooling: str):
    """Pooled empirical quantile mapping, fitted on 8 other synthetic scenes (never the test one),
    from the source to the reference pooled by ``pooling`` (max: the Stage-I target; mean: the
    amounts a fine-grid baseline should reproduce)."""
    truth, src = demo_scene(seed + 1000, n_time=8)
    ref_lr = coarsen(truth, FACTOR, method=pooling)
    return get_baseline("eqm_pooled")(src, ref_lr.assign_coords(lat=src["lat"], lon=src["lon"]))


def _fit_quantile_mappings(seed: int, pooling: str):
    """Mappings onto the pooled reference (Stage I) and the mean-pooled one (Stage II baseline)."""
    return _fit_quantile_mapping(seed, pooling), _fit_quantile_mapping(seed, "mean")


def run_demo(
    output: str | Path,
    *,
    members: int = PREDICT.members,
    steps: int = PREDICT.steps,
    seed: int = 0,
    weights_correct: Path | None = None,
    weights_downscale: Path | None = None,
    progress: bool = True,
) -> Path:
    """Run the demo into ``output`` and return the directory (see the module docstring)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device("auto")
    if device == "cpu":
        set_threads()
    pipeline: Pipeline = load_pipeline(
        PredictRequest(
            inputs=[],
            output=out,
            weights_correct=weights_correct,
            weights_downscale=weights_downscale,
        ),
        device,
    )
    truth, src = demo_scene(seed)
    write_netcdf(
        truth.rename("precip"), out / "demo_truth.nc", attrs={"source": "precipdiff synthetic rain"}
    )
    write_netcdf(
        src.rename("precip"), out / "demo_source.nc", attrs={"source": "emulated satellite"}
    )
    settings = SamplerSettings(sampler=PREDICT.sampler, steps=steps)
    # The synthetic scene reproduces the weights' training setting (an emulated satellite whose
    # reference was pooled as the weights record: max pooling for the shipped ones), so it is
    # declared with the first stage's input semantics and checked like any predict input.
    first = pipeline.correct if pipeline.correct is not None else pipeline.downscale
    opts = PredictOptions(
        input_semantics=first.semantics.aggregation,
        members=members,
        correct=settings,
        downscale=settings,
        seed=seed,
        member_batch=PREDICT.member_batch,
        window=256,
        device=device,
        mass_consistent=PREDICT.mass_consistent,
    )
    n_win = sum(1 for _ in windows(*truth.shape[1:], opts.window, opts.halo, multiple=FACTOR))
    total = n_win + 1
    with progress_bar("demo: Stage I+II ensemble, then verification", disable=not progress) as cb:
        done = [0]

        def tick() -> None:
            done[0] += 1
            cb(done[0], total)

        cb(0, total)
        src = pipeline.prepare_input(src, opts)
        pred_path = predict_to_file(pipeline, src, out / "demo_prediction.nc", opts, on_window=tick)
        pred = xr.open_dataset(pred_path).load()
        pooling = pipeline.downscale.pooling if pipeline.downscale is not None else "max"
        inputs = VerificationInputs(
            truth_hr=truth,
            src_lr=src,
            factor=FACTOR,
            pooling=pooling,
            corrected_lr=pred["corrected_lr"],
            downscaled=pred.get("precip"),
        )
        verify(
            inputs,
            out,
            qm=_fit_quantile_mapping(seed, pooling),
            qm_fine=_fit_quantile_mapping(seed, "mean"),
            seed=seed,
            baselines=("nearest", "bilinear", "bicubic", "qm", "rainfarm"),
            title="precipdiff demo: synthetic scene, shipped weights",
        )
        cb(total, total)
    log.info("demo finished: %s", out)
    return out
