"""MeteoSwiss radar precipitation composites as 8-bit palette GIF (AQC / CPC products).

What the real files hold (``radar/mch/*/AQCyyJJJhhmmF_00005.801.gif``): a 710 × 640 GIF89a
whose pixels are palette indices 0…255 and whose comment reads e.g. ``PRDT=AQC151351545
SCALE=mmh2LASSEN8bitmm_mn COLOR=reddish ACCUm=000005``: product AQC (ACQUIRE, the real-time
radar-only QPE), year 2015, day 135, 15:45 UTC, the 8-bit "LASSEN" precipitation scale, the
"reddish" colour table and a 5-minute accumulation.

The colour table is the data. Each colour of the "reddish" table stands for one class
``n = 0…255``: colour ``(255, 255 − n, 255 − n)`` for n ≤ 254 and black ``(0, 0, 0)`` for 255
(checked on all 120 real files: every palette entry follows it). A file's palette is decoded
colour by colour (so a re-indexed palette still reads); a colour used by any pixel that is not in
the table raises :class:`InputFileError` (unknown palette, e.g. the RZC product's "Metranet" RGB
table, which this reader does not carry). The classes code MeteoSwiss's 8-bit scale (Joss et al.
1998, *Operational Use of Radar for Precipitation Measurements in Switzerland*, vdf ETH Zürich;
the same coding the MeteoSwiss AQC/CPC GIF archive documents, and pysteps' ``import_mch_gif``
implements — our test oracle):

- n = 2…250: a reflectivity level ``dBZ = (n − 71.5) / 2`` turned into precipitation with the
  MeteoSwiss Z–R relation ``Z = 316 R^1.5`` (:data:`reflectivity.NETWORK_ZR` ``"meteoswiss"``),
  giving the amount in mm over the product's accumulation period (``ACCUm`` minutes);
- n = 0, 1 and 251…254: no precipitation (0); n = 255 (black): no data (NaN).

Grid: the Swiss radar composite grid "CCS4": 710 columns × 640 rows of 1 km on the Swiss
LV03 projection (CH1903 / LV03, EPSG:21781, oblique Mercator on the Bessel ellipsoid), outer
edges x 255…965 km, y −160…480 km (MeteoSwiss product documentation); first row = north.

Returned: float32 DataArray (time, y, x), ``units="mm"``, ``accumulation="5min"`` (from
``ACCUm``), ``semantics="accumulation"``, labelled with the end of the period; x/y in metres,
2-D ``lat``/``lon`` (WGS 84), CRS attrs.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image, UnidentifiedImageError

from precipdiff.errors import InputFileError
from precipdiff.io import _projected, reflectivity
from precipdiff.io._common import BBox, content_errors, crop_2d, finalize, require_file

log = logging.getLogger(__name__)

GIF_MAGIC = (b"GIF87a", b"GIF89a")
CRS = "EPSG:21781"
CCS4 = {"x0": 255000.0, "y0": -160000.0, "dx": 1000.0, "dy": 1000.0, "nx": 710, "ny": 640}
PRODUCTS = ("AQC", "CPC")  # products coded on the 8-bit scale with the reddish table
NODATA_CLASS = 255
_PRDT_RE = re.compile(r"(AQC|CPC|RZC|AZC|[A-Z]{3})(\d{2})(\d{3})(\d{4})")


def reddish_palette() -> np.ndarray:
    """The "reddish" colour table (256, 3) uint8: class n → (255, 255 − n, 255 − n); 255 → black."""
    n = np.arange(256)
    pal = np.stack([np.full(256, 255), 255 - n, 255 - n], axis=1)
    pal[NODATA_CLASS] = 0
    return pal.astype(np.uint8)


def class_values(zr: reflectivity.ZR = reflectivity.NETWORK_ZR["meteoswiss"]) -> np.ndarray:
    """Amount (mm per accumulation period) of each class 0…255, float32; 255 → NaN."""
    n = np.arange(256, dtype=np.float64)
    dbz = (n - 71.5) / 2.0
    values = (10.0 ** (dbz / 10.0) / zr.a) ** (1.0 / zr.b)
    values[(n < 2) | ((n > 250) & (n < NODATA_CLASS))] = 0.0
    values[NODATA_CLASS] = np.nan
    return values.astype(np.float32)


def _comment(info: dict) -> dict[str, str]:
    text = info.get("comment", b"")
    text = text.decode("latin-1") if isinstance(text, bytes) else str(text)
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", text))


def _time(meta: dict, path: os.PathLike) -> tuple[str, np.datetime64]:
    """(product, time) from the comment's ``PRDT`` or else the file name (``AQCyyJJJhhmm``)."""
    m = _PRDT_RE.match(meta.get("PRDT", "")) or _PRDT_RE.search(os.path.basename(path))
    if not m:
        raise InputFileError(path, "no product/time (PRDT=AQCyyJJJhhmm in the GIF comment or the "
                             "file name); expected a MeteoSwiss composite")
    product, yy, doy, hhmm = m.groups()
    year = 2000 + int(yy) if int(yy) < 70 else 1900 + int(yy)
    try:
        t = (pd.Timestamp(year=year, month=1, day=1) + pd.Timedelta(days=int(doy) - 1)
             + pd.Timedelta(hours=int(hhmm[:2]), minutes=int(hhmm[2:])))
    except ValueError as exc:
        raise InputFileError(path, f"product time {m.group(0)!r} not understood") from exc
    if not 1 <= int(doy) <= 366:
        raise InputFileError(path, f"day of year {doy} in {m.group(0)!r} is out of range")
    return product, np.datetime64(t, "ns")


