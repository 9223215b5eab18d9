"""Training on a corpus store (several networks, each on its own grid, mean pooling)."""

from __future__ import annotations

import json

import pytest
import torch
from _training_store import make_corpus, tiny_overrides

from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.release import Release
from precipdiff.training.checkpoint import config_differences, load_checkpoint, load_weights
from precipdiff.training.config import load_config
from precipdiff.training.export import export_weights
from precipdiff.training.loop import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    torch.set_num_threads(1)
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _overrides(corpus, out, stage: str, *extra: str) -> list[str]:
    patch = "data.patch=8" if stage == "correct" else "data.patch=16"
    return tiny_overrides(corpus, out, f"train.stage={stage}", patch, "train.steps=4", *extra)


@pytest.mark.parametrize("stage", ["correct", "downscale"])
def test_a_corpus_trains_both_stages_to_mean_pooled_weights(corpus, tmp_path, stage):
    run = train(load_config(None, _overrides(corpus, tmp_path / "run", stage)), progress=False)
    release = Release.load(run / "weights.safetensors")
    assert release.stage == stage and release.factor == 2 and release.pooling == "mean"
    assert release.semantics.aggregation == "areal_mean"
    assert release.patch == (8 if stage == "correct" else 16)
    trained_on = json.loads(release.notes["training_corpus"])
    assert trained_on["networks"] == ["alpha", "beta"]
    assert trained_on["frames"]["alpha"] == {"train": 3, "val": 2, "test": 2}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert val and all(r["val_crps_fair"] is not None for r in val)  # alpha's "val" event


def test_corpus_samples_come_from_every_network_and_train_events_only(corpus, tmp_path):
    from precipdiff.training.build import open_data

    cfg = load_config(None, _overrides(corpus, tmp_path / "r", "downscale",
                                       "data.weighting=equal", "data.samples_per_epoch=40"))
    store, ds, val_args, _ = open_data(cfg)
    assert store.pooling == "mean" and set(store.splits) == {"train", "val", "test"}
    events = {store.attrs["event_ids"][int(ds[i]["event"])] for i in range(40)}
    assert events == {"alpha/early", "beta/day1"}
    assert val_args["split"] == "val" and val_args["weighting"] == "equal"


def test_resume_on_a_corpus_is_exact(corpus, tmp_path):
    whole = train(load_config(None, _overrides(corpus, tmp_path / "whole", "downscale")),
                  progress=False)
    part = _overrides(corpus, tmp_path / "part", "downscale")
    train(load_config(None, [*part, "train.steps=2"]), progress=False)
    resumed = train(load_config(None, part), resume=True, progress=False)
    a, _ = load_weights(whole / "weights.safetensors")
    b, _ = load_weights(resumed / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="data.weighting"):
        train(load_config(None, [*part, "data.weighting=equal"]), resume=True, progress=False)


def test_export_of_a_corpus_run(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, _overrides(corpus, run, "correct", "train.steps=2")), progress=False)
    release = Release.load(export_weights(run, tmp_path / "w.safetensors"))
    assert release.pooling == "mean" and "exported_from" in release.notes
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert torch.equal(release.state["conv_in.weight"], state["ema"]["conv_in.weight"])


def test_fine_tuning_the_shipped_kind_of_weights_on_a_corpus(corpus, tiny_store, tmp_path):
    """A max-pooled release (another store) starts a mean-pooled corpus run of the same net."""
    first = train(load_config(None, tiny_overrides(tiny_store, tmp_path / "a", "train.steps=1",
                                                   "train.stage=downscale", "data.patch=16")),
                  progress=False) / "weights.safetensors"
    assert Release.load(first).pooling == "max"
    tuned = train(load_config(None, _overrides(corpus, tmp_path / "b", "downscale",
                                               "train.steps=1", f"train.init_from={first}")),
                  progress=False)
    assert Release.load(tuned / "weights.safetensors").pooling == "mean"


