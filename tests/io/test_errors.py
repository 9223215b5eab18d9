"""Bad input gives a one-line InputFileError naming the file and the problem."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from precipdiff import io
from precipdiff.errors import InputFileError, UnknownMethodError


def _one_line(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.grib2"
    with pytest.raises(InputFileError, match="does not exist") as e:
        io.read(p)
    _one_line(e, p)


def test_unrecognised_content(tmp_path):
    p = tmp_path / "junk.bin"
    p.write_bytes(b"hello world" * 10)
    with pytest.raises(InputFileError, match="unrecognised file content") as e:
        io.detect_reader(p)
    _one_line(e, p)


def test_wrong_variable(field, tmp_path):
    p = io.write_netcdf(field, tmp_path / "f.nc")
    with pytest.raises(InputFileError, match="variable not found") as e:
        io.read(p, variable="rainfall")
    assert "'rainfall'" in _one_line(e, p)


def test_no_precip_variable(field, tmp_path):
    p = io.write_netcdf(field.rename("temperature").assign_attrs(units="K"), tmp_path / "t.nc")
    with pytest.raises(InputFileError, match="no precipitation variable"):
        io.read(p)


def test_unknown_units(field, tmp_path):
    p = io.write_netcdf(field.assign_attrs(units="inches/fortnight"), tmp_path / "u.nc")
    with pytest.raises(InputFileError, match="unknown precipitation units") as e:
        io.read(p, variable="precip")
    _one_line(e, p)


def test_all_nan(field, tmp_path):
    p = io.write_netcdf(field * np.nan, tmp_path / "nan.nc")
    with pytest.raises(InputFileError, match="entirely missing"):
        io.read(p)
    assert io.read(p, allow_all_nan=True).isnull().all()


def test_negative_values(field, tmp_path):
    bad = field.copy()
    bad[0, 5, 5] = -2.5
    p = io.write_netcdf(bad, tmp_path / "neg.nc")
    with pytest.raises(InputFileError, match="1 negative values") as e:
        io.read(p)
    _one_line(e, p)


def test_bbox_outside(field, tmp_path):
    p = io.write_netcdf(field, tmp_path / "f.nc")
    with pytest.raises(InputFileError, match="does not overlap"):
        io.read(p, bbox=(10.0, 10.0, 11.0, 11.0))


def test_read_many_duplicate_times(field, tmp_path):
    a = io.write_netcdf(field, tmp_path / "a.nc")
    b = io.write_netcdf(field.isel(time=[2]), tmp_path / "b.nc")
    with pytest.raises(InputFileError, match="already read"):
        io.read_many([a, b])
    later = field.isel(time=[0]).assign_coords(time=[np.datetime64("2021-07-07", "ns")])
    c = io.write_netcdf(later, tmp_path / "c.nc")
    out = io.read_many([c, a])
    assert out.sizes["time"] == 4 and np.all(np.diff(out.time.values) > np.timedelta64(0))


def test_read_many_different_grids(field, tmp_path):
    a = io.write_netcdf(field.isel(time=[0]), tmp_path / "a.nc")
    b = io.write_netcdf(field.isel(time=[1], lon=slice(1, None)), tmp_path / "b.nc")
    with pytest.raises(InputFileError, match="different grids"):
        io.read_many([a, b])


def test_unknown_reader_name():
    with pytest.raises(UnknownMethodError, match="unknown reader 'hdf4'; available: .*netcdf"):
        io.get_reader("hdf4")
    assert io.get_reader("NetCDF") is io.get_reader("netcdf")  # names are case-insensitive


# --- truncated copies of real files (written to tmp_path only) ---

TRUNCATE = [
    ("imerg/3B-HHR.MS.MRG.3IMERG.20170103-S110000-E112959.0660.V06B.HDF5.SUB.hdf5", None),
    ("mrms/2021-07-06/PrecipRate_00.00_20210706-000000.grib2", "mrms"),
    ("nwp/20250912120000-0h-oper-fc.grib2.89.xz", "grib"),
    ("nwp/tp_on_different_grid_resolutions.grib", "grib"),
    ("other/CMORPH_V1.0_ADJ_0.25deg-HLY_2017010101.nc", None),
    ("other/ST4.2005010100.01h", "grib"),
    ("radolan/RW-20221018.tar.gz", "radolan"),
]


@pytest.mark.realdata
@pytest.mark.parametrize("rel, reader", TRUNCATE)
def test_truncated_real_file(shared_data, tmp_path, rel, reader):
    src = shared_data / rel
    data = src.read_bytes()
    p = tmp_path / src.name
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputFileError) as e:
        io.read(p, reader=reader)
    _one_line(e, p)


@pytest.mark.realdata
def test_corrupt_gz_mrms(shared_data, tmp_path):
    raw = (shared_data / "mrms/2021-07-06/PrecipRate_00.00_20210706-000000.grib2").read_bytes()
    p = tmp_path / "x.grib2.gz"
    p.write_bytes(gzip.compress(raw[:200_000], compresslevel=1)[:50_000])
    with pytest.raises(InputFileError, match="corrupt|truncated") as e:
        io.read(p, reader="mrms")
    _one_line(e, p)
