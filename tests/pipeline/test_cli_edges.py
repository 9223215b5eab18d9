"""The command line at its edges, through the real CLI in subprocesses: one stderr line, the exit
status scripts rely on (2 user error, 130 Ctrl-C, 143 SIGTERM) and no files left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr

from precipdiff.io import write_netcdf

from .conftest import coarse_field

ENV = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
       "OMP_NUM_THREADS": "1"}


def _limit_memory(gib: float):
    def limit() -> None:
        import resource

        n = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (n, n))

    return limit


def run_cli(*args: str, cwd: Path | None = None, memory_gib: float | None = None,
            env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "precipdiff", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or ENV,
        timeout=timeout,
        preexec_fn=_limit_memory(memory_gib) if memory_gib else None,
    )


def one_line_error(res: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a failed run (asserting status, one line, no traceback)."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edges")
    return write_netcdf(coarse_field(ny=6, nx=8, n_time=1).rename("precip"), root / "src.nc")


def _predict(tiny_weights, *extra: str) -> list[str]:
    return [
        "predict",
        "--weights-correct",
        str(tiny_weights["correct"]),
        "--weights-downscale",
        str(tiny_weights["downscale"]),
        "--members",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


# ----------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["predictt"], "No such command 'predictt'"),
        (["predict", "--output", "o.nc"], "Missing argument"),
        (["predict", "x.nc", "--output", "o.nc", "--member", "2"], "No such option: --member"),
        (["prepare", "--output", "o.zarr"], "Missing option '--config'"),
        (["predict", "x.nc", "--output", "o.nc", "--members", "many"], "'--members'"),
    ],
)
def test_usage_errors_are_one_line(args, text, tmp_path) -> None:
    line = one_line_error(run_cli(*args, cwd=tmp_path))
    assert text in line and "--help" in line
    assert not list(tmp_path.iterdir())


def test_version_and_help() -> None:
    from precipdiff import __version__

    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"precipdiff {__version__}"
    assert res.stderr == ""
    res = run_cli("predict", "--help")  # not a terminal: 120 columns, not 80
    assert res.returncode == 0, res.stderr
    assert not re.search(r"<(list|int|str|path|bool)", res.stdout, re.IGNORECASE), res.stdout
    assert "…" not in res.stdout and "--weights-downscale FILE" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) > 80


# ----------------------------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--members", "0"),
        ("--steps", "0"),
        ("--sampler", "foo"),
        ("--thresholds", "abc"),
        ("--thresholds", "1,nan"),
        ("--reader", "foo"),
        ("--precision", "fp8"),
        ("--member-batch", "0"),
        ("--device", "foo"),
        ("--workers", "0"),
        ("--window", "16"),
        ("--stages", "correct,upscale"),
        ("--bbox", "1,2,0,3"),
    ],
)
def test_bad_option_values_are_one_line(tiny_weights, src, option, value, tmp_path) -> None:
    out = tmp_path / "out"
    res = run_cli(*_predict(tiny_weights, str(src), "--output", str(out), option, value))
    line = one_line_error(res)
    assert option in line and value.split(",")[-1] in line, line
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line(tiny_weights, src, tmp_path) -> None:
    res = run_cli(*_predict(tiny_weights, str(src), "--output", str(tmp_path / "o.nc")),
                  "--device", "cuda")
    assert "no CUDA device" in one_line_error(res)
    assert not list(tmp_path.iterdir())


def test_demo_bad_values_are_one_line(tmp_path) -> None:
    res = run_cli("demo", "--output", str(tmp_path / "d"), "--members", "0")
    assert "--members" in one_line_error(res)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- output paths


def test_unwritable_outputs_refused_before_work(tiny_weights, src, tmp_path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "file.nc"
    a_file.write_bytes(b"")
    cases = [
        (["--output", str(folder)], "existing directory"),
        (["--output", str(a_file / "x.nc")], "not a directory"),
        (["--archive", "--output", str(a_file)], "must be a directory"),
    ]
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # root writes through file modes: use a folder nobody can write
        cases.append((["--output", "/proc/precipdiff-out.nc"], "cannot write"))
    else:
        cases.append((["--output", str(readonly / "x.nc")], "cannot write"))
    for extra, text in cases:
        res = run_cli(*_predict(tiny_weights, str(src), *extra))
        assert text in one_line_error(res), (extra, res.stderr)
    readonly.chmod(0o755)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.nc", "folder", "ro"]
    assert not list(folder.iterdir()) and not list(readonly.iterdir())


def test_unallocatable_size_is_one_line(tiny_weights, src, tmp_path) -> None:
    """3e9 members cannot be allocated (address space capped so the test is safe anywhere)."""
    out = tmp_path / "o.nc"
    args = _predict(tiny_weights, str(src), "--output", str(out), "--stages", "downscale")
    args[args.index("--members") + 1] = "3000000000"
    line = one_line_error(run_cli(*args, memory_gib=4, timeout=120))
    assert "out of memory in predict" in line and "GiB" in line and "--members" in line
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- signals


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def slow_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow")
    field = coarse_field(ny=48, nx=48, n_time=2, seed=3)
    return write_netcdf(field.rename("precip"), root / "slow.nc")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_predict_cleanly(tiny_weights, slow_src, sig, code, tmp_path,
                                     signal_running, signal_defaults) -> None:
    """Ctrl-C exits 130 and SIGTERM 143, with the output temp file and the on-disk accumulator
    (``precipdiff-acc-*``) removed."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    scratch.mkdir()
    env = {**ENV, "TMPDIR": str(scratch), "PRECIPDIFF_ACCUMULATOR_MB": "0"}
    args = _predict(tiny_weights, str(slow_src), "--output", str(out / "o.nc"))
    args[args.index("--steps") + 1] = "200"
    proc = subprocess.Popen([sys.executable, "-m", "precipdiff", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=signal_defaults)
    _wait_for(lambda: list(out.iterdir()) and list(scratch.glob("precipdiff-acc-*")), proc)
    assert signal_running(proc, sig), "the 200-step run ended before it was signalled"
    _, stderr = proc.communicate(timeout=60)
    res = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    line = one_line_error(res, code)
    assert ("interrupted" if sig == signal.SIGINT else "SIGTERM") in line
    assert not list(out.iterdir()) and not list(scratch.glob("precipdiff-*"))


def test_stale_temp_files_swept(tiny_weights, src, tmp_path) -> None:
    """A SIGKILLed run's temp file (dead pid, our pattern) goes at the next run of the output;
    a live process's temp file and foreign files stay."""
    from precipdiff.atomic import _temp_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o.nc"
    stale = tmp_path / (_temp_prefix(out).replace(str(os.getpid()), str(dead.pid)) + "abc")
    live = tmp_path / (_temp_prefix(out) + "abc")
    foreign = tmp_path / ".o.nc.tmp-something"
    for p in (stale, live, foreign):
        p.write_bytes(b"half")
    res = run_cli(*_predict(tiny_weights, str(src), "--output", str(out)))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, "o.nc"])


