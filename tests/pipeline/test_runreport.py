"""The archive run report on its own: where it goes, its content, and a scheduler that cannot
say which tasks were retried (the runs themselves: tests/pipeline/test_archive_dask.py)."""

from __future__ import annotations

import json
from pathlib import Path

from precipdiff.pipeline.runreport import ArchiveReport, report_path, task_retries


def test_report_path_beside_the_output(tmp_path) -> None:
    assert report_path(tmp_path / "out", "netcdf") == tmp_path / "out" / "report.json"
    assert report_path(tmp_path / "s.zarr", "zarr") == tmp_path / "s.zarr.report.json"


def test_write_and_failure_message(tmp_path) -> None:
    report = ArchiveReport("zarr", tmp_path / "s.zarr", scheduler="tcp://h:1")
    assert report.failure() is None
    report.done.append("a.nc")
    report.skip(Path("b.nc"), "b.nc: truncated")
    path = report.write()
    assert path == tmp_path / "s.zarr.report.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr.report.json"]  # no temp left
    got = json.loads(path.read_text())
    assert got["status"] == "inputs_skipped" and got["scheduler"] == "tcp://h:1"
    assert got["inputs"]["skipped"] == [{"input": "b.nc", "reason": "b.nc: truncated"}]
    assert report.failure() == "1 input file(s) failed and were skipped: b.nc (b.nc: truncated)"


class _Future:
    def __init__(self, key: str) -> None:
        self.key = key


class _Client:
    def __init__(self, counts=None) -> None:
        self.counts = counts

    def run_on_scheduler(self, fn, keys):
        if self.counts is None:
            raise OSError("scheduler gone")
        return {k: self.counts[k] for k in keys}


def test_task_retries() -> None:
    futures = [_Future("t-1"), _Future("t-2")]
    inputs = [Path("a.nc"), Path("b.nc")]
    assert task_retries(_Client({"t-1": 0, "t-2": 2}), futures, inputs) == {"b.nc": 2}
    assert task_retries(_Client(), futures, inputs) is None
    assert task_retries(_Client(), [], []) == {}
