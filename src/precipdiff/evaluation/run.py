"""Verification runs: the Stage-I and Stage-II tables against baselines, and the figures.

Used by ``precipdiff evaluate``, ``precipdiff demo`` and the skill benchmark, so every table in the
docs comes from the same code. Following PrecipDiff (Dai & Ushijima-Mwesigwa 2025), Stage I is
scored at the coarse grid against the reference pooled the way the model was trained (max or mean)
and Stage II at the fine grid against the fine truth. The reference row of the Stage-I table is
the coarse source itself ("raw input"); that of the Stage-II table is the source
nearest-neighbour upsampled ("nearest-neighbour (raw input upsampled)": the coarse values on the
fine grid).

A report is assembled in a hidden staging folder beside the output and moved into place only when
complete, so a failure never leaves an empty or half-written report behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.atomic import replace_dir
from precipdiff.baselines import get_baseline
from precipdiff.baselines.quantile_mapping import QuantileMapping
from precipdiff.errors import ConfigError, GridError, UnknownMethodError
from precipdiff.evaluation import plots
from precipdiff.evaluation.metrics import rank_histogram
from precipdiff.evaluation.report import (
    CELL_TOLERANCE,
    coordinate_tolerance,
    evaluate_fields,
    metric_table,
    write_report,
)
from precipdiff.evaluation.spectra import rapsd
from precipdiff.grid import coarsen

log = logging.getLogger(__name__)

EVALUATION_BASELINES = ("nearest", "bilinear", "bicubic", "rainfarm", "qm")
RAW = "raw input"
NEAREST = "nearest-neighbour (raw input upsampled)"
OURS_I = "precipdiff Stage I"
OURS_II = "precipdiff Stage I+II"
OURS_II_ONLY = "precipdiff Stage II"


@dataclass
class VerificationInputs:
    """Everything a verification needs, on nested grids.

    truth_hr (time, lat, lon) fine truth; src_lr (time, lat, lon) coarse source; corrected_lr and
    downscaled are (member, time, ...) ensembles (either may be None); extra rows are any further
    fine-grid predictions to score (e.g. a regression-only mean).
    """

    truth_hr: xr.DataArray
    src_lr: xr.DataArray
    factor: int
    corrected_lr: xr.DataArray | None = None
    downscaled: xr.DataArray | None = None
    pooling: str = "max"
    extra_hr: dict[str, xr.DataArray] = field(default_factory=dict)
    extra_lr: dict[str, xr.DataArray] = field(default_factory=dict)


def _as_latlon(da: xr.DataArray) -> xr.DataArray:
    ren = {k: v for k, v in (("lat_lr", "lat"), ("lon_lr", "lon")) if k in da.dims}
    return da.rename(ren) if ren else da


def baseline_predictions(
    src_lr: xr.DataArray,
    factor: int,
    names: Sequence[str],
    *,
    qm: QuantileMapping | None = None,
    members: int = 8,
    seed: int = 0,
) -> dict[str, xr.DataArray]:
    """Fine-grid baseline predictions from the coarse source (names from ``get_baseline``)."""
    out: dict[str, xr.DataArray] = {}
    for name in names:
        if name == "nearest":
            out[NEAREST] = get_baseline(name)(src_lr, factor)
        elif name in ("bilinear", "bicubic"):
            out[f"{name} interpolation"] = get_baseline(name)(src_lr, factor)
        elif name == "rainfarm":
            try:
                rng = np.random.default_rng(seed)
                out["RainFARM"] = get_baseline("rainfarm")(src_lr, factor, members=members, rng=rng)
            except ConfigError as exc:
                log.warning("RainFARM baseline skipped: %s", exc)
        elif name == "qm" and qm is not None:
            out["quantile mapping + bilinear"] = get_baseline("bilinear")(qm.apply(src_lr), factor)
        elif name == "qm":
            log.info("quantile-mapping baseline skipped: no fitted mapping given")
        else:
            raise UnknownMethodError("baseline", name, EVALUATION_BASELINES)
    return out


def _align_to(
    da: xr.DataArray, ref: xr.DataArray, names: tuple[str, str] = ("prediction", "truth")
) -> xr.DataArray:
    """Take ``ref``'s coordinates when they agree within :func:`coordinate_tolerance` (a
    thousandth of a cell: float noise and rounded origins), else :class:`GridError`."""
    for dim in ("lat", "lon"):
        a, b = da[dim].values.astype(np.float64), ref[dim].values.astype(np.float64)
        tol = coordinate_tolerance(b)
        if a.shape == b.shape and np.allclose(a, b, atol=tol, rtol=0):
            continue
        worst = f"; largest difference {np.abs(a - b).max():.3g}" if a.shape == b.shape else ""
        raise GridError(
            f"{dim} of the {names[0]} ({_axis(a)}) does not match the {names[1]} ({_axis(b)})"
            f"{worst}; expected agreement within {tol:.3g} (1/{1 / CELL_TOLERANCE:.0f} of a cell)"
        )
    return da.assign_coords(lat=ref["lat"], lon=ref["lon"])


def _axis(values: np.ndarray) -> str:
    """``"24 cells, 40.0125..40.5875 step 0.025"`` with digits enough to tell axes apart."""
    if values.size == 0:
        return "0 cells"
    step = f" step {np.median(np.diff(values)):.6g}" if values.size > 1 else ""
    return f"{values.size} cells, {values[0]:.8g}..{values[-1]:.8g}{step}"


def verify(
    inp: VerificationInputs,
    output_dir: str | Path,
    *,
    baselines: Sequence[str] = ("nearest", "bilinear", "bicubic", "rainfarm"),
    qm: QuantileMapping | None = None,
    qm_fine: QuantileMapping | None = None,
    thresholds: Sequence[float] = (1.0, 5.0),
    scales_px: Sequence[int] = (1, 2, 4, 8, 16, 32),
    seed: int = 0,
    figures: bool = True,
    title: str = "precipdiff verification",
) -> tuple[Path, dict[str, dict[str, dict[str, float]]]]:
    """Score Stage I and Stage II against baselines; write tables, figures and ``report.md``.

    ``qm`` maps the source onto the pooled reference (the Stage-I baseline); ``qm_fine`` onto the
    mean-pooled reference, whose bilinear upsampling is the Stage-II baseline (a max-pooled
    target would overstate fine-grid amounts). Returns the report path and the metric rows
    ``{"stage1"|"stage2": {method: {metric: value}}}``.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output exists and is not a directory; expected a folder")
    truth_hr, f = inp.truth_hr, inp.factor
    truth_lr = coarsen(truth_hr, f, method=inp.pooling)
    src = _align_to(inp.src_lr, truth_lr)
    lr_preds: dict[str, xr.DataArray] = {RAW: src}
    if qm is not None:
        lr_preds["quantile mapping"] = qm.apply(src)
    lr_preds.update({k: _align_to(v, truth_lr) for k, v in inp.extra_lr.items()})
    if inp.corrected_lr is not None:
        lr_preds[OURS_I] = _align_to(_as_latlon(inp.corrected_lr), truth_lr)
    lr_scales = tuple(
        s for s in scales_px if s <= min(truth_lr.sizes["lat"], truth_lr.sizes["lon"])
    )
    rows1 = {
        k: evaluate_fields(
            v, truth_lr, thresholds=thresholds, scales_px=lr_scales, seed=seed, name=k
        )
        for k, v in lr_preds.items()
    }
    hr_preds = baseline_predictions(
        src, f, ["nearest", *(b for b in baselines if b != "nearest")], qm=qm_fine, seed=seed
    )
    hr_preds.update({k: _align_to(v, truth_hr) for k, v in inp.extra_hr.items()})
    ours_ii = OURS_II if inp.corrected_lr is not None else OURS_II_ONLY
    if inp.downscaled is not None:
        hr_preds[ours_ii] = _align_to(inp.downscaled, truth_hr)
    hr_preds = {k: _align_to(v, truth_hr) for k, v in hr_preds.items()}
    rows2 = {
        k: evaluate_fields(
            v, truth_hr, thresholds=thresholds, scales_px=scales_px, seed=seed, name=k
        )
        for k, v in hr_preds.items()
    }
    tables = {"Stage II: fine grid, vs fine truth": metric_table(rows2, reference=NEAREST)}
    if len(rows1) > 1:  # a Stage-I table needs something besides the raw input to compare
        stage1 = f"Stage I: coarse grid, vs the reference {inp.pooling}-pooled {f}x"
        tables = {stage1: metric_table(rows1, reference=RAW), **tables}
    with staging_dir(out) as stage:
        fig_dir = stage / "figures"
        if figures:
            fig_dir.mkdir()
            _figures(inp, truth_hr, truth_lr, lr_preds, hr_preds, rows2, fig_dir, thresholds, seed)
        write_report(tables, fig_dir if figures else None, output_dir=stage, title=title)
    return out / "report.md", {"stage1": rows1, "stage2": rows2}


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` to assemble a report in; on success its entries replace
    those of ``out`` (created if missing; a subfolder is swapped whole, as ``figures/``), so
    ``out`` never holds a half-written report. On an error the staging folder is removed."""
    target = out.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield stage
        if not target.exists():
            os.replace(stage, target)
            return
        for entry in sorted(stage.iterdir()):
            if entry.is_dir():
                replace_dir(entry, target / entry.name)
            else:
                os.replace(entry, target / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _figures(
    inp: VerificationInputs,
    truth_hr: xr.DataArray,
    truth_lr: xr.DataArray,
    lr_preds: Mapping[str, xr.DataArray],
    hr_preds: Mapping[str, xr.DataArray],
    rows2: Mapping[str, Mapping[str, float]],
    fig_dir: Path,
    thresholds: Sequence[float],
    seed: int,
) -> None:
    t = 0
    first = {
        k: (v.isel(member=0) if "member" in v.dims else v).isel(time=t) for k, v in hr_preds.items()
    }
    corrected = lr_preds.get(OURS_I, lr_preds[RAW])
    corrected0 = corrected.isel(member=0) if "member" in corrected.dims else corrected
    ours = OURS_II if OURS_II in first else OURS_II_ONLY
    downscaled0 = first.get(ours, first[NEAREST])
    when = str(truth_hr["time"].values[t])[:16].replace("T", " ")
    plots.four_panel_maps(
        lr_preds[RAW].isel(time=t),
        corrected0.isel(time=t),
        downscaled0,
        truth_hr.isel(time=t),
        fig_dir / "maps_four_panel.png",
        title=f"{when} UTC",
        panel_titles=(
            "source (coarse)",
            f"{OURS_I}, member 0 (coarse)" if OURS_I in lr_preds else "no Stage I: source",
            f"{ours}, member 0 (fine)" if ours in first else f"{NEAREST} (fine)",
            "truth (fine)",
        ),
    )
    errors = {k: (v - truth_hr).values for k, v in hr_preds.items()}
    plots.error_violins(
        errors,
        fig_dir / "errors_violin_stage2.png",
        seed=seed,
        title="Stage II pixel errors (prediction - truth; ensembles: all members)",
    )
    lr_errors = {k: (v - truth_lr).values for k, v in lr_preds.items()}
    plots.error_violins(
        lr_errors,
        fig_dir / "errors_violin_stage1.png",
        seed=seed,
        title="Stage I pixel errors (prediction - pooled reference)",
    )
    psds = {k + (" (mean over members)" if "member" in v.dims else ""): rapsd(v)
            for k, v in hr_preds.items()}
    psds["truth"] = rapsd(truth_hr)
    plots.psd_curves(psds, fig_dir / "psd_stage2.png")
    hist = {k: v.values for k, v in hr_preds.items()}
    hist["truth"] = truth_hr.values
    plots.intensity_histograms(hist, fig_dir / "intensity_histograms.png")
    if inp.downscaled is not None and inp.downscaled.sizes.get("member", 1) > 1:
        ens = hr_preds[ours]
        plots.ensemble_maps(
            ens.isel(time=t),
            fig_dir / "ensemble_spread_exceedance.png",
            threshold=thresholds[0],
            truth=truth_hr.isel(time=t),
        )
        hists = {
            k: rank_histogram(v, truth_hr, rng=seed).values
            for k, v in hr_preds.items()
            if "member" in v.dims and v.sizes["member"] > 1
        }
        plots.rank_histogram_plot(hists, fig_dir / "rank_histogram.png")
    for thr in thresholds:
        curves = {}
        for k, row in rows2.items():
            pts = {
                int(key.split("/")[1][:-2]): val
                for key, val in row.items()
                if key.startswith(f"FSS@{thr:g}/")
            }
            if pts:
                curves[k] = pts
        plots.fss_curves(curves, fig_dir / f"fss_{thr:g}mmh.png", threshold=thr)


def _open_prediction(path: Path) -> xr.Dataset:
    from precipdiff.errors import InputFileError

    try:
        ds = xr.open_dataset(path)
    except (OSError, ValueError) as exc:
        raise InputFileError(path, f"cannot open as NetCDF ({exc})") from None
    if "precip" not in ds and "corrected_lr" in ds:
        raise InputFileError(
            path, "a Stage-I-only prediction (no fine-grid 'precip'); evaluate scores the "
            "fine-grid ensemble: predict with --stages correct,downscale or downscale"
        )
    missing = [v for v in ("precip", "corrected_lr", "source_lr") if v not in ds]
    if missing:
        raise InputFileError(
            path, f"not a precipdiff prediction: lacks {', '.join(missing)} (write it with predict)"
        )
    return ds


def _stage1_ran(ds: xr.Dataset) -> bool:
    """Whether ``corrected_lr`` holds a Stage-I correction, not the source copied per member
    (``predict --stages downscale``): from the ``correct_model`` attribute, else the values."""
    model = ds.attrs.get("correct_model")
    if model is not None:
        return str(model) != "none"
    corrected, src = ds["corrected_lr"].values, ds["source_lr"].values
    return not np.array_equal(corrected, np.broadcast_to(src, corrected.shape), equal_nan=True)


def run_evaluate(
    *,
    prediction: Path,
    truth: Path,
    output: Path,
    source: Path | None = None,
    baselines: Sequence[str] = ("nearest", "bilinear", "bicubic"),
    variable: str | None = None,
    pooling: str = "max",
) -> Path:
    """``precipdiff evaluate``: score a prediction file against a truth file (any reader).

    The truth is cropped to the prediction's fine grid and matched by time; a grid or time that
    does not match is a :class:`GridError`, never a silent misalignment. The coarse source is
    the prediction's ``source_lr`` unless ``source`` is given.
    """
    from precipdiff.grid import Grid, crop
    from precipdiff.io import read

    pred = _open_prediction(Path(prediction))
    fine, coarse = (
        Grid.from_dataarray(pred["precip"]),
        Grid.from_dataarray(_as_latlon(pred["corrected_lr"])),
    )
    factor = int(round(coarse.dlat / fine.dlat))
    truth_da = read(truth, variable=variable).reset_coords(drop=True)
    if "accumulation" in truth_da.attrs:
        raise GridError(
            f"{truth}: truth is an accumulation ({truth_da.attrs['accumulation']}); "
            "compare rates with rates"
        )
    lo_lon, lo_lat, hi_lon, hi_lat = fine.bbox
    truth_da = crop(truth_da, (lo_lon + 1e-9, lo_lat + 1e-9, hi_lon - 1e-9, hi_lat - 1e-9))
    times = pred["time"].values
    missing = np.setdiff1d(times, truth_da["time"].values)
    if missing.size:
        raise GridError(f"{truth}: no truth for prediction time(s) {[str(t) for t in missing[:3]]}")
    truth_da = truth_da.sel(time=times)
    src = read(source, variable=variable) if source else _as_latlon(pred["source_lr"])
    inputs = VerificationInputs(
        truth_hr=_align_to(truth_da, pred["precip"], names=("truth", "prediction")),
        src_lr=src,
        factor=factor,
        pooling=pooling,
        corrected_lr=pred["corrected_lr"] if _stage1_ran(pred) else None,
        downscaled=pred["precip"],
    )
    report, _ = verify(
        inputs,
        output,
        baselines=baselines,
        title=f"precipdiff evaluation of {Path(prediction).name}",
    )
    return report
