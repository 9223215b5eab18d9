"""Process-group helpers for ``torchrun`` (DDP): NCCL on GPUs, gloo on CPU.

Run as ``torchrun --nproc_per_node=N -m precipdiff train ...``; torchrun sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables. Without them everything here is a
no-op for a single process. The global batch is split across ranks; every rank computes the same
deterministic sample order and takes its own slice (:func:`shard`), so one process with the same
global batch sees the same samples.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and the device this process trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by torchrun; pick the device (CUDA if present)."""
    cuda = torch.cuda.is_available()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(device=torch.device("cuda") if cuda else torch.device("cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    log.info("rank %d/%d on %s (%s)", rank, world, device, dist.get_backend())
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous slice of one global batch (sizes differ by at most one)."""
    n = len(indices)
    start = rank * n // world_size
    stop = (rank + 1) * n // world_size
    return indices[start:stop]


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over ranks (identity for one process)."""
    if not info.enabled:
        return value
    out = value.detach().clone().to(info.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop signal)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown(info: DistInfo) -> None:
    """Barrier, then destroy the process group (call after freeing model/optimiser)."""
    if not (info.enabled and dist.is_initialized()):
        return
    with contextlib.suppress(Exception):
        barrier(info)
    dist.destroy_process_group()


def gather_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of a tensor over ranks."""
    if not info.enabled:
        return values
    out = values.detach().clone().to(info.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """``model.no_sync()`` for DDP micro-steps that only accumulate gradients."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
