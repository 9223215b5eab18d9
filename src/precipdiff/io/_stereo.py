"""North-polar stereographic projection on a sphere (RADOLAN, HRAP / Stage IV) as a PROJ string.

The maths (forward/inverse, CF ``grid_mapping`` attributes) is pyproj's, through
:mod:`precipdiff.io._projected`; this module only spells the CRS: true scale at ``lat_ts``,
central meridian ``lon_0``, sphere of radius ``radius_m`` metres (Snyder 1987, *Map
Projections — A Working Manual*, §21), x/y in metres.
"""

from __future__ import annotations


def proj4(*, lon_0: float, lat_ts: float, radius_m: float) -> str:
    """PROJ string of the projection (sphere, metres); parameters written in full (``%g``'s six
    digits would move a 6 371 229 m sphere by a metre)."""
    return (
        f"+proj=stere +lat_0=90 +lat_ts={lat_ts:.12g} +lon_0={lon_0:.12g} "
        f"+a={radius_m:.12g} +b={radius_m:.12g} +x_0=0 +y_0=0 +units=m +no_defs"
    )
