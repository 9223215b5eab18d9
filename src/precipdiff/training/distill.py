"""Distilling a diffusion stage into a few-step student (Salimans & Ho 2022, in EDM form).

The student is the teacher's network, trained so that **one first-order step** on a short grid
of noise levels ``sigma_0 > sigma_1 > ... > sigma_{n-1} > 0`` lands where the teacher's
probability-flow ODE, integrated accurately over the same interval, lands. For the step
``sigma_k -> sigma_{k+1}`` from ``x`` (the data noised to ``sigma_k``), with ``r = sigma_{k+1} /
sigma_k``, the first-order (DDIM / DPM-Solver++(1)) update is

    x_{k+1} = r x + (1 - r) D(x; sigma_k),

so the teacher's solution ``x*_{k+1}`` asks the student's denoiser for

    D*(x; sigma_k) = (x*_{k+1} - r x) / (1 - r)

(Salimans & Ho 2022, Eq. 8, with the teacher's two DDIM steps replaced by ``substeps`` steps of
DPM-Solver++(2M), Lu et al. 2022, log-linear in sigma), trained with the EDM loss weight
``lambda(sigma_k)`` (Karras et al. 2022, Eq. 8). The last step goes to ``sigma = 0``: its
target is the teacher's final sample. Each training sample draws its interval ``k`` uniformly.

A distilled release carries its grid in the ``distilled`` metadata note
(:func:`distilled_note`); ``predict`` then samples it with Euler steps on exactly that grid
(:func:`precipdiff.pipeline.stage.SamplerSettings`), ``n`` network evaluations per member.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from precipdiff.diffusion.samplers import sample_dpmpp_2m
from precipdiff.diffusion.schedules import loglinear_sigmas
from precipdiff.errors import CheckpointError
from precipdiff.release import Release
from precipdiff.training.config import RunConfig
from precipdiff.training.objective import sample_generator

#: Stream of :func:`~precipdiff.training.objective.sample_generator` for the interval draws.
INTERVAL_STREAM = 3
#: Lowest noise level the teacher integrates to before its final step to 0 (EDM's sigma_min).
TEACHER_SIGMA_MIN = 0.002


def student_grid(sigmas: Sequence[float]) -> list[float]:
    """The student's noise levels with the trailing 0: ``[sigma_0, ..., sigma_{n-1}, 0]``
    (``distill.sigmas``, checked positive and decreasing by the run config)."""
    return [*(float(s) for s in sigmas), 0.0]


def teacher_interval(sigma: float, sigma_next: float, substeps: int) -> Tensor:
    """The teacher's sigmas from ``sigma`` to ``sigma_next``: ``substeps`` log-linear steps (to
    :data:`TEACHER_SIGMA_MIN` and a final jump when ``sigma_next`` is 0)."""
    if sigma_next > 0:
        body = torch.linspace(math.log(sigma), math.log(sigma_next), substeps + 1,
                              dtype=torch.float64).exp()
        return body
    low = min(TEACHER_SIGMA_MIN, sigma / 2)
    return loglinear_sigmas(substeps, sigma_min=low, sigma_max=sigma, dtype=torch.float64)


@torch.no_grad()
def teacher_step(teacher: nn.Module, x: Tensor, cond: Tensor | None, sigma: float,
                 sigma_next: float, substeps: int, product: Tensor | None = None) -> Tensor:
    """``x*`` at ``sigma_next``: the teacher's ODE solution from ``x`` at ``sigma`` (the solver
    state in float32; the network under whatever autocast the caller runs, as in training);
    ``product``: per-sample labels of a product-conditioned teacher."""
    sigmas = teacher_interval(sigma, sigma_next, substeps).to(x.device)
    kwargs = {} if product is None else {"product": product}

    def denoiser(z: Tensor, s: Tensor, c: Tensor | None) -> Tensor:
        return teacher(z, s, c, **kwargs).float()

    return sample_dpmpp_2m(denoiser, x.float(), sigmas, cond=cond)


def student_target(x: Tensor, x_next: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """``D* = (x_next - r x) / (1 - r)``, ``r = sigma_next / sigma``: the denoised value whose
    first-order step from ``x`` lands on ``x_next``."""
    r = sigma_next / sigma
    return (x_next - r * x) / (1.0 - r)


def draw_intervals(serials: list[int], n: int, *, seed: int) -> list[int]:
    """One interval index in ``[0, n)`` per sample, from its serial (independent of the noise)."""
    return [int(torch.randint(n, (1,), generator=sample_generator(seed, s, INTERVAL_STREAM)))
            for s in serials]


def distill_loss_sum(student: nn.Module, teacher: nn.Module, y: Tensor, cond: Tensor,
                     mask: Tensor, noise: Tensor, intervals: list[int], grid: Sequence[float], *,
                     substeps: int, sigma_data: float, product: Tensor | None = None) -> Tensor:
    """``sum_valid lambda(sigma_k) (D_student(x; sigma_k) - D*)^2`` over the batch, where
    ``x = y + sigma_k noise`` and ``D*`` is :func:`student_target` of the teacher's step; a
    product-conditioned pair sees each sample's label (``product``) in both nets."""
    sig = torch.tensor([grid[k] for k in intervals], dtype=y.dtype, device=y.device)
    s = sig[:, None, None, None]
    x = y + noise * s
    target = torch.empty_like(y)
    for k in sorted(set(intervals)):
        rows = [i for i, j in enumerate(intervals) if j == k]
        x_next = teacher_step(teacher, x[rows], cond[rows], grid[k], grid[k + 1], substeps,
                              None if product is None else product[rows])
        target[rows] = student_target(x[rows].float(), x_next, grid[k], grid[k + 1]).to(y.dtype)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    denoised = student(x, sig, cond, **({} if product is None else {"product": product}))
    return (weight * (denoised.float() - target) ** 2 * mask.to(y.dtype).expand_as(y)).sum()


