"""Command line: ``precipdiff prepare | train | export | predict | evaluate | demo | info``.

Every failure the user can act on ends in one line on stderr: user errors
(:class:`precipdiff.errors.PrecipdiffError`), usage errors (unknown option or command, missing or
malformed argument) and allocations that do not fit in memory exit with status 2; Ctrl-C exits
130 and SIGTERM 143 (128 + signal), after the temporary files are removed. No traceback for any
of these. Log lines go to stdout unwrapped (``-q`` keeps only warnings). Heavy imports happen
inside the commands, so ``--help`` and ``--version`` are quick.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from precipdiff.defaults import PREDICT
from precipdiff.errors import ConfigError, PrecipdiffError
from precipdiff.interrupts import Terminated, raise_on_termination

#: Help text width: the terminal's (``COLUMNS``; 120 when output is not a terminal), at most 160.
HELP_WIDTH = min(160, shutil.get_terminal_size((120, 24)).columns)


class _Command(TyperCommand):
    """A command whose help names arguments by their metavar only (no ``<list[Path]>``)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            if getattr(param, "param_type_name", "") == "argument":
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        super().format_help(ctx, formatter)


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Bias-corrected, 1-km precipitation ensembles with residual diffusion models.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": HELP_WIDTH, "terminal_width": HELP_WIDTH},
)
command = app.command(cls=_Command)

Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set model.model_channels=64 (repeatable).",
    ),
]


class _StdoutHandler(logging.StreamHandler):
    """Plain, unwrapped log lines on the current ``sys.stdout`` (a progress bar may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def _setup_logging(level: int) -> None:
    handler = _StdoutHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings become log lines too: stderr is for errors


def _quiet() -> bool:
    """``-q`` was given: no progress bars either."""
    return logging.getLogger().getEffectiveLevel() > logging.INFO


def _version(value: bool) -> None:
    if value:
        from precipdiff import __version__

        typer.echo(f"precipdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version,
                     is_eager=True),
    ] = False,
) -> None:
    _setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


@command
def info() -> None:
    """Print the version, the torch device and the available readers."""
    import torch

    from precipdiff import __version__
    from precipdiff.io.registry import READERS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    typer.echo(f"precipdiff {__version__}")
    typer.echo(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    typer.echo("readers: " + ", ".join(sorted(READERS)))
    from precipdiff.pipeline.shipped import shipped_weights

    for name, path in shipped_weights().items():
        typer.echo(f"shipped weights [{name}]: {path if path else 'not installed'}")


@command
def prepare(
    config: Annotated[
        Path, typer.Option(help="Prepare config (YAML).", exists=True, metavar="FILE")
    ],
    output: Annotated[Path, typer.Option(help="Zarr store to write.", metavar="DIR")],
    sets: Sets = None,
    workers: Annotated[
        int, typer.Option(help="Worker processes of an embedded dask cluster.", metavar="N")
    ] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run the tasks on the dask cluster at ADDRESS (default: "
                          "$DASK_SCHEDULER_ADDRESS, else embedded when --workers > 1).",
                     metavar="ADDRESS"),
    ] = None,
) -> None:
    """Build a paired training store (zarr v3) from source and reference files.

    An interrupted run (Ctrl-C, SIGTERM, a crash) leaves OUTPUT.partial; the same command
    resumes it.
    """
    from precipdiff.data.corpus_config import is_corpus_file

    if is_corpus_file(config):  # several radar networks (a `sources:` list): data.corpus
        from precipdiff.data.corpus import load_corpus_config, prepare_corpus
        from precipdiff.progress import progress_bar

        with progress_bar("prepare corpus") as cb:
            path = prepare_corpus(load_corpus_config(config, sets or []), output, progress=cb)
        typer.echo(f"corpus store written: {path}")
        return
    from precipdiff.atomic import check_writable
    from precipdiff.data.prepare import load_prepare_config, prepare_store
    from precipdiff.progress import progress_bar

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cfg = load_prepare_config(config, sets or [])
    check_writable(output, directory=True, what="store")
    with progress_bar("prepare", disable=_quiet()) as cb:
        path = prepare_store(cfg, output, workers=workers, progress=cb,
                             scheduler=scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"))
    typer.echo(f"store written: {path}")


@command
def train(
    config: Annotated[Path | None, typer.Option(help="Run config (YAML).")] = None,
    sets: Sets = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
) -> None:
    """Train a stage (correct | downscale | regression); works under torchrun for DDP. A config
    with a ``temporal`` section trains the spatiotemporal Stage II (single process)."""
    from precipdiff.training.config import load_config
    from precipdiff.training.loop import train as run_training
    from precipdiff.training.temporal import is_temporal_config, load_temporal_config, run_temporal

    if is_temporal_config(config):
        if resume:
            raise ConfigError("--resume: temporal runs cannot be resumed yet; start again")
        run_dir = run_temporal(load_temporal_config(config, sets or []))
    else:
        run_dir = run_training(load_config(config, sets or []), resume=resume)
    typer.echo(f"run directory: {run_dir}")


@command
def export(
    run: Annotated[Path, typer.Option(help="Run directory with checkpoints/.")],
    output: Annotated[Path, typer.Option(help="Release weights to write (.safetensors).")],
) -> None:
    """Write release weights (EMA) from a run's newest checkpoint."""
    from precipdiff.training.export import export_weights

    typer.echo(f"weights written: {export_weights(run, output)}")


