"""How accurate can DPM-Solver++(2M) get at a fixed NFE by choosing its noise levels?

An in-sample bound for the few-step accuracy goal (2 % in std at <= 10 NFE): the sigma schedule
of the package's ``dpmpp_2m`` is searched (Nelder-Mead over the log-sigma increments, sigma_max
80 fixed, the last sigma free) to minimise the worst |std error| (plus half the worst W1/std)
over the exact denoisers of ``bench_sampler.py`` and two precipitation-like mixtures (a rare,
wide heavy mode beside a narrow light one). The found schedule is then scored on held-out
widths and mixtures next to the log-linear default. If even the searched schedule misses the
bound on its own cases, no choice of steps fixes this solver at that NFE.

    python benchmarks/bench_schedule_search.py [--nfe 8 10] [--samples 20000]

Writes ``benchmarks/results/sampler_accuracy/schedule_search.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

from bench_sampler import CASES, SIGMA_MAX, SIGMA_MIN, mixture
from precipdiff.diffusion.samplers import get_sampler, sampler_sigmas
from precipdiff.diffusion.schedules import karras_sigmas

OUT = Path(__file__).parent / "results" / "sampler_accuracy"
SEARCH_CASES = {**CASES, "rare wide": ([0.9, 0.1], [0.0, 2.5], [0.08, 1.5]),
                "rarer wide": ([0.95, 0.05], [0.0, 4.0], [0.05, 2.5])}
HELD_OUT = {**{f"N(0, {s}²)": ([1.0], [0.0], [s]) for s in (0.02, 0.05, 0.15, 0.35, 0.7, 1.4,
                                                              3.0, 6.0)},
            "mixture A": ([0.8, 0.2], [0.0, 2.0], [0.2, 0.8]),
            "mixture B": ([0.3, 0.4, 0.3], [-0.5, 0.3, 2.0], [0.05, 0.2, 1.0]),
            "mixture C (rare, wide)": ([0.9, 0.1], [0.0, 3.0], [0.1, 2.0])}


class Cases:
    """Exact denoisers, a common initial noise and the converged solutions (Heun, 1024 steps)."""

    def __init__(self, cases: dict, samples: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x_T = torch.randn(samples, 1, generator=g, dtype=torch.float64) * SIGMA_MAX
        ref_sig = karras_sigmas(1024, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
        self.denoisers = {c: mixture(*spec) for c, spec in cases.items()}
        self.refs = {c: get_sampler("heun")(d, self.x_T.clone(), ref_sig).squeeze(1)
                     for c, d in self.denoisers.items()}

    def errors(self, sigmas: torch.Tensor) -> dict[str, tuple[float, float]]:
        """Per case: (relative std error, W1 / reference std) of dpmpp_2m on ``sigmas``."""
        out = {}
        for c, d in self.denoisers.items():
            y = get_sampler("dpmpp_2m")(d, self.x_T.clone(), sigmas).squeeze(1)
            ref = self.refs[c]
            w1 = (y.sort().values - ref.sort().values).abs().mean().item()
            out[c] = (y.std().item() / ref.std().item() - 1.0, w1 / ref.std().item())
        return out


def schedule(theta: np.ndarray) -> torch.Tensor:
    """Decreasing sigmas from SIGMA_MAX with log-steps ``exp(theta)``, then a trailing 0."""
    log_sigma = math.log(SIGMA_MAX) - np.concatenate([[0.0], np.cumsum(np.exp(theta))])
    return torch.tensor(np.append(np.exp(log_sigma), 0.0), dtype=torch.float64)


def objective(errors: dict[str, tuple[float, float]]) -> float:
    std = np.array([abs(e) for e, _ in errors.values()])
    w1 = np.array([w for _, w in errors.values()])
    return float(std.max() + 0.5 * w1.max() + 0.1 * std.mean())


def search(cases: Cases, nfe: int) -> torch.Tensor:
    """The schedule of ``nfe`` levels minimising :func:`objective`, from the log-linear one."""
    start = np.full(nfe - 1, math.log(math.log(SIGMA_MAX / SIGMA_MIN) / (nfe - 1)))

    def loss(theta: np.ndarray) -> float:
        sig = schedule(theta)
        return 10.0 if sig[-2] < 1e-4 else objective(cases.errors(sig))

    res = minimize(loss, start, method="Nelder-Mead",
                   options={"maxiter": 3000, "xatol": 1e-3, "fatol": 1e-5})
    return schedule(res.x)


def worst(errors: dict[str, tuple[float, float]]) -> str:
    case, (e, _) = max(errors.items(), key=lambda kv: abs(kv[1][0]))
    w1 = max(w for _, w in errors.values())
    return f"{100 * e:+.1f} % ({case}) / {w1:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="*", default=[8, 10])
    ap.add_argument("--samples", type=int, default=20_000, help="samples while searching")
    ap.add_argument("--check-samples", type=int, default=100_000)
    args = ap.parse_args()
    searching = Cases(SEARCH_CASES, args.samples, seed=1)
    fitted = Cases(SEARCH_CASES, args.check_samples, seed=2)
    held = Cases(HELD_OUT, args.check_samples, seed=3)
    rows = []
    for nfe in args.nfe:
        loglinear = sampler_sigmas("dpmpp_2m", nfe, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
        found = search(searching, nfe)
        for name, sig in (("log-linear", loglinear), ("searched", found)):
            rows.append({"nfe": nfe, "schedule": name, "sigmas": sig[:-1].tolist(),
                         "fitted": fitted.errors(sig), "held_out": held.errors(sig)})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "schedule_search.json").write_text(json.dumps(rows, indent=1))
    lines = ["| NFE | schedule | sigmas | worst std error / W1÷std, search cases | "
             "worst std error / W1÷std, held-out cases |", "|---:|---|---|---|---|"]
    for r in rows:
        sig = ", ".join(f"{s:.3g}" for s in r["sigmas"])
        lines.append(f"| {r['nfe']} | {r['schedule']} | {sig} | {worst(r['fitted'])} | "
                     f"{worst(r['held_out'])} |")
    md = ("DPM-Solver++(2M) on the log-linear schedule and on a schedule searched on the search "
          f"cases ({len(SEARCH_CASES)}: bench_sampler's and two rare-wide mixtures), scored "
          f"with {args.check_samples} fresh samples on those cases and on {len(HELD_OUT)} "
          "held-out ones.\n\n" + "\n".join(lines) + "\n")
    (OUT / "schedule_search.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
