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
    "has_skill",
    "metric_label",
    "metric_table",
    "perfect_value",
    "skill_score",
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


RATE = "mm h⁻¹"
_GROUPS = {
    "deterministic": "Deterministic scores of the ensemble mean",
    "probabilistic": "Probabilistic scores of the ensemble",
    "categorical": "Categorical scores of the ensemble mean, events ≥ {t} " + RATE,
    "fss": "Fractions skill score, events ≥ {t} " + RATE + ", by neighbourhood size",
    "structure": "Spatial structure",
    "distribution": "Intensity distribution (all members pooled)",
}
_LABELS = {  # metric -> (group, column header with unit)
    "rmse": ("deterministic", f"RMSE ({RATE})"),
    "mae": ("deterministic", f"MAE ({RATE})"),
    "mean_bias": ("deterministic", f"mean bias ({RATE})"),
    "multiplicative_bias": ("deterministic", "multiplicative bias (ratio, 1 = none)"),
    "pearson": ("deterministic", "Pearson r"),
    "spearman": ("deterministic", "Spearman ρ"),
    "crps_ecdf": ("probabilistic", f"CRPS, ecdf ({RATE})"),
    "crps_fair": ("probabilistic", f"CRPS, fair ({RATE})"),
    "spread_skill_ratio": ("probabilistic", "spread / skill (1 = reliable)"),
    "rank_histogram_deviation": ("probabilistic", "rank-histogram deviation (0 = flat)"),
    "log_spectral_distance_db": ("structure", "log-spectral distance (dB)"),
    "spectral_slope_error": ("structure", "spectral slope error (1)"),
    "spatial_autocorrelation_error": ("structure", "autocorrelation error (1)"),
    "emd": ("distribution", f"EMD ({RATE})"),
}
_CATEGORICAL = {"POD": "POD", "FAR": "FAR", "CSI": "CSI", "ETS": "ETS",
                "frequency_bias": "frequency bias (1 = none)"}

# Skill relative to a reference method is reported only for scores with a fixed perfect value
# and a non-negative distance to it; signed biases and percentile errors have no such
# reference (a near-zero reference bias turns any change into hundreds of percent).
_SKILL = re.compile(r"^(rmse|mae|crps_ecdf|crps_fair|rank_histogram_deviation|pearson|spearman|"
                    r"emd|log_spectral_distance_db|spatial_autocorrelation_error|"
                    r"(POD|FAR|CSI|ETS)@.*|FSS@.*)$")
NEGLIGIBLE = 1e-3  # a reference error below this fraction of the largest error has no skill


def metric_label(metric: str) -> tuple[str, str]:
    """``(section, column header with unit)`` of a metric key from :func:`evaluate_fields`.

    The section is one of ``deterministic | probabilistic | categorical@<t> | fss@<t> |
    structure | distribution | other``.
    """
    if metric in _LABELS:
        return _LABELS[metric]
    name, _, rest = metric.partition("@")
    if name in _CATEGORICAL and rest:
        return f"categorical@{rest}", _CATEGORICAL[name]
    if name == "FSS" and "/" in rest:
        t, scale = rest.split("/", 1)
        return f"fss@{t}", scale.replace("px", " px")
    m = re.fullmatch(r"p([0-9.]+)_error", metric)
    if m:
        return "distribution", f"{m.group(1)}th-percentile error ({RATE})"
    return "other", metric


def _rank(section: str, order: list[str]) -> int:
    group = section.partition("@")[0]
    return order.index(group) if group in order else len(order)


def _section_title(section: str) -> str:
    group, _, t = section.partition("@")
    return _GROUPS.get(group, "Other scores").format(t=t)


def _fmt(value: float | None) -> str:
    """Three significant digits (whole numbers from 1000 on); ``–`` for missing."""
    if value is None or not np.isfinite(value):
        return "–"
    if abs(value) >= 1e3:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    return "0" if text in ("-0", "0") else text


def has_skill(metric: str) -> bool:
    """Whether a skill score relative to a reference method is defined for ``metric``."""
    return bool(_SKILL.match(metric))


