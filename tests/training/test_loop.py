"""End-to-end training of tiny models on a tiny store: outputs, metadata, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from _training_store import tiny_overrides

from precipdiff.errors import CheckpointError, ConfigError, StoreError
from precipdiff.training.checkpoint import load_checkpoint, load_weights, split_mean_net
from precipdiff.training.config import load_config
from precipdiff.training.loop import train


@pytest.fixture(scope="module")
def regression_run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "run"
    torch.set_num_threads(1)
    return train(load_config(None, tiny_overrides(tiny_store, out, "train.stage=regression",
                                                  "train.steps=3")), progress=False)


def test_correct_run_writes_everything(tiny_store, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "run", "train.bf16=true"))
    run = train(cfg, progress=False)
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r["kind"] == "train"]
    val_lines = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in train_lines] == [2, 4, 6]
    assert all(0.0 <= r["data_wait_frac"] <= 1.0 and r["samples_per_s"] > 0 for r in train_lines)
    assert val_lines and all(r["val_crps_fair"] is not None for r in val_lines)
    tensors, meta = load_weights(run / "weights.safetensors")
    assert meta["stage"] == "correct" and meta["factor"] == "4" and meta["pooling"] == "max"
    assert json.loads(meta["config"])["model"]["cond_channels"] == 1
    spacing = json.loads(meta["coarse_spacing"])  # checked by predict against the input grid
    assert spacing["units"] == "degrees" and spacing["y"] == pytest.approx(0.04)
    assert json.loads(meta["transform"])["kind"] == "log1p"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["samples_seen"] == 24
    assert torch.equal(state["ema"]["conv_in.weight"], tensors["conv_in.weight"])


def test_downscale_around_regression_mean(tiny_store, tmp_path, regression_run):
    weights = regression_run / "weights.safetensors"
    assert load_weights(weights)[1]["stage"] == "regression"
    cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "run", "train.stage=downscale",
                                           f"train.mean_from={weights}", "train.steps=2"))
    tensors, meta = load_weights(train(cfg, progress=False) / "weights.safetensors")
    net, mean = split_mean_net(tensors)
    assert mean and net and "mean_model" in meta
    reg_tensors = load_weights(weights)[0]
    assert all(torch.equal(reg_tensors[k], v) for k, v in mean.items())


def test_mean_from_must_be_regression(tiny_store, tmp_path, regression_run):
    cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "a", "train.steps=1"))
    correct = train(cfg, progress=False) / "weights.safetensors"
    bad = load_config(None, tiny_overrides(tiny_store, tmp_path / "b", "train.stage=downscale",
                                           f"train.mean_from={correct}"))
    with pytest.raises(CheckpointError, match="regression"):
        train(bad, progress=False)


def test_existing_run_needs_resume_and_matching_config(tiny_store, tmp_path):
    base = tiny_overrides(tiny_store, tmp_path / "run", "train.steps=2")
    train(load_config(None, base), progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(load_config(None, base), progress=False)
    other = load_config(None, [*base, "model.model_channels=16"])
    with pytest.raises(CheckpointError, match="model.model_channels"):
        train(other, resume=True, progress=False)
    longer = load_config(None, [*base[:-1], "train.steps=3"])
    state_before = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    train(longer, resume=True, progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state_before["step"], state["step"]) == (2, 3)


def test_bad_store_and_channels(tiny_store, tmp_path):
    with pytest.raises(StoreError):
        train(load_config(None, tiny_overrides(tmp_path / "nope.zarr", tmp_path / "r")),
              progress=False)
    with pytest.raises(ConfigError, match="model.cond_channels"):
        train(load_config(None, tiny_overrides(tiny_store, tmp_path / "r",
                                               "model.cond_channels=3")), progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(load_config(None, tiny_overrides(tiny_store, tmp_path / "r2")), resume=True,
              progress=False)


def test_tensorboard_without_package_is_a_config_error(tiny_store, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "r",
                                               "train.tensorboard=true"))
        with pytest.raises(ConfigError, match="train.tensorboard"):
            train(cfg, progress=False)
    else:
        cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "r",
                                               "train.tensorboard=true", "train.steps=2"))
        assert any((train(cfg, progress=False) / "tensorboard").iterdir())


def test_init_from_release_weights_fine_tunes(tiny_store, tmp_path):
    first = train(load_config(None, tiny_overrides(tiny_store, tmp_path / "a", "train.steps=2")),
                  progress=False) / "weights.safetensors"
    start, _ = load_weights(first)

    def distance(w):
        return sum(float((w[k] - start[k]).norm() ** 2) for k in start) ** 0.5

    # one small step from the release stays next to it; a fresh net (another seed) is far away
    cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "b", "train.steps=1",
                                           "optim.lr=1e-5", "train.seed=7",
                                           f"train.init_from={first}"))
    tuned, _ = load_weights(train(cfg, progress=False) / "weights.safetensors")
    fresh = load_config(None, tiny_overrides(tiny_store, tmp_path / "c", "train.steps=1",
                                             "optim.lr=1e-5", "train.seed=7"))
    other, _ = load_weights(train(fresh, progress=False) / "weights.safetensors")
    assert tuned.keys() == start.keys()
    assert distance(tuned) < 0.01 * distance(other)


def test_init_from_must_match_stage_and_network(tiny_store, tmp_path, regression_run):
    reg = regression_run / "weights.safetensors"
    bad_stage = load_config(None, tiny_overrides(tiny_store, tmp_path / "a",
                                                 f"train.init_from={reg}"))
    with pytest.raises(CheckpointError, match="stage 'regression'"):
        train(bad_stage, progress=False)
    first = train(load_config(None, tiny_overrides(tiny_store, tmp_path / "b", "train.steps=1")),
                  progress=False) / "weights.safetensors"
    wider = load_config(None, tiny_overrides(tiny_store, tmp_path / "c", "model.model_channels=16",
                                             f"train.init_from={first}"))
    with pytest.raises(CheckpointError, match="model_channels"):
        train(wider, progress=False)
    missing = load_config(None, tiny_overrides(tiny_store, tmp_path / "d",
                                               f"train.init_from={tmp_path / 'none.safetensors'}"))
    with pytest.raises(CheckpointError, match="none.safetensors"):
        train(missing, progress=False)


def test_source_map_eqm_travels_with_the_weights(tiny_store, tmp_path):
    """``data.source_map: eqm``: the fitted train-band EQM is in the release and applied first."""
    import numpy as np

    from precipdiff.data.store import open_store
    from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
    from precipdiff.training.build import fit_source_map

    cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "qm", "train.steps=2",
                                           "data.source_map=eqm",
                                           "data.source_map_quantiles=20"))
    stage = Stage.load(train(cfg, progress=False) / "weights.safetensors")
    qm = fit_source_map(cfg, open_store(tiny_store))
    assert stage.source_map is not None and stage.source_map.n_quantiles == 20
    np.testing.assert_array_equal(stage.source_map.q_src, qm.q_src)
    np.testing.assert_array_equal(stage.source_map.q_ref, qm.q_ref)
    src = np.asarray(open_store(tiny_store)["src_lr"][0], np.float32)
    opts = PredictOptions(members=2, correct=SamplerSettings(steps=2), seed=3)
    mapped = Pipeline(stage, None).correct_step(src, 0, opts)
    stage.source_map = None  # the same network fed the mapped field by hand
    by_hand = Pipeline(stage, None).correct_step(qm.apply_values(src), 0, opts)
    np.testing.assert_allclose(mapped, by_hand, rtol=1e-5, atol=1e-5)
    assert not np.allclose(mapped, Pipeline(stage, None).correct_step(src, 0, opts))


def test_source_map_is_for_stage_one_only(tiny_store, tmp_path):
    with pytest.raises(ConfigError, match="data.source_map"):
        load_config(None, tiny_overrides(tiny_store, tmp_path / "x", "train.stage=downscale",
                                         "data.source_map=eqm"))
    with pytest.raises(ConfigError, match="data.source_map"):
        load_config(None, tiny_overrides(tiny_store, tmp_path / "x", "data.source_map=qdm"))


def test_export_writes_a_release_of_the_newest_checkpoint(regression_run, tmp_path):
    from precipdiff.release import Release
    from precipdiff.training.export import export_weights

    out = export_weights(regression_run, tmp_path / "exported.safetensors")
    release = Release.load(out)
    state = load_checkpoint(regression_run / "checkpoints" / "last.pt")
    assert release.stage == "regression" and release.pooling == "max" and release.factor == 4
    assert release.semantics.aggregation == "block_maximum"
    assert release.notes["exported_from"] == f"last.pt at {state['samples_seen']} samples"
    assert all(torch.equal(release.state[k], v) for k, v in state["ema"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["exported.safetensors"]
