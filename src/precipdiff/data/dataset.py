"""Torch datasets of random training patches from a paired store (docs/interfaces.md, "Samples").

Each item is a dict of tensors ``cond (C, p, p)``, ``target (1, p, p)``, ``base (1, p, p)``
(float32) and ``mask (1, p, p)`` (bool), with ``T`` the store's :class:`PrecipTransform`:

* ``correct`` (coarse grid): ``base = T(src_lr)``, ``cond = [base]``, ``target = T(ref_lr) - base``
  (with a ``source_map`` such as a fitted quantile mapping: ``base = T(map(src_lr))``);
* ``downscale`` / ``regression`` (fine grid): ``base = up(T(ref_lr))`` (bilinear
  ``upsample_tensor`` of the split's coarse band, so a region's border never sees its
  neighbour), ``cond = [base, extras...]`` (extras standardised with the store's train-split
  ``extra_stats``), ``target = T(ref_hr) - base``;
* ``mask = isfinite(target) & isfinite(base)``; masked pixels are 0 in every tensor.

Patches lie inside the split's time steps and coarse column band (fine band = x ``factor``),
never across a split border. Sample ``index`` of epoch ``e`` is a pure function of
``(seed, e, index)``: call :meth:`PatchDataset.set_epoch` before iterating an epoch (with
non-persistent DataLoader workers, which copy the dataset at every epoch). The zarr store is
opened lazily in each process; only the path and small metadata are pickled.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from precipdiff.data.store import StoreHandle, open_store
from precipdiff.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("correct", "downscale", "regression")
LR_CACHE_BYTES = 256 * 2**20  # cache the split's coarse arrays in memory below this size


class PatchLocation(NamedTuple):
    """Origin of a sample: store time index, index in the split's times, the patch's first
    row and (absolute, not band-relative) column on the stage's grid, dihedral element k."""

    time_index: int
    split_index: int
    y0: int
    x0: int
    k: int


def epoch_index(index: int, epoch: int, samples_per_epoch: int) -> tuple[int, int]:
    """``(epoch, sample)`` of sample ``index``: below ``samples_per_epoch`` a sample of the
    current ``epoch``; a larger ``index`` is a global number, ``divmod(index,
    samples_per_epoch)`` (for samplers that carry the epoch themselves). Negative: IndexError."""
    if index < 0:
        raise IndexError(f"index {index} is negative")
    if index < samples_per_epoch:
        return int(epoch), int(index)
    e, i = divmod(int(index), samples_per_epoch)
    return int(e), int(i)