# ----------------------------------------------------------------------------- archive mode


def test_archive_same_file_name_refused(tiny_weights, src, tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.nc").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    res = run_cli(*_predict(tiny_weights, str(tmp_path / "a" / "x.nc"),
                            str(tmp_path / "b" / "x.nc"), "--archive", "--output", str(out)))
    line = one_line_error(res)
    assert "same file name" in line and "a/x.nc" in line and "b/x.nc" in line
    assert not out.exists()


def test_archive_output_from_another_input_not_skipped(tiny_weights, src, tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.nc").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    first = run_cli(*_predict(tiny_weights, str(tmp_path / "a" / "x.nc"), "--archive",
                              "--output", str(out)))
    assert first.returncode == 0, first.stderr
    stamp = (out / "x.nc.precipdiff.nc").stat().st_mtime_ns
    res = run_cli(*_predict(tiny_weights, str(tmp_path / "b" / "x.nc"), "--archive",
                            "--output", str(out)))
    assert "made from another input named x.nc" in one_line_error(res)
    assert (out / "x.nc.precipdiff.nc").stat().st_mtime_ns == stamp


def test_archive_seeds_per_file(tiny_weights, tmp_path) -> None:
    """Two inputs with the same field at different times get different noise; a rerun of one
    gives the same ensemble, and its seed attribute reproduces it in single-file mode."""
    field = coarse_field(ny=6, nx=8, n_time=1)
    a = write_netcdf(field.rename("precip"), tmp_path / "a.nc")
    later = field.assign_coords(time=field["time"] + np.timedelta64(1, "h"))
    b = write_netcdf(later.rename("precip"), tmp_path / "b.nc")
    res = run_cli(*_predict(tiny_weights, str(a), str(b), "--archive", "--seed", "7",
                            "--output", str(tmp_path / "arch")))
    assert res.returncode == 0, res.stderr
    pa = xr.open_dataset(tmp_path / "arch" / "a.nc.precipdiff.nc")
    pb = xr.open_dataset(tmp_path / "arch" / "b.nc.precipdiff.nc")
    assert not np.array_equal(pa["precip"].values, pb["precip"].values, equal_nan=True)
    assert pa.attrs["archive_base_seed"] == 7 and pa.attrs["seed"] != pb.attrs["seed"]
    res = run_cli(*_predict(tiny_weights, str(a), "--seed", str(pa.attrs["seed"]),
                            "--output", str(tmp_path / "single.nc")))
    assert res.returncode == 0, res.stderr
    single = xr.open_dataset(tmp_path / "single.nc")
    np.testing.assert_array_equal(single["precip"].values, pa["precip"].values)


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out.update(kids)
            todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_archive_workers_die_with_parent(tiny_weights, slow_src, tmp_path) -> None:
    """SIGKILL the parent of two archive workers: the workers exit, leave at most temporary
    siblings (no partial output), and the rerun removes those and completes."""
    files = []
    for name in ("p.nc", "q.nc"):
        files.append(tmp_path / name)
        files[-1].write_bytes(slow_src.read_bytes())
    out = tmp_path / "out"
    args = _predict(tiny_weights, *map(str, files), "--archive", "--workers", "2",
                    "--output", str(out))
    args[args.index("--steps") + 1] = "200"
    proc = subprocess.Popen([sys.executable, "-m", "precipdiff", "-q", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: out.is_dir() and len(list(out.iterdir())) >= 2, proc, timeout=180)
    children = _descendants(proc.pid)
    assert children
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)]
    assert all(".tmp-" in p.name for p in out.iterdir())
    args[args.index("--steps") + 1] = "2"
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p.nc.precipdiff.nc", "q.nc.precipdiff.nc",
                                                     "report.json"]


def test_quiet_and_unwrapped_log_lines(tiny_weights, src, tmp_path) -> None:
    """``-q`` leaves only the results on stdout; log lines are never wrapped (a long path stays
    on one line, whatever the width); an archive output records its input's id."""
    from precipdiff.pipeline.run import input_id

    out = tmp_path / ("a_rather_long_folder_name_" * 4) / "archive"
    args = _predict(tiny_weights, str(src), "--archive", "--output", str(out))
    res = run_cli("-q", *args)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.splitlines() == [f"written: {out / 'src.nc.precipdiff.nc'}"]
    with netCDF4.Dataset(out / "src.nc.precipdiff.nc") as ds:
        assert ds.getncattr("precipdiff_input_id") == input_id(src)
    res = run_cli(*args)  # the rerun skips the complete output and logs it
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert any(line.startswith("INFO") and f"skip {src}: output exists" in line
               for line in res.stdout.splitlines()), res.stdout
