"""The release weights format: round trips, shipped files, crafted and broken files, layering."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from precipdiff.baselines.quantile_mapping import QuantileMapping
from precipdiff.data.transforms import PrecipTransform
from precipdiff.errors import CheckpointError
from precipdiff.models.unet import UNet, UNetConfig
from precipdiff.release import InputSemantics, Release, load_weights, save_weights

SRC = Path(__file__).resolve().parents[1] / "src" / "precipdiff"
SHIPPED = SRC / "weights"
TINY = UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,), head_channels=8)
REG = dataclasses.replace(TINY, regression=True, attn_levels=())


def _state(cfg: UNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return UNet(cfg).state_dict()


def _release(**kw) -> Release:
    args = {"stage": "downscale", "model": TINY, "state": _state(TINY),
            "transform": PrecipTransform(scale=1.0, sigma=0.5), "factor": 4, "pooling": "mean",
            "semantics": InputSemantics.for_pooling("mean"), "patch": 16,
            "config": {"train": {"stage": "downscale"}}, **kw}
    return Release(**args)


def _craft(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """Write a safetensors file as a hostile user would: no checks."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def _good() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    rel = _release()
    return rel.tensors(), rel.metadata()


def test_round_trip_keeps_every_field(tmp_path):
    qm = QuantileMapping.from_dict({"method": "eqm", "n_quantiles": 3, "wet_threshold": 0.1,
                                    "seed": 0, "q_src": [0.0, 1.0, 2.0],
                                    "q_ref": [0.0, 2.0, 3.0]})
    rel = _release(stage="correct", factor=10, pooling="max",
                   semantics=InputSemantics.for_pooling("max"), source_map=qm,
                   model=dataclasses.replace(TINY, cond_channels=2),
                   state=_state(dataclasses.replace(TINY, cond_channels=2)),
                   extra_names=("t850",), extra_stats={"t850": {"mean": 280.0, "std": 10.0}},
                   notes={"exported_from": "last.pt"})
    path = rel.save(tmp_path / "w.safetensors")
    got = Release.load(path)
    for name in ("stage", "model", "transform", "factor", "pooling", "semantics", "sigma_data",
                 "patch", "extra_names", "extra_stats", "config", "notes"):
        assert getattr(got, name) == getattr(rel, name), name
    assert got.source_map.to_dict() == qm.to_dict()
    assert all(torch.equal(got.state[k], v) for k, v in rel.state.items())
    assert got.path == str(path) and len(got.sha256) == 64
    assert not [p for p in tmp_path.iterdir() if p.name != "w.safetensors"]  # no temp files


def test_round_trip_with_mean_net(tmp_path):
    rel = _release(mean_model=REG, mean_state=_state(REG, seed=1))
    got = Release.load(rel.save(tmp_path / "w.safetensors"))
    assert got.mean_model == REG
    assert all(torch.equal(got.mean_state[k], v) for k, v in rel.mean_state.items())
    assert got.build_mean_net() is not None and not got.build_net().cfg.regression


def test_low_level_functions_check_like_load(tmp_path):
    tensors, meta = _good()
    path = save_weights(tmp_path / "w.safetensors", tensors, metadata=meta)
    got, got_meta = load_weights(path)
    assert got_meta["stage"] == "downscale" and set(got) == set(tensors)
    with pytest.raises(CheckpointError, match="metadata lacks"):
        save_weights(tmp_path / "x.safetensors", tensors, metadata={"stage": "downscale"})
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("name", ["stage1_correct_max", "stage2_downscale_max"])
def test_shipped_max_weights_load_unchanged(name):
    path = SHIPPED / f"{name}.safetensors"
    rel = Release.load(path)
    raw = load_weights(path)[1]
    assert "semantics" not in raw  # written before the key existed: the default applies
    assert rel.pooling == "max" and rel.semantics.aggregation == "block_maximum"
    assert rel.semantics.quantity == "rate" and rel.factor == 10
    assert rel.stage == name.split("_")[1] and rel.transform.sigma > 0
    assert rel.build_net() is not None


