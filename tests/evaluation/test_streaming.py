"""Streaming Accumulator: per-time-step accumulation equals the all-at-once metric functions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from eval_helpers import as_field, rain

from precipdiff.evaluation import Accumulator, metrics, spectra
from precipdiff.evaluation.distribution import DEFAULT_PERCENTILES


@pytest.fixture
def case(rng):
    obs = rain(rng, (4, 40, 36), wet=0.3)
    ens = np.clip(obs[None] * rng.lognormal(0, 0.3, (5, *obs.shape))
                  + rng.normal(0, 0.3, (5, *obs.shape)), 0, None)
    obs[1, :4, :4] = np.nan
    return as_field(ens, member=True), as_field(obs)


def test_streaming_equals_all_at_once(case):
    pred, obs = case
    kw = {"thresholds": (1.0,), "scales_px": (1, 5)}
    stream = Accumulator(**kw)
    for t in range(obs.sizes["time"]):
        stream.accumulate(pred.isel(time=[t]), obs.isel(time=[t]))
    got = stream.compute()
    mean = pred.mean("member")
    expected = {
        "rmse": metrics.rmse(mean, obs), "mae": metrics.mae(mean, obs),
        "mean_bias": metrics.mean_bias(mean, obs),
        "multiplicative_bias": metrics.multiplicative_bias(mean, obs),
        "pearson": metrics.pearson(mean, obs), "spearman": metrics.spearman(mean, obs),
        "crps_ecdf": metrics.crps_ensemble(pred, obs, estimator="ecdf"),
        "crps_fair": metrics.crps_ensemble(pred, obs, estimator="fair"),
        "spread_skill_ratio": metrics.spread_skill_ratio(pred, obs),
        "FSS@1/5px": metrics.fss(pred, obs, threshold=1.0, scale=5),
        "ETS@1": metrics.categorical_scores(mean, obs, threshold=1.0)["ETS"],
        "emd": metrics.earth_movers_distance(pred, obs),
        "spatial_autocorrelation_error": metrics.spatial_autocorrelation_error(pred, obs),
    }
    for name, value in expected.items():
        # intensity values are kept as float32 (inputs are float32 by contract)
        rel = 1e-6 if name in ("emd", "spearman") else 1e-9
        assert got[name] == pytest.approx(float(value), rel=rel, abs=1e-12), name
    perc = metrics.percentile_errors(pred, obs)
    for p in DEFAULT_PERCENTILES:
        assert got[f"p{p:g}_error"] == pytest.approx(perc[p], rel=1e-6), p
    psd_p = spectra.rapsd(pred)
    psd_o = spectra.rapsd(obs)
    assert got["log_spectral_distance_db"] == pytest.approx(
        spectra.log_spectral_distance(psd_p, psd_o), rel=1e-9)
    # one big chunk gives the same summaries (up to float summation order)
    once = Accumulator(**kw)
    once.accumulate(pred, obs)
    for name, value in once.compute().items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), name


def test_spearman_with_zero_block_matches_scipy(rng):
    """The compact zero-block ranking equals scipy on data with many tied zeros."""
    obs = rain(rng, (2, 30, 30), wet=0.2)
    fcst = np.clip(obs + rng.normal(0, 0.5, obs.shape), 0, None) * (rng.random(obs.shape) > 0.3)
    acc = Accumulator(thresholds=(), scales_px=())
    acc.accumulate(as_field(fcst), as_field(obs))
    ref = scipy.stats.spearmanr(fcst.ravel(), obs.ravel())[0]
    assert acc.compute()["spearman"] == pytest.approx(ref, rel=1e-9)


def test_deterministic_prediction_has_no_ensemble_scores(case):
    pred, obs = case
    acc = Accumulator(thresholds=(1.0,), scales_px=(3,))
    acc.accumulate(pred.isel(member=0), obs)
    out = acc.compute()
    assert "crps_ecdf" not in out and "rmse" in out
    assert acc.rank_histogram() is None


def test_members_equal_to_the_truth_have_undefined_spread_skill(case):
    """Identical members matching the truth (a downscale-only run's Stage-I copy of a source
    that pools the truth exactly): spread-skill is NaN, not a ZeroDivisionError."""
    _, obs = case
    ens = obs.expand_dims(member=2).fillna(0.0)  # the mean of 2 equal values is exact
    acc = Accumulator(thresholds=(1.0,), scales_px=(1,))
    acc.accumulate(ens, obs)
    out = acc.compute()
    assert np.isnan(out["spread_skill_ratio"]) and out["crps_fair"] == 0 and out["rmse"] == 0
