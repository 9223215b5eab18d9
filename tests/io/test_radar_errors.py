"""Bad radar files (ODIM HDF5, MeteoSwiss GIF, FMI PGM): one-line InputFileError naming the file
and the problem, in the library and through the CLI (exit 2, one stderr line, nothing written)."""

from __future__ import annotations

import functools
import gzip
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from precipdiff import io
from precipdiff.errors import InputFileError, PrecipdiffError
from precipdiff.io import meteoswiss

LAEA = "+proj=laea +lat_0=55 +lon_0=10 +x_0=1950000 +y_0=-2100000 +units=m +ellps=WGS84"
# corners of a 4 x 3 km LAEA grid whose south-west corner is x = 1000 km, y = -2000 km
_CORNERS = {"LL_lon": -4.966422, "LL_lat": 54.982148, "UR_lon": -4.915112, "UR_lat": 55.016022}


def _odim(path, *, quantity="DBZH", where=True, obj="COMP", shape=(3, 4)):
    b = np.bytes_
    with h5py.File(path, "w") as h:
        h.attrs["Conventions"] = b("ODIM_H5/V2_4")
        h.create_group("what").attrs.update({"object": b(obj), "date": b("20241126"),
                                             "time": b("010000"), "source": b("ORG:247")})
        if where:
            h.create_group("where").attrs.update({"projdef": b(LAEA), "xsize": shape[1],
                                                  "ysize": shape[0], "xscale": 1000.0,
                                                  "yscale": 1000.0, **_CORNERS})
        data = h.create_group("dataset1").create_group("data1")
        data.create_dataset("data", data=np.full(shape, 100, np.uint8), compression="gzip")
        data.create_group("what").attrs.update({"quantity": b(quantity), "gain": 0.5,
                                                "offset": -32.0, "nodata": 255.0,
                                                "undetect": 0.0})
    return path


def _gif(path, *, palette=None, comment="PRDT=AQC151351545 COLOR=reddish ACCUm=000005",
         size=(710, 640)):
    img = Image.fromarray(np.full(size[::-1], 100, np.uint8), mode="P")
    pal = meteoswiss.reddish_palette() if palette is None else palette
    img.putpalette(np.asarray(pal, np.uint8).ravel().tolist())
    img.save(path, format="GIF", comment=comment.encode())
    return path


_FMI_PROJECTION = ("# type stereographic\n# centrallongitude 25\n# centrallatitude 90\n"
                   "# truelatitude 60\n# bottomleft 18.600000 57.930000\n"
                   "# topright 34.903000 69.005000\n")


def _pgm(path, *, projection=True, pixels=760 * 1226, gz=True, size=b"760 1226"):
    header = (b"P5\n# obstime 201705091045\n# param CorrectedReflectivity\n"
              b"# metersperpixel_x 999.674053\n# metersperpixel_y 999.62859\n"
              + (_FMI_PROJECTION.encode() if projection else b"") + size + b"\n255\n")
    data = header + bytes(pixels)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _one_line(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---------------------------------------------------------------- ODIM
@pytest.mark.parametrize("reader", [None, "odim"])
def test_odim_truncated(tmp_path, reader):
    p = _truncate(_odim(tmp_path / "comp.h5"))
    with pytest.raises(InputFileError, match="truncated") as e:
        io.read(p, reader=reader)
    _one_line(e, p)


def test_odim_corrupt_data_chunk(tmp_path):
    p = _odim(tmp_path / "comp.h5", shape=(40, 50))
    with h5py.File(p) as h:
        offset = h["dataset1/data1/data"].id.get_chunk_info(0).byte_offset
    raw = bytearray(p.read_bytes())
    raw[offset:offset + 16] = b"\xff" * 16  # garble the start of the deflate stream
    p.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match="unreadable HDF5") as e:
        io.read(p)
    _one_line(e, p)


def test_odim_unknown_quantity(tmp_path):
    p = _odim(tmp_path / "vrad.h5", quantity="VRADH")
    with pytest.raises(InputFileError, match=r"unsupported ODIM quantity \['VRADH'\]") as e:
        io.read(p)
    _one_line(e, p)


def test_odim_requested_quantity(tmp_path):
    p = _odim(tmp_path / "comp.h5")
    with pytest.raises(InputFileError, match="'TH' is not supported") as e:
        io.read(p, variable="TH")
    _one_line(e, p)
    with pytest.raises(InputFileError, match=r"'RATE' not in the file; found \['DBZH'\]"):
        io.read(p, variable="RATE")


def test_odim_without_projection(tmp_path):
    p = _odim(tmp_path / "comp.h5", where=False)
    with pytest.raises(InputFileError, match="lacks.*projdef") as e:
        io.read(p)
    _one_line(e, p)


def test_odim_polar_volume(tmp_path):
    p = _odim(tmp_path / "pvol.h5", obj="PVOL")
    with pytest.raises(InputFileError, match="'PVOL' is not a Cartesian product"):
        io.read(p)


def test_odim_inconsistent_corners(tmp_path):
    p = _odim(tmp_path / "comp.h5", shape=(3, 8))  # corners span 4 km, 8 cells of 1 km
    with pytest.raises(InputFileError, match="corners span") as e:
        io.read(p)
    _one_line(e, p)


# ---------------------------------------------------------------- MeteoSwiss GIF
@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_gif_truncated(tmp_path, keep):
    p = _truncate(_gif(tmp_path / "AQC151351545F_00005.801.gif"), keep)
    with pytest.raises(InputFileError, match="unreadable GIF") as e:
        io.read(p)
    _one_line(e, p)


