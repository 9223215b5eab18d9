"""Property-based fuzzing of every reader with malformed inputs (hypothesis).

Small valid files are written to a temporary folder (synthetic, never real data), then
truncated, bit-flipped, replaced by random bytes behind the right magic number, or emptied.
Whatever the input, a reader returns a valid field or raises a ``PrecipdiffError``: never
another exception, which the CLI would print as a traceback.
"""

from __future__ import annotations

import gzip
import io as bytes_io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from precipdiff import io
from precipdiff.errors import PrecipdiffError
from precipdiff.io._eccodes import eccodes

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new one
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --------------------------------------------------------------- valid synthetic files


def _values(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.gamma(0.5, 2.0, n)


def _grib(path: Path, *, mrms: bool, edition: int = 2) -> None:
    sample = "regular_ll_sfc_grib2" if edition == 2 else "regular_ll_sfc_grib1"
    h = eccodes.codes_grib_new_from_samples(sample)
    try:
        for key, value in [
            ("Ni", 8), ("Nj", 6), ("latitudeOfFirstGridPointInDegrees", 40.5),
            ("latitudeOfLastGridPointInDegrees", 40.0),
            ("longitudeOfFirstGridPointInDegrees", 260.0),
            ("longitudeOfLastGridPointInDegrees", 260.7),
            ("iDirectionIncrementInDegrees", 0.1), ("jDirectionIncrementInDegrees", 0.1),
            ("dataDate", 20190610), ("dataTime", 0),
        ]:
            eccodes.codes_set(h, key, value)
        if mrms:  # NSSL local discipline 209, PrecipRate
            for key, value in [("discipline", 209), ("parameterCategory", 6),
                               ("parameterNumber", 1)]:
                eccodes.codes_set(h, key, value)
        else:
            eccodes.codes_set(h, "shortName", "tp")
        values = _values(np.random.default_rng(0), 48)
        values[:3] = -3.0 if mrms else values[:3]
        eccodes.codes_set_values(h, values)
        with open(path, "wb") as fh:
            eccodes.codes_write(h, fh)
    finally:
        eccodes.codes_release(h)


def write_imerg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as h5:
        g = h5.create_group("Grid")
        data = _values(rng, 1 * 8 * 6).reshape(1, 8, 6).astype(np.float32)  # (time, lon, lat)
        data[0, 0, :2] = -9999.9
        ds = g.create_dataset("precipitationCal", data=data)
        ds.attrs["DimensionNames"] = b"time,lon,lat"
        ds.attrs["units"] = b"mm/hr"
        ds.attrs["_FillValue"] = np.float32(-9999.9)
        g.create_dataset("lat", data=40.05 + 0.1 * np.arange(6))
        g.create_dataset("lon", data=-99.95 + 0.1 * np.arange(8))
        t = g.create_dataset("time", data=np.array([1_560_124_800], np.int64))
        t.attrs["units"] = b"seconds since 1970-01-01 00:00:00 UTC"
    return path


def write_mrms(path: Path) -> Path:
    _grib(path, mrms=True)
    return path


def write_grib(path: Path) -> Path:
    _grib(path, mrms=False, edition=2)
    return path


def write_grib1(path: Path) -> Path:
    _grib(path, mrms=False, edition=1)
    return path


def write_netcdf(path: Path) -> Path:
    rng = np.random.default_rng(2)
    da = xr.DataArray(
        _values(rng, 2 * 6 * 8).reshape(2, 6, 8).astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": pd.date_range("2021-07-06", periods=2, freq="h").values,
                "lat": 30.05 + 0.1 * np.arange(6), "lon": -100.05 + 0.1 * np.arange(8)},
        name="precip", attrs={"units": "mm/h"},
    )
    da.to_netcdf(path)
    return path


