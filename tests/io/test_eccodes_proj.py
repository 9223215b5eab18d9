"""ecCodes and PROJ in one process: every command must exit 0 after a successful run.

The ecCodes wheels bundle their own libproj; imported before pyproj they made the interpreter abort
at exit (status 134/139, "double free or corruption") although the work had succeeded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("pyproj")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_package_then_pyproj_exits_zero():
    code = (
        "import precipdiff.io\n"
        "import pyproj\n"
        "assert pyproj.CRS(3035).is_projected\n"
    )
    res = _run([sys.executable, "-c", code])
    assert res.returncode == 0, res.stderr[-2000:]


def test_cli_info_with_pyproj_exits_zero():
    code = (
        "import sys\n"
        "import precipdiff.io\n"
        "import pyproj\n"
        "from precipdiff.cli import main\n"
        "sys.argv = ['precipdiff', 'info']\n"
        "main()\n"
    )
    res = _run([sys.executable, "-c", code])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "readers:" in res.stdout