def skill_score(value: float, ref: float, metric: str, *, scale: float | None = None) -> float:
    """Skill in % relative to a reference method: ``100 (1 - |v - p| / |v_ref - p|)``.

    ``p`` is the perfect value (:func:`perfect_value`): 100 = perfect, 0 = as good as the
    reference, negative = worse. NaN where undefined: for metrics without a fixed reference
    (:func:`has_skill`), missing values, or a reference error at or below ``NEGLIGIBLE *
    scale`` (``scale``: the largest error among the compared methods), where a ratio would
    only magnify noise.
    """
    if not has_skill(metric) or not (np.isfinite(value) and np.isfinite(ref)):
        return float("nan")
    target = perfect_value(metric)
    ref_err = abs(ref - target)
    floor = NEGLIGIBLE * (scale if scale is not None else ref_err)
    if ref_err == 0 or ref_err <= floor:
        return float("nan")
    return 100.0 * (1.0 - abs(value - target) / ref_err)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def metric_table(rows: Mapping[str, Mapping[str, float]], *, reference: str = "raw input",
                 metrics: Sequence[str] | None = None) -> tuple[str, str]:
    """Markdown tables (one per kind of score, units in the headers) and one CSV of everything.

    The Markdown splits the metrics into deterministic, probabilistic, categorical (per
    threshold), FSS (per threshold, by scale), spatial-structure and distribution tables,
    rounded to three significant digits; with ``reference`` among the rows a last table gives
    each method's skill relative to it (:func:`skill_score`, only where defined). The CSV
    keeps the metric keys and full precision, plus ``<metric> skill%`` columns.
    """
    if metrics is None:
        metrics = list(dict.fromkeys(k for row in rows.values() for k in row))
    nan = float("nan")
    ref = rows.get(reference)
    if ref is None:
        log.warning("metric_table: reference %r not among methods %s", reference, list(rows))
    sections: dict[str, list[str]] = {}
    for m in metrics:
        sections.setdefault(metric_label(m)[0], []).append(m)
    order = list(_GROUPS)
    lines: list[str] = []
    for section, names in sorted(sections.items(), key=lambda kv: _rank(kv[0], order)):
        if not any(np.isfinite(row.get(m, nan)) for row in rows.values() for m in names):
            continue
        lines += [f"**{_section_title(section)}**", ""]
        lines += _markdown(["method", *(metric_label(m)[1] for m in names)],
                           [[method, *(_fmt(row.get(m, nan)) for m in names)]
                            for method, row in rows.items()])
        lines.append("")
    skills = _skills(rows, ref, metrics) if ref is not None else {}
    shown = [m for m in metrics if metric_label(m)[0] in _SKILL_SECTIONS
             and any(np.isfinite(v[m]) for v in skills.values())]
    if shown:
        lines += [f"**Skill relative to {reference}** (%: 100 = perfect, 0 = as good as the "
                  "reference, negative = worse; – = not defined)", ""]
        lines += _markdown(["method", *(metric_label(m)[1].split(" (")[0] for m in shown)],
                           [[method, *("–" if not np.isfinite(v[m]) else f"{v[m]:+.0f}"
                                       for m in shown)] for method, v in skills.items()])
        lines.append("")
    return "\n".join(lines), _csv(rows, metrics, skills)


_SKILL_SECTIONS = ("deterministic", "probabilistic", "structure", "distribution")


def _skills(rows: Mapping[str, Mapping[str, float]], ref: Mapping[str, float],
            metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    nan = float("nan")
    scale = {}
    for m in metrics:
        errs = [abs(r.get(m, nan) - perfect_value(m)) for r in rows.values()]
        errs = [e for e in errs if np.isfinite(e)]
        scale[m] = max(errs) if errs else nan
    return {method: {m: skill_score(row.get(m, nan), ref.get(m, nan), m, scale=scale[m])
                     for m in metrics} for method, row in rows.items()}


def _csv(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str],
         skills: Mapping[str, Mapping[str, float]]) -> str:
    nan = float("nan")
    skill_cols = [m for m in metrics if has_skill(m)] if skills else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", *metrics, *(f"{m} skill%" for m in skill_cols)])
    for method, row in rows.items():
        writer.writerow([method, *(repr(float(row.get(m, nan))) for m in metrics),
                         *(f"{skills[method][m]:.2f}" for m in skill_cols)])
    return buf.getvalue()


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
