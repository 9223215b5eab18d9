"""A product-conditioned Stage II through predict: the label reaches the net and the output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from precipdiff.errors import ConfigError
from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
from precipdiff.pipeline.run import PredictRequest, load_pipeline
from precipdiff.release import Release

from .conftest import coarse_field

FAST = SamplerSettings(sampler="dpmpp_2m", steps=3)


@pytest.fixture(scope="module")
def labelled(tiny_weights, tmp_path_factory):
    """The tiny Stage II with products ("radar_a", "radar_b") and a non-zero embedding."""
    rel = Release.load(tiny_weights["downscale"])
    model = dataclasses.replace(rel.model, products=("radar_a", "radar_b"))
    emb = torch.Generator().manual_seed(5)
    width = rel.state["map.0.weight"].shape[0]
    state = {**rel.state, "product_embed.weight": torch.randn(3, width, generator=emb)}
    state["product_embed.weight"][0] = 0.0
    path = tmp_path_factory.mktemp("labelled") / "labelled.safetensors"
    dataclasses.replace(rel, model=model, state=state).save(path)
    return path


def _opts() -> PredictOptions:
    return PredictOptions(members=3, correct=FAST, downscale=FAST, seed=2, member_batch=3,
                          window=512, mass_consistent=True)


def test_the_product_changes_the_fine_detail_and_is_recorded(labelled, tiny_weights) -> None:
    src = coarse_field(n_time=1)
    stage = Stage.load(labelled)
    any_product = Pipeline(None, stage).predict(src, _opts())
    plain = Pipeline(None, Stage.load(tiny_weights["downscale"])).predict(src, _opts())
    np.testing.assert_allclose(any_product["precip"].values, plain["precip"].values,
                               rtol=1e-5, atol=1e-5, equal_nan=True)  # label 0 adds nothing
    b = Pipeline(None, stage.set_product("radar_b")).predict(src, _opts())
    assert any_product.attrs["downscale_product"] == "any"
    assert b.attrs["downscale_product"] == "radar_b"
    ha, hb = any_product["precip"].values, b["precip"].values
    np.testing.assert_array_equal(np.isnan(ha), np.isnan(hb))
    assert np.nanmax(np.abs(ha - hb)) > 1e-3  # the label reached the net
    lr = b["corrected_lr"].values  # and the coarse cells are kept as before
    f = stage.factor
    pooled = hb.reshape(*hb.shape[:2], lr.shape[-2], f, lr.shape[-1], f).mean((3, 5))
    ok = np.isfinite(lr)
    np.testing.assert_allclose(pooled[ok], lr[ok], rtol=1e-5, atol=1e-5)
    assert "downscale_product" not in plain.attrs


def test_predict_requests_a_product_by_name(labelled, tiny_weights, tmp_path) -> None:
    req = PredictRequest(inputs=(tmp_path / "x.nc",), output=tmp_path / "o.nc",
                         stages=("downscale",), weights_downscale=labelled, product="radar_a")
    assert load_pipeline(req, "cpu").downscale.product == "radar_a"
    wrong = dataclasses.replace(req, product="radar_c")
    with pytest.raises(ConfigError, match="labelled.safetensors.*'radar_c'.*radar_a, radar_b"):
        load_pipeline(wrong, "cpu")
    shipped = dataclasses.replace(req, weights_downscale=None, product="fmi")
    stage = load_pipeline(shipped, "cpu").downscale  # --product alone: the shipped product model
    assert stage.product == "fmi" and "product" in Path(stage.source).name
    from .conftest import stage_with_notes  # weights without products are refused by name

    plain = stage_with_notes(tiny_weights["downscale"], tmp_path, note="x").source
    with pytest.raises(ConfigError, match="not trained with product.*mean_product"):
        load_pipeline(dataclasses.replace(req, weights_downscale=Path(plain)), "cpu")
    no_stage2 = dataclasses.replace(req, stages=("correct",), product="radar_a")
    with pytest.raises(ConfigError, match="--product radar_a.*Stage II"):
        load_pipeline(no_stage2, "cpu")


def test_the_spread_factor_follows_the_product(labelled, tmp_path) -> None:
    from precipdiff.errors import CheckpointError

    from .conftest import stage_with_notes

    stage = stage_with_notes(labelled, tmp_path, spread_inflation="1.25",
                             spread_inflation_by_product='{"radar_b": 2.0}')
    pipeline = Pipeline(None, stage)
    assert pipeline.spread_inflation(_opts()) == 1.25  # any product: the pooled factor
    stage.set_product("radar_b")
    assert pipeline.spread_inflation(_opts()) == 2.0
    assert pipeline.spread_inflation(dataclasses.replace(_opts(), spread_inflation=1.0)) == 1.0
    stage.set_product("radar_a")  # not calibrated on its own: the pooled factor
    assert pipeline.spread_inflation(_opts()) == 1.25
    for bad, match in (('["radar_a"]', "JSON object"), ('{"radar_a": 9}', "radar_a.*9")):
        worse = stage_with_notes(labelled, tmp_path, spread_inflation_by_product=bad)
        with pytest.raises(CheckpointError, match=match):
            Pipeline(None, worse.set_product("radar_a")).spread_inflation(_opts())
