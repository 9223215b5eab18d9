"""Release weights from a run's latest resume checkpoint (e.g. while training continues).

``precipdiff export --run RUN_DIR --output W.safetensors`` writes the EMA weights of the newest
readable checkpoint with the same self-describing metadata as the end of training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from precipdiff.training import checkpoint as ckpt
from precipdiff.training.build import (
    fit_source_map,
    load_mean_net,
    make_release,
    open_store_or_corpus,
)
from precipdiff.training.config import RunConfig
from precipdiff.training.distill import distilled_notes

log = logging.getLogger(__name__)


def export_weights(run_dir: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``output`` (.safetensors) from the EMA state of ``run_dir``'s newest checkpoint."""
    path, state = ckpt.find_resume_checkpoint(run_dir)
    cfg = RunConfig.from_dict(state["config"])
    store = open_store_or_corpus(cfg.data.store)
    mean_net = load_mean_net(cfg, store, "cpu") if cfg.train.mean_from else None
    notes = {"exported_from": f"{path.name} at {state['samples_seen']} samples"}
    if cfg.distill.teacher:  # a student keeps its grid and the teacher's calibrations
        notes = {**distilled_notes(cfg), **notes}
    release = make_release(cfg, state["ema"], store, mean_net, fit_source_map(cfg, store), notes)
    log.info("exporting %s (%d samples) to %s", path, state["samples_seen"], output)
    return release.save(output)