class PatchDataset(Dataset):
    """Random ``patch x patch`` samples of one split and stage; ``len = samples_per_epoch``.

    ``rain_weighted``: fraction of patches centred on a wet pixel of the network's input (a
    source cell for ``correct``, a coarse reference cell for the fine stages, above
    ``wet_threshold`` mm/h; on the fine grid a random fine pixel inside it).
    ``augment``: one of the 8 flips/rotations (dihedral group), the same for every tensor.
    """

    def __init__(self, store: str | os.PathLike, *, split: str, stage: str, patch: int,
                 samples_per_epoch: int, rain_weighted: float = 0.5, augment: bool = True,
                 seed: int = 0, include_extras: bool = True, wet_threshold: float = 0.1,
                 source_map: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        h = open_store(store.path if isinstance(store, StoreHandle) else store)
        if stage not in STAGES:
            raise ConfigError(f"stage must be one of {list(STAGES)}, found {stage!r}")
        splits = h.splits
        if split not in splits:
            raise ConfigError(f"{h.path}: no split {split!r}; the store has {sorted(splits)}")
        if not 0.0 <= rain_weighted <= 1.0:
            raise ConfigError(f"rain_weighted must be in [0, 1], found {rain_weighted}")
        if int(samples_per_epoch) < 1 or int(patch) < 1:
            raise ConfigError("patch and samples_per_epoch must be >= 1")
        self.path, self.split, self.stage = str(h.path), split, stage
        self.patch, self.samples_per_epoch = int(patch), int(samples_per_epoch)
        self.rain_weighted, self.augment, self.seed = float(rain_weighted), augment, int(seed)
        self.wet_threshold = float(wet_threshold)
        if source_map is not None and stage != "correct":
            raise ConfigError(f"source_map applies to the 'correct' stage only, not {stage!r}")
        self.source_map = source_map
        self.factor = h.factor
        self.transform = h.transform
        self.times = np.asarray(splits[split]["time"], dtype=np.int64)
        self.x_lr = tuple(int(v) for v in splits[split]["x_lr"])
        self.n_lat_lr = int(h["ref_lr"].shape[1])
        self.extra_names = h.extra_names if include_extras and stage != "correct" else ()
        stats = h.attrs.get("extra_stats", {})
        self._extra_mean = np.array([stats[n]["mean"] for n in self.extra_names], np.float32)
        self._extra_std = np.array([stats[n]["std"] for n in self.extra_names], np.float32)
        if self.times.size == 0:
            raise ConfigError(f"{h.path}: split {split!r} has no time step")
        f = 1 if stage == "correct" else self.factor
        ny, nx = self.n_lat_lr * f, (self.x_lr[1] - self.x_lr[0]) * f
        if self.patch > min(ny, nx):
            raise ConfigError(f"{h.path}: patch {self.patch} is larger than split {split!r} "
                              f"({ny} x {nx} cells at the {stage} grid)")
        self.epoch = 0
        self._pid: int | None = None
        self._arrays: dict[str, Any] = {}
        self._lr_cache: dict[str, np.ndarray] | None = None
        self._cache_lr = (2 * self.times.size * self.n_lat_lr * (self.x_lr[1] - self.x_lr[0]) * 4
                          <= LR_CACHE_BYTES)

    @property
    def cond_channels(self) -> int:
        """Channels of ``cond``: 1 (the base) plus the extra fields on the fine grid."""
        return 1 + len(self.extra_names)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _arrays={}, _lr_cache=None)  # never pickle zarr handles
        return state

    # ------------------------------------------------------------------ reading

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        g = open_store(self.path).group
        self._arrays = {k: g[k] for k in ("src_lr", "ref_lr", "ref_hr")}
        if self.extra_names:
            self._arrays["extra_hr"] = g["extra_hr"]
        self._lr_cache = None
        if self._cache_lr:
            x0, x1 = self.x_lr
            self._lr_cache = {k: np.stack([self._arrays[k][int(t), :, x0:x1] for t in self.times])
                              for k in ("src_lr", "ref_lr")}
        self._pid = os.getpid()

    def _lr(self, name: str, ti: int) -> np.ndarray:
        """The split's coarse band of ``name`` at split time ``ti``, (Y, X_band)."""
        if self._lr_cache is not None:
            return self._lr_cache[name][ti]
        x0, x1 = self.x_lr
        return np.asarray(self._arrays[name][int(self.times[ti]), :, x0:x1])

    def _centre(self, rng: np.random.Generator, lr: np.ndarray, f: int) -> tuple[int, int]:
        """Patch centre (band-relative cells of the stage grid): wet-weighted or uniform."""
        if rng.random() < self.rain_weighted:
            wet = np.flatnonzero(lr > self.wet_threshold)
            if wet.size:
                i, j = divmod(int(wet[rng.integers(wet.size)]), lr.shape[1])
                return i * f + int(rng.integers(f)), j * f + int(rng.integers(f))
        return int(rng.integers(lr.shape[0] * f)), int(rng.integers(lr.shape[1] * f))

    def locate(self, index: int) -> PatchLocation:
        """Where sample ``index`` comes from (without reading the patch).

        ``index < samples_per_epoch`` is a sample of the current epoch (:meth:`set_epoch`); a
        larger ``index`` is a global sample number: epoch ``index // samples_per_epoch``,
        sample ``index % samples_per_epoch`` (for samplers that carry the epoch themselves).
        """
        epoch, index = epoch_index(index, self.epoch, self.samples_per_epoch)
        self._open()
        rng = np.random.default_rng([self.seed, epoch, index])
        ti = int(rng.integers(self.times.size))
        k = int(rng.integers(8)) if self.augment else 0
        f = 1 if self.stage == "correct" else self.factor
        # Wet-centring looks at the network's *input* only (the source for ``correct``, the
        # coarse reference for the fine stages): choosing patches by the target would bias the
        # conditional distribution the model learns (wetter targets than the input implies).
        lr = self._lr("src_lr" if self.stage == "correct" else "ref_lr", ti)
        cy, cx = self._centre(rng, lr, f)
        p = self.patch
        y0 = min(max(cy - p // 2, 0), lr.shape[0] * f - p)
        x0 = min(max(cx - p // 2, 0), lr.shape[1] * f - p)
        return PatchLocation(int(self.times[ti]), ti, y0, self.x_lr[0] * f + x0, k)

    # ------------------------------------------------------------------ samples

    def _correct(self, loc: PatchLocation) -> tuple[torch.Tensor, ...]:
        p, x0 = self.patch, loc.x0 - self.x_lr[0]
        win = (slice(loc.y0, loc.y0 + p), slice(x0, x0 + p))
        src = self._lr("src_lr", loc.split_index)[win]
        ref = self._lr("ref_lr", loc.split_index)[win]
        src = np.array(src, np.float32)
        if self.source_map is not None:
            src = np.asarray(self.source_map(src), np.float32)
        base = torch.from_numpy(self.transform.forward(src))
        target = torch.from_numpy(self.transform.forward(np.array(ref, np.float32))) - base
        return base[None], target[None], base[None]

    def _fine(self, loc: PatchLocation) -> tuple[torch.Tensor, ...]:
        from precipdiff.grid import upsample_tensor

        f, p = self.factor, self.patch
        ref_lr = self._lr("ref_lr", loc.split_index)
        ny_lr, nx_lr = ref_lr.shape
        y0, x0 = loc.y0, loc.x0 - self.x_lr[0] * f  # band-relative
        ly0, lx0 = max(y0 // f - 1, 0), max(x0 // f - 1, 0)
        ly1 = min(math.ceil((y0 + p) / f) + 1, ny_lr)
        lx1 = min(math.ceil((x0 + p) / f) + 1, nx_lr)
        win = torch.from_numpy(self.transform.forward(
            np.array(ref_lr[ly0:ly1, lx0:lx1], np.float32)))[None, None]
        up = upsample_tensor(win, f, "bilinear")[0]
        oy, ox = y0 - ly0 * f, x0 - lx0 * f
        base = up[:, oy:oy + p, ox:ox + p]
        t, X0 = loc.time_index, loc.x0
        ref_hr = np.asarray(self._arrays["ref_hr"][t, y0:y0 + p, X0:X0 + p], np.float32)
        target = torch.from_numpy(self.transform.forward(ref_hr))[None] - base
        cond = base
        if self.extra_names:
            ex = np.asarray(self._arrays["extra_hr"][t, :, y0:y0 + p, X0:X0 + p], np.float32)
            ex = (ex - self._extra_mean[:, None, None]) / self._extra_std[:, None, None]
            cond = torch.cat([base, torch.from_numpy(np.nan_to_num(ex, nan=0.0))])
        return cond, target, base

    def masked_patch(self, loc: PatchLocation) -> dict[str, torch.Tensor]:
        """The tensors of the patch at ``loc`` before augmentation: ``cond``, ``target``,
        ``base`` (float32, 0 where masked) and ``mask`` (target and base finite)."""
        sample = self._correct(loc) if self.stage == "correct" else self._fine(loc)
        cond, target, base = (x.float() for x in sample)
        mask = torch.isfinite(target) & torch.isfinite(base)
        out = {"cond": cond, "target": target, "base": base, "mask": mask}
        for name in ("cond", "target", "base"):
            out[name] = torch.where(mask, out[name], torch.zeros((), dtype=torch.float32))
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        loc = self.locate(index)
        out = self.masked_patch(loc)
        if loc.k:
            out = {n: dihedral(v, loc.k) for n, v in out.items()}
        return out


class PartsDataset(Dataset):
    """Samples drawn across several datasets (``parts``, e.g. one per network of a corpus).

    Subclasses set ``parts``, ``weights`` (one probability per part), ``seed``,
    ``samples_per_epoch``, ``epoch`` and the class attribute ``network_stream`` (the extra seed
    word of the part draw, independent of the parts' own streams). Sample ``index`` comes from
    part :meth:`part_of`; indices past ``samples_per_epoch`` number the samples of later epochs,
    as in :meth:`PatchDataset.locate`.
    """

    network_stream: int = 0
    parts: list[Any]
    weights: np.ndarray
    seed: int
    samples_per_epoch: int
    epoch: int

    @property
    def cond_channels(self) -> int:
        return self.parts[0].cond_channels

    @property
    def transform(self):
        return self.parts[0].transform

    @property
    def factor(self) -> int:
        return self.parts[0].factor

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (every part's too)."""
        self.epoch = int(epoch)
        for p in self.parts:
            p.set_epoch(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def part_of(self, index: int) -> int:
        """Which entry of ``parts`` sample ``index`` comes from."""
        epoch, i = epoch_index(index, self.epoch, self.samples_per_epoch)
        u = np.random.default_rng([self.seed, epoch, i, self.network_stream]).random()
        return int(min(np.searchsorted(np.cumsum(self.weights), u, side="right"),
                       len(self.parts) - 1))


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of the square's symmetry group: rot90 ``k % 4``, then flip if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return x.contiguous()


class FixedPatches(PatchDataset):
    """``n`` fixed, non-augmented patches (a validation set that is the same every epoch)."""

    def __init__(self, store: str | os.PathLike, *, split: str, stage: str, n: int, patch: int,
                 seed: int = 0, rain_weighted: float = 0.5, include_extras: bool = True,
                 source_map: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__(store, split=split, stage=stage, patch=patch, samples_per_epoch=n,
                         rain_weighted=rain_weighted, augment=False, seed=seed,
                         include_extras=include_extras, source_map=source_map)

    def set_epoch(self, epoch: int) -> None:  # noqa: ARG002 - fixed by design
        """No-op: the patches do not change with the epoch."""


def val_patches(store: str | os.PathLike | Path, split: str, stage: str, n: int, patch: int,
                seed: int = 0, *, rain_weighted: float = 0.5, include_extras: bool = True,
                source_map: Callable[[np.ndarray], np.ndarray] | None = None,
                ) -> dict[str, torch.Tensor]:
    """A fixed validation batch: the :class:`FixedPatches` items stacked, ``(n, C, p, p)``."""
    ds = FixedPatches(store, split=split, stage=stage, n=n, patch=patch, seed=seed,
                      rain_weighted=rain_weighted, include_extras=include_extras,
                      source_map=source_map)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
