"""Peer comparison with NVIDIA PhysicsNeMo's CorrDiff building blocks (benchmark-only dependency).

Two questions, answered in one run on one machine:

1. **Forward speed at matched configurations.** Our :class:`precipdiff.models.UNet` against
   PhysicsNeMo's ``SongUNet`` (the CorrDiff residual backbone) with the same hyper-parameters, at
   two widths:

   - ``tiny``: our shipped Stage II (24 channels, mult (1, 2, 2), 1 block per level, attention at
     level 2, Fourier noise embedding);
   - ``corrdiff``: CorrDiff's residual network as PhysicsNeMo builds it (``model_channels`` 128,
     ``channel_mult`` [1, 2, 2, 2, 2], and SongUNet's defaults ``num_blocks`` 4,
     ``channel_mult_emb`` 4, positional noise embedding, standard encoder/decoder,
     ``resample_filter`` [1, 1]; ``attn_resolutions`` [28] on its 448-pixel patch, i.e. the
     coarsest level, which is where both nets attend here; the peer's bottleneck attention on).

   Parameters, FLOPs per forward (``FlopCounterMode``), and forward time in fp32 and bf16
   autocast, contiguous and ``channels_last`` for *both* sides. The peer runs twice: with its own
   GroupNorm (decomposed mean/var at inference) and with ``torch.nn.GroupNorm`` swapped in (same
   weights; the outputs are checked to agree). Every repeat times all variants in turn, so machine
   noise hits them alike. The table shows the full grid and each side's best layout.
2. **Network evaluations for the same skill.** The shipped Stage II on the MRMS test band (the
   store built by ``configs/prepare_mrms_emulated.yaml``) sampled with our DPM-Solver++(2M) at a few
   step counts and with PhysicsNeMo's own ``stochastic_sampler`` (EDM Algorithm 2 as CorrDiff runs
   it; its default sigma_max is 800, here 80 by default: the range the network was trained on and
   our sampler uses). Same network, inputs and seeds: only the sampler differs. NFE is counted by
   wrapping the denoiser; CRPS differences to the reference run get a block-bootstrap interval.

Install the peer in a **separate** virtual environment (it must not become a runtime dependency,
and a plain install replaces torch with a CUDA build)::

    python -m venv /tmp/pnvenv && /tmp/pnvenv/bin/pip install torch==2.13.0
    /tmp/pnvenv/bin/pip install nvidia-physicsnemo==2.2.2 torch==2.13.0 torchvision==0.28.0
    /tmp/pnvenv/bin/pip install -e .
    OMP_NUM_THREADS=1 /tmp/pnvenv/bin/python benchmarks/bench_peer.py

Writes ``benchmarks/results/peer/peer.json`` and ``peer.md`` (and prints the Markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from precipdiff.models import UNet, UNetConfig, count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet import count_flops  # noqa: E402  (sibling script: one FLOP-counting rule)

log = logging.getLogger("bench_peer")

NETS = ("precipdiff", "physicsnemo", "physicsnemo_torchgn")

# the peer attends at the same levels (attn_resolutions = size // 2**level)
CONFIGS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(model_channels=24, channel_mult=(1, 2, 2), num_blocks=1,
                       attn_levels=(2,), noise_embedding="fourier"),
    "corrdiff": UNetConfig(model_channels=128, channel_mult=(1, 2, 2, 2, 2), num_blocks=4,
                           attn_levels=(4,), noise_embedding="positional"),
}


def import_physicsnemo():
    """Import PhysicsNeMo's SongUNet and legacy stochastic sampler on a CPU-only torch.

    PyPI's torchvision wheel is built against CUDA torch, so its C++ operators are missing here and
    timm (imported by PhysicsNeMo) fails on ``torchvision::nms``. Registering the two operator
    schemas it looks for (never called by these models) lets the import proceed.
    """
    with contextlib.suppress(RuntimeError):  # already defined when torchvision's library loaded
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_physicsnemo.lib = lib  # keep the registration alive
    from physicsnemo.diffusion.samplers.legacy_stochastic_sampler import stochastic_sampler
    from physicsnemo.models.diffusion_unets import SongUNet

    return SongUNet, stochastic_sampler


def machine_info() -> dict:
    """CPU model (lscpu), torch threads, OMP_NUM_THREADS and the 1-minute load average."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                      if ln.startswith("Model name")), model)
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "platform": platform.platform(), "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# 1. forward speed


