"""The training loop: one resumable trainer for every stage, single process or DDP.

``train(cfg)`` builds the U-Net (wrapped in :class:`~precipdiff.diffusion.precond.EDMPrecond` for
the diffusion stages ``correct`` and ``downscale``; a plain conditional-mean net for
``regression``), trains it with AdamW, warm-up then constant/cosine learning rate, gradient
clipping and accumulation, an EMA with a half-life in samples and optional bf16 autocast, and
writes into ``cfg.train.out_dir``::

    config.yaml            resolved config
    metrics.jsonl          every metric (see :mod:`precipdiff.training.monitor`)
    checkpoints/last.pt    resume state (and previous.pt), see :mod:`precipdiff.training.checkpoint`
    weights.safetensors    release weights (EMA), format in :mod:`precipdiff.release`
    .lock                  held while a training runs (:mod:`precipdiff.training.rundir`)

The loss of a step is the masked mean over the whole global batch, with per-sample noise seeded
by the sample's serial number, so a run is a pure function of (config, step): a resumed run and
a DDP run reach the same weights as one uninterrupted process (up to float summation order).
A NaN/Inf loss, gradient norm or parameter stops the run with :class:`DivergedError` before the
EMA, a checkpoint or the weights see it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precipdiff.errors import ConfigError, PrecipdiffError
from precipdiff.training import checkpoint as ckpt
from precipdiff.training.batches import BatchPlan, epoch_batches
from precipdiff.training.build import (
    init_from_release,
    load_mean_net,
    make_release,
    open_data,
    product_lookup,
    resolve_channels,
)
from precipdiff.training.config import RunConfig, save_config
from precipdiff.training.distill import (
    distill_loss_sum,
    distilled_notes,
    draw_intervals,
    load_teacher,
    student_grid,
)
from precipdiff.training.distributed import (
    DistInfo,
    barrier,
    gather_sum,
    init_distributed,
    maybe_no_sync,
    teardown,
)
from precipdiff.training.ema import EMA
from precipdiff.training.monitor import Monitor, StepMeter, require_tensorboard, truncate_metrics
from precipdiff.training.objective import (
    crps_fair,
    draw_noise,
    edm_loss_sum,
    product_labels,
    regression_loss_sum,
)
from precipdiff.training.optim import build_optimizer, lr_at, set_lr
from precipdiff.training.rundir import RunLock
from precipdiff.training.signals import StopSignals, exit_for, terminate_raises

log = logging.getLogger(__name__)


class DivergedError(PrecipdiffError):
    """The loss, the gradients or the parameters became NaN or infinite."""


@dataclass
class Position:
    """Where the run is: optimiser steps, samples seen and the next batch of the data order."""

    step: int = 0
    samples_seen: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class Parts:
    """Everything a step touches."""

    net: nn.Module  # the bare U-Net (what EMA tracks and the weights hold)
    model: nn.Module  # what the loss calls: EDMPrecond(net) or net, DDP-wrapped when distributed
    ema: EMA
    optimizer: torch.optim.Optimizer
    mean_net: nn.Module | None
    teacher: nn.Module | None  # EDMPrecond(teacher net) of a distillation run
    store: Any
    train_ds: Any
    val_batch: dict[str, torch.Tensor] | None
    source_map: Any  # the fitted data.source_map (QuantileMapping) or None
    product_lookup: torch.Tensor | None = None  # corpus network index -> product label


def train(cfg: RunConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train one stage as configured; return the run directory (see module docstring)."""
    info = init_distributed()
    clean = False
    try:
        run_dir = _train(cfg, info, resume=resume, progress=progress)
        clean = True
        return run_dir
    finally:
        gc.collect()
        if clean:
            teardown(info)
        elif info.enabled:
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()