def test_gif_header_with_huge_size(tmp_path):
    p = _gif(tmp_path / "AQC151351545F_00005.801.gif")
    data = bytearray(p.read_bytes())
    data[6:10] = b"\xff\xff\xff\xff"  # logical screen 65535 x 65535
    p.write_bytes(bytes(data))
    with pytest.raises(InputFileError, match="implausible size") as e:
        io.read(p)
    _one_line(e, p)


def test_gif_unknown_palette(tmp_path):
    rainbow = np.stack([np.arange(256), np.arange(256)[::-1], np.full(256, 7)], axis=1)
    p = _gif(tmp_path / "AQC151351545F_00005.801.gif", palette=rainbow)
    with pytest.raises(InputFileError, match="unknown palette") as e:
        io.read(p)
    _one_line(e, p)


@pytest.mark.parametrize(("comment", "match"), [
    ("PRDT=AQC151351545 COLOR=metranet ACCUm=000005", "unknown palette COLOR='metranet'"),
    ("PRDT=RZC151351545 COLOR=reddish ACCUm=000005", "product 'RZC' is not supported"),
    ("COLOR=reddish ACCUm=000005", "no product/time"),
    ("PRDT=AQC151351545 COLOR=reddish ACCUm=0", "ACCUm=0 minutes"),
])
def test_gif_bad_comment(tmp_path, comment, match):
    p = _gif(tmp_path / "composite.gif", comment=comment)
    with pytest.raises(InputFileError, match=match) as e:
        io.read(p)
    _one_line(e, p)


def test_gif_wrong_size(tmp_path):
    p = _gif(tmp_path / "AQC151351545F_00005.801.gif", size=(100, 80))
    with pytest.raises(InputFileError, match="expected 710x640") as e:
        io.read(p)
    _one_line(e, p)


# ---------------------------------------------------------------- FMI PGM
def test_pgm_gzip_truncated(tmp_path):
    p = _truncate(_pgm(tmp_path / "fmi.pgm.gz"))
    with pytest.raises(InputFileError, match="truncated or corrupt compressed") as e:
        io.read(p)
    _one_line(e, p)


def test_pgm_pixels_truncated(tmp_path):
    p = _pgm(tmp_path / "fmi.pgm", pixels=1000, gz=False)
    with pytest.raises(InputFileError, match="1000 pixel bytes.*truncated") as e:
        io.read(p)
    _one_line(e, p)


def test_pgm_without_projection(tmp_path):
    p = _pgm(tmp_path / "fmi.pgm.gz", projection=False)
    with pytest.raises(InputFileError, match="no projection") as e:
        io.read(p)
    _one_line(e, p)


def test_pgm_bad_header_token(tmp_path):
    p = _pgm(tmp_path / "fmi.pgm.gz", size=b"760 abc")
    with pytest.raises(InputFileError, match="'abc' is not a number") as e:
        io.read(p)
    _one_line(e, p)


def test_pgm_size_disagrees_with_corners(tmp_path):
    p = _pgm(tmp_path / "fmi.pgm.gz", size=b"700 1226", pixels=700 * 1226)
    with pytest.raises(InputFileError, match="corners span") as e:
        io.read(p)
    _one_line(e, p)


@pytest.mark.realdata
def test_real_files_truncated(shared_data, tmp_path):
    radar = shared_data / "radar"
    if not radar.is_dir():
        pytest.skip(f"{radar} is absent")
    for pattern in ("opera-cirrus/*/*.hdf", "mch/*/*.gif", "fmi/*/*.pgm.gz"):
        src = sorted(radar.glob(pattern))[0]
        p = tmp_path / src.name
        p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        with pytest.raises(InputFileError, match="truncated") as e:
            io.read(p)
        _one_line(e, p)


# ---------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)),
                                        min_size=1, max_size=8)),
)


@functools.cache
def _valid_bytes(kind: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = {"odim": lambda: _odim(Path(tmp) / "c.h5"),
                "gif": lambda: _gif(Path(tmp) / "AQC151351545F_00005.801.gif"),
                "pgm": lambda: _pgm(Path(tmp) / "f.pgm", gz=False),
                "pgm.gz": lambda: _pgm(Path(tmp) / "f.pgm.gz")}[kind]()
        return path.read_bytes()


@pytest.mark.parametrize("kind", ["odim", "gif", "pgm", "pgm.gz"])
@FUZZ
@given(mutation=MUTATIONS)
def test_fuzzed_radar_file(kind, mutation):
    """Truncated or bit-flipped files: a valid field or a PrecipdiffError, never a traceback."""
    data = bytearray(_valid_bytes(kind))
    how, arg = mutation
    if how == "truncate":
        data = data[: int(arg * len(data))]
    else:
        for where, xor in arg:
            data[min(int(where * len(data)), len(data) - 1)] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzzed.{kind}"
        path.write_bytes(bytes(data))
        try:
            out = io.read(path)
        except PrecipdiffError as exc:
            assert "\n" not in str(exc)
        else:
            assert isinstance(out, xr.DataArray) and out.dtype == np.float32


# ---------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("kind", ["odim", "gif", "pgm"])
def test_cli_predict_bad_radar_file(tmp_path, kind):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = {"odim": lambda: _truncate(_odim(inputs / "comp.h5")),
           "gif": lambda: _gif(inputs / "AQC151351545F_00005.801.gif",
                               palette=np.zeros((256, 3), np.uint8) + 9),
           "pgm": lambda: _pgm(inputs / "fmi.pgm.gz", projection=False)}[kind]()
    out = tmp_path / "out" / "x.nc"
    out.parent.mkdir()
    res = subprocess.run([sys.executable, "-m", "precipdiff", "predict", str(bad), "--output",
                          str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and bad.name in lines[0], res.stderr
    assert not list(out.parent.iterdir()) and sorted(inputs.iterdir()) == [bad]
