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
