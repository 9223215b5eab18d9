"""Stage-II blocks (members x window box) sampled in this process or in worker processes.

A block is everything one network pass over a window needs: the upsampled coarse field over
a wet box of the window (:func:`~precipdiff.pipeline.dry.wet_boxes`), its extra channels, and
where it lies (for :func:`~precipdiff.pipeline.tiling.position_noise`, which depends on the global
pixel only). Blocks are independent, so they can run anywhere; results come back in the order
the blocks were given, and a block's sample does not depend on where it ran (up to the float
rounding of the thread count).

Why processes: a large wet frame has tens of independent windows, and on a CPU two
single-threaded processes sampled a CONUS frame 1.10x faster than one process with two threads
(BENCHMARKS.md, "CONUS at 1 km"; on four windows their start, ~5 s, is not paid back, hence
:data:`~precipdiff.pipeline.pipeline.POOL_MIN_WORK`). :class:`BlockPool` starts ``workers``
spawned processes, each with its own copy of the stage and ``threads`` intra-op threads, and
keeps at most ``2 x workers`` blocks in flight, so memory stays bounded by a few windows.
"""

from __future__ import annotations

import collections
import multiprocessing
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from precipdiff.allocator import keep_freed_memory, release_freed_memory
from precipdiff.errors import PrecipdiffError
from precipdiff.pipeline.stage import SamplerSettings, Stage
from precipdiff.pipeline.tiling import position_noise

K = TypeVar("K")


@dataclass(frozen=True)
class BlockSettings:
    """What every block of a run shares: sampler settings, network tiling and precision."""

    settings: SamplerSettings
    seed: int
    tile: int | None = None
    overlap: int | None = None
    tile_batch: int = 8
    bf16: bool = False
    device: str = "cpu"


@dataclass(frozen=True)
class Block:
    """Members ``m0 … m0 + B - 1`` of time step ``t`` over the fine box ``y0:y1, x0:x1``:
    ``base`` (B, 1, h, w) the upsampled coarse field (transformed space), ``extras`` (B, E, h, w)
    standardised extra channels or None."""

    t: int
    m0: int
    y0: int
    x0: int
    base: np.ndarray
    extras: np.ndarray | None = None


def sample_block(stage: Stage, block: Block, cfg: BlockSettings) -> np.ndarray:
    """One Stage-II sample (B, h, w), transformed space, of ``block``: starting noise at the
    block's global position (:func:`position_noise`, seed ``cfg.seed + 1``), then
    :meth:`Stage.apply`."""
    b, _, h, w = block.base.shape
    noise = torch.stack([
        position_noise(block.y0, block.x0, h, w, seed=cfg.seed + 1, member=block.m0 + i,
                       time_index=block.t)
        for i in range(b)
    ])
    extras = None if block.extras is None else torch.from_numpy(block.extras).to(cfg.device)
    y = stage.apply(torch.from_numpy(block.base).to(cfg.device), noise.to(cfg.device),
                    extras=extras, settings=cfg.settings, tile=cfg.tile, overlap=cfg.overlap,
                    tile_batch=cfg.tile_batch, bf16=cfg.bf16)
    return y[:, 0].cpu().numpy()


# the stage and settings of a worker process, set once by _init_worker
_WORKER: tuple[Stage, BlockSettings] | None = None


def _init_worker(stage_bytes: bytes, cfg: BlockSettings, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    keep_freed_memory()
    _WORKER = pickle.loads(stage_bytes), cfg  # our own pickle, made by BlockPool below


def _sample_and_release(stage: Stage, block: Block, cfg: BlockSettings) -> np.ndarray:
    """:func:`sample_block`, then the freed pages back to the system (a process keeps its
    largest block's memory, not its fragments: :mod:`precipdiff.allocator`)."""
    y = sample_block(stage, block, cfg)
    release_freed_memory()
    return y


def _run_in_worker(block: Block) -> np.ndarray:
    assert _WORKER is not None, "worker not initialised"
    stage, cfg = _WORKER
    return _sample_and_release(stage, block, cfg)


class BlockPool:
    """``workers`` spawned processes sampling blocks of ``stage`` (a context manager).

    ``threads`` intra-op threads each (default 1). The stage is sent to each worker once.
    """

    def __init__(self, stage: Stage, cfg: BlockSettings, workers: int, *, threads: int = 1):
        if workers < 2:
            raise ValueError(f"a block pool needs at least 2 workers, got {workers}")
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(pickle.dumps(stage), cfg, threads))

    def __enter__(self) -> BlockPool:
        return self

    def __exit__(self, *exc) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, block: Block) -> Future:
        return self._executor.submit(_run_in_worker, block)


def sample_blocks(
    stage: Stage,
    items: Iterable[tuple[K, Block | None]],
    cfg: BlockSettings,
    pool: BlockPool | None = None,
) -> Iterator[tuple[K, np.ndarray | None]]:
    """``(key, sample)`` for each ``(key, block)`` of ``items``, in their order; a None block
    passes through as None. With ``pool`` the blocks run in its workers, at most
    ``2 x workers`` at a time (the next blocks are drawn from ``items`` as results are taken);
    else here, one after the other."""
    if pool is None:
        for key, block in items:
            yield key, None if block is None else _sample_and_release(stage, block, cfg)
        return
    try:
        yield from _sample_in(pool, items)
    except BrokenProcessPool as e:
        raise PrecipdiffError(
            "a Stage-II worker process ended abruptly (killed, or out of memory?); rerun with "
            "--window-workers 1 to sample in one process, or with fewer --member-batch members"
        ) from e


def _sample_in(pool: BlockPool, items: Iterable[tuple[K, Block | None]]
               ) -> Iterator[tuple[K, np.ndarray | None]]:
    queue: collections.deque[tuple[K, Future | None]] = collections.deque()
    it = iter(items)
    running, exhausted = 0, False
    while True:
        while not exhausted and running < 2 * pool.workers:
            try:
                key, block = next(it)
            except StopIteration:
                exhausted = True
                break
            queue.append((key, None if block is None else pool.submit(block)))
            running += block is not None
        if not queue:
            return
        key, fut = queue.popleft()
        running -= fut is not None
        yield key, None if fut is None else fut.result()
