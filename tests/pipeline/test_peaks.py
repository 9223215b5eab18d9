"""Bounds on 1-km peaks: the envelope, the water filling, and predict with the weights' note."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.errors import CheckpointError
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.peaks import PeakEnvelope, cap_peaks

from .conftest import FACTOR, coarse_field, stage_with_notes

FAST = SamplerSettings(sampler="dpmpp_2m", steps=3)


def test_envelope_is_the_largest_ratio_of_heavier_blocks() -> None:
    means = np.array([0.5, 1.0, 10.0, 30.0, 60.0])
    maxima = np.array([20.0, 50.0, 80.0, 120.0, 150.0])  # ratios 40, 50, 8, 4, 2.5
    env = PeakEnvelope.fit(means, maxima, edges=(0.5, 5.0, 20.0, 50.0, 100.0))
    assert env.ratio == (50.0, 8.0, 4.0, 2.5, 2.5)  # no block >= 100: the last ratio
    assert env.bound(np.array([0.5, 50.0, 500.0])).tolist() == [25.0, 125.0, 1250.0]
    b = env.bound(np.array([5.0, 10.0, 19.9, 20.0, 0.1]))
    assert (b / [5.0, 10.0, 19.9, 20.0, 0.1]).tolist() == [8.0, 8.0, 8.0, 4.0, 50.0]
    assert PeakEnvelope.from_note(env.to_note()) == env
    for edges, ratio in (((1.0, 0.5), (2.0, 1.0)), ((1.0, 2.0), (1.0, 2.0)), ((1.0,), (0.5,))):
        with pytest.raises(ValueError, match="peak envelope"):
            PeakEnvelope(edges, ratio)
    with pytest.raises(ValueError, match="no block"):
        PeakEnvelope.fit(np.array([0.01]), np.array([1.0]))


def test_capping_keeps_every_block_mean_and_dry_pixels(rng) -> None:
    env = PeakEnvelope((0.1, 10.0), (100.0, 2.0))
    hr = np.where(rng.random((3, 8, 8)) < 0.6, rng.gamma(0.5, 4.0, (3, 8, 8)), 0.0)
    hr[0, :4, :4] = 1.0
    hr[0, 3, 3] = 0.0
    hr[0, 0, 0] = 160.0  # one 160 mm/h pixel in an 11 mm/h block (bound: 22 mm/h)
    hr[1, 4:, 4:] = np.nan  # a missing block is left alone
    out = cap_peaks(hr, 4, env)
    blocks = lambda a: a.reshape(3, 2, 4, 2, 4).mean(axis=(2, 4))  # noqa: E731
    np.testing.assert_allclose(blocks(out), blocks(hr), rtol=1e-6, equal_nan=True)
    mean = blocks(hr)[0, 0, 0]
    assert out[0, :4, :4].max() <= env.bound(np.array(mean)) * (1 + 1e-6)
    assert np.array_equal(out == 0, hr == 0)  # no dry pixel wetted, no wet pixel dried
    assert np.isnan(out[1, 4:, 4:]).all()
    # the block's wet pixels cannot hold its rain below the bound: they share it equally
    tight = np.zeros((1, 4, 4))
    tight[0, 0, 0], tight[0, 0, 1] = 150.0, 10.0
    capped = cap_peaks(tight, 4, env)
    assert capped[0, 0, 0] == pytest.approx(80.0) and capped[0, 0, 1] == pytest.approx(80.0)
    assert capped.sum() == pytest.approx(160.0)


def _opts(**kw) -> PredictOptions:
    base = dict(members=3, correct=FAST, downscale=FAST, seed=3, member_batch=3, window=512,
                mass_consistent=True)
    return PredictOptions(**{**base, **kw})


def _with_note(tiny_weights, tmp_path, value: str) -> Stage:
    return stage_with_notes(tiny_weights["downscale"], tmp_path, peak_envelope=value)


def test_predict_holds_peaks_below_the_weights_bound(tiny_weights, tmp_path) -> None:
    src = coarse_field(n_time=1)
    env = PeakEnvelope((0.1, 1.0), (3.0, 1.5))  # tight, so that the random net exceeds it
    capped = Pipeline(None, _with_note(tiny_weights, tmp_path, env.to_note()))
    a = capped.predict(src, _opts(cap_peaks=False))
    b = capped.predict(src, _opts())
    assert a.attrs["peak_cap"] == "none" and b.attrs["peak_cap"].startswith("fine values")
    ha, hb = a["precip"].values, b["precip"].values
    lr = b["corrected_lr"].values
    shape = (*hb.shape[:2], lr.shape[-2], FACTOR, lr.shape[-1], FACTOR)
    means, peaks = hb.reshape(shape).mean((3, 5)), hb.reshape(shape).max((3, 5))
    ok = np.isfinite(lr) & (lr > 0)
    assert (ha.reshape(shape).max((3, 5))[ok] > env.bound(lr[ok]) * 1.01).any()  # it binds
    wet = ok & ((hb.reshape(shape) > 0).sum((3, 5)) * 1.5 >= FACTOR**2)  # room below the bound
    assert np.all(peaks[wet] <= env.bound(lr[wet]) * (1 + 1e-5))
    np.testing.assert_allclose(means[ok], lr[ok], rtol=1e-5, atol=1e-5)  # mass kept
    np.testing.assert_array_equal(ha == 0, hb == 0)
    bad = Pipeline(None, _with_note(tiny_weights, tmp_path, "{\"edges_mm_h\": [1]}"))
    with pytest.raises(CheckpointError, match="peak_envelope"):
        bad.predict(src, _opts())