def peer_net(SongUNet, size: int, cfg: UNetConfig):
    """A SongUNet with ``cfg``'s architecture (PhysicsNeMo's defaults for everything else)."""
    embedding = "fourier" if cfg.noise_embedding == "fourier" else "positional"
    return SongUNet(
        img_resolution=size,
        in_channels=cfg.in_channels + cfg.cond_channels,
        out_channels=cfg.out_channels,
        model_channels=cfg.model_channels,
        channel_mult=list(cfg.channel_mult),
        channel_mult_emb=4,
        num_blocks=cfg.num_blocks,
        attn_resolutions=[size // 2**lvl for lvl in cfg.attn_levels],
        dropout=0.0,
        embedding_type=embedding,
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=[1, 1],
    ).eval()


def set_amp_mode(net: torch.nn.Module, on: bool) -> None:
    """PhysicsNeMo's per-module switch for running under autocast (it refuses autocast without)."""
    for m in net.modules():
        if hasattr(m, "amp_mode"):
            m.amp_mode = on


class TorchGroupNorm(torch.nn.Module):
    """``torch.nn.GroupNorm`` plus the peer's optional fused activation."""

    def __init__(self, peer_gn: torch.nn.Module):
        super().__init__()
        c = peer_gn.weight.numel()
        self.norm = torch.nn.GroupNorm(peer_gn.num_groups, c, eps=peer_gn.eps)
        with torch.no_grad():
            self.norm.weight.copy_(peer_gn.weight)
            self.norm.bias.copy_(peer_gn.bias)
        self.act_fn = peer_gn.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.act_fn(x) if self.act_fn is not None else x


def with_torch_groupnorm(net: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """A copy of ``net`` whose PhysicsNeMo GroupNorm modules are ``torch.nn.GroupNorm``."""
    from physicsnemo.nn.module.group_norm import GroupNorm as PeerGroupNorm

    out = copy.deepcopy(net)
    swaps = [(name, m) for name, m in out.named_modules() if isinstance(m, PeerGroupNorm)]
    for name, m in swaps:
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, child, TorchGroupNorm(m))
    return out.eval(), len(swaps)


def groupnorm_swap_check(peer: torch.nn.Module, size: int) -> dict:
    """Outputs of the peer with its own and with torch's GroupNorm, weights perturbed first.

    SongUNet zero-initialises its output layers, so at initialisation every output is ~0 and
    a comparison would prove nothing; random weights in a copy make the check bite. The two
    norms differ by design in one factor: at inference the peer divides by the unbiased group
    variance (``N - 1``), torch by the biased one (``N``), a relative ``1 / (2 N)`` per norm with
    ``N`` elements per group, so the difference shrinks as the image grows.
    """
    probe = copy.deepcopy(peer)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for prm in probe.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=g))
    swapped, n = with_torch_groupnorm(probe)
    x = torch.randn(1, 2, size, size, generator=g)
    c = torch.full((1,), 0.3)
    with torch.inference_mode():
        a, b = probe(x, c), swapped(x, c)
    return {"groupnorm_modules_swapped": n, "max_abs_diff": float((a - b).abs().max()),
            "output_std": float(a.std())}


def build_nets(SongUNet, size: int, cfg: UNetConfig) -> tuple[dict, dict]:
    """The three networks and a check that the two peer variants agree (fp32)."""
    torch.manual_seed(0)
    ours = UNet(cfg).eval()
    peer = peer_net(SongUNet, size, cfg)
    peer_tgn, _ = with_torch_groupnorm(peer)
    check = groupnorm_swap_check(peer, size)
    log.info("torch GroupNorm swap: %s", check)
    return {"precipdiff": ours, "physicsnemo": peer, "physicsnemo_torchgn": peer_tgn}, check


