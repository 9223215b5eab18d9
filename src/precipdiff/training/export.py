"""Release weights from a run's latest resume checkpoint (e.g. while training continues).

``precipdiff export --run RUN_DIR --output W.safetensors`` writes the EMA weights of the newest
readable checkpoint with the same self-describing metadata as the end of training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from precipdiff.models.unet import UNet
from precipdiff.training import checkpoint as ckpt
from precipdiff.training.build import fit_source_map, load_mean_net, release_metadata
from precipdiff.training.config import RunConfig

log = logging.getLogger(__name__)


def export_weights(run_dir: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``output`` (.safetensors) from the EMA state of ``run_dir``'s newest checkpoint."""
    from precipdiff.data.store import open_store

    path, state = ckpt.find_resume_checkpoint(run_dir)
    cfg = RunConfig.from_dict(state["config"])
    store = open_store(cfg.data.store)
    net = UNet(cfg.model.unet_config())
    mean_net = load_mean_net(cfg, store, "cpu") if cfg.train.mean_from else None
    meta = release_metadata(cfg, net, store, mean_net, fit_source_map(cfg, store))
    meta["exported_from"] = f"{path.name} at {state['samples_seen']} samples"
    mean_state = mean_net.state_dict() if mean_net is not None else None
    log.info("exporting %s (%d samples) to %s", path, state["samples_seen"], output)
    return ckpt.save_weights(output, state["ema"], metadata=meta, mean_state=mean_state)
