"""Spread inflation: the operation, the weights' note, and what predict does with it."""

from __future__ import annotations

import numpy as np
import pytest

from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.run import PredictRequest
from precipdiff.pipeline.spread import inflate_spread

from .conftest import FACTOR, coarse_field, stage_with_notes

FAST = SamplerSettings(sampler="dpmpp_2m", steps=3)


def test_inflation_keeps_the_mean_and_scales_the_variance(rng) -> None:
    members = 20.0 + rng.normal(0.0, 1.0, (6, 50, 40))  # far from 0: nothing is clipped
    out = inflate_spread(members, 1.8)
    np.testing.assert_allclose(out.mean(0), members.mean(0), atol=1e-9)
    np.testing.assert_allclose(out.var(0, ddof=1), 1.8**2 * members.var(0, ddof=1), rtol=1e-9)
    shrunk = inflate_spread(members, 0.5)  # an over-dispersed ensemble can be narrowed
    np.testing.assert_allclose(shrunk.std(0), 0.5 * members.std(0), rtol=1e-9)


def test_inflated_rain_stays_physical(rng) -> None:
    members = np.where(rng.random((4, 30, 30)) < 0.5, rng.gamma(0.7, 2.0, (4, 30, 30)), 0.0)
    members[:, :5] = 0.0  # dry in every member
    members[:, 5, 0] = np.nan  # missing
    out = inflate_spread(members, 2.5, threshold=0.2)
    assert np.all(out[:, :5] == 0)  # dry stays dry
    assert np.isnan(out[:, 5, 0]).all() and np.isfinite(np.delete(out.reshape(4, -1), 150, 1)).all()
    finite = out[np.isfinite(out)]
    assert finite.min() == 0 and not np.any((finite > 0) & (finite < 0.2))  # no trace values
    assert np.nanmean(out.std(0)[6:]) > np.nanmean(members.std(0)[6:])


def test_no_inflation_and_one_member_are_left_alone(rng) -> None:
    members = rng.gamma(0.7, 2.0, (3, 8, 8))
    assert inflate_spread(members, 1.0) is members
    one = members[:1]
    assert inflate_spread(one, 2.0) is one
    for bad in (0.0, -1.0, 5.5, float("nan")):
        with pytest.raises(ValueError, match="spread inflation"):
            inflate_spread(members, bad)


def _opts(**kw) -> PredictOptions:
    base = dict(members=4, correct=FAST, downscale=FAST, seed=3, member_batch=4, window=512,
                mass_consistent=True)
    return PredictOptions(**{**base, **kw})


def _with_note(tiny_weights, tmp_path, value: str) -> Stage:
    return stage_with_notes(tiny_weights["downscale"], tmp_path, spread_inflation=value)


def test_predict_inflates_with_the_weights_note_and_keeps_every_cell(tiny_weights,
                                                                   tmp_path) -> None:
    src = coarse_field(n_time=1)
    plain = Pipeline(None, Stage.load(tiny_weights["downscale"]))
    noted = Pipeline(None, _with_note(tiny_weights, tmp_path, "2.0"))
    a = plain.predict(src, _opts())
    b = noted.predict(src, _opts())
    assert a.attrs["spread_inflation"] == 1.0 and b.attrs["spread_inflation"] == 2.0
    ha, hb = a["precip"].values, b["precip"].values
    np.testing.assert_array_equal(np.isnan(ha), np.isnan(hb))
    wet = np.isfinite(ha).all(0) & (ha > 0).any(0)
    assert hb.std(0)[wet].mean() > 1.3 * ha.std(0)[wet].mean()
    # mass consistency still holds for every member and coarse cell
    lr = b["corrected_lr"].values
    pooled = hb.reshape(*hb.shape[:2], lr.shape[-2], FACTOR, lr.shape[-1], FACTOR).mean((3, 5))
    ok = np.isfinite(lr)
    np.testing.assert_allclose(pooled[ok], lr[ok], rtol=1e-5, atol=1e-5)
    # dry stays dry, no trace values
    assert np.all(hb[np.nan_to_num(ha, nan=1.0).max(0)[None].repeat(4, 0) == 0] == 0)
    t = b.attrs["fine_threshold"]
    assert not np.any((hb > 0) & (hb < t))
    # the option wins over the note; 1 is the plain output, bit for bit
    np.testing.assert_array_equal(noted.predict(src, _opts(spread_inflation=1.0))["precip"].values,
                                  ha)


def test_a_bad_note_or_option_is_refused(tiny_weights, tmp_path) -> None:
    bad = Pipeline(None, _with_note(tiny_weights, tmp_path, "lots"))
    with pytest.raises(CheckpointError, match="spread_inflation.*'lots'"):
        bad.predict(coarse_field(n_time=1), _opts())
    with pytest.raises(ConfigError, match="--spread-inflation"):
        PredictRequest(inputs=(tmp_path / "x.nc",), output=tmp_path / "o.nc",
                       spread_inflation=0.0)