def time_grid(nets: dict, size: int, batch: int, repeats: int) -> list[dict]:
    """Median forward seconds of every net in fp32/bf16 x contiguous/channels_last."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    cond = torch.randn(batch, 1, size, size, generator=g)
    c_noise = torch.randn(batch, generator=g)
    xc = torch.cat([x, cond], dim=1)
    rows = []
    for bf16 in (False, True):
        for name in NETS[1:]:
            set_amp_mode(nets[name], bf16)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            args = {"precipdiff": (x.to(memory_format=fmt), c_noise, cond.to(memory_format=fmt))}
            args |= {n: (xc.to(memory_format=fmt), c_noise) for n in NETS[1:]}
            for net in nets.values():
                net.to(memory_format=fmt)
            times, errors = _alternate(nets, args, ctx, repeats)
            for name in NETS:
                rows.append({"size": size, "batch": batch, "dtype": "bf16" if bf16 else "fp32",
                             "layout": "channels_last" if cl else "contiguous", "net": name,
                             "seconds": statistics.median(times[name]) if times[name] else None,
                             "all_seconds": times[name], "error": errors.get(name, "")})
            log.info("%d² bf16=%s cl=%s: %s", size, bf16, cl,
                     {r["net"]: r["seconds"] or r["error"] for r in rows[-3:]})
    return rows


def _alternate(nets: dict, args: dict, ctx, repeats: int) -> tuple[dict, dict]:
    """One warm-up each, then ``repeats`` rounds that time every net in turn."""
    def call(name):
        with torch.inference_mode(), ctx:
            return nets[name](*args[name])

    times: dict[str, list[float]] = {n: [] for n in NETS}
    errors: dict[str, str] = {}
    for name in NETS:  # warm-up; a failing variant is a result
        try:
            call(name)
        except Exception as err:  # noqa: BLE001
            errors[name] = f"{type(err).__name__}: {err}"[:120]
    for _ in range(repeats):
        for name in NETS:
            if name not in errors:
                t0 = time.perf_counter()
                call(name)
                times[name].append(time.perf_counter() - t0)
    return times, errors


def describe(nets: dict, size: int) -> dict:
    """Parameters and GFLOP per sample (batch 1) of the three nets."""
    x = torch.randn(1, 1, size, size)
    c = torch.zeros(1)
    xc = torch.cat([x, x], 1)
    with torch.inference_mode():
        gflop = {"precipdiff": count_flops(lambda: nets["precipdiff"](x, c, x)) / 1e9,
                 "physicsnemo": count_flops(lambda: nets["physicsnemo"](xc, c)) / 1e9}
    return {"params": {"precipdiff": count_parameters(nets["precipdiff"]),
                       "physicsnemo": sum(p.numel() for p in nets["physicsnemo"].parameters())},
            "gflop_per_sample": gflop}


def bench_forward(SongUNet, config: str, sizes: list[int], batch: int, repeats: int) -> dict:
    """Pair description, GroupNorm-swap check and timing grid of one configuration."""
    cfg = CONFIGS[config]
    out = {"config": dataclasses.asdict(cfg), "sizes": {}}
    for size in sizes:
        nets, check = build_nets(SongUNet, size, cfg)
        out["sizes"][str(size)] = describe(nets, size) | {
            "groupnorm_check": check, "load_before": os.getloadavg()[0],
            "rows": time_grid(nets, size, batch, repeats), "load_after": os.getloadavg()[0]}
    return out


# ---------------------------------------------------------------------------------------------
# 2. network evaluations for the same skill


class _PeerNet:
    """Adapter: PhysicsNeMo's samplers call ``net(x, img_lr, sigma, class_labels, **kw)``."""

    sigma_min, sigma_max = 0.0, float("inf")

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, img_lr, sigma, class_labels=None, **_):
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        return self.denoiser(x, s.expand(x.shape[0]), img_lr)


