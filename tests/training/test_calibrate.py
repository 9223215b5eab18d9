"""The fine wet/dry threshold calibration: the matching quantile, and weights that carry it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from precipdiff.data.windows import rain_window
from precipdiff.training.calibrate import calibration_networks, matching_threshold, trained_networks


def test_matching_threshold_reproduces_the_truth_wet_fraction():
    rng = np.random.default_rng(0)
    truth = np.where(rng.random(20000) < 0.3, rng.gamma(0.8, 2.0, 20000) + 0.1, 0.0)
    pred = np.where(rng.random((4, 20000)) < 0.5, rng.gamma(0.8, 2.0, (4, 20000)), 0.0)
    t = matching_threshold(pred, truth)
    assert t > 0.1
    assert abs(np.mean(pred >= t) - np.mean(truth >= 0.1)) < 0.005
    # an ensemble already drier than the truth keeps the trace threshold
    assert matching_threshold(pred * 0.0, truth) == 0.1
    assert matching_threshold(np.array([np.nan, 1.0]), np.array([1.0, np.nan])) == 0.1


def test_rain_window_avoids_missing_cells():
    lr = np.zeros((2, 6, 6), np.float32)
    lr[:, 0:2, 0:2] = 5.0
    lr[0, 0:2, 0:2] = np.nan  # the wettest block has missing cells
    lr[:, 3:5, 3:5] = 1.0
    assert rain_window(lr, 2) == (3, 3)


def test_calibration_uses_the_networks_the_weights_were_trained_on():
    available = ["mrms", "radolan", "mch", "fmi", "opera"]
    notes = {"training_corpus": json.dumps({"networks": ["mrms", "radolan", "mch", "opera"]})}
    trained = trained_networks(notes)
    assert calibration_networks(available, trained) == ["mrms", "radolan", "mch", "opera"]
    assert trained_networks({}) is None
    assert calibration_networks(available, None) == available
    assert calibration_networks(available, trained, ["fmi"]) == ["fmi"]
    with pytest.raises(ValueError, match="'dwd'"):
        calibration_networks(available, trained, ["dwd"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from _training_store import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _downscale_weights(path, factor: int = 2):
    """A random tiny per-frame Stage II for an areal-mean corpus of ``factor``."""
    from _training_store import write_tiny_stage2

    return write_tiny_stage2(path, factor=factor)


def test_calibrated_spread_is_the_lowest_crps_and_predict_uses_it(corpus, tmp_path):
    import torch

    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.release import Release
    from precipdiff.training.calibrate import calibrate_spread

    weights = _downscale_weights(tmp_path / "w.safetensors")
    out = tmp_path / "w_spread.safetensors"
    grid = (1.0, 1.5, 3.0)
    summary = calibrate_spread(weights, corpus, out, grid=grid, frames=2, crop=16, members=3)
    rel = summary["mean_relative_crps"]
    assert rel["1.0"] == pytest.approx(1.0)
    assert summary["spread_inflation"] == min(grid, key=lambda a: rel[repr(a)])
    assert sorted(summary["networks"]) == ["alpha", "beta"] and summary["split"] == "train"
    for scores in (n["crps_fair"] for n in summary["per_network"].values()):
        assert len(set(scores.values())) == len(grid)  # each factor changed the members
    stage = Stage.load(out)
    assert stage.metadata["spread_inflation"] == repr(summary["spread_inflation"])
    assert Pipeline(None, stage).spread_inflation(PredictOptions()) == summary["spread_inflation"]
    torch.testing.assert_close(Release.load(out).state, Release.load(weights).state)
    with pytest.raises(ValueError, match="1.0 in the grid"):
        calibrate_spread(weights, corpus, out, grid=(1.5, 2.0), frames=2, crop=16)


def test_product_weights_get_a_spread_factor_per_product(corpus, tmp_path):
    import json

    from _training_store import write_tiny_stage2

    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.training.calibrate import calibrate_spread

    weights = write_tiny_stage2(tmp_path / "w.safetensors", products=("beta", "gamma"))
    out = tmp_path / "w_spread.safetensors"
    grid = (1.0, 1.5, 3.0)
    summary = calibrate_spread(weights, corpus, out, grid=grid, frames=2, crop=16, members=3)
    own = summary["per_network"]["beta"]["own_product_crps_fair"]
    assert "own_product_crps_fair" not in summary["per_network"]["alpha"]  # not a product
    assert own != summary["per_network"]["beta"]["crps_fair"]  # the label changed the members
    best = min(grid, key=lambda a: own[repr(a)] / own["1.0"])
    assert summary["spread_inflation_by_product"] == {"beta": best}
    stage = Stage.load(out)
    assert json.loads(stage.metadata["spread_inflation_by_product"]) == {"beta": best}
    assert Pipeline(None, stage.set_product("beta")).spread_inflation(PredictOptions()) == best


def test_product_weights_get_a_fine_threshold_per_product(corpus, tmp_path):
    from _training_store import write_tiny_stage2

    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.training.calibrate import calibrate

    weights = write_tiny_stage2(tmp_path / "w.safetensors", products=("beta",))
    out = tmp_path / "w_cal.safetensors"
    summary = calibrate(weights, corpus, out, frames=2, crop=16, members=3)
    assert list(summary["fine_threshold_by_product"]) == ["beta"]
    t_beta = summary["fine_threshold_by_product"]["beta"]
    assert t_beta >= 0.1
    stage = Stage.load(out)
    pooled = float(stage.metadata["fine_threshold"])
    assert Pipeline(None, stage).fine_threshold(PredictOptions()) == max(pooled, 0.1)
    stage.set_product("beta")
    assert Pipeline(None, stage).fine_threshold(PredictOptions()) == max(t_beta, 0.1)
    assert Pipeline(None, stage).fine_threshold(PredictOptions(fine_threshold=0.3)) == 0.3


def test_worst_network_criterion_picks_the_minimax_factor(corpus, tmp_path):
    from precipdiff.training.calibrate import calibrate_spread

    weights = _downscale_weights(tmp_path / "w.safetensors")
    out = tmp_path / "w_spread.safetensors"
    grid = (1.0, 1.5, 3.0)
    summary = calibrate_spread(weights, corpus, out, grid=grid, frames=2, crop=16, members=3,
                               criterion="worst")
    worst = summary["worst_relative_crps"]
    per = [{float(a): v / n["crps_fair"]["1.0"] for a, v in n["crps_fair"].items()}
           for n in summary["per_network"].values()]
    for a in grid:  # the worst network's CRPS relative to no inflation, factor by factor
        assert worst[repr(a)] == pytest.approx(max(p[a] for p in per))
    assert summary["spread_inflation"] == min(grid, key=lambda a: worst[repr(a)])
    assert summary["criterion"].startswith("worst")
    with pytest.raises(ValueError, match="criterion"):
        calibrate_spread(weights, corpus, out, grid=grid, frames=2, crop=16, criterion="median")


def test_training_cases_reads_the_split_asked_for(corpus, tmp_path):
    from precipdiff.release import Release
    from precipdiff.training.calibrate import training_cases

    release = Release.load(_downscale_weights(tmp_path / "w.safetensors"))
    train = {n: src["time"].values for n, src, _ in training_cases(release, corpus, frames=8,
                                                                  crop=16)}
    test = {n: src["time"].values for n, src, _ in training_cases(release, corpus, frames=8,
                                                                 crop=16, split="test")}
    assert set(train) == {"alpha", "beta"}
    for n, times in test.items():
        assert times.size and not set(times) & set(train[n])  # held-out frames only


def test_peak_envelope_is_the_training_radar_bound(corpus, tmp_path):
    from precipdiff.data.corpus import open_corpus
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.pipeline.peaks import PeakEnvelope
    from precipdiff.training.calibrate import calibrate_peaks

    weights = _downscale_weights(tmp_path / "w.safetensors")
    out = tmp_path / "w_peaks.safetensors"
    summary = calibrate_peaks(weights, corpus, out)
    assert summary["split"] == "train" and sorted(summary["networks"]) == ["alpha", "beta"]
    env = Pipeline(None, Stage.load(out)).peak_envelope(PredictOptions())
    assert env is not None and env.ratio == tuple(summary["max_over_mean"])
    # every train block of the radar lies within it, and the bound is that tight somewhere
    handle = open_corpus(corpus)
    ratios = []
    for name in ("alpha", "beta"):
        st = handle.open(name)
        for t in np.asarray(st.splits["train"]["time"], np.int64):
            hr = np.asarray(st["ref_hr"][int(t)], np.float64)
            f = st.factor
            h, w = hr.shape[0] // f * f, hr.shape[1] // f * f
            b = hr[:h, :w].reshape(h // f, f, w // f, f)
            m, x = b.mean(axis=(1, 3)), b.max(axis=(1, 3))
            ok = m >= env.edges[0]
            assert np.all(x[ok] <= env.bound(m[ok]) * (1 + 1e-6))
            ratios.append((x[ok] / m[ok]).max())
    assert max(ratios) == pytest.approx(env.ratio[0])
    assert isinstance(env, PeakEnvelope)


def test_calibrated_threshold_is_stored_with_its_record(corpus, tmp_path):
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.training.calibrate import calibrate

    weights = _downscale_weights(tmp_path / "w.safetensors")
    out = tmp_path / "w_threshold.safetensors"
    summary = calibrate(weights, corpus, out, frames=2, crop=16, members=2)
    stage = Stage.load(out)
    assert stage.metadata["fine_threshold"] == repr(round(summary["fine_threshold_mm_h"], 4))
    assert json.loads(stage.metadata["fine_threshold_calibration"])["split"] == "train"
    assert Pipeline(None, stage).fine_threshold(PredictOptions()) >= 0.1
