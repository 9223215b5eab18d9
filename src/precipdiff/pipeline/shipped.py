"""The pretrained weights shipped inside the package (``precipdiff/weights``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: name -> file. ``correct`` and ``downscale`` are the defaults of ``predict``, ``demo`` and
#: ``precipdiff.downscale``: models for **areal-mean** input (mean pooling), trained on the
#: five-network radar corpus. ``correct_max`` and ``downscale_max`` are the PrecipDiff setting
#: (block maxima, max pooling, one MRMS hour), kept for ``--input-semantics block_maximum``.
#: The default ``downscale`` is a few-step student distilled from ``downscale_full`` (the
#: same network; 4 network evaluations on its own noise levels instead of 8,
#: :mod:`precipdiff.training.distill`); ``downscale_full`` is its teacher, sampled with any
#: sampler and the base of the temporal model and of fine-tuning.
#: ``downscale_temporal`` is the spatiotemporal Stage II for areal means (sequences; not a
#: default: pass it with ``--weights-downscale``). ``downscale_product_full`` is
#: ``downscale_full`` fine-tuned with a label per radar network of the corpus, and
#: ``downscale_product`` its 4-step student, what ``predict --product NAME`` loads;
#: ``downscale_temporal_product`` is the spatiotemporal Stage II on top of the full one.
#: MODEL_CARD.md describes each.
SHIPPED = {
    "correct": "stage1_correct_mean.safetensors",
    "downscale": "stage2_downscale_mean_distilled.safetensors",
    "downscale_full": "stage2_downscale_mean.safetensors",
    "correct_max": "stage1_correct_max.safetensors",
    "downscale_max": "stage2_downscale_max.safetensors",
    "downscale_temporal": "stage2_temporal_mean.safetensors",
    "downscale_product": "stage2_downscale_mean_product_distilled.safetensors",
    "downscale_product_full": "stage2_downscale_mean_product.safetensors",
    "downscale_temporal_product": "stage2_temporal_mean_product.safetensors",
}


def shipped_weights() -> dict[str, Path | None]:
    """Paths of the shipped weights by name (``None`` where not installed); see ``SHIPPED``."""
    root = resources.files("precipdiff") / "weights"
    out: dict[str, Path | None] = {}
    for stage, name in SHIPPED.items():
        p = Path(str(root / name))
        out[stage] = p if p.is_file() else None
    return out
