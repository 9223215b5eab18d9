"""Report: evaluate_fields (alignment checks, ensemble vs deterministic keys), tables, files."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from eval_helpers import as_field, rain

from precipdiff.errors import GridError
from precipdiff.evaluation import metrics
from precipdiff.evaluation.report import evaluate_fields, metric_table, write_report


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


def test_metric_table_improvement():
    rows = {"raw input": {"rmse": 2.0, "pearson": 0.5, "multiplicative_bias": 1.5},
            "model": {"rmse": 1.0, "pearson": 0.75, "multiplicative_bias": 0.75}}
    markdown, text = metric_table(rows)
    assert "| model |" in markdown and "Relative improvement" in markdown
    table = list(csv.DictReader(io.StringIO(text)))
    model = table[1]
    assert float(model["rmse"]) == 1.0
    assert float(model["rmse impr%"]) == pytest.approx(50.0)
    assert float(model["pearson impr%"]) == pytest.approx(50.0)
    assert float(model["multiplicative_bias impr%"]) == pytest.approx(50.0)
    assert float(table[0]["rmse impr%"]) == 0.0


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