def _parse_bbox(bbox: str | None) -> tuple[float, float, float, float] | None:
    if bbox is None:
        return None
    try:
        parts = tuple(float(v) for v in bbox.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise ConfigError(f"--bbox must be 'lon_min,lat_min,lon_max,lat_max', got {bbox!r}")
    return parts  # type: ignore[return-value]


def _parse_thresholds(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--thresholds must be comma-separated numbers in mm/h (e.g. 1,5,10), got {text!r}"
        ) from None


_Path = Annotated[Path | None, typer.Option(metavar="FILE")]


@command
def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Coarse input files, one or more (any reader).", metavar="INPUT"),
    ],
    output: Annotated[
        Path,
        typer.Option(help="Output NetCDF file, or a directory in --archive mode.", metavar="PATH"),
    ],
    weights_correct: Annotated[
        Path | None,
        typer.Option(help="Stage-I weights (.safetensors); default: shipped.", metavar="FILE"),
    ] = None,
    weights_downscale: Annotated[
        Path | None,
        typer.Option(help="Stage-II weights (.safetensors); default: shipped.", metavar="FILE"),
    ] = None,
    stages: Annotated[
        str, typer.Option(help="'correct,downscale', 'correct' or 'downscale'.", metavar="LIST")
    ] = "correct,downscale",
    members: Annotated[int, typer.Option(help="Ensemble members.", metavar="N")] = PREDICT.members,
    sampler: Annotated[
        str, typer.Option(help="dpmpp_2m | heun | euler | ancestral | ...", metavar="NAME")
    ] = PREDICT.sampler,
    steps: Annotated[
        int, typer.Option(help="Sampler steps per stage.", metavar="N")
    ] = PREDICT.steps,
    schedule: Annotated[
        str | None,
        typer.Option(help="Noise schedule: karras | loglinear | trig (default: the sampler's "
                          "own; log-linear for dpmpp_2m).", metavar="NAME"),
    ] = PREDICT.schedule,
    distilled: Annotated[
        bool,
        typer.Option(help="Sample weights distilled to a few steps on their own noise levels "
                          "(Euler; --sampler, --steps and --schedule then apply to the other "
                          "stages only); --no-distilled samples them like any other."),
    ] = True,
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed gives the same ensemble.", metavar="N")
    ] = PREDICT.seed,
    bbox: Annotated[
        str | None, typer.Option(help="Crop: lon_min,lat_min,lon_max,lat_max.", metavar="BOX")
    ] = None,
    time: Annotated[
        str | None,
        typer.Option(
            help="Only the time steps in START/END (ISO 8601 UTC, inclusive; either may be "
            "empty, e.g. 2019-06-10T00:10/ or /2019-06-10).",
            metavar="START/END",
        ),
    ] = None,
    reader: Annotated[
        str | None, typer.Option(help="Force a reader (default: detect).", metavar="NAME")
    ] = None,
    variable: Annotated[
        str | None, typer.Option(help="Variable name for generic files.", metavar="NAME")
    ] = None,
    member_batch: Annotated[
        int, typer.Option(help="Members sampled together.", metavar="N")
    ] = PREDICT.member_batch,
    window: Annotated[
        int,
        typer.Option(
            help=f"Fine-grid window (pixels, >= {PREDICT.min_window}) for bounded memory.",
            metavar="N",
        ),
    ] = PREDICT.window,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N.", metavar="NAME")
    ] = PREDICT.device,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 where the hardware is fast at it) | fp32 | bf16.", metavar="NAME"
        ),
    ] = PREDICT.precision,
    mass_consistent: Annotated[
        bool | None,
        typer.Option(
            "--mass-consistent/--no-mass-consistent",
            help="Pooled output reproduces Stage I: every coarse cell's fine-grid mean (block "
            "maximum for max-pooled models) equals the corrected value. Default: on for "
            "areal-mean weights (the shipped default), off for block-maximum ones.",
            show_default=False,
        ),
    ] = PREDICT.mass_consistent,
    input_semantics: Annotated[
        str,
        typer.Option(
            help="What an input value is: areal_mean (satellite, reanalysis, gauge analysis) or "
            "block_maximum; must match the weights.",
            metavar="NAME",
        ),
    ] = "areal_mean",
    allow_semantics_mismatch: Annotated[
        bool, typer.Option(help="Run although the weights expect other input semantics.")
    ] = False,
    coarsen: Annotated[
        int,
        typer.Option(
            help="Pool a fine input by N first (mean; max with --input-semantics "
            "block_maximum) to the models' coarse spacing.",
            metavar="N",
        ),
    ] = 1,
    allow_spacing_mismatch: Annotated[
        bool, typer.Option(help="Run although the input's grid spacing is not the models'.")
    ] = False,
    time_factor: Annotated[
        int,
        typer.Option(
            help="Split every input interval into N sub-steps first (e.g. 6: 30-min IMERG to "
            "5-min frames); an input value is the mean rate until the next time.",
            metavar="N",
        ),
    ] = 1,
    time_interp: Annotated[
        str,
        typer.Option(help="Sub-steps by motion (optical flow; pysteps) or linear interpolation.",
                     metavar="NAME"),
    ] = "motion",
    time_conserve: Annotated[
        bool,
        typer.Option(help="Keep each input interval's mean rate (its accumulation) in the "
                          "sub-steps."),
    ] = True,
    temporal_windows: Annotated[
        str,
        typer.Option(help="How a temporal Stage II covers a record: alternate (partitions "
                     "shifted by half a window every other step) or overlap (blended).",
                     metavar="NAME"),
    ] = PREDICT.temporal_windows,
    temporal_noise_correlation: Annotated[
        float | None,
        typer.Option(help="Lag-1 correlation in time of a temporal Stage II's starting noise "
                     "(0: independent frames; default: the weights' calibrated value, else "
                     "what they were trained with).",
                     metavar="PHI", show_default=False),
    ] = PREDICT.temporal_noise_correlation,
    temporal_noise_drift: Annotated[
        bool | None,
        typer.Option("--temporal-noise-drift/--no-temporal-noise-drift",
                     help="A temporal Stage II's correlated noise moves with the coarse rain "
                     "(default: as the weights' correlation was calibrated).",
                     show_default=False),
    ] = PREDICT.temporal_noise_drift,
    temporal_chunk: Annotated[
        int,
        typer.Option(help="Frames a temporal Stage II samples as one state (neighbouring "
                     "chunks share a window); bounds its memory with --member-batch and "
                     "--window.", metavar="N"),
    ] = PREDICT.temporal_chunk,
    thresholds: Annotated[
        str, typer.Option(help="Exceedance thresholds, mm/h.", metavar="LIST")
    ] = ",".join(f"{t:g}" for t in PREDICT.thresholds),
    archive: Annotated[
        bool,
        typer.Option(
            help="One output per input file in OUTPUT (a directory), named "
            "<input file name>.precipdiff.nc (two inputs with one file name are refused); "
            "skips complete outputs, reports and skips bad inputs."
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option(help="Processes across files in --archive mode.", metavar="N")
    ] = PREDICT.workers,
    fine_threshold: Annotated[
        float | None,
        typer.Option(help="Fine-grid wet/dry threshold in mm/h (default: the weights' "
                          "calibrated one if any, else 0.1).", metavar="MM_H"),
    ] = None,
    spread_inflation: Annotated[
        float | None,
        typer.Option(help="Spread the Stage-II members about their mean by this factor "
                          "(default: the weights' calibrated one if any, else 1 = none).",
                     metavar="A"),
    ] = None,
    product: Annotated[
        str | None,
        typer.Option(help="Target radar product whose fine-scale character Stage II "
                          "reproduces: mrms, radolan, mch, fmi or opera with the shipped "
                          "product weights (loaded when --weights-downscale is not given); "
                          "default: any.", metavar="NAME"),
    ] = None,
    cap_peaks: Annotated[
        bool,
        typer.Option("--cap-peaks/--no-cap-peaks",
                     help="Hold 1-km peaks below the weights' bound on peak / coarse mean "
                          "(learned from training radar), keeping every block's mean."),
    ] = True,
    threads: Annotated[
        int,
        typer.Option(help="CPU threads of a single-file run; 0: the cores idle now (an "
                          "explicit OMP_NUM_THREADS wins). Archive workers use one each.",
                     metavar="N"),
    ] = PREDICT.threads,
    window_workers: Annotated[
        int,
        typer.Option(help="Processes that sample a single-file CPU run's 1-km windows side by "
                          "side, one thread each; 0: one per thread (used when a time step has "
                          "enough rain); 1: none.", metavar="N"),
    ] = PREDICT.window_workers,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="--archive output: netcdf (one file per input) | zarr (one store at OUTPUT).",
            metavar="NAME",
        ),
    ] = "netcdf",
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="--archive on the dask cluster at ADDRESS (default: $DASK_SCHEDULER_ADDRESS, "
            "else an embedded one of --workers processes).",
            metavar="ADDRESS",
        ),
    ] = None,
    extras: Annotated[
        list[Path] | None,
        typer.Option(
            help="Pressure-level GRIB/NetCDF files with the Stage-II model's extras.",
            metavar="FILE",
        ),
    ] = None,
) -> None:
    """Correct and downscale coarse precipitation into a fine-grid ensemble (CF-NetCDF)."""
    from precipdiff.pipeline.run import PredictRequest, run_predict
    from precipdiff.pipeline.timesel import parse_time_range
    from precipdiff.progress import progress_bar

    req = PredictRequest(
        inputs=inputs,
        output=output,
        weights_correct=weights_correct,
        weights_downscale=weights_downscale,
        stages=tuple(s.strip() for s in stages.split(",")),
        members=members,
        sampler=sampler,
        steps=steps,
        schedule=schedule,
        distilled=distilled,
        seed=seed,
        bbox=_parse_bbox(bbox),
        time=None if time is None else parse_time_range(time),
        reader=reader,
        variable=variable,
        member_batch=member_batch,
        window=window,
        device=device,
        precision=precision,
        workers=workers,
        threads=threads,
        window_workers=window_workers,
        fine_threshold=fine_threshold,
        spread_inflation=spread_inflation,
        product=product,
        cap_peaks=cap_peaks,
        archive_format=output_format,
        scheduler=scheduler,
        extras=tuple(extras or ()),
        mass_consistent=mass_consistent,
        input_semantics=input_semantics,
        allow_semantics_mismatch=allow_semantics_mismatch,
        coarsen=coarsen,
        allow_spacing_mismatch=allow_spacing_mismatch,
        time_factor=time_factor,
        time_interp=time_interp,
        time_conserve=time_conserve,
        temporal_windows=temporal_windows,
        temporal_noise_correlation=temporal_noise_correlation,
        temporal_noise_drift=temporal_noise_drift,
        temporal_chunk=temporal_chunk,
        thresholds=_parse_thresholds(thresholds),
        archive=archive,
    )
    with progress_bar("input files", disable=_quiet() or not archive) as bar:
        for path in run_predict(req, progress=bar):
            typer.echo(f"written: {path}")


