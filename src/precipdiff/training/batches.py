"""Deterministic sample order, sharded by rank, resumable at any step.

Epoch ``e`` visits the training patches in the order ``randperm(N)`` drawn from a generator seeded
by ``(seed, e)``; global batch ``k`` of the epoch is ``order[k*B:(k+1)*B]``. A global batch is cut
into ``accumulate`` micro-batches and each micro-batch into one contiguous slice per rank, so any
number of ranks and micro-steps sees the same global batch. The *serial* of a sample,
``e * N + position``, seeds its diffusion noise. Partial batches at the end of an epoch are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from precipdiff.training.distributed import shard

BATCH_KEYS = ("cond", "target", "mask")


@dataclass(frozen=True)
class MicroBatch:
    """Indices into the dataset and the serials (noise seeds) of this rank's share."""

    indices: list[int]
    serials: list[int]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` for ``epoch``."""
    state = np.random.SeedSequence([seed, 7919, epoch]).generate_state(1)[0]
    return np.random.default_rng(int(state)).permutation(n)


@dataclass(frozen=True)
class BatchPlan:
    """Which samples each rank reads at every step."""

    n: int
    batch_size: int
    accumulate: int
    rank: int
    world_size: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def step(self, order: np.ndarray, epoch: int, batch: int) -> list[MicroBatch]:
        """This rank's micro-batches for global batch ``batch`` of ``epoch``."""
        start = batch * self.batch_size
        positions = list(range(start, start + self.batch_size))
        micro = self.batch_size // self.accumulate
        out = []
        for m in range(self.accumulate):
            mine = shard(positions[m * micro:(m + 1) * micro], self.rank, self.world_size)
            out.append(MicroBatch(indices=[int(order[p]) for p in mine],
                                  serials=[epoch * self.n + p for p in mine]))
        return out

    def epoch_steps(self, epoch: int, first_batch: int) -> list[list[MicroBatch]]:
        order = epoch_order(self.n, self.seed, epoch)
        return [self.step(order, epoch, b) for b in range(first_batch, self.steps_per_epoch)]


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the tensors the loss needs (``cond``, ``target``, ``mask``; ``network`` where the
    samples carry it, for product conditioning)."""
    keys = BATCH_KEYS + tuple(k for k in ("network",) if k in items[0])
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in keys}


def epoch_batches(dataset: Dataset, plan: BatchPlan, epoch: int, first_batch: int, *,
                  num_workers: int, pin_memory: bool) -> Iterator[tuple[list[MicroBatch],
                                                                      list[dict[str, Any]]]]:
    """Yield ``(micro_plan, micro_batches)`` for every remaining step of ``epoch``."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    steps = plan.epoch_steps(epoch, first_batch)
    sampler = [mb.indices for step in steps for mb in step]
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=collate, pin_memory=pin_memory,
                        prefetch_factor=4 if num_workers > 0 else None,
                        persistent_workers=False)
    it = iter(loader)
    for step in steps:
        yield step, [next(it) for _ in step]

