"""atomic_path / replace_dir: a directory target is swapped whole or not at all."""

from __future__ import annotations

import pytest

from precipdiff.atomic import atomic_path, replace_dir


def test_replace_dir_swaps_and_cleans(tmp_path):
    target, new = tmp_path / "store", tmp_path / "new"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no .old-*, no new/


def test_atomic_dir_keeps_target_on_error(tmp_path):
    target = tmp_path / "store"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_atomic_dir_creates_target(tmp_path):
    target = tmp_path / "sub" / "store"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"
