"""Verification report: all metrics of a prediction, method tables (Markdown + CSV), report file.

Typical use (one table for Stage I at the coarse grid, one for Stage II at 1 km)::

    rows = {"raw input": evaluate_fields(up_src, truth), "precipdiff": evaluate_fields(ens, truth)}
    tables = {"Stage II (1 km)": metric_table(rows)}
    write_report(tables, out / "figures", output_dir=out)
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.atomic import atomic_path
from precipdiff.errors import GridError

from .streaming import Accumulator

__all__ = [
    "check_alignment",
    "coordinate_tolerance",
    "evaluate_fields",
    "metric_table",
    "perfect_value",
    "write_report",
]

log = logging.getLogger(__name__)

_PERFECT_ONE = re.compile(r"^(pearson|spearman|multiplicative_bias|spread_skill_ratio|POD|CSI|ETS|"
                          r"frequency_bias|FSS)(@|$)")


def perfect_value(metric: str) -> float:
    """The value a perfect prediction scores: 1 for correlations, skill scores, biases
    expressed as ratios and the spread-skill ratio; 0 for everything else (errors, distances)."""
    return 1.0 if _PERFECT_ONE.match(metric) else 0.0


CELL_TOLERANCE = 1e-3  # coordinates agree when they differ by less than this fraction of a cell


def coordinate_tolerance(values: np.ndarray) -> float:
    """Largest difference (in the coordinate's units) at which two grids count as the same:
    :data:`CELL_TOLERANCE` of the median spacing (``1e-9`` for a single cell).

    Real products store their axes with float noise or rounded origins (MRMS differs from an
    exact 0.01-degree grid by about 1e-6 degrees), so a fixed absolute tolerance is either too
    tight for fine grids or too loose for coarse ones.
    """
    v = np.asarray(values, dtype=np.float64)
    steps = np.abs(np.diff(v))
    return float(CELL_TOLERANCE * np.median(steps)) if steps.size else 1e-9


def _coords_equal(a: xr.DataArray, b: xr.DataArray, dim: str) -> bool:
    ca, cb = a[dim].values, b[dim].values
    if ca.shape != cb.shape:
        return False
    if np.issubdtype(ca.dtype, np.number) and np.issubdtype(cb.dtype, np.number):
        return bool(np.allclose(ca, cb, rtol=0.0, atol=coordinate_tolerance(cb)))
    return bool(np.array_equal(ca, cb))


def check_alignment(pred: xr.DataArray, truth: xr.DataArray, *, member_dim: str = "member",
                    name: str = "prediction") -> None:
    """Raise :class:`GridError` unless ``pred`` (minus ``member_dim``) and ``truth`` share dims,
    shape and coordinates (spatial ones within :func:`coordinate_tolerance`, times exactly)."""
    pdims = tuple(d for d in pred.dims if d != member_dim)
    if set(pdims) != set(truth.dims):
        raise GridError(f"{name} has dims {pdims} but truth has {tuple(truth.dims)}")
    for dim in truth.dims:
        if pred.sizes[dim] != truth.sizes[dim]:
            raise GridError(f"{name} has {pred.sizes[dim]} {dim!r} values, truth has "
                            f"{truth.sizes[dim]}")
        if dim in pred.coords and dim in truth.coords and not _coords_equal(pred, truth, dim):
            a, b = pred[dim].values, truth[dim].values
            if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
                off = np.abs(a.astype(np.float64) - b) > coordinate_tolerance(b)
            else:
                off = np.asarray(a != b)
            diff = np.flatnonzero(off)
            first = int(diff[0]) if diff.size else 0
            raise GridError(
                f"{name} and truth differ in coordinate {dim!r} (first at index {first}: "
                f"{pred[dim].values[first]!r} vs {truth[dim].values[first]!r}); regrid or "
                "select matching times first")


def evaluate_fields(pred: xr.DataArray, truth: xr.DataArray, *,
                    thresholds: Sequence[float] = (1.0, 5.0),
                    scales_px: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    member_dim: str = "member", spatial_dims: tuple[str, str] = ("lat", "lon"),
                    max_lag: int = 8, seed: int = 0, chunk_time: int = 8,
                    name: str = "prediction") -> dict[str, float]:
    """All metrics of ``pred`` ``(member?, time, lat, lon)`` against ``truth`` ``(time, lat, lon)``.

    Checks that grids and times match exactly (:class:`GridError` otherwise), then streams
    ``chunk_time`` time steps at a time through an :class:`Accumulator` (so lazily loaded
    archives are read piecewise). Deterministic and categorical scores use the ensemble mean;
    CRPS (ecdf and fair), spread-skill ratio and rank-histogram deviation appear only with
    more than one member. Keys: ``rmse, mae, mean_bias, multiplicative_bias, pearson,
    spearman, [crps_ecdf, crps_fair, spread_skill_ratio, rank_histogram_deviation],
    POD@t, FAR@t, CSI@t, ETS@t, frequency_bias@t, FSS@t/spx, log_spectral_distance_db,
    spectral_slope_error, spatial_autocorrelation_error, emd, p99_error, p99.9_error,
    p99.99_error``. ``spatial_dims`` names the grid dims (e.g. ``("lat_lr", "lon_lr")`` for
    the pipeline's ``corrected_lr``); the seed drives the rank histogram's tie-breaking.
    """
    check_alignment(pred, truth, member_dim=member_dim, name=name)
    acc = Accumulator(thresholds=thresholds, scales_px=scales_px, member_dim=member_dim,
                      spatial_dims=spatial_dims, max_lag=max_lag, seed=seed)
    if "time" in truth.dims:
        for start in range(0, truth.sizes["time"], chunk_time):
            sl = slice(start, start + chunk_time)
            acc.accumulate(pred.isel(time=sl), truth.isel(time=sl))
    else:
        acc.accumulate(pred, truth)
    result = acc.compute()
    log.info("evaluated %s: %d metrics", name, len(result))
    return result


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "nan"
    return f"{value:.4g}"


def _improvement(value: float, ref: float, metric: str) -> float:
    """``100 (1 - |v - perfect| / |ref - perfect|)``: % of the reference's error removed."""
    target = perfect_value(metric)
    ref_err = abs(ref - target)
    if not np.isfinite(value) or not np.isfinite(ref) or ref_err == 0:
        return float("nan")
    return 100.0 * (1.0 - abs(value - target) / ref_err)


def metric_table(rows: Mapping[str, Mapping[str, float]], *, reference: str = "raw input",
                 metrics: Sequence[str] | None = None) -> tuple[str, str]:
    """Markdown and CSV tables: one row per method, one column per metric.

    With ``reference`` among the rows, a second Markdown table (and ``<metric> impr%``
    CSV columns) gives the relative improvement over it,
    ``100 * (1 - |m - perfect| / |m_ref - perfect|)`` (positive = closer to a perfect score,
    100 = perfect; ``perfect`` from :func:`perfect_value`).
    """
    if metrics is None:
        metrics = list(dict.fromkeys(k for row in rows.values() for k in row))
    nan = float("nan")
    ref = rows.get(reference)
    if ref is None:
        log.warning("metric_table: reference %r not among methods %s", reference, list(rows))
    header = "| method | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---:|" * len(metrics)
    lines = [header, rule] + [
        f"| {method} | " + " | ".join(_fmt(row.get(m, nan)) for m in metrics) + " |"
        for method, row in rows.items()
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    impr_cols = [f"{m} impr%" for m in metrics] if ref is not None else []
    writer.writerow(["method", *metrics, *impr_cols])
    for method, row in rows.items():
        values = [row.get(m, nan) for m in metrics]
        imprs = [_improvement(row.get(m, nan), ref.get(m, nan), m) for m in metrics] if ref else []
        writer.writerow([method, *(repr(float(v)) for v in values),
                         *(f"{v:.2f}" for v in imprs)])
    if ref is not None:
        lines += ["", f"Relative improvement over **{reference}** (%, 100 = perfect):", "",
                  header, rule]
        for method, row in rows.items():
            imprs = [_improvement(row.get(m, nan), ref.get(m, nan), m) for m in metrics]
            lines.append(f"| {method} | " + " | ".join(
                "nan" if not np.isfinite(v) else f"{v:+.1f}" for v in imprs) + " |")
    return "\n".join(lines) + "\n", buf.getvalue()


def _slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower() or "table"


def write_report(tables: Mapping[str, tuple[str, str]], figures_dir: str | Path | None, *,
                 output_dir: str | Path | None = None, title: str = "precipdiff evaluation"
                 ) -> Path:
    """Write ``report.md`` (all tables, then every PNG in ``figures_dir``) and one CSV per table.

    ``tables`` maps a section title (e.g. ``"Stage I (coarse grid)"``) to the
    ``(markdown, csv)`` pair from :func:`metric_table`. ``output_dir`` defaults to the
    parent of ``figures_dir``. All files are written atomically. Returns the report path.
    """
    figures = Path(figures_dir) if figures_dir is not None else None
    if output_dir is None:
        if figures is None:
            raise ValueError("give figures_dir or output_dir")
        output_dir = figures.parent
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for section, (markdown, csv_text) in tables.items():
        csv_path = out / f"{_slug(section)}.csv"
        with atomic_path(csv_path) as tmp:
            tmp.write_text(csv_text)
        parts += [f"## {section}", "", markdown, f"CSV: `{csv_path.name}`", ""]
    if figures is not None and figures.is_dir():
        pngs = sorted(figures.glob("*.png"))
        if pngs:
            parts += ["## Figures", ""]
            for png in pngs:
                full, base = png.resolve(), out.resolve()
                rel = full.relative_to(base) if full.is_relative_to(base) else full
                parts += [f"![{png.stem}]({rel.as_posix()})", ""]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(parts))
    log.info("wrote %s", report)
    return report
