"""Extra conditioning fields for Stage II (``predict --extras FILE``): read, select, regrid.

A Stage-II model trained with extras names them in its metadata (``extra_names``, e.g.
``["t850", "u500"]``: variable + pressure level in hPa). This module reads those channels from
ERA5-style pressure-level GRIB or NetCDF files, puts them on the fine output grid (bilinear) and
matches them to the input's time steps exactly; anything missing is a one-line error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from precipdiff.errors import GridError, InputFileError
from precipdiff.grid import Grid, regrid

_NAME = re.compile(r"^([a-z]+)(\d+)$")


def parse_names(names: Sequence[str]) -> tuple[list[str], list[int]]:
    """``["t850", "u500"]`` -> variables ``["t", "u"]``, levels ``[850, 500]`` (unique, ordered)."""
    variables, levels = [], []
    for n in names:
        m = _NAME.match(n)
        if m is None:
            raise GridError(f"extra channel {n!r} is not <variable><level hPa> (e.g. 't850')")
        variables.append(m.group(1))
        levels.append(int(m.group(2)))
    return list(dict.fromkeys(variables)), list(dict.fromkeys(levels))


def _read_levels(path: Path, variables: list[str], levels: list[int]) -> xr.DataArray:
    from precipdiff.io import detect_reader
    from precipdiff.io.grib import read_grib_levels
    from precipdiff.io.netcdf import read_netcdf_levels

    reader = read_grib_levels if detect_reader(path) in ("grib", "mrms") else read_netcdf_levels
    return reader(path, variables=variables, levels=levels)


def load_extras(
    paths: Sequence[Path], names: Sequence[str], fine: Grid, times: np.ndarray
) -> xr.DataArray:
    """Channels ``names`` from ``paths`` as (time, var, lat, lon) on ``fine`` at ``times``."""
    if not names:
        raise GridError("--extras given, but the Stage-II model was trained without extras")
    variables, levels = parse_names(names)
    found: dict[str, xr.DataArray] = {}
    for path in paths:
        da = _read_levels(Path(path), variables, levels)
        for n in da["var"].values:
            found.setdefault(str(n), da.sel(var=n))
    missing = [n for n in names if n not in found]
    if missing:
        raise InputFileError(paths[0], f"extra channels {missing} not found in the --extras files")
    out = []
    for n in names:
        field = found[n]
        absent = np.setdiff1d(times, field["time"].values)
        if absent.size:
            raise InputFileError(
                field.attrs.get("source_file", paths[0]),
                f"no {n} for input time(s) {[str(t) for t in absent[:3]]}",
            )
        out.append(regrid(field.sel(time=times), fine, method="bilinear"))
    return xr.concat(out, dim=xr.DataArray(list(names), dims="var", name="var")).transpose(
        "time", "var", "lat", "lon"
    )
