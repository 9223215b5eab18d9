"""Training patches drawn across the networks of a corpus store (``data.corpus``).

Each network keeps its own grid: a sample is one network's :class:`PatchDataset` patch (the
same ``cond``/``target``/``base``/``mask`` tensors, docs/interfaces.md "Samples"), cut inside
that network's frames of the split (whole events), transformed with the corpus-wide
``PrecipTransform``. Two tensors are added: ``network`` (index into ``.networks``) and
``event`` (index into ``.event_ids``, ``"network/event"``). Which network sample ``index``
comes from is a pure function of ``(seed, epoch, index)``, as the patch itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from precipdiff.data.corpus import open_corpus
from precipdiff.data.dataset import PartsDataset, PatchDataset
from precipdiff.errors import ConfigError

WEIGHTINGS = ("frames", "equal")
_NETWORK_STREAM = 0x6E6574  # extra seed word of the network draw (independent of the patch's)


class CorpusPatchDataset(PartsDataset):
    """Random patches of one split and stage across a corpus's networks.

    ``weighting``: ``"frames"`` draws a network with probability proportional to its number of
    frames in the split, ``"equal"`` gives every network the same share. ``networks``: the
    networks to use (default: every network that has the split). Other keywords go to
    :class:`PatchDataset` (``rain_weighted``, ``augment``, ``wet_threshold``, ...).
    """

    network_stream = _NETWORK_STREAM

    def __init__(self, store: str | os.PathLike, *, split: str, stage: str, patch: int,
                 samples_per_epoch: int, weighting: str = "frames",
                 networks: Sequence[str] | None = None, seed: int = 0, **kw: Any) -> None:
        corpus = open_corpus(store)
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {list(WEIGHTINGS)}, found {weighting!r}")
        have = [n for n in corpus.networks if split in corpus.splits[n]]
        chosen = list(networks) if networks is not None else have
        unknown = [n for n in chosen if n not in corpus.networks]
        if unknown:
            raise ConfigError(f"{corpus.path}: no network(s) {unknown}; the corpus has "
                              f"{corpus.networks}")
        chosen = [n for n in chosen if n in have]
        if not chosen:
            raise ConfigError(f"{corpus.path}: no network has split {split!r} (splits: "
                              f"{corpus.splits})")
        self.path, self.split, self.stage, self.seed = str(corpus.path), split, stage, int(seed)
        self.networks, self.chosen = corpus.networks, tuple(chosen)
        self.event_ids = corpus.event_ids
        self.samples_per_epoch = int(samples_per_epoch)
        self.parts = [PatchDataset(corpus.network_path(n), split=split, stage=stage, patch=patch,
                                   samples_per_epoch=samples_per_epoch,
                                   seed=self.seed * 1000 + j, **kw)
                      for j, n in enumerate(chosen)]
        self.part_network = np.array([self.networks.index(n) for n in chosen], dtype=np.int64)
        offsets = {n: self.event_ids.index(f"{n}/{corpus.events[n][0]}") for n in chosen}
        self._event_offset = [offsets[n] for n in chosen]
        self._events: list[np.ndarray | None] = [None] * len(chosen)
        counts = np.array([p.times.size for p in self.parts], dtype=np.float64)
        w = counts if weighting == "frames" else np.ones_like(counts)
        self.weights = w / w.sum()
        self.epoch = 0

    def _event(self, j: int, time_index: int) -> int:
        if self._events[j] is None:
            import zarr

            self._events[j] = np.asarray(zarr.open_group(self.parts[j].path, mode="r")
                                         ["event"][:], dtype=np.int64)
        return self._event_offset[j] + int(self._events[j][time_index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        j = self.part_of(index)
        part = self.parts[j]
        if index < self.samples_per_epoch:
            part.set_epoch(self.epoch)
        sample = part[index]
        loc = part.locate(index)
        sample["network"] = torch.tensor(int(self.part_network[j]))
        sample["event"] = torch.tensor(self._event(j, loc.time_index))
        return sample


def corpus_val_patches(store: str | os.PathLike, split: str, stage: str, n: int, patch: int,
                       seed: int = 0, **kw: Any) -> dict[str, torch.Tensor]:
    """A fixed validation batch across the networks (no augmentation), ``(n, C, p, p)``."""
    ds = CorpusPatchDataset(store, split=split, stage=stage, patch=patch, samples_per_epoch=n,
                            seed=seed, augment=False, **kw)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
