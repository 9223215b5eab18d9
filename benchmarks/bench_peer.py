"""Peer comparison with NVIDIA PhysicsNeMo's CorrDiff building blocks (benchmark-only dependency).

Two questions, answered in one run on one machine:

1. **Forward speed at a matched configuration.** Our default-family :class:`precipdiff.models.UNet`
   against PhysicsNeMo's ``SongUNet`` (the CorrDiff residual backbone) with the same width,
   multipliers, blocks per level, attention level and Fourier noise embedding: parameters, FLOPs
   per forward (``FlopCounterMode``), and forward time at 128x128 and 256x256 (batch 8), fp32 and
   bf16 autocast, contiguous and ``channels_last``. Repeats alternate between the two networks so
   that machine noise hits both alike.
2. **Network evaluations for the same skill.** The shipped Stage II on the MRMS test band (the
   store built by ``configs/prepare_mrms_emulated.yaml``) sampled with our DPM-Solver++(2M) at a few
   step counts and with PhysicsNeMo's own ``stochastic_sampler`` (EDM Algorithm 2 as CorrDiff runs
   it; its defaults are 18 steps, sigma_max 800). Same network, same inputs, same seeds: only the
   sampler differs. NFE is counted by wrapping the denoiser.

Install the peer in a **separate** virtual environment (it must not become a runtime dependency,
and a plain install replaces torch with a CUDA build)::

    python -m venv /tmp/pnvenv && /tmp/pnvenv/bin/pip install torch==2.13.0
    /tmp/pnvenv/bin/pip install nvidia-physicsnemo==2.2.2 torch==2.13.0 torchvision==0.28.0
    /tmp/pnvenv/bin/pip install -e .
    OMP_NUM_THREADS=1 /tmp/pnvenv/bin/python benchmarks/bench_peer.py

Prints Markdown and writes ``benchmarks/results/peer.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from precipdiff.models import UNet, UNetConfig, count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_unet import count_flops  # noqa: E402  (sibling script: one FLOP-counting rule)

log = logging.getLogger("bench_peer")


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


# ---------------------------------------------------------------------------------------------
# 1. forward speed


def matched_pair(SongUNet, size: int, cfg: UNetConfig, amp_mode: bool = False):
    """Our UNet and a SongUNet with the same architecture hyper-parameters.

    ``amp_mode`` is PhysicsNeMo's switch for running under autocast (it refuses autocast without).
    """
    ours = UNet(cfg).eval()
    theirs = SongUNet(
        img_resolution=size,
        in_channels=cfg.in_channels + cfg.cond_channels,
        out_channels=cfg.out_channels,
        model_channels=cfg.model_channels,
        channel_mult=list(cfg.channel_mult),
        channel_mult_emb=4,
        num_blocks=cfg.num_blocks,
        attn_resolutions=[size // 2**lvl for lvl in cfg.attn_levels],
        dropout=0.0,
        embedding_type="fourier",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=[1, 1],
        amp_mode=amp_mode,
    ).eval()
    return ours, theirs


def bench_forward(SongUNet, size: int, batch: int, repeats: int) -> list[dict]:
    cfg = UNetConfig()
    ours, theirs_fp32 = matched_pair(SongUNet, size, cfg)
    _, theirs_amp = matched_pair(SongUNet, size, cfg, amp_mode=True)
    theirs_amp.load_state_dict(theirs_fp32.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    cond = torch.randn(batch, 1, size, size, generator=g)
    c_noise = torch.randn(batch, generator=g)
    xc = torch.cat([x, cond], dim=1)
    rows = []
    for bf16 in (False, True):
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            theirs = theirs_amp if bf16 else theirs_fp32
            nets = {"precipdiff": ours.to(memory_format=fmt),
                    "physicsnemo": theirs.to(memory_format=fmt)}
            inputs = {"precipdiff": (x.to(memory_format=fmt), c_noise, cond.to(memory_format=fmt)),
                      "physicsnemo": (xc.to(memory_format=fmt), c_noise)}
            ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                   else contextlib.nullcontext())

            def call(name, nets=nets, inputs=inputs, ctx=ctx):
                with torch.inference_mode(), ctx:
                    return nets[name](*inputs[name])

            times: dict[str, list[float]] = {"precipdiff": [], "physicsnemo": []}
            errors: dict[str, str] = {}
            for name in times:  # warm-up, and a failing variant is a result
                try:
                    call(name)
                except Exception as err:  # noqa: BLE001
                    errors[name] = f"{type(err).__name__}: {err}"[:120]
            for _ in range(repeats):
                for name in times:
                    if name in errors:
                        continue
                    t0 = time.perf_counter()
                    call(name)
                    times[name].append(time.perf_counter() - t0)
            for name in times:
                rows.append({
                    "size": size, "batch": batch, "dtype": "bf16" if bf16 else "fp32",
                    "channels_last": cl, "net": name,
                    "seconds": statistics.median(times[name]) if times[name] else None,
                    "error": errors.get(name, ""),
                })
            log.info("%d² bf16=%s cl=%s: %s", size, bf16, cl,
                     {r["net"]: r["seconds"] or r["error"] for r in rows[-2:]})
    return rows


def describe_pair(SongUNet, sizes: list[int], batch: int) -> dict:
    out = {}
    cfg = UNetConfig()
    for size in sizes:
        ours, theirs = matched_pair(SongUNet, size, cfg)
        x = torch.randn(batch, 1, size, size)
        c = torch.zeros(batch)
        xc = torch.cat([x, x], 1)
        out[size] = {
            "params": {"precipdiff": count_parameters(ours),
                       "physicsnemo": sum(p.numel() for p in theirs.parameters())},
            "gflop": {
                "precipdiff": count_flops(lambda o=ours, x=x, c=c: o(x, c, x)) / 1e9,
                "physicsnemo": count_flops(lambda t=theirs, xc=xc, c=c: t(xc, c)) / 1e9,
            },
        }
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
        runs = [("precipdiff DPM++(2M)", "dpmpp_2m", s) for s in args.ours_steps]
        for steps in args.peer_steps:
            name = f"physicsnemo_{steps}"
            smax = args.peer_sigma_max
            samplers_mod.SAMPLERS[name] = peer_sampler(stochastic_sampler, steps, smax)
            added.append(name)
            runs.append((f"PhysicsNeMo stochastic_sampler (σmax {smax:g})", name, steps))
        rows, unit = [], None
        for label, sampler, steps in runs:
            s2 = SamplerSettings(sampler=sampler, steps=steps)
            opts = PredictOptions(members=args.members, downscale=s2, seed=0, window=256)
            counter["n"] = 0
            t0 = time.perf_counter()
            pred = Pipeline(None, down).predict(ref_lr, opts)["precip"]
            secs = time.perf_counter() - t0
            m = evaluate_fields(pred, ref_hr, scales_px=(1, 4, 16))
            # The pipeline calls the denoiser once per step for every (time, window) block; NFE per
            # sample is calls / blocks, blocks measured from the first run (DPM++(2M): NFE = steps).
            if unit is None:
                unit = counter["n"] / steps
            rows.append({"sampler": label, "steps": steps, "nfe": counter["n"] / unit,
                         "denoiser_calls": counter["n"],
                         "crps_fair": m["crps_fair"], "spread_skill_ratio": m["spread_skill_ratio"],
                         "rmse": m["rmse"], "seconds": secs})
            log.info("%s steps %d: %s", label, steps, rows[-1])
    finally:
        stage_mod.TiledDenoiser = real_tiled
        for name in added:
            samplers_mod.SAMPLERS.pop(name, None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", type=Path, default=Path("stores/mrms_emul.zarr"))
    ap.add_argument("--times", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--rows", type=int, nargs=2, default=[30, 70])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--ours-steps", type=int, nargs="*", default=[4, 8, 12])
    ap.add_argument("--peer-steps", type=int, nargs="*", default=[4, 8, 18])
    ap.add_argument("--peer-sigma-max", type=float, default=800.0)
    ap.add_argument("--weights", type=Path, default=None, help="Stage II (default: shipped)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-sampler", action="store_true")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/peer.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SongUNet, stochastic_sampler = import_physicsnemo()
    import physicsnemo

    # results of parts not run this time are kept from the previous file
    result: dict = json.loads(args.output.read_text()) if args.output.is_file() else {}
    result |= {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()} | torch {torch.__version__} | "
                   f"threads {torch.get_num_threads()}",
        "physicsnemo": physicsnemo.__version__,
    }
    if not args.skip_speed:
        result["pair"] = describe_pair(SongUNet, args.sizes, args.batch)
        result["forward"] = [r for s in args.sizes
                             for r in bench_forward(SongUNet, s, args.batch, args.repeats)]
    if not args.skip_sampler:
        result["sampler"] = bench_sampler(stochastic_sampler, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(args.output)
    print(render(result))


def render(result: dict) -> str:
    lines = [f"# Peer comparison ({result['date']}; physicsnemo {result['physicsnemo']}; "
             f"{result['machine']})", ""]
    if "pair" in result:
        lines += ["| size | params ours / peer | GFLOP per forward ours / peer |", "|---|---|---|"]
        for size, d in result["pair"].items():
            p, g = d["params"], d["gflop"]
            lines.append(f"| {size}² | {p['precipdiff']:,} / {p['physicsnemo']:,} | "
                         f"{g['precipdiff']:.1f} / {g['physicsnemo']:.1f} |")
        lines += ["", "| size | dtype | channels_last | precipdiff s | physicsnemo s | "
                  "peer / ours |", "|---|---|---|---|---|---|"]
        fw = result["forward"]
        for a, b in zip(fw[0::2], fw[1::2], strict=True):
            sa = f"{a['seconds']:.3f}" if a["seconds"] else a["error"]
            sb = f"{b['seconds']:.3f}" if b["seconds"] else b["error"]
            ratio = f"{b['seconds'] / a['seconds']:.2f}" if a["seconds"] and b["seconds"] else "–"
            lines.append(f"| {a['size']}² | {a['dtype']} | {a['channels_last']} | {sa} | {sb} | "
                         f"{ratio} |")
    if "sampler" in result:
        lines += ["", "| sampler | steps | NFE per sample | CRPS fair | spread–skill | RMSE | s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["sampler"]:
            lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']:g} | "
                         f"{r['crps_fair']:.4f} | {r['spread_skill_ratio']:.2f} | "
                         f"{r['rmse']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
