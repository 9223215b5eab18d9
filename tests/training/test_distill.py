"""Few-step distillation: the student's targets against exact Gaussian ODE solutions, a tiny run
end to end, and the distilled grid through the release and a stage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _training_store import tiny_overrides

from precipdiff.diffusion.samplers import sample_euler
from precipdiff.errors import CheckpointError, ConfigError
from precipdiff.pipeline.stage import SamplerSettings, Stage
from precipdiff.release import Release
from precipdiff.training.config import load_config
from precipdiff.training.distill import (
    draw_intervals,
    student_grid,
    student_target,
    teacher_interval,
    teacher_step,
)
from precipdiff.training.loop import train

GRID = student_grid((80.0, 5.04, 0.317, 0.02))


def gaussian_denoiser(std: float):
    """The exact denoiser of N(0, std^2) data: ``D(x; s) = x std^2 / (std^2 + s^2)``."""
    def denoiser(x, sigma, cond=None):
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        return x * std**2 / (std**2 + s**2)
    return denoiser


def ode_solution(x, sigma: float, sigma_next: float, std: float):
    """Probability-flow ODE of N(0, std^2) data, exactly: ``x`` scales with the marginal std."""
    return x * math.sqrt(std**2 + sigma_next**2) / math.sqrt(std**2 + sigma**2)


@pytest.mark.parametrize("std", [0.05, 0.5, 3.0])
def test_teacher_step_solves_the_ode_between_grid_levels(std):
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for k in range(len(GRID) - 2):  # intervals that end above 0
        s, s_next = GRID[k], GRID[k + 1]
        got = teacher_step(gaussian_denoiser(std), x * s, None, s, s_next, substeps=6)
        exact = ode_solution(x * s, s, s_next, std)
        assert torch.allclose(got, exact, rtol=0.02, atol=1e-6), (std, k)


def test_teacher_interval_ends_where_asked():
    levels = teacher_interval(5.04, 0.317, 4)
    assert levels[0] == pytest.approx(5.04) and levels[-1] == pytest.approx(0.317)
    assert len(levels) == 5
    last = teacher_interval(0.02, 0.0, 4)
    assert last[-1] == 0 and last[-2] == pytest.approx(0.002) and len(last) == 5


@pytest.mark.parametrize("std", [0.1, 0.5, 2.0])
def test_targets_make_a_four_step_euler_sampler_exact(std):
    # a student that returns the target exactly samples the teacher's ODE with 4 Euler steps,
    # while the plain denoiser with the same 4 Euler steps is far off
    teacher = gaussian_denoiser(std)

    def student(x, sigma, cond=None):
        s = float(sigma[0])
        k = min(range(len(GRID) - 1), key=lambda i: abs(GRID[i] - s))
        x_next = teacher_step(teacher, x, None, GRID[k], GRID[k + 1], substeps=8)
        return student_target(x, x_next, GRID[k], GRID[k + 1])

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(20000, 1, 1, 1, generator=g) * GRID[0]
    sigmas = torch.tensor(GRID, dtype=torch.float64)
    distilled = sample_euler(student, x0, sigmas).std().item()
    plain = sample_euler(teacher, x0, sigmas).std().item()
    exact = float(x0.std()) * std / math.sqrt(std**2 + GRID[0] ** 2)
    assert distilled == pytest.approx(exact, rel=0.01)
    assert abs(plain / exact - 1) > 0.05


def test_a_product_pair_sees_each_samples_label():
    from precipdiff.diffusion.precond import EDMPrecond
    from precipdiff.models.unet import UNet, UNetConfig
    from precipdiff.training.distill import distill_loss_sum

    torch.manual_seed(0)
    net = UNet(UNetConfig(model_channels=8, channel_mult=(1, 2), attn_levels=(1,),
                          head_channels=8, products=("a", "b")))
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.1)
        net.product_embed.weight.normal_(0, 0.5)
    d = EDMPrecond(net).eval()
    y, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    noise, mask = torch.randn(2, 1, 8, 8), torch.ones(2, 1, 8, 8, dtype=torch.bool)
    args = (d, d, y, cond, mask, noise, [0, 1], GRID)
    with torch.no_grad():
        plain = distill_loss_sum(*args, substeps=2, sigma_data=0.5)
        labelled = distill_loss_sum(*args, substeps=2, sigma_data=0.5,
                                    product=torch.tensor([1, 2]))
        zero = distill_loss_sum(*args, substeps=2, sigma_data=0.5, product=torch.tensor([0, 0]))
    torch.testing.assert_close(zero, plain)  # label 0 is what a call without labels uses
    assert not torch.isclose(labelled, plain)


def test_intervals_are_drawn_per_sample_and_reproducible():
    a = draw_intervals(list(range(400)), 4, seed=3)
    assert a == draw_intervals(list(range(400)), 4, seed=3)
    assert set(a) == {0, 1, 2, 3} and min(a.count(k) for k in range(4)) > 60
    assert a != draw_intervals(list(range(400)), 4, seed=4)


def test_config_refuses_bad_grids(tiny_store, tmp_path):
    with pytest.raises(ConfigError, match="distill.sigmas"):
        load_config(None, tiny_overrides(tiny_store, tmp_path, "distill.sigmas=[1.0, 2.0]"))
    with pytest.raises(ConfigError, match="distill.substeps"):
        load_config(None, tiny_overrides(tiny_store, tmp_path, "distill.substeps=0"))


@pytest.fixture(scope="module")
def teacher_weights(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    torch.set_num_threads(1)
    cfg = load_config(None, tiny_overrides(tiny_store, out, "train.stage=downscale",
                                           "train.steps=3"))
    return train(cfg, progress=False) / "weights.safetensors"


def test_distillation_run_writes_a_student_predict_samples_on_its_grid(
        tiny_store, teacher_weights, tmp_path):
    cfg = load_config(None, tiny_overrides(
        tiny_store, tmp_path / "student", "train.stage=downscale", "train.steps=3",
        f"train.init_from={teacher_weights}", f"distill.teacher={teacher_weights}",
        "distill.sigmas=[80.0, 1.0, 0.05]", "distill.substeps=2"))
    run = train(cfg, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    release = Release.load(run / "weights.safetensors")
    assert release.distilled_sigmas == (80.0, 1.0, 0.05)
    assert json.loads(release.notes["distilled"])["sampler"] == "euler"

    stage = Stage.load(run / "weights.safetensors")
    used = stage.sampling(SamplerSettings())
    assert (used.sampler, used.steps, used.schedule_name) == ("euler", 3, "distilled")
    assert used.noise_levels(0.5).tolist() == [80.0, 1.0, 0.05, 0.0]
    assert stage.nfe(SamplerSettings()) == 3
    plain = stage.sampling(SamplerSettings(distilled=False))
    assert plain.sampler == SamplerSettings().sampler and plain.sigmas is None
    base = torch.zeros(2, 1, 16, 16)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    out = stage.apply(base, noise)
    assert out.shape == base.shape and torch.isfinite(out).all()
    # the teacher has no grid: it samples as asked
    assert Stage.load(teacher_weights).sampling(SamplerSettings()) == SamplerSettings()


def test_teacher_must_be_a_matching_stage(tiny_store, teacher_weights, tmp_path):
    cfg = load_config(None, tiny_overrides(tiny_store, tmp_path / "s", "train.steps=1",
                                           f"distill.teacher={teacher_weights}"))
    with pytest.raises(CheckpointError, match="distill.teacher holds a 'downscale' stage"):
        train(cfg, progress=False)


def test_a_garbled_distilled_note_is_refused(teacher_weights, tmp_path):
    from precipdiff.release import load_weights, save_weights

    tensors, meta = load_weights(teacher_weights)
    meta = {**meta, "distilled": json.dumps({"sigmas": [1.0, 2.0]})}
    with pytest.raises(CheckpointError, match="distilled"):
        save_weights(tmp_path / "bad.safetensors", tensors, metadata=meta)
