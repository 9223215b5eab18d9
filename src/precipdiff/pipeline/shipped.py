"""The pretrained weights shipped inside the package (``precipdiff/weights``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = {"correct": "stage1_correct.safetensors", "downscale": "stage2_downscale.safetensors"}


def shipped_weights() -> dict[str, Path | None]:
    """Paths of the shipped Stage-I and Stage-II weights (``None`` where not installed)."""
    root = resources.files("precipdiff") / "weights"
    out: dict[str, Path | None] = {}
    for stage, name in SHIPPED.items():
        p = Path(str(root / name))
        out[stage] = p if p.is_file() else None
    return out
