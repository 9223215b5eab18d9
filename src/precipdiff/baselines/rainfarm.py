"""RainFARM stochastic downscaling (Rebora et al. 2006), an adapter over pysteps.

``pysteps.downscaling.rainfarm.downscale`` draws from NumPy's *global* legacy random state and
has no generator argument. The adapter seeds that state from an explicit
``numpy.random.Generator`` for every member and field, and restores the previous global state
afterwards, so equal seeds give equal ensembles (not thread-safe: pysteps' RNG is global).
Missing coarse cells are filled with 0 for the FFT and are NaN again in all their fine cells.

References
----------
Rebora, N., Ferraris, L., von Hardenberg, J., Provenzale, A. (2006): RainFARM: rainfall
downscaling by a filtered autoregressive model. J. Hydrometeor. 7, 724-738.
D'Onofrio, D., et al. (2014): Stochastic rainfall downscaling of climate models.
J. Hydrometeor. 15, 830-843.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import xarray as xr

from precipdiff.errors import ConfigError
from precipdiff.grid import Grid

__all__ = ["rainfarm"]

log = logging.getLogger(__name__)


def _pysteps_downscale():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pysteps.downscaling.rainfarm import downscale
    except ImportError as exc:
        raise ConfigError(
            "the RainFARM baseline needs pysteps: pip install 'precipdiff[baselines]' "
            f"(pysteps<2); import failed: {exc}") from exc
    return downscale


@contextlib.contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()  # noqa: NPY002 (pysteps draws from the global state)
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def rainfarm(lr: xr.DataArray, factor: int, *, members: int = 4,
             rng: np.random.Generator | int | None = 0, alpha: float | None = None,
             spectral_fusion: bool = False, kernel_type: str | None = None,
             threshold: float | None = None) -> xr.DataArray:
    """Downscale ``lr`` ``(time, lat, lon)`` by ``factor`` into ``(member, time, lat, lon)``.

    ``alpha`` is the spectral slope (estimated from each coarse field when None);
    ``spectral_fusion``/``kernel_type``/``threshold`` are passed to pysteps. RainFARM
    conserves the coarse-cell means of the input (with ``kernel_type=None``).
    """
    downscale = _pysteps_downscale()
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    da = lr.transpose("time", "lat", "lon")
    values = np.asarray(da.values, dtype=np.float64)
    missing = np.isnan(values)
    nt, ny, nx = values.shape
    out = np.empty((members, nt, ny * factor, nx * factor), dtype=np.float32)
    for m in range(members):
        for t in range(nt):
            coarse = np.nan_to_num(values[t], nan=0.0)
            seed = int(gen.integers(2**32))
            if np.ptp(coarse) == 0:  # no structure to extrapolate: the uniform field itself
                out[m, t] = max(float(coarse.flat[0]), 0.0)
                continue
            try:
                with _global_seed(seed):
                    field = downscale(coarse, ds_factor=factor, alpha=alpha,
                                      threshold=threshold, kernel_type=kernel_type,
                                      spectral_fusion=spectral_fusion)
            except ValueError as exc:  # pysteps finds no usable spectrum
                raise ConfigError(f"RainFARM: field {t} ({ny} x {nx} cells) gives no spectral "
                                  f"slope ({exc}); pass alpha") from None
            out[m, t] = np.maximum(np.nan_to_num(field, nan=0.0), 0.0)
    fine_missing = np.repeat(np.repeat(missing, factor, axis=1), factor, axis=2)
    out[:, fine_missing] = np.nan
    fine = Grid.from_dataarray(da).refine(factor)
    log.debug("RainFARM: %d members x %d fields, factor %d", members, nt, factor)
    return xr.DataArray(
        out, dims=("member", "time", "lat", "lon"),
        coords={"member": np.arange(members), "time": da["time"].values,
                "lat": fine.lat, "lon": fine.lon},
        attrs={**da.attrs, "baseline": "rainfarm"}, name=lr.name)
