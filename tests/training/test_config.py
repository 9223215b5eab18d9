"""Run configuration: YAML + overrides, validation, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from precipdiff.errors import ConfigError
from precipdiff.training.config import RunConfig, load_config, save_config

BASE = ["data.store=stores/x.zarr", "train.steps=10"]


def test_overrides_are_yaml_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  store: s.zarr\n  patch: 32\ntrain:\n  duration_samples: 1000\n")
    cfg = load_config(path, ["optim.lr=1e-4", "model.channel_mult=[1, 2]",
                             "model.attn_levels=[]", "train.mean_from=null", "data.augment=false"])
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.channel_mult == (1, 2)
    assert cfg.model.attn_levels == ()
    assert cfg.data.patch == 32 and cfg.data.augment is False
    assert cfg.total_samples == 1000


def test_regression_flag_follows_stage():
    assert load_config(None, [*BASE, "train.stage=regression"]).model.regression is True
    assert load_config(None, [*BASE, "model.regression=true"]).model.regression is False


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.chanels=3", "model.chanels"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=abc", "optim.lr"),
        ("data.patch=30", "data.patch"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("train.stage=upscale", "train.stage"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.accumulate=3", "optim.accumulate"),
        ("train.duration_samples=5", "train.steps"),
        ("train.mean_from=w.safetensors", "train.mean_from"),
        ("data.augment=maybe", "data.augment"),
        ("nosection.x=1", "nosection"),
        ("lr=1", "lr"),
        ("diffusion.val_sampler=foo", "diffusion.val_sampler"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.grad_clip=-.inf", "optim.grad_clip"),
        ("diffusion.sigma_data=1e999", "diffusion.sigma_data"),
        ("diffusion.val_sampler=[heun]", "diffusion.val_sampler"),
        ("model.model_channels=1000000", "model.model_channels"),
        ("model.channel_mult=[1, 100000]", "model.channel_mult"),
        ("model.num_blocks=100000", "model.num_blocks"),
        ("model.cond_channels=100000", "model.cond_channels"),
        ("data.patch=1048576", "data.patch"),
        ("data.batch_size=100000000", "data.batch_size"),
        ("diffusion.val_members=100000000", "diffusion.val_members"),
        ("diffusion.val_steps=100000000", "diffusion.val_steps"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*BASE, override])
    message = str(err.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize("sampler", ["heun", "euler", "dpmpp_2m", "ancestral"])
def test_known_val_samplers_accepted(sampler):
    assert load_config(None, [*BASE, f"diffusion.val_sampler={sampler}"]).diffusion.val_sampler \
        == sampler


def test_missing_store_and_file(tmp_path):
    with pytest.raises(ConfigError, match="data.store"):
        load_config(None, ["train.steps=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad, [])


def test_json_and_yaml_round_trip(tmp_path):
    cfg = load_config(None, [*BASE, "model.channel_mult=[1,2]", "model.attn_levels=[1]",
                              "optim.schedule=cosine"])
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path, []) == cfg


def test_unet_config_fields():
    cfg = load_config(None, [*BASE, "model.model_channels=8"])
    unet = cfg.model.unet_config(cond_channels=3)
    assert unet.cond_channels == 3 and unet.model_channels == 8


_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    "path", sorted(p for p in _CONFIGS.glob("*.yaml") if not p.name.startswith("prepare_")),
    ids=lambda p: p.stem,
)
def test_example_configs_are_valid(path):
    from precipdiff.training.temporal import is_temporal_config, load_temporal_config

    if is_temporal_config(path):  # a run config plus a temporal section
        cfg = load_temporal_config(path, []).run
    else:
        cfg = load_config(path, [])
    assert cfg.total_samples > 0