def peer_sampler(stochastic_sampler, num_steps: int, sigma_max: float):
    """Our sampler signature around PhysicsNeMo's ``stochastic_sampler`` (its own schedule)."""

    def sample(denoiser, x, sigmas, cond=None, generator=None, callback=None):
        latents = x / sigmas[0]  # the pipeline passes noise * sigma_0; the peer scales by its own
        def randn_like(t):
            return torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device)

        return stochastic_sampler(_PeerNet(denoiser), latents, cond, randn_like=randn_like,
                                  num_steps=num_steps, sigma_min=0.002, sigma_max=sigma_max)

    return sample


def block_crps(pred, truth, block: int = 32) -> np.ndarray:
    """Fair CRPS averaged over ``block`` x ``block`` pixel blocks of every time step (flat)."""
    from precipdiff.evaluation.metrics import crps_ensemble_pointwise

    f = pred.transpose("member", "time", "lat", "lon").values
    crps = crps_ensemble_pointwise(f, truth.transpose("time", "lat", "lon").values,
                                   estimator="fair")
    t, ny, nx = crps.shape
    crps = crps[:, : ny // block * block, : nx // block * block]
    return np.nanmean(crps.reshape(t, ny // block, block, nx // block, block), axis=(2, 4)).ravel()


def paired_interval(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """95 % block-bootstrap interval of mean(a - b) over paired blocks."""
    d = a - b
    d = d[np.isfinite(d)]
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, (n, d.size))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def bench_sampler(stochastic_sampler, args) -> list[dict]:
    import precipdiff.diffusion.samplers as samplers_mod
    import precipdiff.pipeline.stage as stage_mod
    from bench_skill import load_split  # sibling script: the same test band as the skill run
    from precipdiff.evaluation.report import evaluate_fields
    from precipdiff.pipeline import Pipeline, PredictOptions, SamplerSettings, Stage
    from precipdiff.pipeline.shipped import shipped_weights

    down = Stage.load(args.weights or shipped_weights()["downscale_max"])
    _, _, ref_lr, ref_hr = load_split(args.store, "test", args.times, tuple(args.rows))
    counter = {"n": 0}
    real_tiled = stage_mod.TiledDenoiser

    class CountingTiled(real_tiled):  # counts whole-field network evaluations
        def __call__(self, x, sigma, cond=None):
            counter["n"] += 1
            return super().__call__(x, sigma, cond)

    stage_mod.TiledDenoiser = CountingTiled  # restored (with the sampler registry) in finally
    added: list[str] = []
    try:
        runs = [("precipdiff DPM++(2M) (σmax 80)", "dpmpp_2m", s) for s in args.ours_steps]
        for steps in args.peer_steps:
            name = f"physicsnemo_{steps}"
            smax = args.peer_sigma_max
            samplers_mod.SAMPLERS[name] = peer_sampler(stochastic_sampler, steps, smax)
            added.append(name)
            runs.append((f"PhysicsNeMo stochastic_sampler (σmax {smax:g})", name, steps))
        rows, blocks, unit = [], [], None
        for label, sampler, steps in runs:
            s2 = SamplerSettings(sampler=sampler, steps=steps)
            opts = PredictOptions(members=args.members, downscale=s2, seed=0, window=256)
            counter["n"] = 0
            t0 = time.perf_counter()
            pred = Pipeline(None, down).predict(ref_lr, opts)["precip"]
            secs = time.perf_counter() - t0
            m = evaluate_fields(pred, ref_hr, scales_px=(1, 4, 16))
            blocks.append(block_crps(pred, ref_hr))
            # The pipeline calls the denoiser once per step for every (time, window) block; NFE per
            # sample is calls / blocks, blocks measured from the first run (DPM++(2M): NFE = steps).
            if unit is None:
                unit = counter["n"] / steps
            rows.append({"sampler": label, "steps": steps, "nfe": counter["n"] / unit,
                         "denoiser_calls": counter["n"],
                         "crps_fair": m["crps_fair"], "spread_skill_ratio": m["spread_skill_ratio"],
                         "rmse": m["rmse"], "seconds": secs})
            log.info("%s steps %d: %s", label, steps, rows[-1])
        ref = len(args.ours_steps) - 1  # our run with the most steps is the reference
        for row, b in zip(rows, blocks, strict=True):
            row["crps_diff_vs_ref_95"] = paired_interval(b, blocks[ref])
            row["blocks"] = int(np.isfinite(b).sum())
    finally:
        stage_mod.TiledDenoiser = real_tiled
        for name in added:
            samplers_mod.SAMPLERS.pop(name, None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--corrdiff-sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--batch", type=int, default=8, help="batch of the tiny configuration")
    ap.add_argument("--corrdiff-batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", type=Path, default=Path("stores/mrms_emul.zarr"))
    ap.add_argument("--times", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--rows", type=int, nargs=2, default=[30, 70])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--ours-steps", type=int, nargs="*", default=[4, 8, 12])
    ap.add_argument("--peer-steps", type=int, nargs="*", default=[4, 8, 18])
    ap.add_argument("--peer-sigma-max", type=float, default=80.0)
    ap.add_argument("--weights", type=Path, default=None, help="Stage II (default: shipped)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-sampler", action="store_true")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/peer/peer.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SongUNet, stochastic_sampler = import_physicsnemo()
    import physicsnemo

    # results of parts not run this time are kept from the previous file
    result: dict = json.loads(args.output.read_text()) if args.output.is_file() else {}
    result |= {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine_info(), "physicsnemo": physicsnemo.__version__}
    if not args.skip_speed:
        forward = result.setdefault("forward", {})
        for config in args.configs:
            tiny = config == "tiny"
            forward[config] = bench_forward(
                SongUNet, config, args.sizes if tiny else args.corrdiff_sizes,
                args.batch if tiny else args.corrdiff_batch, args.repeats)
            write(result, args.output)  # each configuration lands as soon as it is measured
    if not args.skip_sampler:
        result["sampler"] = bench_sampler(stochastic_sampler, args)
        result["sampler_setup"] = {"times": args.times, "rows_lr": args.rows,
                                   "members": args.members, "store": str(args.store)}
    write(result, args.output)
    print(render(result))


def write(result: dict, output: Path) -> None:
    """JSON and Markdown beside each other, atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((output, json.dumps(result, indent=1, default=float)),
                       (output.with_suffix(".md"), render(result) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _fmt(seconds: float | None, error: str = "") -> str:
    return f"{seconds:.3f}" if seconds else (error[:40] or "–")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.2f}" if a and b else "–"


def render_forward(config: str, d: dict) -> list[str]:
    """Pair description, full grid and best-layout table of one configuration."""
    c = d["config"]
    lines = [f"### {config}: {c['model_channels']} ch, mult {tuple(c['channel_mult'])}, "
             f"{c['num_blocks']} block(s), attention at level(s) {tuple(c['attn_levels'])}, "
             f"{c['noise_embedding']} noise embedding", "",
             "| size | params ours / peer | GFLOP per sample ours / peer | torch GN swap: "
             "max abs diff (output std) |", "|---|---|---|---|"]
    for size, e in d["sizes"].items():
        p, g, k = e["params"], e["gflop_per_sample"], e["groupnorm_check"]
        lines.append(f"| {size}² | {p['precipdiff']:,} / {p['physicsnemo']:,} | "
                     f"{g['precipdiff']:.2f} / {g['physicsnemo']:.2f} | "
                     f"{k['max_abs_diff']:.1e} ({k['output_std']:.2f}), "
                     f"{k['groupnorm_modules_swapped']} modules |")
    lines += ["", "torch GN swap: every PhysicsNeMo GroupNorm replaced by `torch.nn.GroupNorm` "
              "with the same weights (the peer has no CPU option for it: `use_apex_gn` needs "
              "Apex); checked on a copy with random weights. The residual difference is the "
              "peer's unbiased group variance (N − 1) against torch's biased one (N).", "",
              "Full grid (median seconds per forward; ratio > 1: the peer is slower; 'paired' is "
              "the median of the ratios within each repeat, less sensitive to load swings):", "",
              "| size | batch | dtype | layout | ours | peer | peer + torch GN | peer / ours | "
              "peer+GN / ours | paired: peer / ours | paired: peer+GN / ours |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    best = []
    for size, e in d["sizes"].items():
        rows = e["rows"]
        for i in range(0, len(rows), 3):
            o, p, t = rows[i: i + 3]
            lines.append(f"| {size}² | {o['batch']} | {o['dtype']} | {o['layout']} | "
                         f"{_fmt(o['seconds'], o['error'])} | {_fmt(p['seconds'], p['error'])} | "
                         f"{_fmt(t['seconds'], t['error'])} | {_ratio(o['seconds'], p['seconds'])}"
                         f" | {_ratio(o['seconds'], t['seconds'])} | {_paired(o, p)} | "
                         f"{_paired(o, t)} |")
        for dtype in ("fp32", "bf16"):
            best.append((size, dtype, [_best(rows, dtype, n) for n in NETS]))
    lines += ["", "Each side at its best layout:", "",
              "| size | dtype | ours | peer | peer + torch GN | peer / ours | peer+GN / ours |",
              "|---|---|---|---|---|---:|---:|"]
    for size, dtype, (o, p, t) in best:
        cells = [f"{_fmt(r['seconds'])} ({r['layout']})" if r else "–" for r in (o, p, t)]
        lines.append(f"| {size}² | {dtype} | {' | '.join(cells)} | "
                     f"{_ratio(o and o['seconds'], p and p['seconds'])} | "
                     f"{_ratio(o and o['seconds'], t and t['seconds'])} |")
    lines += ["", "Load average (1 min) before / after: "
              + ", ".join(f"{s}² {e['load_before']:.2f} / {e['load_after']:.2f}"
                          for s, e in d["sizes"].items()), ""]
    return lines


def _paired(ours: dict, peer: dict) -> str:
    """Median over repeats of the ratio within one repeat (both timed back to back)."""
    pairs = list(zip(ours.get("all_seconds", []), peer.get("all_seconds", []), strict=False))
    return f"{statistics.median(b / a for a, b in pairs):.2f}" if pairs else "–"


def _best(rows: list[dict], dtype: str, net: str) -> dict | None:
    ok = [r for r in rows if r["dtype"] == dtype and r["net"] == net and r["seconds"]]
    return min(ok, key=lambda r: r["seconds"]) if ok else None


def render(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Peer comparison: precipdiff vs PhysicsNeMo {result['physicsnemo']} (CorrDiff)", "",
             f"{result['date']}; CPU {m['cpu']} ({m['cores']} cores visible), torch {m['torch']}, "
             f"{m['torch_threads']} torch thread(s), OMP_NUM_THREADS={m['omp_num_threads']}; "
             f"{m['platform']}.", ""]
    for config, d in result.get("forward", {}).items():
        lines += render_forward(config, d)
    if "sampler" in result:
        su = result.get("sampler_setup", {})
        lines += ["### Sampler: network evaluations for the same skill", "",
                  f"Shipped Stage II, MRMS test band, times {su.get('times')}, LR rows "
                  f"{su.get('rows_lr')}, {su.get('members')} members, same seeds. CRPS Δ: fair "
                  "CRPS minus the reference (our run with the most steps), 95 % block bootstrap "
                  "over 32x32-pixel blocks.", "",
                  "| sampler | steps | NFE per sample | CRPS fair | CRPS Δ 95 % | vs reference | "
                  "spread–skill | RMSE | s |", "|---|---:|---:|---:|---|---|---:|---:|---:|"]
        for r in result["sampler"]:
            lo, hi = r.get("crps_diff_vs_ref_95", [float("nan")] * 2)
            verdict = ("reference" if lo == hi == 0 else "worse" if lo > 0
                       else "better" if hi < 0 else "not separable")
            lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']:g} | "
                         f"{r['crps_fair']:.4f} | [{lo:+.4f}, {hi:+.4f}] | {verdict} | "
                         f"{r['spread_skill_ratio']:.2f} | {r['rmse']:.3f} | "
                         f"{r['seconds']:.1f} |")
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