def test_source_map_on_a_corpus_is_refused(corpus, tmp_path):
    cfg = load_config(None, _overrides(corpus, tmp_path / "r", "correct", "data.source_map=eqm"))
    with pytest.raises(ConfigError, match="data.source_map.*corpus"):
        train(cfg, progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_an_older_checkpoint_without_weighting_resumes_with_the_default():
    saved = {"data": {"store": "s"}}
    assert config_differences(saved, {"data": {"store": "s", "weighting": "frames"}}) == []
    assert config_differences(saved, {"data": {"store": "s", "weighting": "equal"}}) == \
        ["data.weighting"]


def test_leave_one_network_out_trains_on_the_named_networks_only(corpus, tmp_path):
    from precipdiff.training.build import open_data

    cfg = load_config(None, _overrides(corpus, tmp_path / "r", "downscale",
                                       "data.networks=[alpha]", "data.samples_per_epoch=20"))
    _, ds, val_args, _ = open_data(cfg)
    events = {ds.event_ids[int(ds[i]["event"])] for i in range(20)}
    assert events == {"alpha/early"} and ds.chosen == ("alpha",)
    assert val_args["networks"] == ("alpha",)
    beta = load_config(None, _overrides(corpus, tmp_path / "b", "downscale",
                                        "data.networks=[beta]"))
    assert open_data(beta)[2] is None  # beta has no "val" event: no validation
    run = train(cfg, progress=False)
    trained_on = json.loads(Release.load(run / "weights.safetensors").notes["training_corpus"])
    assert trained_on["networks"] == ["alpha"] and list(trained_on["frames"]) == ["alpha"]
    with pytest.raises(CheckpointError, match="data.networks"):
        train(load_config(None, _overrides(corpus, tmp_path / "r", "downscale",
                                           "data.samples_per_epoch=20")),
              resume=True, progress=False)


def test_unknown_or_misplaced_networks_are_refused(corpus, tiny_store, tmp_path):
    from precipdiff.training.build import open_data

    cfg = load_config(None, _overrides(corpus, tmp_path / "r", "downscale",
                                       "data.networks=[gamma]"))
    with pytest.raises(ConfigError, match="gamma"):
        open_data(cfg)
    paired = load_config(None, tiny_overrides(tiny_store, tmp_path / "p", "data.networks=[a]"))
    with pytest.raises(ConfigError, match="data.networks.*paired store"):
        open_data(paired)
    assert config_differences({"data": {"store": "s"}},
                              {"data": {"store": "s", "networks": None}}) == []


def test_product_labels_follow_the_network_and_drop_to_any_by_serial() -> None:
    from precipdiff.training.objective import product_labels

    networks, lookup = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 1])
    serials = [10, 11, 12, 13]
    kept = product_labels(networks, lookup, serials, seed=3, dropout=0.0)
    assert kept.tolist() == [2, 1, 1, 2]
    assert product_labels(networks, lookup, serials, seed=3, dropout=1.0).tolist() == [0] * 4
    half = [product_labels(networks, lookup, list(range(i, i + 4)), seed=3, dropout=0.5)
            for i in range(0, 400, 4)]
    dropped = float(torch.cat(half).eq(0).float().mean())
    assert 0.4 < dropped < 0.6  # about the share asked for
    again = product_labels(networks, lookup, serials, seed=3, dropout=0.5)
    assert again.tolist() == product_labels(networks, lookup, serials, seed=3,
                                            dropout=0.5).tolist()


def test_a_product_conditioned_run_starts_from_unlabelled_weights(corpus, tmp_path) -> None:
    from precipdiff.pipeline import Stage

    plain = train(load_config(None, _overrides(corpus, tmp_path / "plain", "downscale")),
                  progress=False) / "weights.safetensors"
    run = train(load_config(None, _overrides(
        corpus, tmp_path / "labelled", "downscale", "train.steps=1", "optim.lr=1e-12",
        "model.products=[beta, alpha]", f"train.init_from={plain}")), progress=False)
    release = Release.load(run / "weights.safetensors")
    assert release.model.products == ("beta", "alpha")
    stage, before = Stage.load(run / "weights.safetensors"), Stage.load(plain)
    x, cond = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    with torch.no_grad():  # an embedding that barely moved: the start is the unlabelled net
        ref = before.net(x, torch.full((2,), 0.2), cond)
        for name in ("alpha", "beta", None):
            out = stage.set_product(name).net(x, torch.full((2,), 0.2), cond)
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
    assert stage.product == "any" and stage.set_product("alpha").product == "alpha"
    with pytest.raises(ConfigError, match="weights.safetensors.*'gamma'.*beta, alpha"):
        stage.set_product("gamma")
    with pytest.raises(ConfigError, match="not trained with product"):
        before.set_product("alpha")


def test_products_need_a_corpus_and_a_diffusion_stage(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.products"):
        load_config(None, [f"data.store={tmp_path}", "train.stage=regression",
                           "model.products=[a]", "train.steps=1"])
    with pytest.raises(ConfigError, match="train.product_dropout"):
        load_config(None, [f"data.store={tmp_path}", "train.product_dropout=1.5",
                           "train.steps=1"])


def test_a_product_teacher_distils_to_a_product_student(corpus, tmp_path) -> None:
    from precipdiff.pipeline import Stage

    products = "model.products=[alpha, beta]"
    teacher = train(load_config(None, _overrides(corpus, tmp_path / "t", "downscale", products)),
                    progress=False) / "weights.safetensors"
    student = [f"train.init_from={teacher}", f"distill.teacher={teacher}",
               "distill.sigmas=[80.0, 1.0, 0.05]", "distill.substeps=2", "train.steps=2"]
    run = train(load_config(None, _overrides(corpus, tmp_path / "s", "downscale", products,
                                             *student)), progress=False)
    release = Release.load(run / "weights.safetensors")
    assert release.model.products == ("alpha", "beta")
    assert release.distilled_sigmas == (80.0, 1.0, 0.05)
    assert Stage.load(run / "weights.safetensors").set_product("beta").product == "beta"
    with pytest.raises(CheckpointError, match="products.*alpha.*beta"):
        train(load_config(None, _overrides(corpus, tmp_path / "bad", "downscale", *student)),
              progress=False)
