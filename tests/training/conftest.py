"""Training tests: a tiny store per session (one intra-op thread comes from tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _training_store import make_store  # noqa: E402


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "tiny.zarr")
