"""Readers (IMERG, MRMS, GRIB, NetCDF/zarr, RADOLAN; radar composites: ODIM HDF5, MeteoSwiss
GIF, FMI PGM) and CF writers.

Every reader returns a float32 ``xarray.DataArray`` (time, lat, lon) — or (time, y, x) for
projected grids — with attrs ``units`` (``mm/h``, or ``mm`` plus ``accumulation``),
``source_file`` and ``product``, and NaN for missing data. The radar readers keep the network's
own grid (x/y in metres, CRS in ``crs``/``crs_wkt``/``grid_mapping_attrs``), declare
``semantics`` (``instantaneous`` or ``accumulation``) and record the Z–R relation used to turn
reflectivity into rain rate (:mod:`precipdiff.io.reflectivity`).
"""

from precipdiff.io.grib import read_grib_levels
from precipdiff.io.netcdf import read_netcdf_levels
from precipdiff.io.registry import READERS, detect_reader, get_reader, read, read_many
from precipdiff.io.write import write_netcdf, write_zarr

__all__ = [
    "READERS",
    "detect_reader",
    "get_reader",
    "read",
    "read_grib_levels",
    "read_many",
    "read_netcdf_levels",
    "write_netcdf",
    "write_zarr",
]
