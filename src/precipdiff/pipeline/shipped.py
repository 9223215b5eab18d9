"""The pretrained weights shipped inside the package (``precipdiff/weights``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = {
    "correct": "stage1_correct.safetensors",
    "downscale": "stage2_downscale.safetensors",
    # Stage II for areal-mean (mean-pooled) input, fine-tuned on the five-network radar corpus;
    # not a default: pass it with --weights-downscale (MODEL_CARD.md)
    "downscale_mean": "stage2_downscale_mean.safetensors",
}


def shipped_weights() -> dict[str, Path | None]:
    """Paths of the shipped weights by name (``None`` where not installed).

    ``correct`` and ``downscale`` are the defaults of ``predict``; ``downscale_mean`` is the
    corpus-trained Stage II for areal-mean input.
    """
    root = resources.files("precipdiff") / "weights"
    out: dict[str, Path | None] = {}
    for stage, name in SHIPPED.items():
        p = Path(str(root / name))
        out[stage] = p if p.is_file() else None
    return out
