"""Every name registry (readers, samplers, baselines): one interface per kind, one error type.

For each registry: every registered method is callable with the documented parameters, and an
unknown name raises :class:`UnknownMethodError` (a ``PrecipdiffError``) listing the known names.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import xarray as xr

from precipdiff.baselines import BASELINES, get_baseline
from precipdiff.diffusion.samplers import SAMPLERS, get_sampler
from precipdiff.errors import ConfigError, InputFileError, PrecipdiffError, UnknownMethodError
from precipdiff.io import READERS, get_reader


@dataclass(frozen=True)
class Registry:
    kind: str
    get: Callable[[str], Callable]
    table: Mapping[str, Callable]

    def interface(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(positional parameters, keyword-only parameters) that ``name`` must accept."""
        if self.kind == "reader":
            return ("path",), ("variable", "bbox")
        if self.kind == "sampler":
            return ("denoiser", "x", "sigmas"), ("cond", "generator", "callback", "disable")
        if name in ("nearest", "bilinear", "bicubic"):
            return ("lr", "factor"), ()
        if name == "rainfarm":
            return ("lr", "factor"), ("members", "rng")
        return ("src", "ref"), ()  # quantile mappings: fit on a train split


REGISTRIES = [
    Registry("reader", get_reader, READERS),
    Registry("sampler", get_sampler, SAMPLERS),
    Registry("baseline", get_baseline, BASELINES),
]
CASES = [(reg, name) for reg in REGISTRIES for name in sorted(reg.table)]


def _ids(case) -> str:
    reg, name = case
    return f"{reg.kind}-{name}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_registered_method_has_the_documented_interface(case):
    reg, name = case
    method = reg.get(name)
    assert method is reg.table[name] and callable(method)
    params = inspect.signature(method).parameters
    positional, keywords = reg.interface(name)
    kinds = [p.kind for p in params.values()]
    head = [
        p.name
        for p in params.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][: len(positional)]
    assert tuple(head) == positional, f"{reg.kind} {name}: positional {head}"
    for kw in keywords:
        assert kw in params or inspect.Parameter.VAR_KEYWORD in kinds, f"{reg.kind} {name}: {kw}"
    required = [
        p.name
        for p in params.values()
        if p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in positional
    ]
    assert not required, f"{reg.kind} {name} requires undocumented {required}"


@pytest.mark.parametrize("reg", REGISTRIES, ids=[r.kind for r in REGISTRIES])
@pytest.mark.parametrize("bad", ["no-such-method", "", None, 3])
def test_unknown_name_raises_one_error_type_listing_the_names(reg, bad):
    with pytest.raises(UnknownMethodError) as info:
        reg.get(bad)
    err = info.value
    assert isinstance(err, PrecipdiffError) and isinstance(err, ConfigError)
    assert isinstance(err, KeyError)  # registries are mappings
    message = str(err)
    assert message.startswith(f"unknown {reg.kind} {bad!r}") and "\n" not in message
    assert all(known in message for known in reg.table)
    assert err.available == sorted(reg.table)
    again = pickle.loads(pickle.dumps(err))  # crosses process boundaries (dask workers)
    assert type(again) is UnknownMethodError and str(again) == message


@pytest.mark.parametrize("name", sorted(READERS))
def test_every_reader_names_a_missing_file(name, tmp_path):
    with pytest.raises(InputFileError, match="nope.bin"):
        get_reader(name)(tmp_path / "nope.bin")


def _gaussian_denoiser(x, sigma, cond=None):
    """The exact denoiser of N(0, 1) data: D(x; sigma) = x / (1 + sigma^2)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x / (1 + s**2)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_with_the_documented_keywords(name):
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, generator=gen) * 2.0
    seen = []
    out = get_sampler(name)(
        _gaussian_denoiser, x, sigmas, cond=None, generator=gen, callback=seen.append,
        disable=True,
    )
    assert out.shape == x.shape and torch.isfinite(out).all() and len(seen) == 2


def _field(values: np.ndarray) -> xr.DataArray:
    nt, ny, nx = values.shape
    return xr.DataArray(
        values.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={
            "time": np.datetime64("2020-01-01", "ns") + np.arange(nt) * np.timedelta64(1, "h"),
            "lat": 40.05 + 0.1 * np.arange(ny),
            "lon": -99.95 + 0.1 * np.arange(nx),
        },
        attrs={"units": "mm/h"},
    )


@pytest.mark.parametrize("name", sorted(n for n in BASELINES if n != "rainfarm"))
def test_every_baseline_runs_on_a_small_field(name):
    rng = np.random.default_rng(0)
    src = _field(rng.gamma(0.5, 2.0, (6, 4, 4)))
    method = get_baseline(name)
    positional, _ = Registry("baseline", get_baseline, BASELINES).interface(name)
    if positional == ("lr", "factor"):
        out = method(src, 2)
        assert out.sizes["lat"] == 8 and out.sizes["lon"] == 8
    else:
        mapping = method(src, src * 1.5)
        out = mapping.apply(src)
        assert out.shape == src.shape
    assert float(out.min()) >= 0
