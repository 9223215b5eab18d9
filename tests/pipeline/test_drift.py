"""The rain's translation between frames, which a temporal Stage II's noise can follow."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from precipdiff.pipeline.drift import frame_shift, phase_peak, rain_drift


def _storm(seed: int, size: int = 48) -> np.ndarray:
    """A compact field of cells (mm/h) with dry surroundings."""
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size))
    inner = ndimage.gaussian_filter(rng.gamma(0.5, 5.0, (size // 2, size // 2)), 1.5) * 8
    out[size // 4: size // 4 + size // 2, size // 4: size // 4 + size // 2] = inner
    return out


@pytest.mark.parametrize("shift", [(0.3, 0.5), (1.5, -2.25), (-4.0, 3.0), (6.0, 7.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_frame_shift_finds_a_known_translation(shift, seed) -> None:
    a = _storm(seed)
    b = ndimage.shift(a, shift, order=1, mode="constant")  # b(x) = a(x - shift)
    np.testing.assert_allclose(frame_shift(a, b), shift, atol=0.2)


def test_phase_peak_is_signed_and_whole() -> None:
    a = _storm(3)
    assert tuple(phase_peak(a, np.roll(a, (-5, 4), axis=(0, 1)))) == (-5.0, 4.0)


def test_no_structure_no_shift() -> None:
    dry = np.zeros((16, 16))
    assert not frame_shift(dry, _storm(0, 16)).any()
    assert not frame_shift(np.full((16, 16), 3.0), np.full((16, 16), 3.0)).any()
    nan = _storm(0, 16)
    nan[:4] = np.nan  # missing cells count as dry, not as an error
    assert np.isfinite(frame_shift(nan, _storm(0, 16))).all()


def test_rain_drift_sums_the_steps_in_fine_pixels() -> None:
    a = _storm(2)
    steps = [(0.0, 0.0), (0.5, 1.0), (1.0, 1.0), (0.0, -2.0)]
    frames = [ndimage.shift(a, np.sum(steps[:k + 1], axis=0), order=1, mode="constant")
              for k in range(len(steps))]
    track = rain_drift(np.stack(frames), factor=10)
    assert track.shape == (4, 2) and not track[0].any()
    np.testing.assert_allclose(track, 10 * np.cumsum(steps, axis=0), atol=2.5)
    assert rain_drift(np.stack(frames[:1]), factor=10).shape == (1, 2)
