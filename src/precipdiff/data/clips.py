"""Training clips: ``T`` consecutive frames of one event, one patch window for all of them.

A clip is ``frames`` time steps of a paired store (one network of a corpus, ``data.corpus``)
that are consecutive at the network's own cadence (5 min for the MeteoSwiss, FMI and OPERA
radar, 2 min for MRMS), all in one event: a clip never crosses an event boundary nor a gap
(a missing frame). The patch window, the dihedral element and the frames are one draw from
``(seed, epoch, index)``; every frame is cut exactly as a :class:`~precipdiff.data.dataset.
PatchDataset` sample of that frame (same transform, base, mask rules), and the tensors are
stacked along a leading frame axis:

``cond (T, C, p, p)``, ``target (T, 1, p, p)``, ``base (T, 1, p, p)``, ``mask (T, 1, p, p)``
(bool), ``time_offsets (T,)`` float32 seconds since the clip's first frame, ``time (T,)``
int64 seconds since 1970 and, across a corpus (:class:`CorpusClipDataset`), ``network`` and
``event`` int64 scalars (indices into ``.networks`` and ``.event_ids``).

Splits are whole events (the corpus's ``train``/``val``/``test``), so no clip of one split
shares a frame with another. Wet-centring looks at the clip's middle frame of the network's
input (the coarse reference for the fine stages), as :class:`PatchDataset` does for a frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from precipdiff.data.dataset import (
    PartsDataset,
    PatchDataset,
    PatchLocation,
    dihedral,
    epoch_index,
)
from precipdiff.errors import ConfigError

log = logging.getLogger(__name__)

#: Networks whose cadence is longer than this (seconds) give no clips by default (hourly
#: RADOLAN is not a sequence of the kind the temporal model learns).
MAX_STEP_S = 600
_NETWORK_STREAM = 0x636C6970  # extra seed word of the network draw


class ClipLocation(NamedTuple):
    """Origin of a clip: positions of its frames in the split's ``times`` (time order), the
    patch's first row and absolute column on the stage's grid, and the dihedral element."""

    positions: tuple[int, ...]
    y0: int
    x0: int
    k: int


def clip_starts(times_s: np.ndarray, events: np.ndarray, frames: int, *,
                step_s: int | None = None) -> tuple[np.ndarray, int]:
    """Valid clip starts and the cadence, over frames given in time order.

    ``times_s`` (N,) ascending seconds and ``events`` (N,) event labels. A start ``i`` is
    valid when frames ``i .. i + frames - 1`` share one event and follow each other at
    exactly ``step_s`` (default: the most common step between consecutive frames of one
    event). Returns ``(starts, step_s)``; ``step_s`` is 0 when there is no step at all.
    """
    t, e = np.asarray(times_s, np.int64), np.asarray(events)
    if t.size < max(frames, 1):
        return np.zeros(0, np.int64), 0
    same = e[1:] == e[:-1]
    steps = np.diff(t)[same]
    if step_s is None:
        if steps.size == 0:
            return np.zeros(0, np.int64), 0
        values, counts = np.unique(steps, return_counts=True)
        step_s = int(values[np.argmax(counts)])
    good = same & (np.diff(t) == step_s)  # link i -> i+1 is usable
    if frames == 1:
        return np.arange(t.size, dtype=np.int64), int(step_s)
    window = np.convolve(good.astype(np.int64), np.ones(frames - 1, np.int64), mode="valid")
    return np.flatnonzero(window == frames - 1).astype(np.int64), int(step_s)


class ClipDataset(PatchDataset):
    """Random clips of ``frames`` consecutive frames of one paired store's split.

    Keywords as :class:`PatchDataset` (``rain_weighted``, ``augment``, ``seed``,
    ``wet_threshold``, ``include_extras``), plus ``frames`` (clip length ``T``) and
    ``step_s`` (the cadence required inside a clip; default: the store's most common step).
    ConfigError when the split holds no clip.
    """

    def __init__(self, store: str | os.PathLike, *, split: str, stage: str, patch: int,
                 samples_per_epoch: int, frames: int, step_s: int | None = None,
                 **kw: Any) -> None:
        super().__init__(store, split=split, stage=stage, patch=patch,
                         samples_per_epoch=samples_per_epoch, **kw)
        if int(frames) < 1:
            raise ConfigError(f"frames must be >= 1, found {frames}")
        import zarr

        g = zarr.open_group(self.path, mode="r")
        all_times = np.asarray(g["time"][:], np.int64)
        all_events = np.asarray(g["event"][:], np.int64) if "event" in g \
            else np.zeros(all_times.size, np.int64)
        self._all_times, self._all_events = all_times, all_events  # small; pickled with self
        self.frames = int(frames)
        self.order = np.argsort(all_times[self.times], kind="stable")  # split positions
        self.time_s = all_times[self.times][self.order]
        events = all_events[self.times][self.order]
        self.starts, self.step_s = clip_starts(self.time_s, events, self.frames, step_s=step_s)
        if self.starts.size == 0:
            raise ConfigError(f"{self.path}: split {split!r} has no {self.frames} consecutive "
                              f"frames of one event (cadence {self.step_s} s)")

    @property
    def n_clips(self) -> int:
        """Number of distinct clip starts in the split."""
        return int(self.starts.size)

    def locate(self, index: int) -> ClipLocation:  # type: ignore[override]
        """Where clip ``index`` comes from (global numbers as in :meth:`PatchDataset.locate`)."""
        epoch, index = epoch_index(index, self.epoch, self.samples_per_epoch)
        self._open()
        rng = np.random.default_rng([self.seed, epoch, index])
        start = int(self.starts[rng.integers(self.starts.size)])
        positions = tuple(int(self.order[start + j]) for j in range(self.frames))
        k = int(rng.integers(8)) if self.augment else 0
        f = 1 if self.stage == "correct" else self.factor
        middle = positions[self.frames // 2]
        lr = self._lr("src_lr" if self.stage == "correct" else "ref_lr", middle)
        cy, cx = self._centre(rng, lr, f)
        p = self.patch
        y0 = min(max(cy - p // 2, 0), lr.shape[0] * f - p)
        x0 = min(max(cx - p // 2, 0), lr.shape[1] * f - p)
        return ClipLocation(positions, y0, self.x_lr[0] * f + x0, k)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        loc = self.locate(index)
        frames = [self.masked_patch(PatchLocation(int(self.times[pos]), pos, loc.y0, loc.x0, 0))
                  for pos in loc.positions]
        out = {n: torch.stack([fr[n] for fr in frames]) for n in frames[0]}
        if loc.k:
            out = {n: dihedral(v, loc.k) for n, v in out.items()}
        times = self._all_times[[int(self.times[p]) for p in loc.positions]]
        out["time"] = torch.from_numpy(times)
        out["time_offsets"] = torch.from_numpy((times - times[0]).astype(np.float32))
        return out

    def event_of(self, loc: ClipLocation) -> int:
        """The event label (index into the store's ``event_names``) of a clip."""
        return int(self._all_events[int(self.times[loc.positions[0]])])


class CorpusClipDataset(PartsDataset):
    """Random clips of one split across a corpus's sequence networks.

    ``networks`` default: every network of the split whose cadence is at most
    ``max_step_s`` (5-min radar, 2-min MRMS; hourly RADOLAN is left out) and that holds at
    least one clip. ``weighting``: ``"clips"`` draws a network in proportion to its clip
    starts, ``"equal"`` gives every network the same share. Other keywords go to
    :class:`ClipDataset`.
    """

    network_stream = _NETWORK_STREAM

    def __init__(self, store: str | os.PathLike, *, split: str, stage: str, patch: int,
                 samples_per_epoch: int, frames: int, weighting: str = "clips",
                 networks: Sequence[str] | None = None, max_step_s: int = MAX_STEP_S,
                 seed: int = 0, **kw: Any) -> None:
        from precipdiff.data.corpus import open_corpus

        corpus = open_corpus(store)
        if weighting not in ("clips", "equal"):
            raise ConfigError(f"weighting must be 'clips' or 'equal', found {weighting!r}")
        unknown = [n for n in (networks or ()) if n not in corpus.networks]
        if unknown:
            raise ConfigError(f"{corpus.path}: no network(s) {unknown}; the corpus has "
                              f"{corpus.networks}")
        chosen = [n for n in (networks or corpus.networks) if split in corpus.splits[n]]
        self.path, self.split, self.seed = str(corpus.path), split, int(seed)
        self.networks, self.event_ids = corpus.networks, corpus.event_ids
        self.samples_per_epoch, self.frames = int(samples_per_epoch), int(frames)
        self.parts: list[ClipDataset] = []
        names = []
        for j, name in enumerate(chosen):
            try:
                part = ClipDataset(corpus.network_path(name), split=split, stage=stage,
                                   patch=patch, samples_per_epoch=samples_per_epoch,
                                   frames=frames, seed=self.seed * 1000 + j, **kw)
            except ConfigError as exc:
                log.info("network %s gives no %s clips: %s", name, split, exc)
                continue
            if networks is None and part.step_s > max_step_s:
                log.info("network %s: cadence %d s > %d s, left out", name, part.step_s,
                         max_step_s)
                continue
            self.parts.append(part)
            names.append(name)
        if not self.parts:
            raise ConfigError(f"{corpus.path}: no network has {frames}-frame clips in split "
                              f"{split!r} at a cadence <= {max_step_s} s")
        self.part_names = names
        self.part_network = np.array([self.networks.index(n) for n in names], np.int64)
        self._event_offset = [self.event_ids.index(f"{n}/{corpus.events[n][0]}") for n in names]
        counts = np.array([p.n_clips for p in self.parts], np.float64)
        w = counts if weighting == "clips" else np.ones_like(counts)
        self.weights = w / w.sum()
        self.epoch = 0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            raise IndexError(f"index {index} is negative")
        j = self.part_of(index)
        part = self.parts[j]
        if index < self.samples_per_epoch:
            part.set_epoch(self.epoch)
        sample = part[index]
        sample["network"] = torch.tensor(int(self.part_network[j]))
        sample["event"] = torch.tensor(self._event_offset[j] + part.event_of(part.locate(index)))
        return sample


def collate_clips(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack clips into ``(B, T, ...)`` tensors (``time_offsets`` (B, T))."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
