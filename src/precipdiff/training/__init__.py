"""Training: one resumable trainer for every stage (``correct``, ``downscale``, ``regression``).

``train(load_config("run.yaml", ["optim.lr=1e-4"]), resume=False)`` → run directory with
``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` and ``weights.safetensors`` (a
:class:`~precipdiff.release.Release`).
DDP: ``torchrun --nproc_per_node=N -m precipdiff.training --config run.yaml``.
"""

from precipdiff.release import Release, load_weights, save_weights
from precipdiff.training.config import RunConfig, load_config
from precipdiff.training.ema import EMA
from precipdiff.training.loop import train

__all__ = ["EMA", "Release", "RunConfig", "load_config", "load_weights", "save_weights", "train"]
