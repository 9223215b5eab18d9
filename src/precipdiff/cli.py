"""Command line: ``precipdiff prepare | train | predict | evaluate | demo | info``.

User errors (:class:`precipdiff.errors.PrecipdiffError`) are printed in one line and the command
exits with status 2; no traceback. Heavy imports happen inside the commands, so ``--help`` and
``info`` are quick.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from precipdiff.errors import PrecipdiffError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Bias-corrected, 1-km precipitation ensembles with residual diffusion models.",
    pretty_exceptions_enable=False,
)

Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value, e.g. --set model.model_channels=64."),
]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, rich_tracebacks=False)],
    )


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
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
        typer.echo(f"shipped weights [{name}]: {path.name if path else 'not installed'}")


@app.command()
def prepare(
    config: Annotated[Path, typer.Option(help="Prepare config (YAML).", exists=True)],
    output: Annotated[Path, typer.Option(help="Zarr store to write.")],
    sets: Sets = None,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
) -> None:
    """Build a paired training store (zarr v3) from source and reference files."""
    from precipdiff.data.corpus_config import is_corpus_file

    if is_corpus_file(config):  # several radar networks (a `sources:` list): data.corpus
        from precipdiff.data.corpus import load_corpus_config, prepare_corpus
        from precipdiff.progress import progress_bar

        with progress_bar("prepare corpus") as cb:
            path = prepare_corpus(load_corpus_config(config, sets or []), output, progress=cb)
        typer.echo(f"corpus store written: {path}")
        return
    from precipdiff.data.prepare import load_prepare_config, prepare_store
    from precipdiff.progress import progress_bar

    cfg = load_prepare_config(config, sets or [])
    with progress_bar("prepare") as cb:
        path = prepare_store(cfg, output, workers=workers, progress=cb)
    typer.echo(f"store written: {path}")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="Run config (YAML).")] = None,
    sets: Sets = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
) -> None:
    """Train a stage (correct | downscale | regression); works under torchrun for DDP."""
    from precipdiff.training.config import load_config
    from precipdiff.training.loop import train as run_training

    run_dir = run_training(load_config(config, sets or []), resume=resume)
    typer.echo(f"run directory: {run_dir}")


@app.command()
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
        raise PrecipdiffError(f"--bbox must be 'lon_min,lat_min,lon_max,lat_max', got {bbox!r}")
    return parts  # type: ignore[return-value]


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Coarse input files (any reader).")],
    output: Annotated[
        Path, typer.Option(help="Output NetCDF file, or a directory in --archive mode.")
    ],
    weights_correct: Annotated[
        Path | None, typer.Option(help="Stage-I weights (.safetensors); default: shipped.")
    ] = None,
    weights_downscale: Annotated[
        Path | None, typer.Option(help="Stage-II weights (.safetensors); default: shipped.")
    ] = None,
    stages: Annotated[str, typer.Option(help="'correct,downscale', 'correct' or 'downscale'.")] = (
        "correct,downscale"
    ),
    members: Annotated[int, typer.Option(help="Ensemble members.")] = 16,
    sampler: Annotated[str, typer.Option(help="heun | euler | dpmpp_2m | ancestral.")] = "dpmpp_2m",
    steps: Annotated[int, typer.Option(help="Sampler steps per stage.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same ensemble.")] = 0,
    bbox: Annotated[str | None, typer.Option(help="lon_min,lat_min,lon_max,lat_max.")] = None,
    reader: Annotated[str | None, typer.Option(help="Force a reader (default: detect).")] = None,
    variable: Annotated[str | None, typer.Option(help="Variable name for generic files.")] = None,
    member_batch: Annotated[int, typer.Option(help="Members sampled together.")] = 8,
    window: Annotated[
        int, typer.Option(help="Fine-grid window (pixels) for bounded memory.")
    ] = 512,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the hardware is fast at it) | fp32 | bf16.")
    ] = "auto",
    mass_consistent: Annotated[
        bool, typer.Option(help="Pooled output reproduces Stage I.")
    ] = False,
    thresholds: Annotated[str, typer.Option(help="Exceedance thresholds, mm/h.")] = "1,5,10",
    archive: Annotated[
        bool,
        typer.Option(
            help="One output per time step in OUTPUT (a directory); "
            "skips complete outputs, reports and skips bad inputs."
        ),
    ] = False,
    workers: Annotated[int, typer.Option(help="Processes across files in --archive mode.")] = 1,
    extras: Annotated[
        list[Path] | None,
        typer.Option(help="Pressure-level GRIB/NetCDF files with the Stage-II model's extras."),
    ] = None,
) -> None:
    """Correct and downscale coarse precipitation into a fine-grid ensemble (CF-NetCDF)."""
    from precipdiff.pipeline.run import PredictRequest, run_predict

    req = PredictRequest(
        inputs=inputs,
        output=output,
        weights_correct=weights_correct,
        weights_downscale=weights_downscale,
        stages=tuple(s.strip() for s in stages.split(",")),
        members=members,
        sampler=sampler,
        steps=steps,
        seed=seed,
        bbox=_parse_bbox(bbox),
        reader=reader,
        variable=variable,
        member_batch=member_batch,
        window=window,
        device=device,
        precision=precision,
        workers=workers,
        extras=tuple(extras or ()),
        mass_consistent=mass_consistent,
        thresholds=tuple(float(v) for v in thresholds.split(",") if v.strip()),
        archive=archive,
    )
    for path in run_predict(req):
        typer.echo(f"written: {path}")


@app.command()
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


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo_output"),
    members: Annotated[int, typer.Option(help="Ensemble members.")] = 16,
    steps: Annotated[int, typer.Option(help="Sampler steps per stage.")] = 12,
    seed: Annotated[int, typer.Option(help="Scene and sampling seed.")] = 0,
) -> None:
    """Synthetic scene -> both stages with the shipped weights -> NetCDF, metric table, figures."""
    from precipdiff.demo import run_demo

    out = run_demo(output, members=members, steps=steps, seed=seed)
    typer.echo(f"demo written to {out}")


def main() -> None:
    """Console entry point: one-line errors and exit status 2 for user errors."""
    try:
        app(standalone_mode=False)
    except PrecipdiffError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
