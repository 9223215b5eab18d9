"""U-Net forward speed and sampler accuracy-per-NFE benchmark.

Measures, in one run, the default :class:`precipdiff.models.UNet` forward pass at 128x128 and
256x256 (batch 8): time and achieved GFLOP/s (FLOPs counted with
:class:`torch.utils.flop_counter.FlopCounterMode`), against a single 3x3 convolution of the model
width at the same size (the machine's practical ceiling for this workload), in fp32 and bf16
autocast, with and without ``channels_last`` and ``torch.compile``. Then a table of sampler error
versus network evaluations on the closed-form Gaussian case. Prints Markdown.

Usage: ``python benchmarks/bench_unet.py [--sizes 128 256] [--batch 8] [--repeats 3]
[--compile none|one|main|all] [--budget 270] [--threads 1] [--device cpu] [--attn-window 0]``
(``--attn-window P``: neighbourhood attention over ``P`` pixels instead of global attention;
``benchmarks/bench_attention.py`` compares both on the shipped Stage II).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from precipdiff.diffusion import get_sampler, karras_sigmas, nfe
from precipdiff.models import UNet, UNetConfig, count_parameters

log = logging.getLogger("bench_unet")


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (multiply-add = 2 FLOPs), as counted by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    # the unfused math path, so that attention's matmuls are counted (FlopCounterMode has no
    # formula for the fused CPU flash kernel and would silently leave them out)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def time_call(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autocast(device: str, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def bench_size(size: int, args, deadline: float) -> list[dict]:
    """All variants at one spatial size; rows of the result table."""
    dev, batch = args.device, args.batch
    cfg = UNetConfig(attn_window=args.attn_window)
    torch.manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, size, size, device=dev)
    cond = torch.randn(batch, cfg.cond_channels, size, size, device=dev)
    c_noise = torch.randn(batch, device=dev)
    conv = torch.nn.Conv2d(cfg.model_channels, cfg.model_channels, 3, padding=1).to(dev)
    feat = torch.randn(batch, cfg.model_channels, size, size, device=dev)
    rows = []
    for bf16 in (False, True):
        for channels_last in (False, True):
            for compiled in (False, True):
                if compiled and not _want_compile(args, size, bf16, channels_last):
                    continue
                if time.perf_counter() > deadline:
                    rows.append(_row(size, bf16, channels_last, compiled, note="skipped: budget"))
                    continue
                rows.append(_bench_variant(size, cfg, (x, c_noise, cond), (conv, feat),
                                           bf16, channels_last, compiled, args))
    return rows


def _want_compile(args, size: int, bf16: bool, channels_last: bool) -> bool:
    """Compiling takes minutes on a small CPU: ``one`` = fp32 contiguous at the first size;
    ``main`` = fp32 contiguous and bf16 channels_last (the inference default) at every size."""
    if args.compile == "all":
        return True
    if args.compile == "main":
        return bf16 == channels_last
    return args.compile == "one" and size == args.sizes[0] and not bf16 and not channels_last


def _row(size, bf16, channels_last, compiled, **kw) -> dict:
    return {"size": size, "dtype": "bf16" if bf16 else "fp32", "cl": channels_last,
            "compile": compiled, **kw}


def _bench_variant(size, cfg, inputs, conv_inputs, bf16, channels_last, compiled, args) -> dict:
    """Time the U-Net and the single conv in one configuration."""
    dev = args.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = UNet(cfg).to(dev).eval().to(memory_format=fmt)
    x, c_noise, cond = (t.to(memory_format=fmt) if t.dim() == 4 else t for t in inputs)
    conv, feat = conv_inputs
    conv = conv.to(memory_format=fmt)
    feat = feat.to(memory_format=fmt)
    note = ""
    if compiled:
        try:
            net = torch.compile(net)
            conv = torch.compile(conv)
        except Exception as err:  # noqa: BLE001 - report any compile failure
            return _row(size, bf16, channels_last, compiled, note=f"compile failed: {err!r}"[:80])

    def run_net():
        with torch.inference_mode(), autocast(dev, bf16):
            return net(x, c_noise, cond)

    def run_conv():
        with torch.inference_mode(), autocast(dev, bf16):
            return conv(feat)

    try:
        start = time.perf_counter()
        run_net()
        first = time.perf_counter() - start
        if compiled:
            note = f"compile+first call {first:.0f} s"
        t_net = time_call(run_net, args.repeats, dev)
        t_conv = time_call(run_conv, args.repeats, dev)
    except Exception as err:  # noqa: BLE001 - a failing variant is a result, not a crash
        return _row(size, bf16, channels_last, compiled, note=f"failed: {err!r}"[:80])
    return _row(size, bf16, channels_last, compiled, t_net=t_net, t_conv=t_conv, note=note)


def sampler_table(steps_list=(4, 8, 16, 32, 64)) -> list[str]:
    """Max error against the exact solution on the Gaussian case, per sampler and NFE."""
    mu, s, smin, smax = 0.4, 0.6, 0.002, 80.0

    def denoiser(x, sigma, cond=None):
        s2 = sigma[:, None, None, None] ** 2
        return (s**2 * x + s2 * mu) / (s**2 + s2)

    x_T = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64) * smax
    x_min = mu + (x_T - mu) * math.sqrt(s**2 + smin**2) / math.sqrt(s**2 + smax**2)
    ref = denoiser(x_min, x_T.new_full((x_T.shape[0],), smin))
    lines = ["| sampler | " + " | ".join(f"N={n}" for n in steps_list) + " |",
             "|---|" + "---|" * len(steps_list)]
    for name in ("euler", "heun", "dpmpp_2m", "ddim"):
        cells = []
        for n in steps_list:
            sigmas = karras_sigmas(n, smin, smax, dtype=torch.float64)
            err = (get_sampler(name)(denoiser, x_T.clone(), sigmas) - ref).abs().max().item()
            cells.append(f"{err:.1e} ({nfe(name, n)} NFE)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def format_table(rows: list[dict], flops: dict[int, int], conv_flops: dict[int, int]) -> list[str]:
    lines = ["| size | dtype | channels_last | compile | U-Net ms | U-Net GFLOP/s | conv3x3 ms "
             "| conv GFLOP/s | U-Net / conv | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['size']}² | {r['dtype']} | {r['cl']} | {r['compile']} |"
        if "t_net" not in r:
            lines.append(head + " – | – | – | – | – | " + r["note"] + " |")
            continue
        g_net = flops[r["size"]] / r["t_net"] / 1e9
        g_conv = conv_flops[r["size"]] / r["t_conv"] / 1e9
        lines.append(head + f" {1e3 * r['t_net']:.0f} | {g_net:.1f} | {1e3 * r['t_conv']:.1f} | "
                     f"{g_conv:.1f} | {g_net / g_conv:.2f} | {r['note']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", choices=["none", "one", "main", "all"], default="one",
                        help="torch.compile variants: none, fp32 contiguous at the first size, "
                        "fp32 contiguous + bf16 channels_last at every size, all")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: see BENCHMARKS.md on oversubscription)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for the speed part")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attn-window", type=int, default=0,
                        help="attention span in pixels (0: global, the default network)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    deadline = time.perf_counter() + args.budget
    cfg = UNetConfig(attn_window=args.attn_window)
    net = UNet(cfg).to(args.device)
    flops, conv_flops, rows = {}, {}, []
    for size in args.sizes:
        b = args.batch
        x = torch.randn(b, 1, size, size, device=args.device)
        c_noise = torch.zeros(b, device=args.device)
        flops[size] = count_flops(lambda x=x, c=c_noise: net(x, c, x))
        conv_flops[size] = 2 * 9 * cfg.model_channels**2 * size * size * b
        log.info("size %d: %.1f GFLOP per forward", size, flops[size] / 1e9)
        rows += bench_size(size, args, deadline)
    cuda = args.device.startswith("cuda")
    dev_name = torch.cuda.get_device_name() if cuda else platform.processor()
    print(f"# U-Net forward benchmark ({dt.date.today().isoformat()})\n")
    print(f"machine: {platform.platform()} {dev_name} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | device {args.device} | batch {args.batch} | "
          f"repeats {args.repeats} (median)\n")
    print(f"default UNetConfig (attn_window {args.attn_window}): {count_parameters(net):,} "
          "parameters; GFLOP per forward: "
          + ", ".join(f"{s}²: {flops[s] / 1e9:.1f}" for s in args.sizes) + "\n")
    print("\n".join(format_table(rows, flops, conv_flops)))
    print("\n## Sampler error vs NFE (Gaussian N(0.4, 0.6²), closed-form D, max abs error)\n")
    print("\n".join(sampler_table()))


if __name__ == "__main__":
    main()