def _asc(rng: np.random.Generator) -> bytes:
    values = rng.integers(-1, 60, (5, 7))
    header = ("ncols 7\nnrows 5\nxllcorner -523462\nyllcorner -4658645\ncellsize 1000\n"
              "NODATA_value -1\n")
    return (header + "\n".join(" ".join(str(v) for v in row) for row in values) + "\n").encode()


def write_radolan(path: Path) -> Path:
    path.write_bytes(_asc(np.random.default_rng(3)))
    return path


def write_radolan_tar(path: Path) -> Path:
    rng = np.random.default_rng(4)
    buf = bytes_io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for hour in (0, 1):
            content = _asc(rng)
            info = tarfile.TarInfo(f"RW_20221018-{hour:02d}50.asc")
            info.size = len(content)
            tar.addfile(info, bytes_io.BytesIO(content))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


# reader name -> (writer, file name); radolan .asc names carry the time
VALID: dict[str, list[tuple[Callable[[Path], Path], str]]] = {
    "imerg": [(write_imerg, "imerg.HDF5")],
    "mrms": [(write_mrms, "mrms.grib2")],
    "grib": [(write_grib, "tp.grib2"), (write_grib1, "tp.grib")],
    "netcdf": [(write_netcdf, "field.nc")],
    "radolan": [(write_radolan, "RW_20221018-0050.asc"), (write_radolan_tar, "RW.tar.gz")],
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, list[tuple[str, bytes]]]:
    root = tmp_path_factory.mktemp("fuzz_valid")
    out = {}
    for reader, items in VALID.items():
        out[reader] = [(name, writer(root / name).read_bytes()) for writer, name in items]
    return out


def test_synthetic_originals_are_valid(originals, tmp_path):
    for reader, items in originals.items():
        for name, data in items:
            path = tmp_path / name
            path.write_bytes(data)
            assert io.detect_reader(path) == reader
            _check_field(io.get_reader(reader)(path))


# --------------------------------------------------------------------- mutations

MAGIC = [b"\x89HDF\r\n\x1a\n", b"CDF\x01", b"GRIB", b"\x1f\x8b", b"\xfd7zXZ\x00", b"ncols "]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """Truncate, flip bytes, splice random bytes behind a magic number, or empty."""
    kind = draw(st.sampled_from(["truncate", "flip", "magic", "empty", "flip_header"]))
    if kind == "empty":
        return b""
    if kind == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "magic":
        head = draw(st.sampled_from([*MAGIC, data[:16]]))
        return head + draw(st.binary(min_size=0, max_size=600))
    out = bytearray(data)
    limit = min(len(out), 512) if kind == "flip_header" else len(out)
    flips = draw(st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 255)),
                          min_size=1, max_size=12))
    for pos, value in flips:
        out[pos] = value
    return bytes(out)


def _check_field(da) -> None:
    assert isinstance(da, xr.DataArray) and da.ndim == 3 and da.dims[0] == "time"
    assert da.dtype == np.float32 and da.attrs["units"] in ("mm/h", "mm")
    assert not bool((da < 0).any())


def _read_or_precipdiff_error(read: Callable[[Path], xr.DataArray], path: Path) -> None:
    try:
        da = read(path)
    except PrecipdiffError as exc:
        assert str(exc) and "\n" not in str(exc), repr(exc)
        return
    _check_field(da)


def _fuzz_reader(reader: str, originals, draw_index: int, payload: bytes) -> None:
    name, _ = originals[reader][draw_index % len(originals[reader])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(payload)
        _read_or_precipdiff_error(io.get_reader(reader), path)
        _read_or_precipdiff_error(io.read, path)  # content detection first


@pytest.mark.parametrize("reader", sorted(VALID))
def test_reader_survives_malformed_input(reader, originals):
    @FUZZ
    @given(data=st.data())
    def check(data):
        index = data.draw(st.integers(0, len(originals[reader]) - 1))
        payload = data.draw(mutated(originals[reader][index][1]))
        _fuzz_reader(reader, originals, index, payload)

    check()
