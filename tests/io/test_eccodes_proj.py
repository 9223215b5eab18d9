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


def test_corrupt_grib_gives_our_error_only(tmp_path, shared_data):
    """ecCodes' own "ECCODES ERROR" lines do not reach stderr beside our one-line error."""
    import random

    src = shared_data / "mrms" / "2021-07-06" / "PrecipRate_00.00_20210706-000000.grib2"
    if not src.exists():
        pytest.skip("MRMS 2021-07-06 frame absent")
    data = bytearray(src.read_bytes())
    rng = random.Random(0)
    for _ in range(3):  # corrupts section 4's length: ecCodes logs, then fails to decode
        data[rng.randrange(16, 200)] = rng.randrange(256)
    bad = tmp_path / "flipped.grib2"
    bad.write_bytes(bytes(data))
    code = (
        "from precipdiff import io\n"
        "from precipdiff.errors import InputFileError\n"
        f"try:\n    io.read({str(bad)!r})\nexcept InputFileError as exc:\n    print(exc)\n"
    )
    res = _run([sys.executable, "-c", code])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "flipped.grib2" in res.stdout
    assert "ECCODES" not in res.stderr, res.stderr[-2000:]
