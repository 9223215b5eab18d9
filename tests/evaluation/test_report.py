"""Report: evaluate_fields (alignment checks, ensemble vs deterministic keys), tables, files."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from eval_helpers import as_field, rain

from precipdiff.errors import GridError
from precipdiff.evaluation import metrics
from precipdiff.evaluation.report import (
    evaluate_fields,
    metric_label,
    metric_table,
    skill_score,
    write_report,
)


@pytest.fixture
def case(rng):
    obs = rain(rng, (3, 32, 32))
    ens = np.clip(obs[None] + rng.normal(0, 0.5, (4, *obs.shape)), 0, None)
    return as_field(ens, member=True), as_field(obs)


def test_evaluate_fields_keys_and_values(case):
    pred, truth = case
    out = evaluate_fields(pred, truth, thresholds=(1.0,), scales_px=(1, 4), chunk_time=2)
    for key in ("rmse", "crps_ecdf", "crps_fair", "spread_skill_ratio", "FSS@1/4px",
                "ETS@1", "emd", "p99.99_error", "log_spectral_distance_db"):
        assert key in out
    assert out["rmse"] == pytest.approx(float(metrics.rmse(pred.mean("member"), truth)))
    det = evaluate_fields(pred.isel(member=0), truth, thresholds=(1.0,), scales_px=(1,))
    assert "crps_ecdf" not in det


def test_perfect_prediction(case):
    _, truth = case
    out = evaluate_fields(truth, truth, thresholds=(1.0,), scales_px=(2,))
    assert out["rmse"] == 0 and out["emd"] == 0 and out["FSS@1/2px"] == 1.0
    assert out["log_spectral_distance_db"] == 0 and out["spatial_autocorrelation_error"] == 0


@pytest.mark.parametrize("change", ["lat", "time", "size"])
def test_mismatched_grid_or_time_raises(case, change):
    pred, truth = case
    if change == "lat":
        bad = pred.assign_coords(lat=pred.lat + 0.01)
    elif change == "time":
        bad = pred.assign_coords(time=pred.time + np.timedelta64(1, "h"))
    else:
        bad = pred.isel(lon=slice(1, None))
    with pytest.raises(GridError, match="lat|time|lon"):
        evaluate_fields(bad, truth)


def test_metric_table_skill_where_defined():
    rows = {"raw input": {"rmse": 2.0, "pearson": 0.5, "multiplicative_bias": 1.5},
            "model": {"rmse": 1.0, "pearson": 0.75, "multiplicative_bias": 0.75}}
    markdown, text = metric_table(rows)
    assert "| model |" in markdown and "Skill relative to raw input" in markdown
    table = list(csv.DictReader(io.StringIO(text)))
    model = table[1]
    assert float(model["rmse"]) == 1.0
    assert float(model["rmse skill%"]) == pytest.approx(50.0)
    assert float(model["pearson skill%"]) == pytest.approx(50.0)
    assert "multiplicative_bias skill%" not in model  # a signed bias has no skill reference
    assert float(table[0]["rmse skill%"]) == 0.0


def test_no_relative_change_against_a_near_zero_reference():
    """A tiny reference bias turned a small change into "-398 %"; signed metrics get no skill,
    and a reference error that is negligible next to the others gets none either."""
    rows = {"raw input": {"mean_bias": 0.002, "rmse": 1e-7, "mae": 1.0},
            "model": {"mean_bias": 0.00996, "rmse": 1.0, "mae": 0.5}}
    markdown, text = metric_table(rows)
    assert "398" not in markdown and "398" not in text
    model = list(csv.DictReader(io.StringIO(text)))[1]
    assert "mean_bias skill%" not in model and model["rmse skill%"] == "nan"
    assert float(model["mae skill%"]) == pytest.approx(50.0)
    assert skill_score(0.00996, 0.002, "mean_bias") != skill_score(0.00996, 0.002, "mean_bias")


def test_tables_are_split_with_units_and_rounded(case):
    pred, truth = case
    rows = {"raw input": evaluate_fields(pred.isel(member=0), truth),
            "ensemble": evaluate_fields(pred, truth)}
    markdown, text = metric_table(rows)
    assert len(text.splitlines()[0].split(",")) > 37  # the CSV keeps every metric
    tables = [line for line in markdown.splitlines() if line.startswith("| method |")]
    assert len(tables) >= 6 and max(line.count("|") - 1 for line in tables) <= 8
    for header in ("RMSE (mm h⁻¹)", "CRPS, fair (mm h⁻¹)", "POD", "1 px",
                   "log-spectral distance (dB)", "EMD (mm h⁻¹)"):
        assert header in markdown
    for title in ("Deterministic", "Probabilistic", "Categorical", "Fractions skill score",
                  "Spatial structure", "Intensity distribution"):
        assert f"**{title}" in markdown
    cells = [c.strip() for line in markdown.splitlines() if line.startswith("| raw input")
             for c in line.split("|")[2:-1]]
    assert all(len(c.lstrip("+-").replace(".", "").lstrip("0")) <= 3 for c in cells if c != "–")


@pytest.mark.parametrize("metric, section, label", [
    ("rmse", "deterministic", "RMSE (mm h⁻¹)"),
    ("FSS@5/16px", "fss@5", "16 px"),
    ("ETS@1", "categorical@1", "ETS"),
    ("p99.9_error", "distribution", "99.9th-percentile error (mm h⁻¹)"),
    ("new_metric", "other", "new_metric"),
])
def test_metric_labels(metric, section, label):
    assert metric_label(metric) == (section, label)


def test_write_report(tmp_path):
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "a.png").write_bytes(b"\x89PNG")
    tables = {"Stage II (1 km)": metric_table({"raw input": {"rmse": 1.0}})}
    path = write_report(tables, figs)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "## Stage II (1 km)" in text and "figures/a.png" in text
    assert (tmp_path / "stage_ii_1_km.csv").read_text().startswith("method,rmse")
