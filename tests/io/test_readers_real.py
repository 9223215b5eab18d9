"""Every reader on the real files in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import gzip
import lzma
import tarfile

import h5py
import numpy as np
import pytest

from precipdiff import io
from precipdiff.errors import InputFileError
from precipdiff.io._eccodes import eccodes

pytestmark = pytest.mark.realdata

IMERG_SUB = "imerg/3B-HHR.MS.MRG.3IMERG.20170103-S110000-E112959.0660.V06B.HDF5.SUB.hdf5"
IMERG_V06 = "imerg/3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V06B.HDF5"
IMERG_V07 = "imerg/3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5"
MRMS = "mrms/2019-06-10/PrecipRate_00.00_20190610-000000.grib2"
QPE_RADAR = "mrms/2021-07-06/RadarOnly_QPE_01H_00.00_20210706-000000.grib2"
QPE_MS = "mrms/2021-07-06/MultiSensor_QPE_01H_Pass2_00.00_20210706-000000.grib2"
IFS = "nwp/20250912120000-0h-oper-fc.grib2.89.xz"
TP2 = "nwp/tp_on_different_grid_resolutions.grib"
ST4 = "other/ST4.2005010100.01h"
CMORPH = "other/CMORPH_V1.0_ADJ_0.25deg-HLY_2017010101.nc"
RADOLAN = "radolan/RW-20221018.tar.gz"


def _raw_grib(path, key="values"):
    with open(path, "rb") as fh:
        h = eccodes.codes_grib_new_from_file(fh)
    try:
        return eccodes.codes_get_array(h, key)
    finally:
        eccodes.codes_release(h)


@pytest.fixture(scope="module")
def mrms_frame(shared_data):
    return io.read(shared_data / MRMS)


def _check_common(da, dims=("time", "lat", "lon")):
    assert da.dims == dims
    assert da.dtype == np.float32
    assert {"units", "source_file", "product"} <= set(da.attrs)
    if dims[1] == "lat":
        assert np.all(np.diff(da.lat) > 0) and np.all(np.diff(da.lon) > 0)
        assert da.lon.min() >= -180 and da.lon.max() <= 180


def test_imerg_subset(shared_data):
    da = io.read(shared_data / IMERG_SUB)
    _check_common(da)
    assert da.shape == (1, 250, 570)
    assert da.attrs["units"] == "mm/h"
    assert da.time.values[0] == np.datetime64("2017-01-03T11:00")
    assert float(da.lat.min()) == pytest.approx(24.05)
    assert float(da.lon.max()) == pytest.approx(-67.05)
    assert float(da.max()) == pytest.approx(19.0, abs=0.05)
    # (time, lon, lat) storage transposed: compare one pixel with the raw dataset
    with h5py.File(shared_data / IMERG_SUB) as h:
        raw = h["precipitationCal"][0]
    j, i = np.unravel_index(np.argmax(raw), raw.shape)  # raw is (lon, lat)
    assert float(da[0, i, j]) == float(da.max())


def test_imerg_crop_on_read(shared_data):
    full = io.read(shared_data / IMERG_SUB)
    bbox = (-100.0, 30.0, -90.0, 40.0)
    crop = io.read(shared_data / IMERG_SUB, bbox=bbox)
    ref = full.sel(lat=slice(30, 40), lon=slice(-100, -90))
    assert crop.shape == ref.shape == (1, 100, 100)
    np.testing.assert_array_equal(crop.values, ref.values)


def test_imerg_v07_gps_epoch(shared_data):
    da = io.read(shared_data / IMERG_V07)
    _check_common(da)
    assert da.attrs["product"].startswith("IMERG V07")
    assert da.time.values[0] == np.datetime64("2000-06-01T00:00")  # 643852800 s after 1980-01-06
    assert da.shape == (1, 10, 10) and float(da.lat.min()) == pytest.approx(-89.95)
    assert np.isnan(da).any() and float(da.max()) == 0.0  # fill -> NaN, rest 0


def test_imerg_v06_fixture_is_all_fill(shared_data):
    with pytest.raises(InputFileError, match="entirely missing"):
        io.read(shared_data / IMERG_V06)
    da = io.read(shared_data / IMERG_V06, allow_all_nan=True)
    assert da.isnull().all() and da.time.values[0] == np.datetime64("2000-06-01T00:00")


def test_mrms_full_frame(shared_data, mrms_frame):
    da = mrms_frame
    _check_common(da)
    assert da.shape == (1, 3500, 7000)
    assert da.attrs["units"] == "mm/h" and da.attrs["mrms_product"] == "PrecipRate"
    assert (float(da.lat[0]), float(da.lat[-1])) == pytest.approx((20.005, 54.995))
    assert (float(da.lon[0]), float(da.lon[-1])) == pytest.approx((-129.995, -60.005))
    assert float(da.max()) == pytest.approx(148.8, abs=0.05)
    raw = _raw_grib(shared_data / MRMS).reshape(3500, 7000)
    # -3 sentinel -> NaN, exactly where the raw field is negative; rows flipped north->south
    np.testing.assert_array_equal(np.isnan(da.values[0]), raw[::-1] < 0)
    assert np.count_nonzero(raw == -3) == int(da.isnull().sum()) > 0
    row = int(np.argmax((raw > 0).sum(axis=1)))  # wettest stored row (north->south order)
    np.testing.assert_allclose(da.values[0, 3499 - row], np.where(raw[row] < 0, np.nan, raw[row]),
                               atol=1e-4)
    wet = float((da > 0.1).sum() / da.notnull().sum())
    assert 0.01 < wet < 0.2


def test_mrms_crop_matches_full(shared_data, mrms_frame):
    bbox = (-100.0, 35.0, -95.0, 40.0)
    crop = io.read(shared_data / MRMS, bbox=bbox)
    ref = mrms_frame.sel(lat=slice(35, 40), lon=slice(-100, -95))
    assert crop.shape == ref.shape == (1, 500, 500)
    np.testing.assert_array_equal(crop.values, ref.values)


def test_mrms_gz(shared_data, tmp_path, mrms_frame):
    gz = tmp_path / "frame.grib2.gz"
    gz.write_bytes(gzip.compress((shared_data / MRMS).read_bytes(), compresslevel=1))
    assert io.detect_reader(gz) == "mrms"
    da = io.read(gz, bbox=(-100.0, 35.0, -99.0, 36.0))
    ref = mrms_frame.sel(lat=slice(35, 36), lon=slice(-100, -99))
    np.testing.assert_array_equal(da.values, ref.values)


@pytest.mark.parametrize("name, product", [(QPE_RADAR, "RadarOnly_QPE_01H"),
                                           (QPE_MS, "MultiSensor_QPE_01H_Pass2")])
def test_mrms_qpe_is_accumulation(shared_data, name, product):
    da = io.read(shared_data / name, bbox=(-90.0, 30.0, -80.0, 40.0))
    assert da.attrs["units"] == "mm" and da.attrs["accumulation"] == "1h"
    assert da.attrs["mrms_product"] == product
    assert da.time.values[0] == np.datetime64("2021-07-06T00:00")
    assert float(da.min()) >= 0


def test_grib_tprate_xz(shared_data):
    da = io.read(shared_data / IFS)
    _check_common(da)
    assert da.shape == (1, 721, 1440) and da.attrs["units"] == "mm/h"
    assert da.time.values[0] == np.datetime64("2025-09-12T12:00")
    assert float(da.lat[0]) == -90 and float(da.lon[0]) == -180 and float(da.lon[-1]) == 179.75
    with lzma.open(shared_data / IFS) as fh:
        raw = fh.read()
    h = eccodes.codes_new_from_message(raw)
    vals = eccodes.codes_get_values(h).reshape(721, 1440)
    eccodes.codes_release(h)
    # raw row 0 = 90N, raw column 0 = 180E (first point) = -180 after wrapping
    np.testing.assert_allclose(da.values[0, -1, 0], vals[0, 0] * 3600, rtol=1e-5)
    np.testing.assert_allclose(da.values[0, 360, 720], vals[360, 720] * 3600, rtol=1e-5)
    assert float(da.max()) == pytest.approx(vals.max() * 3600, rel=1e-5)


def test_grib_multi_grid_needs_message(shared_data):
    with pytest.raises(InputFileError, match="different grids.*message="):
        io.read(shared_data / TP2)
    a = io.read(shared_data / TP2, message=0)
    b = io.read(shared_data / TP2, message=1)
    assert a.shape == (1, 37, 72) and b.shape == (1, 46, 90)
    assert a.attrs["units"] == "mm" and a.attrs["accumulation"] == "12h"
    assert float(a.max()) == pytest.approx(52.0, abs=0.01)  # 0.052 m
    assert float(b.max()) == pytest.approx(161.13, abs=0.01)
    with pytest.raises(InputFileError, match="message=5"):
        io.read(shared_data / TP2, message=5)


def test_stage4_projected(shared_data):
    da = io.read(shared_data / ST4)
    _check_common(da, ("time", "y", "x"))
    assert da.shape == (1, 881, 1121)
    assert da.attrs["units"] == "mm" and da.attrs["accumulation"] == "1h"
    assert "+proj=stere" in da.attrs["crs"] and "+lon_0=-105" in da.attrs["crs"]
    assert da.attrs["xy_units"] == "m" and "+units=m" in da.attrs["crs"]  # metres, like radar
    assert da.attrs["grid_mapping_name"] == "polar_stereographic" and da.attrs["crs_wkt"]
    assert np.allclose(np.diff(da.x), 4763.0) and np.allclose(np.diff(da.y), 4763.0)
    lats = _raw_grib(shared_data / ST4, "latitudes").reshape(881, 1121)
    lons = _raw_grib(shared_data / ST4, "longitudes").reshape(881, 1121)
    np.testing.assert_allclose(da.lat.values, lats, atol=2e-3)
    np.testing.assert_allclose(da.lon.values, ((lons + 180) % 360) - 180, atol=2e-3)
    assert float(da.max()) == pytest.approx(13.0) and 0.3 < float(da.isnull().mean()) < 0.45
    crop = io.read(shared_data / ST4, bbox=(-100.0, 35.0, -95.0, 40.0))
    assert crop.sizes["x"] < 200 and float(crop.lat.min()) < 35.5


def test_cmorph_generic_netcdf(shared_data):
    da = io.read(shared_data / CMORPH)
    _check_common(da)
    assert da.shape == (1, 480, 1440) and da.attrs["variable"] == "cmorph"
    assert da.attrs["units"] == "mm/h"
    assert (float(da.lon[0]), float(da.lat[-1])) == pytest.approx((-179.875, 59.875))
    assert da.time.values[0] == np.datetime64("2017-01-01T01:00")
    assert float(da.max()) == pytest.approx(36.17, abs=0.01)
    crop = io.read(shared_data / CMORPH, bbox=(-10.0, -5.0, 10.0, 5.0))
    assert crop.shape == (1, 40, 80)


@pytest.fixture(scope="module")
def radolan_day(shared_data):
    """The first six hours of the day (all 24 take ~2 s more and test nothing new)."""
    with tarfile.open(shared_data / RADOLAN) as tar:
        names = sorted(tar.getnames())
    assert len(names) == 24
    return io.read(shared_data / RADOLAN, members=names[:6])


def test_radolan_tarball(radolan_day):
    da = radolan_day
    _check_common(da, ("time", "y", "x"))
    assert da.shape == (6, 900, 900)
    assert da.attrs["units"] == "mm" and da.attrs["accumulation"] == "1h"
    times = da.time.values
    assert times[0] == np.datetime64("2022-10-18T00:50") and times[-1] == np.datetime64(
        "2022-10-18T05:50")
    assert np.all(np.diff(times) == np.timedelta64(1, "h"))
    assert float(da.x[1] - da.x[0]) == pytest.approx(1000.0)  # metres, cell centres
    assert da.attrs["xy_units"] == "m" and "+units=m" in da.attrs["crs"]
    # the header's lower-left corner (xllcorner -523462, yllcorner -4658645) is the cells' edge
    assert (float(da.x[0]), float(da.y[0])) == pytest.approx((-523462 + 500, -4658645 + 500))
    # DWD's documented corner of the 900x900 grid: 46.9526 N, 3.5889 E (lower left)
    assert float(da.lat[0, 0]) == pytest.approx(46.9526, abs=0.01)
    assert float(da.lon[0, 0]) == pytest.approx(3.5889, abs=0.01)
    assert float(da.max()) == pytest.approx(32.2, abs=0.01)  # 322 in 0.1 mm, at 03:50
    assert 0.1 < float(da.isnull().mean()) < 0.25


def test_radolan_single_asc_and_members(shared_data, tmp_path, radolan_day):
    with tarfile.open(shared_data / RADOLAN) as tar:
        name = tar.getnames()[5]
        text = tar.extractfile(name).read()
    asc = tmp_path / name
    asc.write_bytes(text)
    one = io.read(asc)
    assert io.detect_reader(asc) == "radolan"
    np.testing.assert_array_equal(one.values[0], radolan_day.values[5])
    # raw value check: north row of the file is the last y row; integers are 0.1 mm
    raw = np.loadtxt(asc, skiprows=6)
    k = np.unravel_index(np.argmax(raw), raw.shape)
    assert float(one.values[0, 899 - k[0], k[1]]) == pytest.approx(raw[k] * 0.1)
    sub = io.read(shared_data / RADOLAN, members=[name])
    assert sub.sizes["time"] == 1
    with pytest.raises(InputFileError, match="not in archive"):
        io.read(shared_data / RADOLAN, members=["nope.asc"])


@pytest.mark.parametrize("rel, expected", [
    (IMERG_SUB, "imerg"), (IMERG_V07, "imerg"), (MRMS, "mrms"), (QPE_MS, "mrms"),
    (IFS, "grib"), (TP2, "grib"), (ST4, "grib"), (CMORPH, "netcdf"), (RADOLAN, "radolan")])
def test_detect_real_files(shared_data, rel, expected):
    assert io.detect_reader(shared_data / rel) == expected
