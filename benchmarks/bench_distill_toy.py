"""Is distillation accurate, not lucky? Few-step students of exact denoisers.

``bench_sampler.py`` and ``bench_schedule_search.py`` found no generic solver within 2 % in std
at <= 10 network evaluations on the exact denoisers of Gaussians and mixtures. The shipped
Stage II instead samples with a student distilled to 4 Euler steps
(:mod:`precipdiff.training.distill`), which is fitted to one model. This benchmark applies the
same procedure to each exact denoiser: a small per-pixel student (an MLP of the scaled value
and the noise level, under the same EDM preconditioning with sigma_data 0.5 as the shipped
networks) is trained with :func:`~precipdiff.training.distill.distill_loss_sum` on the
package's 4-step grid (80 -> 5.04 -> 0.317 -> 0.02 -> 0) against the exact denoiser integrated
by DPM-Solver++(2M) with ``--substeps`` steps per interval, then sampled with 4 Euler steps from
the same noise as the converged reference (Heun, 1024 steps, as in ``bench_sampler.py``). It
reports the relative std error and W1 of every case of both earlier benchmarks (the searched
and held-out ones) next to DPM-Solver++(2M) with 4 and 10 NFE on its log-linear schedule.

A student is fitted to its denoiser, as the shipped one is to its network: this measures the
method's accuracy, not a generic solver's.

    python benchmarks/bench_distill_toy.py [--iters 3000] [--samples 100000]

Writes ``benchmarks/results/sampler_accuracy/distill_toy.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from bench_sampler import SIGMA_MAX, SIGMA_MIN, mixture
from bench_schedule_search import HELD_OUT, SEARCH_CASES
from benchlib import stamp, write_report
from precipdiff.diffusion.precond import EDMPrecond
from precipdiff.diffusion.samplers import get_sampler, sampler_sigmas
from precipdiff.diffusion.schedules import karras_sigmas
from precipdiff.training.distill import distill_loss_sum, student_grid

OUT = Path(__file__).parent / "results" / "sampler_accuracy"
GRID = (80.0, 5.04, 0.317, 0.02)  # configs/distill_stage2.yaml
SIGMA_DATA = 0.5


class Exact(nn.Module):
    """An exact mixture denoiser as a module on (B, 1, 1, 1) values, sigma scalar or (B,)."""

    def __init__(self, spec) -> None:
        super().__init__()
        self.d = mixture(*spec)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(b)
        return self.d(x.reshape(b, 1).double(), s).reshape(x.shape).to(x.dtype)


class PixelMLP(nn.Module):
    """``F(c_in x, c_noise)`` per value: an MLP of the two (the student's raw network)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width),
                               nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                               nn.Linear(width, 1))

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        z = torch.stack([x.reshape(b), c_noise.reshape(-1).expand(b)], dim=1)
        return self.f(z).reshape(x.shape)


def euler_on_grid(denoiser: nn.Module, x: Tensor, grid: list[float]) -> Tensor:
    """First-order steps ``x <- r x + (1 - r) D(x; sigma_k)`` over ``grid`` (ending at 0)."""
    for s, s_next in zip(grid[:-1], grid[1:], strict=True):
        r = s_next / s
        x = r * x + (1 - r) * denoiser(x, torch.full((x.shape[0],), s), None)
    return x


def train_student(spec, *, iters: int, batch: int, substeps: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    teacher, grid = Exact(spec), student_grid(GRID)
    student = EDMPrecond(PixelMLP(), sigma_data=SIGMA_DATA)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    w, m, s = (torch.tensor(v, dtype=torch.float32) for v in spec)
    for _ in range(iters):
        comp = torch.multinomial(w, batch, replacement=True, generator=g)
        y = (m[comp] + s[comp] * torch.randn(batch, generator=g)).view(batch, 1, 1, 1)
        noise = torch.randn(y.shape, generator=g)
        intervals = torch.randint(len(GRID), (batch,), generator=g).tolist()
        loss = distill_loss_sum(student, teacher, y, torch.zeros_like(y), torch.ones_like(y),
                                noise, intervals, grid, substeps=substeps,
                                sigma_data=SIGMA_DATA) / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return student.eval()


def errors(y: Tensor, ref: Tensor) -> tuple[float, float, float]:
    """(relative std error, W1, W1 / reference std)."""
    w1 = (y.sort().values - ref.sort().values).abs().mean().item()
    return y.std().item() / ref.std().item() - 1.0, w1, w1 / ref.std().item()


def score_case(name: str, spec, args: argparse.Namespace) -> dict:
    """One case: the converged reference, DPM-Solver++(2M) at 4 and 10 NFE, the student."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    x_t = torch.randn(args.samples, 1, generator=g, dtype=torch.float64) * SIGMA_MAX
    ref_sig = karras_sigmas(1024, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    t0 = time.perf_counter()
    exact = mixture(*spec)
    ref = get_sampler("heun")(exact, x_t.clone(), ref_sig).squeeze(1)
    row: dict = {"case": name}
    for nfe in (4, 10):
        sig = sampler_sigmas("dpmpp_2m", nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                             sigma_data=SIGMA_DATA).double()
        y = get_sampler("dpmpp_2m")(exact, x_t.clone(), sig).squeeze(1)
        row[f"dpmpp_2m-{nfe}"] = errors(y, ref)
    student = train_student(spec, iters=args.iters, batch=args.batch, substeps=args.substeps,
                            seed=args.seed)
    with torch.no_grad():
        y = euler_on_grid(student, x_t.float().view(-1, 1, 1, 1), student_grid(GRID))
    row["student-4"] = errors(y.reshape(-1).double(), ref)
    row["seconds"] = time.perf_counter() - t0
    print(name, {k: v for k, v in row.items() if k != "case"}, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--substeps", type=int, default=32)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", nargs="*", default=None, help="case names (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="processes over the cases")
    ap.add_argument("--name", default="distill_toy", help="output file name (no suffix)")
    args = ap.parse_args()
    cases = [(n, spec) for n, spec in {**SEARCH_CASES, **HELD_OUT}.items()
             if not args.cases or n in args.cases]
    jobs = [(n, spec, args) for n, spec in cases]
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.starmap(score_case, jobs)
    else:
        rows = [score_case(*job) for job in jobs]
    write_report(OUT / f"{args.name}.json", [json.dumps(rows, indent=1)])
    cols = ("dpmpp_2m-4", "dpmpp_2m-10", "student-4")
    lines = [f"# Distilled 4-step students of exact denoisers ({stamp()})", "",
             f"{args.samples} samples from one noise draw; students: {args.iters} Adam steps of "
             f"{args.batch} values, teacher DPM-Solver++(2M) x {args.substeps} per interval, "
             f"grid {', '.join(map(str, GRID))}, 0. Cells: std error / W1 (W1 / ref std).", "",
             "| case | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c][0]:+.1%} / {r[c][1]:.4f} ({r[c][2]:.3f})" for c in cols]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    worst = {c: max(abs(r[c][0]) for r in rows) for c in cols}
    w1 = {c: max(r[c][1] for r in rows) for c in cols}
    lines += ["", "| worst | " + " | ".join(f"{worst[c]:.1%} / {w1[c]:.4f}" for c in cols)
              + " |"]
    write_report(OUT / f"{args.name}.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
