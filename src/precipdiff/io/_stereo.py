"""North-polar stereographic projection on a sphere (RADOLAN, HRAP / Stage IV).

Snyder (1987), *Map Projections — A Working Manual*, eqs. 21-5, 21-7 with true scale at
``lat_ts``: ``rho = 2 R k0 tan(pi/4 - phi/2)``, ``k0 = (1 + sin(lat_ts)) / 2``,
``x = rho sin(lam - lam0)``, ``y = -rho cos(lam - lam0)``.
"""

from __future__ import annotations

import numpy as np


def forward(lat, lon, *, lon_0: float, lat_ts: float, radius: float):
    """Degrees → projected (x, y) in the units of ``radius``."""
    phi, lam = np.radians(lat), np.radians(np.asarray(lon) - lon_0)
    k0 = (1 + np.sin(np.radians(lat_ts))) / 2
    rho = 2 * radius * k0 * np.tan(np.pi / 4 - phi / 2)
    return rho * np.sin(lam), -rho * np.cos(lam)


def inverse(x, y, *, lon_0: float, lat_ts: float, radius: float):
    """Projected (x, y) in the units of ``radius`` → (lat, lon) in degrees, lon in −180…180."""
    k0 = (1 + np.sin(np.radians(lat_ts))) / 2
    rho = np.hypot(x, y)
    lat = np.degrees(np.pi / 2 - 2 * np.arctan(rho / (2 * radius * k0)))
    lon = lon_0 + np.degrees(np.arctan2(x, -np.asarray(y)))
    return lat, ((lon + 180.0) % 360.0) - 180.0


def proj4(*, lon_0: float, lat_ts: float, radius_m: float) -> str:
    """PROJ string of the projection (sphere, metres)."""
    return (
        f"+proj=stere +lat_0=90 +lat_ts={lat_ts:g} +lon_0={lon_0:g} "
        f"+a={radius_m:g} +b={radius_m:g} +x_0=0 +y_0=0 +units=m +no_defs"
    )


def grid_mapping_attrs(*, lon_0: float, lat_ts: float, radius_m: float) -> dict:
    """CF ``grid_mapping`` attributes of the projection."""
    return {
        "grid_mapping_name": "polar_stereographic",
        "straight_vertical_longitude_from_pole": float(lon_0),
        "latitude_of_projection_origin": 90.0,
        "standard_parallel": float(lat_ts),
        "earth_radius": float(radius_m),
        "false_easting": 0.0,
        "false_northing": 0.0,
        "proj4": proj4(lon_0=lon_0, lat_ts=lat_ts, radius_m=radius_m),
    }
