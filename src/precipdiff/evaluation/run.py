"""Verification runs: the Stage-I and Stage-II tables against baselines, and the figures.

Used by ``precipdiff evaluate``, ``precipdiff demo`` and the skill benchmark, so every table in the
docs comes from the same code. Following PrecipDiff (Dai & Ushijima-Mwesigwa 2025), Stage I is
scored at the coarse grid against the reference pooled the way the model was trained (max or mean)
and Stage II at the fine grid against the fine truth. The reference row of the Stage-I table is
the coarse source itself ("raw input"); that of the Stage-II table is the source
nearest-neighbour upsampled ("nearest-neighbour (raw input upsampled)": the coarse values on the
fine grid).

Predictions on a projected grid (``predict`` on radar in metres: dims ``(member, time, y, x)``
and coarse ``(y_lr, x_lr)``, with a ``crs`` grid-mapping variable) are scored the same way on
their own grid: the truth must be on the same CRS (checked with pyproj) and its x/y (in metres;
km are converted) must match within a thousandth of a cell.

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
from precipdiff.grid import coarsen, spatial_dims, xy_units

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

    truth_hr (time, lat, lon) fine truth; src_lr (time, lat, lon) coarse source (or (time, y, x)
    for both, on a projected grid); corrected_lr and downscaled are (member, time, ...)
    ensembles (either may be None); extra rows are any further fine-grid predictions to score
    (e.g. a regression-only mean).
    """

    truth_hr: xr.DataArray
    src_lr: xr.DataArray
    factor: int
    corrected_lr: xr.DataArray | None = None
    downscaled: xr.DataArray | None = None
    pooling: str = "max"
    extra_hr: dict[str, xr.DataArray] = field(default_factory=dict)
    extra_lr: dict[str, xr.DataArray] = field(default_factory=dict)


_COARSE_DIMS = (("lat_lr", "lat"), ("lon_lr", "lon"), ("y_lr", "y"), ("x_lr", "x"))


def _as_grid_dims(da: xr.DataArray) -> xr.DataArray:
    """The prediction file's coarse dims (``lat_lr``/``lon_lr`` or ``y_lr``/``x_lr``) renamed to
    the plain grid dims (``lat``/``lon`` or ``y``/``x``)."""
    ren = {k: v for k, v in _COARSE_DIMS if k in da.dims}
    return da.rename(ren) if ren else da