def test_shipped_defaults_are_areal_mean_models():
    from precipdiff.pipeline.shipped import shipped_weights

    paths = shipped_weights()
    assert all(paths.values()), paths
    for name, stage in (("correct", "correct"), ("downscale", "downscale")):
        rel = Release.load(paths[name])
        assert rel.stage == stage and rel.factor == 10
        assert rel.pooling == "mean" and rel.semantics.aggregation == "areal_mean"
    for name in ("correct_max", "downscale_max"):
        assert Release.load(paths[name]).semantics.aggregation == "block_maximum"
    temporal = Release.load(paths["downscale_temporal"])
    assert temporal.temporal is not None and temporal.semantics.aggregation == "areal_mean"
    assert temporal.model == Release.load(paths["downscale_full"]).model  # same spatial network
    # the default Stage II: a few-step student of the full one, with its calibrations
    student, full = Release.load(paths["downscale"]), Release.load(paths["downscale_full"])
    assert full.distilled_sigmas is None and student.model == full.model
    assert student.distilled_sigmas is not None and len(student.distilled_sigmas) == 4
    assert student.notes["fine_threshold"] == full.notes["fine_threshold"]
    assert json.loads(student.notes["distilled"])["teacher"] == full.path.split("/")[-1]
    # the bound on 1-km peaks of the training radar (calibrate --peaks), on every areal-mean
    # Stage II; the default one also spreads its members by the factor that helps every
    # training network (calibrate --spread --criterion worst), the others do not inflate
    for rel in (student, full, temporal):
        envelope = json.loads(rel.notes["peak_envelope_calibration"])
        assert envelope["split"] == "train" and len(envelope["networks"]) == 5
    spread = json.loads(student.notes["spread_inflation_calibration"])
    assert spread["criterion"].startswith("worst") and spread["split"] == "train"
    assert float(student.notes["spread_inflation"]) == spread["spread_inflation"] == 1.25
    assert spread["worst_relative_crps"]["1.25"] < 1.0  # no training network made worse
    assert "spread_inflation" not in full.notes and "spread_inflation" not in temporal.notes
    # its starting-noise correlation in time, calibrated on train events (calibrate_time)
    assert temporal.notes["temporal_noise_correlation_calibrated"] == "0.5"
    record = json.loads(temporal.notes["temporal_noise_correlation_calibration"])
    assert record["split"] == "train" and record["noise_correlation"] == 0.5


def test_shipped_product_model_knows_the_corpus_networks():
    from precipdiff.pipeline import Pipeline, PredictOptions, Stage
    from precipdiff.pipeline.shipped import shipped_weights

    paths = shipped_weights()
    product = Release.load(paths["downscale_product_full"])
    full = Release.load(paths["downscale_full"])
    networks = ("mrms", "radolan", "mch", "fmi", "opera")
    assert product.model.products == networks
    assert dataclasses.replace(product.model, products=()) == full.model
    assert product.pooling == "mean" and product.distilled_sigmas is None
    # calibrated on train frames: threshold, peak bound, and a spread factor per product
    spread = json.loads(product.notes["spread_inflation_calibration"])
    assert spread["split"] == "train" and spread["criterion"].startswith("worst")
    by_product = json.loads(product.notes["spread_inflation_by_product"])
    assert by_product == spread["spread_inflation_by_product"] and set(by_product) == set(networks)
    for name, factor in by_product.items():  # the best factor of the network's own curve
        own = spread["per_network"][name]["own_product_crps_fair"]
        assert own[repr(factor)] == min(own.values())
    thresholds = json.loads(product.notes["fine_threshold_by_product"])
    assert set(thresholds) == set(networks) and min(thresholds.values()) >= 0.1
    # what `predict --product` loads: its 4-step student, with the teacher's calibrations
    student = Release.load(paths["downscale_product"])
    assert student.model == product.model and len(student.distilled_sigmas) == 4
    assert json.loads(student.notes["distilled"])["teacher"] == product.path.split("/")[-1]
    for key in ("fine_threshold_by_product", "spread_inflation_by_product", "peak_envelope"):
        assert student.notes[key] == product.notes[key]
    stage = Stage.load(paths["downscale_product"]).set_product("fmi")
    assert Pipeline(None, stage).spread_inflation(PredictOptions()) == by_product["fmi"]
    assert Pipeline(None, stage).fine_threshold(PredictOptions()) == max(thresholds["fmi"], 0.1)
    assert "fine_threshold" in product.notes and "peak_envelope" in product.notes
    # the spatiotemporal model on top: the same spatial net, its noise correlation per product
    temporal = Release.load(paths["downscale_temporal_product"])
    assert temporal.temporal is not None and temporal.model == product.model
    assert all(torch.equal(temporal.state[k], v) for k, v in product.state.items())  # frozen
    assert temporal.notes["fine_threshold_by_product"] == product.notes["fine_threshold_by_product"]
    phi = json.loads(temporal.notes["temporal_noise_correlation_calibrated_by_product"])
    record = json.loads(temporal.notes["temporal_noise_correlation_calibration"])
    assert record["split"] == "train" and phi == record["noise_correlation_by_product"]
    assert set(phi) <= set(networks) and all(0 <= v < 1 for v in phi.values())
    # calibrated with noise that moves with the rain, which predict therefore moves too
    assert temporal.notes["temporal_noise_drift"] == "1" and record["settings"]["drift"]