def _train(cfg: RunConfig, info: DistInfo, *, resume: bool, progress: bool) -> Path:
    run_dir = Path(cfg.train.out_dir)
    _check_setup(cfg, info)
    with terminate_raises(), RunLock(run_dir, enabled=info.is_main):
        return _train_locked(cfg, info, run_dir, resume=resume, progress=progress)


def _train_locked(cfg: RunConfig, info: DistInfo, run_dir: Path, *, resume: bool,
                  progress: bool) -> Path:
    _check_existing_run(run_dir, resume)
    store, train_ds, val_args, source_map = open_data(cfg)
    cfg = resolve_channels(cfg, train_ds, store)
    state = None
    if resume:
        path, state = ckpt.find_resume_checkpoint(run_dir)
        ckpt.check_resume_config(path, state["config"], cfg.to_dict())
        log.info("resuming from %s at step %d", path, state["step"])
    parts = _build(cfg, info, store, train_ds, val_args, source_map)
    pos = _restore(parts, state) if state else Position()
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")
        if state:
            truncate_metrics(run_dir / "metrics.jsonl", pos.samples_seen)
    if info.enabled:
        parts.model = _wrap_ddp(parts.model, info)
    barrier(info)
    monitor = Monitor(run_dir, enabled=info.is_main, progress=progress,
                      tensorboard=cfg.train.tensorboard, total_samples=cfg.total_samples,
                      start_samples=pos.samples_seen)
    monitor.write("event", pos.step, pos.samples_seen, event="resume" if state else "start",
                  world_size=info.world_size, device=str(info.device),
                  parameters=sum(p.numel() for p in parts.net.parameters()))
    try:
        with StopSignals() as stop:
            _loop(cfg, info, parts, pos, monitor, stop, run_dir)
        if info.is_main:
            _save_release(cfg, parts, run_dir / "weights.safetensors")
            monitor.write("event", pos.step, pos.samples_seen, event="done")
    finally:
        monitor.close()
    barrier(info)
    return run_dir


# ----------------------------------------------------------------------------- set-up
def _check_setup(cfg: RunConfig, info: DistInfo) -> None:
    """Cheap checks before any work: world size, TensorBoard."""
    micro = cfg.data.batch_size // cfg.optim.accumulate
    if micro % info.world_size:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} / optim.accumulate "
                          f"{cfg.optim.accumulate} = {micro} does not split over "
                          f"{info.world_size} processes")
    if cfg.train.tensorboard and info.is_main:
        require_tensorboard()


def _check_existing_run(run_dir: Path, resume: bool) -> None:
    """A run directory with checkpoints is continued with ``resume`` only."""
    has_run = any((ckpt.checkpoint_dir(run_dir) / n).exists() for n in ("last.pt", "previous.pt"))
    if has_run and not resume:
        raise ConfigError(f"train.out_dir: {run_dir} already holds a run; pass --resume to "
                          "continue it or choose another out_dir")




def _build(cfg: RunConfig, info: DistInfo, store: Any, train_ds: Any,
           val_args: dict[str, Any] | None, source_map: Any) -> Parts:
    from precipdiff.diffusion.precond import EDMPrecond
    from precipdiff.models.unet import UNet

    torch.manual_seed(cfg.train.seed)
    net = UNet(cfg.model.unet_config())
    if cfg.train.init_from:
        init_from_release(cfg, net, store)
    net = net.to(info.device)
    model = net if cfg.train.stage == "regression" else EDMPrecond(net, cfg.diffusion.sigma_data)
    ema = EMA(net, halflife_samples=cfg.train.ema_halflife_samples,
              rampup_ratio=cfg.train.ema_rampup_ratio)
    mean_net = load_mean_net(cfg, store, info.device) if cfg.train.mean_from else None
    teacher = load_teacher(cfg, info.device) if cfg.distill.teacher else None
    val_batch = _val_batch(val_args, info.device, mean_net) if info.is_main else None
    return Parts(net=net, model=model, ema=ema, optimizer=build_optimizer(net, cfg.optim),
                 mean_net=mean_net, teacher=teacher, store=store, train_ds=train_ds,
                 val_batch=val_batch, source_map=source_map,
                 product_lookup=product_lookup(cfg, net, store))