def _rainfarm(src_lr: xr.DataArray, factor: int, *, members: int, rng) -> xr.DataArray:
    """RainFARM on either grid kind. It works on pixels (a pysteps call per field), so a projected
    field passes through it under the (lat, lon) dim names it expects and is renamed straight
    back: the x/y values in metres are never written or read as degrees."""
    if spatial_dims(src_lr) == ("lat", "lon"):
        return get_baseline("rainfarm")(src_lr, factor, members=members, rng=rng)
    out = get_baseline("rainfarm")(src_lr.rename(y="lat", x="lon"), factor, members=members,
                                   rng=rng)
    return out.rename(lat="y", lon="x")


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
                out["RainFARM"] = _rainfarm(src_lr, factor, members=members, rng=rng)
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
    dims = spatial_dims(ref)
    if spatial_dims(da) != dims:
        raise GridError(
            f"the {names[0]} is on a {'/'.join(spatial_dims(da))} grid but the {names[1]} on a "
            f"{'/'.join(dims)} grid; expected both on the same grid"
        )
    for dim in dims:
        a, b = da[dim].values.astype(np.float64), ref[dim].values.astype(np.float64)
        tol = coordinate_tolerance(b)
        if a.shape == b.shape and np.allclose(a, b, atol=tol, rtol=0):
            continue
        worst = f"; largest difference {np.abs(a - b).max():.3g}" if a.shape == b.shape else ""
        raise GridError(
            f"{dim} of the {names[0]} ({_axis(a)}) does not match the {names[1]} ({_axis(b)})"
            f"{worst}; expected agreement within {tol:.3g} (1/{1 / CELL_TOLERANCE:.0f} of a cell)"
        )
    return da.assign_coords({d: ref[d] for d in dims})


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
    dims = spatial_dims(truth_hr)
    truth_lr = coarsen(truth_hr, f, method=inp.pooling)
    src = _align_to(inp.src_lr, truth_lr)
    lr_preds: dict[str, xr.DataArray] = {RAW: src}
    if qm is not None:
        lr_preds["quantile mapping"] = qm.apply(src)
    lr_preds.update({k: _align_to(v, truth_lr) for k, v in inp.extra_lr.items()})
    if inp.corrected_lr is not None:
        lr_preds[OURS_I] = _align_to(_as_grid_dims(inp.corrected_lr), truth_lr)
    lr_scales = tuple(s for s in scales_px if s <= min(truth_lr.sizes[d] for d in dims))
    rows1 = {
        k: evaluate_fields(
            v, truth_lr, thresholds=thresholds, scales_px=lr_scales, seed=seed, name=k,
            spatial_dims=dims,
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
            v, truth_hr, thresholds=thresholds, scales_px=scales_px, seed=seed, name=k,
            spatial_dims=dims,
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
    dims = spatial_dims(truth_hr)
    psds = {k + (" (mean over members)" if "member" in v.dims else ""): rapsd(v, spatial_dims=dims)
            for k, v in hr_preds.items()}
    psds["truth"] = rapsd(truth_hr, spatial_dims=dims)
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


_METRES_PER = {"m": 1.0, "km": 1000.0}


def _in_metres(da: xr.DataArray, what: str) -> xr.DataArray:
    """A projected field with x/y in metres (km are converted); other units raise GridError."""
    units = xy_units(da)
    if units not in _METRES_PER:
        raise GridError(f"x/y of the {what} are in {units!r}; expected metres (m) or km")
    if units == "m":
        return da
    scale = _METRES_PER[units]
    out = da.assign_coords(y=da["y"].values * scale, x=da["x"].values * scale)
    out["x"].attrs["units"] = out["y"].attrs["units"] = "m"
    return out.assign_attrs(xy_units="m")


def _prediction_crs(ds: xr.Dataset, path: Path):
    """The CRS of a projected prediction: its ``precip``'s CF ``grid_mapping`` variable."""
    import pyproj

    from precipdiff.errors import InputFileError

    name = ds["precip"].attrs.get("grid_mapping") or ds["precip"].encoding.get("grid_mapping")
    if not name or name not in ds.variables:
        raise InputFileError(path, "projected prediction (y, x) without a grid_mapping variable; "
                             "expected the 'crs' variable predict writes", variable="precip")
    attrs = ds[name].attrs
    try:
        if attrs.get("crs_wkt"):
            return pyproj.CRS.from_wkt(str(attrs["crs_wkt"]))
        return pyproj.CRS.from_cf(dict(attrs))
    except (pyproj.exceptions.CRSError, ValueError, TypeError) as exc:
        raise InputFileError(path, f"grid_mapping variable {name!r} is not a readable CRS "
                             f"({' '.join(str(exc).split())[:120]})", variable=name) from None


def _check_same_crs(pred_crs, truth: xr.DataArray, fine, truth_path: Path) -> None:
    """GridError unless the truth's CRS puts the prediction's cell centres at the same x/y (within
    :data:`CELL_TOLERANCE` of a cell): compared by what the CRSs do, not by how they are spelled
    (a PROJ string and the WKT pyproj writes for it name the same projection)."""
    import pyproj

    from precipdiff.grid import grid_crs

    truth_crs = grid_crs(truth)
    if pred_crs.equals(truth_crs, ignore_axis_order=True):
        return
    # a projected Grid keeps x in its lon* fields and y in its lat* fields (grid.Grid)
    xs = np.array([fine.lon[0], fine.lon[-1], fine.lon[0], fine.lon[-1], fine.lon.mean()])
    ys = np.array([fine.lat[0], fine.lat[0], fine.lat[-1], fine.lat[-1], fine.lat.mean()])
    tr = pyproj.Transformer.from_crs(pred_crs, truth_crs, always_xy=True)
    with np.errstate(all="ignore"):
        tx, ty = (np.asarray(v, dtype=np.float64) for v in tr.transform(xs, ys))
    tol = CELL_TOLERANCE * min(fine.dlat, fine.dlon)
    off = np.hypot(tx - xs, ty - ys)
    if not np.all(np.isfinite(off)) or off.max() > tol:
        raise GridError(
            f"{truth_path}: truth CRS ({truth_crs.name!r}) differs from the prediction's "
            f"({pred_crs.name!r}): the prediction's cells land up to {np.nanmax(off):.3g} m "
            f"away; expected the same projected grid (within {tol:.3g} m)"
        )


def _prediction_period_hours(ds: xr.Dataset) -> float | None:
    """Hours each prediction time averages over (``time_bnds``: the input was an accumulation,
    predicted as its mean rate), or None for instantaneous rates (no bounds, or empty ones)."""
    bounds_name = ds["time"].attrs.get("bounds") or "time_bnds"
    if bounds_name not in ds.variables:
        return None
    bounds = ds[bounds_name].values
    widths = (bounds[..., 1] - bounds[..., 0]) / np.timedelta64(1, "s") / 3600.0
    widths = np.unique(np.round(np.atleast_1d(widths), 6))
    if widths.size != 1 or not widths[0] > 0:
        return None
    return float(widths[0])


def _as_rate(truth: xr.DataArray, pred: xr.Dataset, path: Path, what: str = "truth"
             ) -> xr.DataArray:
    """The truth (or source) in mm/h. An accumulation (mm over a period, e.g. RADOLAN RW's hour)
    becomes its mean rate (amount / hours) when the prediction is the mean rate over the same
    period (its ``time_bnds``); against instantaneous rates, or another period, it is a
    :class:`GridError`."""
    from precipdiff.data.pairing import accumulation_hours

    period = truth.attrs.get("accumulation")
    if period is None:
        return truth
    hours = accumulation_hours(str(period), str(path))
    pred_hours = _prediction_period_hours(pred)
    if pred_hours is None or not np.isclose(hours, pred_hours, rtol=1e-6):
        found = f"mean rates over {pred_hours:g} h" if pred_hours else "instantaneous rates"
        raise GridError(
            f"{path}: {what} is a {period} accumulation but the prediction holds {found}; "
            "expected rates, or accumulations over the prediction's own period"
        )
    rate = truth / np.float32(hours)
    rate.attrs = {k: v for k, v in truth.attrs.items() if k != "accumulation"}
    rate.attrs.update(units="mm/h", accumulation_hours=hours)
    return rate


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
    the prediction's ``source_lr`` unless ``source`` is given. A prediction on a projected grid
    (``y``/``x`` in metres with a ``crs`` grid mapping) needs a truth on the same CRS; its
    baselines run on the projected coarse grid.
    """
    from precipdiff.grid import Grid, crop
    from precipdiff.io import read

    pred = _open_prediction(Path(prediction))
    precip = pred["precip"]
    projected = spatial_dims(precip) == ("y", "x")
    if projected:
        precip = _in_metres(precip, f"prediction {prediction}")
    fine = Grid.from_dataarray(precip)
    corrected_lr, source_lr = (_as_grid_dims(pred[v]) for v in ("corrected_lr", "source_lr"))
    if projected:
        corrected_lr, source_lr = (_in_metres(v.assign_attrs(xy_units=xy_units(precip)),
                                              f"prediction {prediction}")
                                   for v in (corrected_lr, source_lr))
    coarse = Grid.from_dataarray(corrected_lr)
    factor = int(round(coarse.dlat / fine.dlat))
    truth_da = _as_rate(read(truth, variable=variable), pred, Path(truth))
    truth_dims = spatial_dims(truth_da)
    if truth_dims != spatial_dims(precip):
        kind = {("y", "x"): "a projected x/y", ("lat", "lon"): "a lat/lon"}
        raise GridError(
            f"{truth}: truth is on {kind[truth_dims]} grid but the prediction on "
            f"{kind[spatial_dims(precip)]} grid; expected the prediction's own grid"
        )
    if projected:
        truth_da = _in_metres(truth_da, f"truth {truth}")
        _check_same_crs(_prediction_crs(pred, Path(prediction)), truth_da, fine, Path(truth))
    truth_da = truth_da.reset_coords(drop=True)
    lo_x, lo_y, hi_x, hi_y = fine.bbox
    eps = CELL_TOLERANCE * min(fine.dlat, fine.dlon)
    truth_da = crop(truth_da, (lo_x + eps, lo_y + eps, hi_x - eps, hi_y - eps))
    times = pred["time"].values
    missing = np.setdiff1d(times, truth_da["time"].values)
    if missing.size:
        raise GridError(f"{truth}: no truth for prediction time(s) {[str(t) for t in missing[:3]]}")
    truth_da = truth_da.sel(time=times)
    src = (_as_rate(read(source, variable=variable), pred, Path(source), "source") if source
           else source_lr)
    if source and projected and spatial_dims(src) == ("y", "x"):
        src = _in_metres(src, f"source {source}")
    inputs = VerificationInputs(
        truth_hr=_align_to(truth_da, precip, names=("truth", "prediction")),
        src_lr=src,
        factor=factor,
        pooling=pooling,
        corrected_lr=corrected_lr if _stage1_ran(pred) else None,
        downscaled=precip,
    )
    report, _ = verify(
        inputs,
        output,
        baselines=baselines,
        title=f"precipdiff evaluation of {Path(prediction).name}",
    )
    return report
