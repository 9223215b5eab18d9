"""Attention span at inference: the shipped Stage II with global vs neighbourhood attention.

Part 1 times the shipped Stage II network forward (fp32, channels_last, as the pipeline runs it)
on 128/256/512-px tiles with global attention and with neighbourhood attention over the training
patch (128 px, 32 x 32 tokens at the attention level), beside a single 3x3 convolution of the
model width at the same size (this CPU's practical fp32 ceiling, as in ``bench_unet.py``). Every
variant runs once per round, rounds interleaved; the table gives medians of CPU time (one
thread; on a shared machine wall time also counts the waits for a core). FLOPs are counted with
``FlopCounterMode`` on the unfused attention path (the windowed count includes the masked-out
scores that are computed and thrown away). The process runs with the allocator policy of
``precipdiff predict`` (:func:`precipdiff.allocator.keep_freed_memory`).

Part 2 times the attention operation alone on the 128 x 128-token map of a 512-px tile for the
ways of restricting its span (neighbourhood attention with several query blocks, fixed
non-overlapping windows, overlapping windows blended with smooth weights), and measures how
visible window borders are: the mean jump of the output between neighbouring tokens across a
window border over the mean jump elsewhere, for smooth random inputs (1.0 = no seam).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_attention.py [--sizes 128 256 512]
[--rounds 5] [--out benchmarks/results/attention_speed.md]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchlib import stamp, write_report
from precipdiff.allocator import keep_freed_memory
from precipdiff.models.attention import _gather, _scatter, _starts, global_attention
from precipdiff.models.attention import neighbourhood_attention as na
from precipdiff.release import Release

WEIGHTS = (Path(__file__).resolve().parents[1] / "src" / "precipdiff" / "weights"
           / "stage2_downscale_mean_distilled.safetensors")  # predict default
BATCH = {128: 8, 256: 2, 512: 1}  # 131 072 / 131 072 / 262 144 pixels per call


def machine_line() -> str:
    return (f"{stamp()}, {os.cpu_count()} cores; torch {torch.__version__}; "
            f"threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def timed(fn: Callable[[], object]) -> float:
    """CPU seconds of one call (``process_time``: one thread, so the time the call computed;
    wall time on a shared machine adds the time spent waiting for a core)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def forward_table(sizes: list[int], rounds: int) -> list[str]:
    """Part 1: Stage II forward, global vs windowed, interleaved rounds, medians."""
    release = Release.load(WEIGHTS)
    cl = torch.channels_last
    nets = {"global": release.build_net().to(memory_format=cl),
            "window": release.build_net().to(memory_format=cl).set_attention_window(release.patch)}
    width = release.model.model_channels
    conv = torch.nn.Conv2d(width, width, 3, padding=1).to(memory_format=cl).eval()
    calls, flops = {}, {}
    g = torch.Generator().manual_seed(0)
    for size in sizes:
        b = BATCH.get(size, 1)
        x = torch.randn(b, 1, size, size, generator=g).to(memory_format=cl)
        cond = torch.randn(b, 1, size, size, generator=g).to(memory_format=cl)
        c_noise = torch.zeros(b)
        feat = torch.randn(b, width, size, size, generator=g).to(memory_format=cl)
        for mode, net in nets.items():
            calls[size, mode] = (lambda n=net, x=x, c=cond, s=c_noise: n(x, s, c))
            flops[size, mode] = count_flops(calls[size, mode])
        calls[size, "conv"] = lambda f=feat: conv(f)
        flops[size, "conv"] = 2 * 9 * width * width * size * size * b
    times: dict[tuple[int, str], list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for fn in calls.values():
            fn()  # warm-up (and mask caches)
        for _ in range(rounds):
            for key, fn in calls.items():
                times[key].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = ["| tile px | batch | attention | GFLOP/forward | ms/forward | ns/pixel "
             "| GFLOP/s | conv3x3 GFLOP/s | fraction of conv ceiling | time x (vs global) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        b = BATCH.get(size, 1)
        ceiling = flops[size, "conv"] / med[size, "conv"] / 1e9
        for mode in ("global", "window"):
            t, f = med[size, mode], flops[size, mode]
            lines.append(
                f"| {size} | {b} | {mode} | {f / 1e9:.1f} | {1e3 * t:.0f} | "
                f"{1e9 * t / (b * size * size):.0f} | {f / t / 1e9:.1f} | {ceiling:.1f} | "
                f"{f / t / 1e9 / ceiling:.2f} | {t / med[size, 'global']:.2f} |")
    return lines


# ----------------------------------------------------------------------------- part 2
def fixed_windows(q, k, v, window: int):
    """Non-overlapping ``window``-sided windows (Swin without the shift)."""
    h, w = q.shape[-2:]
    ys, xs = _starts(h, window, window), _starts(w, window, window)
    blocks = [_gather(t, ys, xs, (window, window)) for t in (q, k, v)]
    return _scatter(F.scaled_dot_product_attention(*blocks), ys, xs, (window, window), q.shape)


def blended_windows(q, k, v, window: int):
    """Windows every ``window / 2`` tokens, outputs averaged with tent weights (MultiDiffusion
    style), so that no token sits on a hard window border."""
    b, heads, d, h, w = q.shape
    ys, xs = _starts(h, window, window // 2), _starts(w, window, window // 2)
    blocks = [_gather(t, ys, xs, (window, window)) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*blocks)
    ramp = torch.minimum(torch.arange(window) + 0.5, window - torch.arange(window) - 0.5)
    weight = (ramp[:, None] * ramp[None, :]).reshape(1, 1, -1, 1).to(out)
    o = (out * weight).reshape(b, len(ys), len(xs), heads, window, window, d)
    acc = out.new_zeros(b, heads, h, w, d)
    norm = out.new_zeros(h, w, 1)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            acc[:, :, y:y + window, x:x + window] += o[:, i, j]
            norm[y:y + window, x:x + window] += weight.reshape(window, window, 1)
    return (acc / norm).permute(0, 1, 4, 2, 3)


def seam_ratio(out: torch.Tensor, window: int) -> float:
    """Mean |jump| between horizontal neighbours across the borders of a ``window`` grid over
    the mean |jump| elsewhere (1.0: no visible border). Only the interior counts: within
    ``window / 2`` of the map's edges every neighbourhood is the same (shifted inwards) and the
    output varies less there, which is not a seam."""
    jump = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(0, 1, 2, 3))
    border = torch.zeros_like(jump, dtype=torch.bool)
    border[window - 1::window] = True
    interior = torch.zeros_like(border)
    interior[window // 2:-(window // 2)] = True
    return float(jump[border & interior].mean() / jump[~border & interior].mean())


def variants_table(tokens: int, window: int, rounds: int, batch: int = 2) -> list[str]:
    """Part 2: the attention op alone on a ``tokens``-sided map (48 channels, one head)."""
    g = torch.Generator().manual_seed(1)
    smooth = [F.avg_pool2d(torch.randn(batch, 48, tokens + 7, tokens + 7, generator=g), 8, 1)
              .reshape(batch, 1, 48, tokens, tokens) for _ in range(3)]
    q, k, v = (t * 3 for t in smooth)
    ops = {"global": lambda: global_attention(q, k, v),
           "neighbourhood, query block 8 (default at 128 tokens)": lambda: na(q, k, v, window, 8),
           "neighbourhood, query block 16": lambda: na(q, k, v, window, 16),
           "neighbourhood, query block 32": lambda: na(q, k, v, window, 32),
           "fixed windows (no overlap)": lambda: fixed_windows(q, k, v, window),
           "overlapping windows, stride 16, tent-blended": lambda: blended_windows(q, k, v, window)}
    times: dict[str, list[float]] = {name: [] for name in ops}
    outs = {name: fn() for name, fn in ops.items()}
    for _ in range(rounds):
        for name, fn in ops.items():
            times[name].append(timed(fn))
    base = statistics.median(times["global"])
    lines = ["| attention | ms | time x (vs global) | seam ratio at window borders |",
             "|---|---:|---:|---:|"]
    for name in ops:
        t = statistics.median(times[name])
        lines.append(f"| {name} | {1e3 * t:.0f} | {t / base:.2f} | "
                     f"{seam_ratio(outs[name], window):.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    keep_freed_memory()  # the allocator policy predict runs with (block copies reuse pages)
    text = [f"### Attention span — `OMP_NUM_THREADS=1 python benchmarks/bench_attention.py "
            f"--rounds {args.rounds}`\n", machine_line() + "\n",
            "Shipped Stage II forward, fp32 channels_last, median CPU time of interleaved "
            "rounds:\n",
            *forward_table(args.sizes, args.rounds),
            "\nThe attention operation alone, 128 x 128 tokens (a 512-px tile), batch 2, "
            "span 32:\n",
            *variants_table(128, 32, args.rounds),
            f"\nload average at the end: {os.getloadavg()[0]:.1f}"]
    out = "\n".join(text)
    print(out)
    if args.out:
        write_report(args.out, text)


if __name__ == "__main__":
    main()
