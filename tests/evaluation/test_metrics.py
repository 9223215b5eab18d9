"""Deterministic and ensemble metrics, checked against scores / properscoring and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from eval_helpers import as_field, rain, requires_properscoring, requires_scores

from precipdiff.errors import GridError
from precipdiff.evaluation import metrics


@pytest.fixture
def pair(rng):
    obs = rain(rng, (3, 24, 20))
    fcst = np.clip(obs + rng.normal(0.0, 1.0, obs.shape), 0, None)
    obs[0, 0, :5] = np.nan
    return as_field(fcst), as_field(obs)


@pytest.fixture
def ensemble(rng):
    """Members with ties (many zeros, some exactly equal to obs) and NaN in obs."""
    obs = rain(rng, (2, 16, 12), wet=0.4)
    ens = np.clip(obs[None] + rng.normal(0.0, 1.5, (7, *obs.shape)), 0, None)
    ens[2, :, :3, :] = obs[:, :3, :]  # exact ties with the observation
    obs[1, 5, 5] = np.nan
    return as_field(ens, member=True), as_field(obs)


def test_deterministic_match_numpy(pair):
    f, o = pair
    ok = np.isfinite(o.values)
    fv, ov = f.values[ok], o.values[ok]
    assert float(metrics.rmse(f, o)) == pytest.approx(np.sqrt(np.mean((fv - ov) ** 2)))
    assert float(metrics.mae(f, o)) == pytest.approx(np.mean(np.abs(fv - ov)))
    assert float(metrics.mean_bias(f, o)) == pytest.approx(np.mean(fv - ov))
    assert float(metrics.multiplicative_bias(f, o)) == pytest.approx(fv.mean() / ov.mean())
    assert float(metrics.pearson(f, o)) == pytest.approx(np.corrcoef(fv, ov)[0, 1])
    assert float(metrics.spearman(f, o)) == pytest.approx(scipy.stats.spearmanr(fv, ov)[0])


def test_reduce_and_preserve_dims(pair):
    f, o = pair
    per_time = metrics.rmse(f, o, preserve_dims="time")
    assert per_time.dims == ("time",)
    same = metrics.rmse(f, o, reduce_dims=["lat", "lon"])
    xr.testing.assert_allclose(per_time, same)
    with pytest.raises(ValueError, match="not both"):
        metrics.rmse(f, o, reduce_dims="time", preserve_dims="lat")
    with pytest.raises(ValueError, match="height"):
        metrics.rmse(f, o, reduce_dims="height")


def test_misaligned_coordinates_raise(pair):
    f, o = pair
    shifted = o.assign_coords(lat=o.lat + 0.005)
    with pytest.raises(GridError, match="lat"):
        metrics.rmse(f, shifted)
    with pytest.raises(GridError, match="lon"):
        metrics.crps_ensemble(f.expand_dims(member=2), o.isel(lon=slice(1, None)))
    # float rounding of the same grid is not a mismatch
    rounded = o.assign_coords(lat=o.lat + 1e-9)
    assert float(metrics.rmse(f, rounded)) == float(metrics.rmse(f, o))


@pytest.mark.parametrize(("estimator", "expected"), [("ecdf", 2 / 3), ("fair", 1 / 3)])
def test_crps_hand_check(estimator, expected):
    fc = xr.DataArray([0.0, 1.0, 3.0], dims="member")
    ob = xr.DataArray(2.0)
    assert float(metrics.crps_ensemble(fc, ob, estimator=estimator)) == pytest.approx(expected)


@requires_scores
@pytest.mark.parametrize("estimator", ["ecdf", "fair"])
def test_crps_vs_scores(ensemble, estimator):
    import scores.probability

    fc, ob = ensemble
    ours = metrics.crps_ensemble(fc, ob, estimator=estimator, preserve_dims="time")
    ref = scores.probability.crps_for_ensemble(fc, ob, "member", method=estimator,
                                               preserve_dims=["time"])
    np.testing.assert_allclose(ours.values, ref.values, rtol=1e-10)


@requires_properscoring
def test_crps_ecdf_vs_properscoring(ensemble):
    import properscoring

    fc, ob = ensemble
    ours = metrics.crps_ensemble_pointwise(fc.values, ob.values, axis=0)
    ref = properscoring.crps_ensemble(ob.values, np.moveaxis(fc.values, 0, -1))
    ok = np.isfinite(ob.values)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-10, atol=1e-12)


def test_fair_crps_needs_two_members():
    with pytest.raises(ValueError, match="2 members"):
        metrics.crps_ensemble_pointwise(np.ones((1, 3)), np.ones(3), estimator="fair")


def test_spread_skill_ratio_consistent_ensemble_is_one(rng):
    m, n = 5, 200_000
    truth_mean = rng.normal(size=n)
    obs = truth_mean + rng.normal(size=n)
    ens = truth_mean[None] + rng.normal(size=(m, n))
    ssr = metrics.spread_skill_ratio(xr.DataArray(ens, dims=("member", "x")),
                                     xr.DataArray(obs, dims="x"))
    assert float(ssr) == pytest.approx(1.0, abs=0.01)


def test_rank_histogram_flat_and_tie_breaking(rng):
    m, n = 4, 100_000
    ens = rng.normal(size=(m, n))
    obs = rng.normal(size=n)
    hist = metrics.rank_histogram(xr.DataArray(ens, dims=("member", "x")),
                                  xr.DataArray(obs, dims="x"), rng=1)
    np.testing.assert_allclose(hist.values, 1 / (m + 1), atol=0.01)
    # all-dry members and obs: ties spread evenly instead of piling into bin 0
    dry = metrics.rank_histogram(xr.DataArray(np.zeros((m, n)), dims=("member", "x")),
                                 xr.DataArray(np.zeros(n), dims="x"), rng=1)
    np.testing.assert_allclose(dry.values, 1 / (m + 1), atol=0.01)
    again = metrics.rank_histogram(xr.DataArray(np.zeros((m, n)), dims=("member", "x")),
                                   xr.DataArray(np.zeros(n), dims="x"), rng=1)
    xr.testing.assert_equal(dry, again)