def test_old_file_without_pooling_means_max_pooling(tmp_path):
    tensors, meta = _good()
    del meta["pooling"], meta["semantics"]
    rel = Release.load(_craft(tmp_path / "w.safetensors", tensors, meta))
    assert rel.pooling == "max" and rel.semantics.aggregation == "block_maximum"


def _nan(tensors):
    key = next(iter(tensors))
    return {**tensors, key: torch.full_like(tensors[key], float("nan"))}


def _inf(tensors):
    key = sorted(tensors)[-1]
    return {**tensors, key: torch.full_like(tensors[key], float("inf"))}


def _model(**change):
    return lambda m: {**m, "model": json.dumps({**json.loads(m["model"]), **change})}


CRAFTED = {
    "garbled model JSON": (None, lambda m: {**m, "model": "{not json"}, "'model': not valid JSON"),
    "model not an object": (None, lambda m: {**m, "model": "[1, 2]"}, "expected a JSON object"),
    "string channels": (None, _model(model_channels="8"), "model_channels: expected int"),
    "bool as int": (None, _model(num_blocks=True), "num_blocks: expected int"),
    "unknown model field": (None, _model(width=3), "unknown network field 'width'"),
    "huge channels": (None, _model(model_channels=2**40), "outside the sane range"),
    "huge depth": (None, _model(num_blocks=10**7), "outside the sane range"),
    "huge cond": (None, _model(cond_channels=10**9), "outside the sane range"),
    "unknown stage": (None, lambda m: {**m, "stage": "upscale"}, "'stage': 'upscale'"),
    "unknown pooling": (None, lambda m: {**m, "pooling": "median"}, "'pooling'"),
    "missing transform": (None, lambda m: {k: v for k, v in m.items() if k != "transform"},
                          "metadata lacks transform"),
    "bad transform": (None, lambda m: {**m, "transform": '{"scale": -1, "sigma": 1}'},
                      "'transform'"),
    "nan transform": (None, lambda m: {**m, "transform": '{"scale": NaN, "sigma": 1}'},
                      "'transform'"),
    "factor text": (None, lambda m: {**m, "factor": "ten"}, "'factor': expected an integer"),
    "factor zero": (None, lambda m: {**m, "factor": "0"}, "outside the sane range"),
    "huge patch": (None, lambda m: {**m, "patch": "10000000"}, "'patch'"),
    "sigma_data nan": (None, lambda m: {**m, "sigma_data": "nan"}, "'sigma_data'"),
    "extra without stats": (None, lambda m: {**m, "extra_names": '["t850"]'}, "'extra_stats'"),
    "extra names not list": (None, lambda m: {**m, "extra_names": '"t850"'}, "'extra_names'"),
    "semantics vs pooling": (None, lambda m: {**m, "semantics": json.dumps(
        {"aggregation": "block_maximum", "quantity": "rate", "units": "mm/h"})}, "contradicts"),
    "accumulation semantics": (None, lambda m: {**m, "semantics": json.dumps(
        {"aggregation": "areal_mean", "quantity": "amount", "units": "mm"})}, "'semantics'"),
    "garbled source map": (None, lambda m: {**m, "source_map": '{"method": 1}'}, "'source_map'"),
    "foreign format": (None, lambda m: {**m, "format": "other/9"}, "'format'"),
    "mean_model without tensors": (None, lambda m: {**m, "mean_model": json.dumps(
        dataclasses.asdict(REG))}, "must come together"),
    "nan tensor": (_nan, None, "NaN or Inf"),
    "inf tensor": (_inf, None, "NaN or Inf"),
    "missing tensor": (lambda t: dict(list(t.items())[1:]), None, "do not fit"),
    "wrong shape": (lambda t: {**t, "conv_in.weight": torch.zeros(1)}, None, "shape"),
    "integer tensor": (lambda t: {k: v.to(torch.int32) for k, v in t.items()}, None, "dtype"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_weights_refused_in_one_line(case, tmp_path):
    change_tensors, change_meta, message = CRAFTED[case]
    tensors, meta = _good()
    tensors = change_tensors(tensors) if change_tensors else tensors
    meta = change_meta(meta) if change_meta else meta
    path = _craft(tmp_path / "w.safetensors", tensors, meta)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        Release.load(path)
    assert time.perf_counter() - start < 10  # refused before allocating absurd sizes
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text, text


def test_not_a_weights_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors"):
        Release.load(bad)
    foreign = _craft(tmp_path / "foreign.safetensors", {"x": torch.ones(1)}, {})
    with pytest.raises(CheckpointError, match="not precipdiff weights"):
        Release.load(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        Release.load(tmp_path / "missing.safetensors")


def test_save_refuses_nan_weights(tmp_path):
    rel = _release(state=_nan(_state(TINY)))
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        rel.save(tmp_path / "w.safetensors")
    assert not list(tmp_path.iterdir())


def test_pipeline_never_imports_training():
    """Layering: inference reads the format from precipdiff.release, never from training."""
    for path in sorted((SRC / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("precipdiff.training") for n in names), path
    code = ("import sys, precipdiff.pipeline, precipdiff.pipeline.run, precipdiff.release; "
            "sys.exit('precipdiff.training' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]


def test_cli_predict_refuses_nan_weights(tmp_path):
    """Through the real CLI: exit 2, one line naming the file, no output written."""
    import numpy as np
    import xarray as xr

    from precipdiff.io import write_netcdf

    weights = _craft(tmp_path / "nan.safetensors", *(
        lambda t, m: (_nan(t), {**m, "stage": "correct", "factor": "1"}))(*_good()))
    src = xr.DataArray(np.ones((1, 6, 8), np.float32), dims=("time", "lat", "lon"),
                       coords={"time": np.array(["2019-06-10T00:00"], "datetime64[ns]"),
                               "lat": 40.05 + 0.1 * np.arange(6),
                               "lon": -100.95 + 0.1 * np.arange(8)},
                       attrs={"units": "mm/h"}, name="precip")
    inp = write_netcdf(src, tmp_path / "src.nc")
    out = tmp_path / "out" / "pred.nc"
    res = subprocess.run(
        [sys.executable, "-m", "precipdiff", "predict", str(inp), "--output", str(out),
         "--stages", "correct", "--weights-correct", str(weights), "--members", "2",
         "--steps", "2", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().count("\n") == 0 and "nan.safetensors" in res.stderr
    assert "NaN or Inf" in res.stderr
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
