"""Resume checkpoints (``.pt``).

Resume checkpoints
------------------
``<run>/checkpoints/last.pt`` and ``<run>/checkpoints/previous.pt``: a dict of plain containers only
(loadable with ``torch.load(..., weights_only=True)``)::

    {"format": "precipdiff-resume/1", "version": str,
     "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "scheduler": {"samples_seen": int, ...}, "step": int, "samples_seen": int,
     "rng": {"torch": uint8 tensor, "numpy": {...}, "python": {...}, "cuda": [...]},
     "data": {"epoch": int, "batch_in_epoch": int}, "config": RunConfig.to_dict()}

A new checkpoint is written to a temporary file, fsynced, re-read to verify it, and only then
renamed: the old ``last.pt`` becomes ``previous.pt`` (hard link) and the new file replaces
``last.pt``. A crash at any point leaves at least one good checkpoint.

Release weights (``.safetensors``) are :mod:`precipdiff.release`; ``load_weights``,
``save_weights`` and ``split_mean_net`` are re-exported here for existing callers.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from precipdiff import __version__
from precipdiff.atomic import atomic_path
from precipdiff.errors import CheckpointError
from precipdiff.release import load_weights, save_weights, split_mean_net

__all__ = ["check_resume_config", "config_differences", "find_resume_checkpoint",
           "load_checkpoint", "load_weights", "rng_state", "save_checkpoint", "save_weights",
           "set_rng_state", "split_mean_net"]

log = logging.getLogger(__name__)

RESUME_FORMAT = "precipdiff-resume/1"
# Config keys that must agree between a checkpoint and the run that resumes it.
RESUME_KEYS = (
    "model.*", "train.stage", "train.mean_from", "train.seed",
    "data.store", "data.patch", "data.batch_size", "data.samples_per_epoch",
    "data.rain_weighted", "data.augment", "data.source_map", "data.weighting",
    "data.networks",
    "diffusion.sigma_data", "diffusion.P_mean", "diffusion.P_std", "optim.accumulate",
)


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Torch, numpy and python RNG states as tensors/ints (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - global state
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],  # noqa: NPY002
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- resume checkpoints
def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` as the new ``last.pt``; the old one becomes ``previous.pt``."""
    folder = checkpoint_dir(run_dir)
    last, previous = folder / "last.pt", folder / "previous.pt"
    state = {"format": RESUME_FORMAT, "version": __version__, **state}
    staged = folder / ".staged.pt"
    with atomic_path(staged) as tmp:
        torch.save(state, tmp)
        load_checkpoint(tmp)  # verify before anything good is replaced
    if last.exists():
        _copy_to_previous(last, previous)
    os.replace(staged, last)
    _fsync_dir(folder)
    return last


def _copy_to_previous(last: Path, previous: Path) -> None:
    """``previous.pt`` := ``last.pt`` by a hard link, so ``last.pt`` never goes missing."""
    link = previous.with_name(".previous.pt.link")
    link.unlink(missing_ok=True)
    try:
        os.link(last, link)
    except OSError:  # no hard links on this file system: rename instead
        os.replace(last, previous)
        return
    os.replace(link, previous)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a resume checkpoint with ``weights_only=True``; CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a precipdiff resume checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r})")
    missing = [k for k in ("model", "ema", "optimizer", "step", "samples_seen", "config")
               if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def find_resume_checkpoint(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint of a run.

    ``.staged.pt`` (verified, left by a crash between the two renames), else ``last.pt``, else
    ``previous.pt``.
    """
    folder = checkpoint_dir(run_dir)
    candidates = [folder / ".staged.pt", folder / "last.pt", folder / "previous.pt"]
    errors = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("%s; trying the previous checkpoint", exc)
            errors.append(str(exc))
    if errors:
        raise CheckpointError(errors[0])
    raise CheckpointError(f"{folder}: no checkpoint to resume from (expected last.pt)")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(saved: dict[str, Any], requested: dict[str, Any],
                       keys: tuple[str, ...] = RESUME_KEYS) -> list[str]:
    """Keys (from ``keys``; ``section.*`` = whole section) whose values differ. A key that a
    checkpoint of an older version lacks counts as its default (``RunConfig()``)."""
    from precipdiff.training.config import RunConfig

    defaults = _flatten(RunConfig().to_dict())
    a, b = {**defaults, **_flatten(saved)}, {**defaults, **_flatten(requested)}
    names = sorted(set(a) | set(b))
    wanted = [n for n in names
              if any(n == k or (k.endswith(".*") and n.startswith(k[:-1])) for k in keys)]
    return [n for n in wanted if _norm(a.get(n)) != _norm(b.get(n))]


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def check_resume_config(path: str | os.PathLike, saved: dict[str, Any],
                        requested: dict[str, Any]) -> None:
    """CheckpointError naming the differing keys when the run cannot resume this checkpoint."""
    diff = config_differences(saved, requested)
    if diff:
        shown = ", ".join(f"{k} (checkpoint {_flatten(saved).get(k)!r}, requested "
                          f"{_flatten(requested).get(k)!r})" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise CheckpointError(
            f"{path}: checkpoint config differs from the requested one: {shown}{more}")
