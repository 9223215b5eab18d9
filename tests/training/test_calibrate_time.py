"""Calibration of a temporal Stage II's noise correlation in time on training sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _training_store import make_corpus, write_tiny_stage2

from precipdiff.data.corpus import open_corpus
from precipdiff.pipeline.record import noise_correlation
from precipdiff.pipeline.stage import Stage
from precipdiff.release import Release
from precipdiff.training.calibrate_time import calibrate_time, choose, training_sequences


def _temporal_weights(path, factor: int) -> Release:
    write_tiny_stage2(path, factor=factor, frames=3, temporal_noise_correlation="0.0")
    return Release.load(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    torch.set_num_threads(1)
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_training_sequences_are_train_events_at_one_cadence(corpus):
    cases = training_sequences(open_corpus(corpus), ["alpha", "beta"], frames=3, crop=16)
    assert sorted(c["network"] for c in cases) == ["alpha", "beta"]  # one train event each
    for c in cases:
        assert c["lr"].shape[0] == 3 and c["hr"].shape[0] == 3 and c["step_s"] == 300
        assert np.all(np.diff(c["time_s"]) == 300)


def test_calibrated_correlation_is_stored_and_used_by_predict(corpus, tmp_path):
    weights = tmp_path / "t.safetensors"
    _temporal_weights(weights, factor=2)
    out = tmp_path / "t_cal.safetensors"
    summary = calibrate_time(weights, corpus, out, grid=(0.0, 0.5), frames=3, crop=16,
                             members=2, steps=2)
    errors = summary["mean_lag1_error"]
    assert summary["noise_correlation"] == min((0.0, 0.5), key=lambda p: errors[repr(p)])
    assert len(summary["sequences"]) == 2 and summary["split"] == "train"
    stage = Stage.load(out)
    assert stage.metadata["temporal_noise_correlation_calibrated"] == repr(
        summary["noise_correlation"])

    class Opts:
        temporal_noise_correlation = None

    assert noise_correlation(stage, Opts()) == summary["noise_correlation"]
    Opts.temporal_noise_correlation = 0.25
    assert noise_correlation(stage, Opts()) == 0.25  # the option wins
    torch.testing.assert_close(Release.load(out).state, Release.load(weights).state)


def test_drifting_noise_is_calibrated_and_noted_for_predict(corpus, tmp_path):
    from precipdiff.pipeline.record import noise_drift

    weights = tmp_path / "t.safetensors"
    _temporal_weights(weights, factor=2)
    still, moved = tmp_path / "still.safetensors", tmp_path / "moved.safetensors"
    kw = dict(grid=(0.0, 0.75), frames=3, crop=16, members=2, steps=2)
    a = calibrate_time(weights, corpus, still, **kw)
    b = calibrate_time(weights, corpus, moved, drift=True, **kw)
    assert b["settings"]["drift"] and not a["settings"]["drift"]
    # independent noise has nothing to move; correlated noise that moves gives other members
    rows = zip(a["sequences"], b["sequences"], strict=True)
    assert all(x["members_lag1"]["0.0"] == y["members_lag1"]["0.0"] for x, y in rows)
    assert any(x["members_lag1"]["0.75"] != y["members_lag1"]["0.75"]
               for x, y in zip(a["sequences"], b["sequences"], strict=True))

    class Opts:
        temporal_noise_drift = None

    assert noise_drift(Stage.load(moved), Opts()) and not noise_drift(Stage.load(still), Opts())
    Opts.temporal_noise_drift = False
    assert not noise_drift(Stage.load(moved), Opts())  # the option wins


def test_a_product_model_gets_each_products_own_correlation(corpus, tmp_path):
    import json

    weights = tmp_path / "t.safetensors"
    write_tiny_stage2(weights, factor=2, frames=3, products=("beta",),
                      temporal_noise_correlation="0.0")
    out = tmp_path / "t_cal.safetensors"
    grid = (0.0, 0.5)
    summary = calibrate_time(weights, corpus, out, grid=grid, frames=3, crop=16, members=2,
                             steps=2)
    beta = next(r for r in summary["sequences"] if r["network"] == "beta")
    alpha = next(r for r in summary["sequences"] if r["network"] == "alpha")
    assert "own_product_members_lag1" not in alpha
    assert beta["own_product_members_lag1"] != beta["members_lag1"]  # the label acted
    errors = {phi: abs(beta["own_product_members_lag1"][repr(phi)] - beta["radar_lag1"])
              for phi in grid}
    assert summary["noise_correlation_by_product"] == {"beta": choose(
        {phi: [e] for phi, e in errors.items()})}
    stage = Stage.load(out)
    assert json.loads(stage.metadata["temporal_noise_correlation_calibrated_by_product"]) == \
        summary["noise_correlation_by_product"]

    class Opts:
        temporal_noise_correlation = None

    assert noise_correlation(stage, Opts()) == summary["noise_correlation"]  # any product
    stage.set_product("beta")
    assert noise_correlation(stage, Opts()) == summary["noise_correlation_by_product"]["beta"]


def test_the_smallest_mean_error_wins_and_ties_go_to_less_correlation():
    assert choose({0.5: [0.1, 0.1], 0.0: [0.1, 0.1], 0.25: [0.3]}) == 0.0
    assert choose({0.0: [0.2], 0.5: [0.05, 0.1]}) == 0.5


def test_a_model_for_another_factor_is_refused(corpus, tmp_path):
    weights = tmp_path / "t4.safetensors"
    _temporal_weights(weights, factor=4)
    with pytest.raises(ValueError, match="downscales x4"):
        calibrate_time(weights, corpus, tmp_path / "o.safetensors", grid=(0.0,), frames=3,
                       crop=16, members=1, steps=1)