@command
def evaluate(
    prediction: Annotated[Path, typer.Option(help="Prediction NetCDF (from predict or demo).")],
    truth: Annotated[Path, typer.Option(help="Truth file (any reader) on the prediction's grid.")],
    output: Annotated[Path, typer.Option(help="Directory for the table and figures.")],
    source: Annotated[
        Path | None, typer.Option(help="The coarse input, for the raw-input and baseline rows.")
    ] = None,
    baselines: Annotated[
        str, typer.Option(help="Comma list: nearest,bilinear,bicubic,rainfarm.")
    ] = ("nearest,bilinear"),
    variable: Annotated[str | None, typer.Option(help="Truth variable for generic files.")] = None,
    pooling: Annotated[str, typer.Option(help="Pooling of the truth to the coarse grid.")] = "max",
) -> None:
    """Verify a prediction against truth: metric table (Markdown + CSV) and figures."""
    from precipdiff.evaluation.run import run_evaluate

    out = run_evaluate(
        prediction=prediction,
        truth=truth,
        output=output,
        source=source,
        baselines=[b for b in baselines.split(",") if b],
        variable=variable,
        pooling=pooling,
    )
    typer.echo(f"report written: {out}")


@command
def demo(
    output: Annotated[Path, typer.Option(help="Output directory.", metavar="DIR")] = Path(
        "demo_output"
    ),
    members: Annotated[int, typer.Option(help="Ensemble members.", metavar="N")] = PREDICT.members,
    steps: Annotated[
        int, typer.Option(help="Sampler steps per stage.", metavar="N")
    ] = PREDICT.steps,
    seed: Annotated[int, typer.Option(help="Scene and sampling seed.", metavar="N")] = 0,
) -> None:
    """Synthetic scene -> both stages with the shipped weights -> NetCDF, metric table, figures."""
    from precipdiff.atomic import check_writable
    from precipdiff.demo import run_demo

    for name, value in (("--members", members), ("--steps", steps)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    check_writable(output, directory=True, what="demo output")
    out = run_demo(output, members=members, steps=steps, seed=seed, progress=not _quiet())
    typer.echo(f"demo written to {out}")


def _fail(message: str, code: int) -> None:
    """One line on stderr (newlines folded), then exit with ``code``."""
    typer.secho(" ".join(f"error: {message}".split()), fg="red", err=True)
    sys.exit(code)


def _is_out_of_memory(exc: BaseException) -> bool:
    """numpy/Python ``MemoryError``, torch's ``OutOfMemoryError`` or a failed CPU allocation."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text
    )


_MEMORY_HINTS = {
    "predict": "lower --members, --member-batch or --window, or crop with --bbox",
    "demo": "lower --members",
    "prepare": "crop with bbox or use fewer --workers",
    "train": "lower the batch or patch size",
}


def _command_name(argv: list[str]) -> str:
    return next((a for a in argv if a in _MEMORY_HINTS or a in ("evaluate", "export")), "")


def _usage_error(exc: Any) -> None:
    """A click usage error (unknown option or command, missing or bad value) in one line."""
    if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
        typer.echo(exc.ctx.get_help())
        sys.exit(0)
    ctx = getattr(exc, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _fail(f"{exc.format_message()}{where}", 2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors; exit 2 for user errors, 130 Ctrl-C, 143 SIGTERM."""
    from precipdiff.allocator import keep_freed_memory
    from precipdiff.threads import passive_waiting

    passive_waiting()  # before anything imports torch
    keep_freed_memory()
    raise_on_termination()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rc = app(args=args, prog_name="precipdiff", standalone_mode=False)
    except Terminated as exc:
        _fail(f"{exc}; stopped, temporary files removed", int(exc.code or 143))
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C); stopped, temporary files removed", 130)
    except PrecipdiffError as exc:
        _fail(str(exc), 2)
    except SystemExit:
        raise
    except Exception as exc:
        if _is_out_of_memory(exc):
            cmd = _command_name(args)
            hint = _MEMORY_HINTS.get(cmd, "use a smaller problem")
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
            _fail(f"out of memory{' in ' + cmd if cmd else ''}: {first}; {hint}", 2)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _usage_error(exc)
        if type(exc).__name__ == "Abort":  # older click: Ctrl-C arrives as Abort
            _fail("interrupted (Ctrl-C); stopped, temporary files removed", 130)
        raise
    if isinstance(rc, int) and rc == 130:  # typer turns KeyboardInterrupt into Exit(130)
        _fail("interrupted (Ctrl-C); stopped, temporary files removed", 130)
    if isinstance(rc, int) and rc:
        sys.exit(rc)