def _val_batch(val_args: dict[str, Any] | None, device: torch.device,
               mean_net: nn.Module | None) -> dict[str, torch.Tensor] | None:
    """The fixed validation patches (:func:`precipdiff.training.build.validation_patches`)."""
    from precipdiff.training.build import validation_patches

    if val_args is None:
        return None
    batch = validation_patches(**val_args)
    return _prepare({k: batch[k] for k in ("cond", "target", "mask")}, device, mean_net)


def _restore(parts: Parts, state: dict[str, Any]) -> Position:
    parts.net.load_state_dict(state["model"])
    parts.ema.load_state_dict(state["ema"])
    parts.optimizer.load_state_dict(state["optimizer"])
    ckpt.set_rng_state(state["rng"])
    data = state.get("data", {})
    return Position(step=state["step"], samples_seen=state["samples_seen"],
                    epoch=data.get("epoch", 0), batch_in_epoch=data.get("batch_in_epoch", 0))


def _wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ----------------------------------------------------------------------------- the loop
def _loop(cfg: RunConfig, info: DistInfo, parts: Parts, pos: Position, monitor: Monitor,
          stop: StopSignals, run_dir: Path) -> None:
    plan = BatchPlan(n=len(parts.train_ds), batch_size=cfg.data.batch_size,
                     accumulate=cfg.optim.accumulate, rank=info.rank,
                     world_size=info.world_size, seed=cfg.train.seed)
    if plan.steps_per_epoch == 0:
        raise ConfigError(f"data.batch_size: {cfg.data.batch_size} exceeds the "
                          f"{plan.n} training patches of {cfg.data.store}")
    meter = StepMeter()
    while pos.step < cfg.total_steps:
        batches = epoch_batches(parts.train_ds, plan, pos.epoch, pos.batch_in_epoch,
                                num_workers=cfg.data.num_workers,
                                pin_memory=info.device.type == "cuda")
        for micro_plan, micro in meter.timed(batches):
            loss, grad_norm = _train_step(cfg, info, parts, pos, micro_plan, micro)
            pos.step += 1
            pos.samples_seen += cfg.data.batch_size
            pos.batch_in_epoch += 1
            meter.add(loss, grad_norm)
            _after_step(cfg, info, parts, pos, monitor, meter, run_dir)
            if stop.requested(info):
                _stop(info, parts, pos, cfg, run_dir, monitor, stop.signum)
            if pos.step >= cfg.total_steps:
                break
        else:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
    if info.is_main:
        ckpt.save_checkpoint(run_dir, _checkpoint_state(cfg, parts, pos))


def _train_step(cfg: RunConfig, info: DistInfo, parts: Parts, pos: Position,
                micro_plan: list, micro: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """One optimiser step over the global batch; returns (loss, gradient norm)."""
    batches = [_prepare(b, info.device, parts.mean_net) for b in micro]
    valid = sum(b["mask"].sum() for b in batches).to(torch.float64)
    total_valid = gather_sum(valid, info).clamp_min(1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    for i, (mb, batch) in enumerate(zip(micro_plan, batches, strict=True)):
        with maybe_no_sync(parts.model, i < len(batches) - 1), _autocast(cfg, info.device):
            term = _loss_sum(cfg, parts.model, batch, mb.serials, parts.teacher,
                             parts.product_lookup)
        (term * (info.world_size / total_valid).float()).backward()
        loss_sum += term.detach().double()
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parts.net.parameters(), clip))
    loss = float(gather_sum(loss_sum, info) / total_valid)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        _diverged(cfg, pos, f"loss {loss}, gradient norm {grad_norm}")
    set_lr(parts.optimizer, lr_at(pos.samples_seen, cfg.optim, cfg.total_samples))
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    if not _all_finite(parts.net):
        _diverged(cfg, pos, "parameters became NaN or infinite in the update")
    parts.ema.update(parts.net, batch_size=cfg.data.batch_size,
                     samples_seen=pos.samples_seen + cfg.data.batch_size)
    return loss, grad_norm


