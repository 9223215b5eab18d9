"""Sub-grid event fraction: hand-counted blocks, member averaging, missing pixels, bad shapes."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.evaluation.spatial import subgrid_event_fraction


def _scene() -> tuple[np.ndarray, np.ndarray]:
    # two 4x4 blocks: the left holds 4 of 16 wet pixels, the right 12 of 16
    fine = np.zeros((4, 8))
    fine[:2, :2] = 2.0
    fine[:, 4:] = 3.0
    fine[3, 4:] = 0.5
    coarse = np.array([[1.5, 4.0]])
    return fine, coarse


def test_counts_fraction_per_bin():
    fine, coarse = _scene()
    out = subgrid_event_fraction(fine, coarse, factor=4, threshold=1.0, edges=[1, 2, 5, 20])
    np.testing.assert_allclose(out[:2], [4 / 16, 12 / 16])
    assert np.isnan(out[2])  # no coarse cell in (5, 20]


def test_members_are_averaged_and_time_axis_kept():
    fine, coarse = _scene()
    dry = np.zeros_like(fine)
    ens = np.stack([np.stack([fine, fine]), np.stack([dry, dry])])  # (member, time, y, x)
    out = subgrid_event_fraction(ens, np.stack([coarse, coarse]), factor=4, threshold=1.0,
                                 edges=[1, 2, 5])
    np.testing.assert_allclose(out, [4 / 32, 12 / 32])


def test_missing_pixel_skips_the_cell():
    fine, coarse = _scene()
    fine[0, 5] = np.nan
    out = subgrid_event_fraction(fine, coarse, factor=4, threshold=1.0, edges=[1, 2, 5])
    assert out[0] == pytest.approx(0.25) and np.isnan(out[1])


def test_shape_mismatch_is_named():
    fine, coarse = _scene()
    with pytest.raises(ValueError, match="factor 3"):
        subgrid_event_fraction(fine, coarse, factor=3, threshold=1.0, edges=[1, 2])