def distilled_note(sigmas: Sequence[float], teacher: str, substeps: int) -> str:
    """The ``distilled`` metadata note of a student release (JSON)."""
    return json.dumps({"sampler": "euler", "sigmas": [float(s) for s in sigmas],
                       "teacher": str(teacher), "teacher_substeps": int(substeps)})


def load_teacher(cfg: RunConfig, device: torch.device) -> nn.Module:
    """The frozen teacher denoiser ``EDMPrecond(net)`` of ``distill.teacher``: a release of the
    run's stage and transform kind (CheckpointError otherwise)."""
    from precipdiff.diffusion.precond import EDMPrecond

    path = cfg.distill.teacher
    release = Release.load(path)
    if release.stage != cfg.train.stage or release.temporal is not None:
        raise CheckpointError(f"{path}: distill.teacher holds a {release.stage!r} stage"
                              f"{' (temporal)' if release.temporal else ''}, this run trains "
                              f"a per-frame {cfg.train.stage!r} stage")
    if release.mean_model is not None:
        raise CheckpointError(f"{path}: distill.teacher has a regression mean; distilling "
                              "CorrDiff-style stages is not supported")
    if release.model.products != cfg.model.products:
        raise CheckpointError(f"{path}: distill.teacher knows products "
                              f"{list(release.model.products)}, the student "
                              f"{list(cfg.model.products)}; give model.products as the teacher's")
    net = release.build_net().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return EDMPrecond(net, release.sigma_data).eval()


def distilled_notes(cfg: RunConfig) -> dict[str, str]:
    """The student release's notes: the teacher's calibrations (fine threshold, noise
    correlation, ...) and the ``distilled`` grid."""
    teacher = Release.load(cfg.distill.teacher)
    notes = {k: v for k, v in teacher.notes.items() if k not in ("exported_from",)}
    notes["distilled"] = distilled_note(cfg.distill.sigmas, Path(teacher.path).name,
                                        cfg.distill.substeps)
    return notes