def _all_finite(net: nn.Module) -> bool:
    """Every parameter finite (one reduction per tensor, one host sync)."""
    flags = [torch.isfinite(p.detach()).all() for p in net.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _diverged(cfg: RunConfig, pos: Position, what: str) -> None:
    """Stop before anything non-finite is written: the last checkpoint stays the good one."""
    raise DivergedError(
        f"training diverged at step {pos.step + 1} ({pos.samples_seen} samples): {what}; "
        f"nothing was written after the last checkpoint of {cfg.train.out_dir}; lower optim.lr "
        f"(now {cfg.optim.lr:g}) or set optim.grad_clip")


def _prepare(batch: dict[str, torch.Tensor], device: torch.device,
             mean_net: nn.Module | None) -> dict[str, torch.Tensor]:
    """Move to ``device``; around a regression mean the target becomes ``target - mean(cond)``."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out["mask"] = out["mask"].bool()
    if mean_net is not None:
        with torch.no_grad():
            mean = mean_net(None, None, out["cond"]).float()
        out["target"] = (out["target"] - mean) * out["mask"]
    return out


def _loss_sum(cfg: RunConfig, model: nn.Module, batch: dict[str, torch.Tensor],
              serials: list[int], teacher: nn.Module | None = None,
              lookup: torch.Tensor | None = None) -> torch.Tensor:
    y, cond, mask = batch["target"], batch["cond"], batch["mask"]
    if cfg.train.stage == "regression":
        return regression_loss_sum(model, y, cond, mask)
    d = cfg.diffusion
    sigma, noise = draw_noise(serials, tuple(y.shape[1:]), seed=cfg.train.seed,
                              P_mean=d.P_mean, P_std=d.P_std)
    product = None if lookup is None else product_labels(
        batch["network"], lookup, serials, seed=cfg.train.seed, dropout=cfg.train.product_dropout)
    if teacher is not None:
        grid = student_grid(cfg.distill.sigmas)
        intervals = draw_intervals(serials, len(grid) - 1, seed=cfg.train.seed)
        return distill_loss_sum(model, teacher, y, cond, mask, noise.to(y.device), intervals,
                                grid, substeps=cfg.distill.substeps, sigma_data=d.sigma_data,
                                product=product)
    return edm_loss_sum(model, y, cond, mask, sigma.to(y.device), noise.to(y.device),
                        sigma_data=d.sigma_data, product=product)


def _autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if not cfg.train.bf16:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 is not supported on %s; training in float32", device)
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _crossed(samples: int, batch: int, every: int) -> bool:
    """True when the last step of ``batch`` samples crossed a multiple of ``every``."""
    return samples // every > (samples - batch) // every


def _after_step(cfg: RunConfig, info: DistInfo, parts: Parts, pos: Position, monitor: Monitor,
                meter: StepMeter, run_dir: Path) -> None:
    """Logging, validation and periodic checkpoints (rank 0 writes)."""
    b, last = cfg.data.batch_size, pos.step >= cfg.total_steps
    lr = lr_at(pos.samples_seen - b, cfg.optim, cfg.total_samples)
    monitor.advance(pos.samples_seen, meter.last_loss)
    if pos.step % cfg.train.log_every_steps == 0 or last:
        monitor.write("train", pos.step, pos.samples_seen, epoch=pos.epoch, lr=lr,
                      **meter.flush(b))
    start = time.perf_counter()
    if (_crossed(pos.samples_seen, b, cfg.train.val_every_samples) or last) and info.is_main:
        if parts.val_batch is not None:
            monitor.write("val", pos.step, pos.samples_seen, **_validate(cfg, parts))
    if _crossed(pos.samples_seen, b, cfg.train.checkpoint_every_samples) and not last:
        if info.is_main:
            ckpt.save_checkpoint(run_dir, _checkpoint_state(cfg, parts, pos))
        barrier(info)
    meter.exclude(time.perf_counter() - start)


@torch.no_grad()
def _validate(cfg: RunConfig, parts: Parts) -> dict[str, float]:
    """EMA net on the fixed val patches: loss, and for diffusion a quick fair CRPS."""
    from precipdiff.diffusion.precond import EDMPrecond
    from precipdiff.diffusion.samplers import randn, sample, sample_euler

    start, net, batch = time.perf_counter(), parts.ema.module, parts.val_batch
    y, cond, mask = batch["target"], batch["cond"], batch["mask"]
    valid = mask.sum().clamp_min(1).double()
    out = {"val_mae_base": float((y.abs() * mask).sum() / valid)}
    if cfg.train.stage == "regression":
        out["val_loss"] = float(regression_loss_sum(net, y, cond, mask) / valid)
    else:
        d, n = cfg.diffusion, y.shape[0]
        denoiser = EDMPrecond(net, d.sigma_data)
        sigma, noise = draw_noise(list(range(n)), tuple(y.shape[1:]), seed=cfg.train.seed,
                                  P_mean=d.P_mean, P_std=d.P_std, stream=1)
        out["val_loss"] = float(edm_loss_sum(denoiser, y, cond, mask, sigma.to(y.device),
                                             noise.to(y.device), sigma_data=d.sigma_data) / valid)
        g = torch.Generator(device=y.device).manual_seed(cfg.train.seed)
        shape, conds = (d.val_members * n, *y.shape[1:]), cond.repeat(d.val_members, 1, 1, 1)
        if cfg.distill.teacher:  # the student on its own grid
            grid = torch.tensor(student_grid(cfg.distill.sigmas), device=y.device)
            x = sample_euler(denoiser, randn(shape, g, device=y.device) * grid[0], grid,
                             cond=conds)
        else:
            x = sample(denoiser, shape, cond=conds, steps=d.val_steps, sampler=d.val_sampler,
                       generator=g, device=y.device, disable=True)
        out["val_crps_fair"] = crps_fair(x.view(d.val_members, *y.shape), y, mask)
    out["val_time_s"] = time.perf_counter() - start
    return out


def _checkpoint_state(cfg: RunConfig, parts: Parts, pos: Position) -> dict[str, Any]:
    return {"model": parts.net.state_dict(), "ema": parts.ema.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": {"samples_seen": pos.samples_seen, "schedule": cfg.optim.schedule},
            "step": pos.step, "samples_seen": pos.samples_seen, "rng": ckpt.rng_state(),
            "data": {"epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch},
            "config": cfg.to_dict()}




def _save_release(cfg: RunConfig, parts: Parts, path: Path) -> Path:
    """EMA weights + metadata (format in :mod:`precipdiff.release`)."""
    notes = distilled_notes(cfg) if cfg.distill.teacher else None
    release = make_release(cfg, parts.ema.state_dict(), parts.store, parts.mean_net,
                           parts.source_map, notes)
    log.info("writing %s", path)
    return release.save(path)


def _stop(info: DistInfo, parts: Parts, pos: Position, cfg: RunConfig, run_dir: Path,
          monitor: Monitor, signum: int | None) -> None:
    """Save a checkpoint, then leave as the signal asked (SIGINT → KeyboardInterrupt)."""
    if info.is_main:
        ckpt.save_checkpoint(run_dir, _checkpoint_state(cfg, parts, pos))
        monitor.write("event", pos.step, pos.samples_seen, event="stopped", signal=signum)
    log.warning("stopped by signal %s at step %d; checkpoint saved, resume with --resume",
                signum, pos.step)
    barrier(info)
    raise exit_for(signum)


