"""Pipeline speed and memory: the 200 x 200 km two-stage ensemble, and scaling with domain area.

    python benchmarks/bench_pipeline.py     # shipped weights, 16 members, 12 steps
    python benchmarks/bench_pipeline.py --sizes 200 400 800 --scaling-members 4
    python benchmarks/bench_pipeline.py --window 512 --tile 256 512 --members 4   # network tile
    python benchmarks/bench_pipeline.py --attention global window --rounds 2     # attention span
    python benchmarks/bench_pipeline.py --compare-defaults --rounds 2  # defaults before/after

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own. The input is a synthetic scene (the demo's generator); timing does not depend on the content.
Prints a Markdown table with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: ``--compare-defaults``: the predict settings before 2026-11-30 (DPM-Solver++(2M), 12 steps on
#: the EDM schedule, global attention) and after (8 steps on the log-linear schedule, attention
#: over the training patch); same weights (the shipped defaults), same scene, same members.
DEFAULTS = {"before": {"steps": 12, "schedule": "karras", "attention": "global", "crop": False},
            "now": {"steps": 8, "schedule": None, "attention": "default", "crop": True}}
#: ``--compare-defaults --student W``: a third row, Stage II replaced by a distilled student
#: (sampled on its own grid; Stage I as "now").
STUDENT = {"steps": 8, "schedule": None, "attention": "default", "crop": True}


def child(size: int, members: int, steps: int, window: int, tile: int | None, out: Path,
          attention: str = "default", schedule: str | None = None, crop: bool = True,
          weights_downscale: Path | None = None) -> dict:
    import torch

    from precipdiff.demo import FACTOR, demo_scene
    from precipdiff.pipeline import PredictOptions, SamplerSettings
    from precipdiff.pipeline.output import predict_to_file
    from precipdiff.pipeline.run import PredictRequest, load_pipeline

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    pipe = load_pipeline(PredictRequest(inputs=[], output=out,
                                        weights_downscale=weights_downscale), "cpu")
    if attention != "default":  # "global": every net attends globally (the behaviour before)
        for stage in (pipe.correct, pipe.downscale):
            for net in (stage.net, stage.mean_net) if stage is not None else ():
                if net is not None:
                    net.set_attention_window(0 if attention == "global" else stage.patch)
    if size < 0:  # the CONUS MRMS grid: 3500 x 7000 fine cells from a 350 x 700 coarse source
        from precipdiff.data.synth import synthetic_scene

        src = synthetic_scene(
            rng=np.random.default_rng(0), shape=(350, 700), res=0.1, lat0=20.05, lon0=-129.95
        )
        size = 3500 * 7000
    else:
        _, src = demo_scene(0, shape=(size, size))
        size = size * size
    s = SamplerSettings(sampler="dpmpp_2m", steps=steps, schedule=schedule)
    opts = PredictOptions(
        members=members, correct=s, downscale=s, window=window, tile=tile, member_batch=8,
        crop_to_rain=crop,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    predict_to_file(pipe, src, out, opts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out.unlink()
    return {
        "size": size,
        "members": members,
        "steps": steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "per_member_s": wall / members,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "nfe_per_stage": steps,
        "hr_pixels": size,
        "factor": FACTOR,
        "window": window,
        "tile": tile,
        "attention": attention,
    }


def run_child(size: int, members: int, steps: int, window: int, tile: int | None,
              attention: str = "default", schedule: str | None = None, crop: bool = True,
              weights_downscale: Path | None = None) -> dict:
    out = Path(f"/tmp/bench_pipeline_{os.getpid()}_{size}.nc")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(size),
        "--members",
        str(members),
        "--steps",
        str(steps),
        "--window",
        str(window),
        "--out",
        str(out),
        *(["--tile", str(tile)] if tile else []),
        "--attention",
        attention,
        *(["--schedule", schedule] if schedule else []),
        *([] if crop else ["--no-crop"]),
        *(["--weights-downscale", str(weights_downscale)] if weights_downscale else []),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", type=int)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument(
        "--tile",
        type=int,
        nargs="*",
        default=None,
        help="network tile sizes to compare (px) on a --tile-domain km domain; default: the "
        "stage's own",
    )
    ap.add_argument(
        "--tile-domain", type=int, default=500, help="domain side (km, a multiple of 10) of --tile"
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=[200, 400, 800])
    ap.add_argument("--scaling-members", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the --tile comparison")
    ap.add_argument(
        "--attention",
        nargs="+",
        default=["default"],
        choices=("default", "global", "window"),
        help="attention span of the nets: the stage default, global, or the training patch; "
        "two or more: compare them on the 200 x 200 km run, interleaved over --rounds",
    )
    ap.add_argument(
        "--conus",
        action="store_true",
        help="only the CONUS-size bounded-memory run (1 member, --steps steps)",
    )
    ap.add_argument("--schedule", default=None, help="noise schedule (default: the sampler's)")
    ap.add_argument("--no-crop", action="store_true",
                    help="Stage II samples whole windows (PredictOptions.crop_to_rain off)")
    ap.add_argument("--weights-downscale", type=Path, default=None,
                    help="Stage II weights (default: the shipped ones)")
    ap.add_argument("--student", type=Path, default=None,
                    help="with --compare-defaults: add a row with this distilled Stage II")
    ap.add_argument("--compare-defaults", action="store_true",
                    help="the 200 x 200 km run with the predict defaults before and after "
                         "2026-11-30, interleaved over --rounds")
    args = ap.parse_args()
    if args.child:
        tile = args.tile[0] if args.tile else None
        print(json.dumps(child(args.child, args.members, args.steps, args.window, tile, args.out,
                               args.attention[0], args.schedule, not args.no_crop,
                               args.weights_downscale)))
        return
    if args.compare_defaults:
        defaults_table(args)
        return
    if len(args.attention) > 1:
        attention_table(args)
        return
    if args.tile:
        tile_table(args)
        return
    if args.conus:
        r = run_child(-1, 1, args.steps, args.window, None)
        print(
            f"CONUS 3500x7000 fine grid, 1 member, {args.steps} steps/stage, window "
            f"{args.window}: {r['wall_s']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB"
        )
        return
    head = run_child(200, args.members, args.steps, args.window, None)
    scaling = [
        run_child(s, args.scaling_members, args.steps, args.window, None) for s in args.sizes
    ]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Pipeline speed and memory — {now}\n")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; threads {os.environ.get('BENCH_THREADS', '2')}; "
        f"command: `python benchmarks/bench_pipeline.py`\n"
    )
    print(
        "| domain (1 km) | members | steps/stage (DPM++2M) | wall s | s per member | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in [head, *scaling]:
        side = int(round(r["hr_pixels"] ** 0.5))
        print(
            f"| {side}x{side} | {r['members']} | {r['steps']} | {r['wall_s']:.1f} | "
            f"{r['per_member_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    base = scaling[0]
    print("\nScaling relative to the smallest domain (same members and steps):\n")
    print("| area x | time x | peak memory x |")
    print("|---:|---:|---:|")
    for r in scaling:
        print(
            f"| {r['hr_pixels'] / base['hr_pixels']:.0f} | {r['wall_s'] / base['wall_s']:.2f} | "
            f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |"
        )


def defaults_table(args: argparse.Namespace) -> None:
    """The 200 x 200 km two-stage run with the old and the new predict defaults."""
    from precipdiff.pipeline.shipped import shipped_weights

    full = shipped_weights()["downscale_full"]  # the Stage II both former defaults sampled
    table = {k: {**d, "weights": full} for k, d in DEFAULTS.items()}
    if args.student is not None:
        table["distilled Stage II"] = {**STUDENT, "weights": Path(args.student)}
    runs: dict[str, list[dict]] = {k: [] for k in table}
    for _ in range(args.rounds):
        for name, d in table.items():
            runs[name].append(run_child(200, args.members, d["steps"], args.window, None,
                                        d["attention"], d["schedule"], d["crop"],
                                        d.get("weights")))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Predict defaults before and after — {now}, load average "
          f"{os.getloadavg()[0]:.1f}, threads {os.environ.get('BENCH_THREADS', '2')}, "
          f"{args.members} members, two stages, 200 x 200 km, {args.rounds} interleaved rounds\n")
    print("| defaults | steps/stage | schedule | attention | cut to rain | wall s (each round) | "
          "median wall s | CPU s (each round) | median CPU s | CPU x before | peak RSS MB |")
    print("|---|---:|---|---|---|---|---:|---|---:|---:|---:|")
    med = {k: float(np.median([r["wall_s"] for r in v])) for k, v in runs.items()}
    cpu = {k: float(np.median([r["cpu_s"] for r in v])) for k, v in runs.items()}
    for name, d in table.items():
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs[name])
        cpus = ", ".join(f"{r['cpu_s']:.1f}" for r in runs[name])
        steps = f"{d['steps']} / 4 (distilled grid)" if d["weights"] != full else d["steps"]
        print(f"| {name} | {steps} | {d['schedule'] or 'log-linear'} | {d['attention']} | "
              f"{d['crop']} | {walls} | {med[name]:.1f} | {cpus} | {cpu[name]:.1f} | "
              f"{cpu['before'] / cpu[name]:.2f} | "
              f"{max(r['peak_rss_mb'] for r in runs[name]):.0f} |")
    for name in list(table)[1:]:
        print(f"\nspeed-up, {name} (median wall before / median wall {name}): "
              f"{med['before'] / med[name]:.2f}x")


def attention_table(args: argparse.Namespace) -> None:
    """The 200 x 200 km two-stage run per attention span, interleaved rounds, medians."""
    runs: dict[str, list[dict]] = {a: [] for a in args.attention}
    for _ in range(args.rounds):
        for a in args.attention:
            runs[a].append(run_child(200, args.members, args.steps, args.window, None, a))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Attention span, two-stage 200 x 200 km run — {now}\n")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; threads {os.environ.get('BENCH_THREADS', '2')}; window "
        f"{args.window}; {args.members} members, {args.steps} steps/stage; median of "
        f"{args.rounds} interleaved rounds\n"
    )
    print("| attention | wall s (each round) | median wall s | CPU s (each round) | median CPU s "
          "| CPU time x (vs first) | peak RSS MB |")
    print("|---|---|---:|---|---:|---:|---:|")
    base = None
    for a in args.attention:
        walls, cpus = [r["wall_s"] for r in runs[a]], [r["cpu_s"] for r in runs[a]]
        cpu = float(np.median(cpus))
        base = base or cpu
        print(
            f"| {a} | {', '.join(f'{w:.1f}' for w in walls)} | {np.median(walls):.1f} | "
            f"{', '.join(f'{c:.1f}' for c in cpus)} | {cpu:.1f} | {cpu / base:.2f} | "
            f"{max(r['peak_rss_mb'] for r in runs[a]):.0f} |"
        )


def tile_table(args: argparse.Namespace) -> None:
    """``--tile-domain`` km square, ``--members`` members: time and memory per network tile.

    Runs are interleaved (each tile size once per round, ``--rounds`` rounds) so that changes
    in the machine's load hit every size alike; the table gives the median per size.
    """
    runs: dict[int, list[dict]] = {t: [] for t in args.tile}
    for _ in range(args.rounds):
        for t in args.tile:
            runs[t].append(run_child(args.tile_domain, args.members, args.steps, args.window, t))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Network tile size — {now}\n")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; threads {os.environ.get('BENCH_THREADS', '2')}; domain "
        f"{args.tile_domain} x {args.tile_domain} km; window {args.window}; "
        f"{args.members} members, {args.steps} steps/stage; median of "
        f"{args.rounds}\n"
    )
    print("| tile (px) | wall s | time x (vs first) | peak RSS MB |")
    print("|---:|---:|---:|---:|")
    base = None
    for t in args.tile:
        wall = float(np.median([r["wall_s"] for r in runs[t]]))
        rss = max(r["peak_rss_mb"] for r in runs[t])
        base = base or wall
        print(f"| {t} | {wall:.1f} | {wall / base:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