def _decode(img: Image.Image, path: os.PathLike) -> np.ndarray:
    """Amounts (mm) of the image's pixels, decoded through its palette's colours."""
    if img.mode != "P":
        raise InputFileError(path, f"GIF mode {img.mode!r}; expected a palette image ('P')")
    index = np.asarray(img)
    raw = img.getpalette() or []
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(raw) // 3] = np.asarray(raw, np.uint8).reshape(-1, 3)[:256]
    known = {tuple(c): n for n, c in enumerate(reddish_palette().tolist())}
    used = np.flatnonzero(np.bincount(index.ravel(), minlength=256))
    unknown = [int(i) for i in used if tuple(pal[i].tolist()) not in known]
    if unknown:
        i = unknown[0]
        raise InputFileError(path, f"unknown palette: {len(unknown)} colours used by pixels are "
                             f"not in MeteoSwiss's 'reddish' table (e.g. index {i} = "
                             f"{tuple(pal[i].tolist())}); expected an AQC/CPC composite")
    classes = np.array([known.get(tuple(c), NODATA_CLASS) for c in pal.tolist()], np.uint8)
    return class_values()[classes[index]]


@content_errors("MeteoSwiss GIF")
def read_meteoswiss(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    bbox: BBox | None = None,
    allow_all_nan: bool = False,
) -> xr.DataArray:
    """Read a MeteoSwiss AQC/CPC palette GIF: amount in mm over its accumulation period.

    Parameters
    ----------
    variable : ignored (one field per file); accepted for a uniform reader signature.
    bbox : (lon_min, lat_min, lon_max, lat_max); crops the rows/columns covering it.
    """
    path = require_file(path)
    try:
        with Image.open(path) as img:
            if img.format != "GIF":
                raise InputFileError(path, f"image format {img.format}; expected a GIF")
            img.load()
            meta = _comment(img.info)
            amounts = _decode(img, path)
    except Image.DecompressionBombError as exc:  # a corrupt header claiming a huge image
        raise InputFileError(path, f"GIF header gives an implausible size ({exc}); expected "
                             f"{CCS4['nx']}x{CCS4['ny']}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputFileError(path, f"unreadable GIF (truncated or corrupt?): "
                             f"{' '.join(str(exc).split())[:160]}") from exc
    color = meta.get("COLOR", "reddish")
    if color != "reddish":
        raise InputFileError(path, f"unknown palette COLOR={color!r} in the GIF comment; "
                             "expected 'reddish' (AQC/CPC 8-bit scale)")
    product, time = _time(meta, path)
    if product not in PRODUCTS:
        raise InputFileError(path, f"MeteoSwiss product {product!r} is not supported; expected "
                             f"one of {list(PRODUCTS)} (the 8-bit scale with the reddish table)")
    shape = (CCS4["ny"], CCS4["nx"])
    if amounts.shape != shape:
        raise InputFileError(path, f"image is {amounts.shape[1]}x{amounts.shape[0]} pixels; "
                             f"expected {shape[1]}x{shape[0]} (the CCS4 Swiss composite grid)")
    try:
        minutes = int(meta.get("ACCUm", "5"))
    except ValueError:
        raise InputFileError(path, f"ACCUm={meta['ACCUm']!r} in the GIF comment is not a number "
                             "of minutes") from None
    if minutes <= 0:
        raise InputFileError(path, f"ACCUm={minutes} minutes; expected a positive period")
    coords, latlon, grid_attrs = _projected.grid_coords(_projected.parse_crs(CRS, path), CRS,
                                                        **CCS4)
    zr = reflectivity.NETWORK_ZR["meteoswiss"]
    attrs = {"accumulation": f"{minutes}min", "semantics": "accumulation",
             "time_label": "end of the accumulation period", "mch_product": product,
             "mch_scale": meta.get("SCALE", ""), "mch_palette": color,
             "class_coding": f"dBZ = (n - 71.5)/2, Z = {zr.a:g} R^{zr.b:g} "
                             "(MeteoSwiss 8-bit scale)", **grid_attrs}
    da = finalize(np.ascontiguousarray(amounts[::-1])[None], {"time": [time], **coords},
                  ("time", "y", "x"), path=path, variable=product, units="mm",
                  product=f"MeteoSwiss {product}", attrs=attrs, allow_all_nan=allow_all_nan)
    return crop_2d(_projected.attach_latlon(da, latlon), bbox, path)
