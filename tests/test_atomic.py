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


def test_sweep_stale_removes_only_dead_writers(tmp_path):
    import os
    import subprocess
    import sys

    from precipdiff.atomic import _temp_prefix, sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "out.nc"
    mine = _temp_prefix(target)
    stale_file = tmp_path / (mine.replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "x")
    stale_dir = tmp_path / (mine.replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "d")
    live = tmp_path / (mine + "y")
    other = tmp_path / ".other.nc.tmp-x"
    stale_file.write_text("half")
    stale_dir.mkdir()
    (stale_dir / "chunk").write_text("half")
    live.write_text("busy")
    other.write_text("not ours")
    assert sorted(sweep_stale(target)) == sorted([stale_file, stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_check_writable(tmp_path):
    from precipdiff.atomic import check_writable
    from precipdiff.errors import ConfigError

    deep = tmp_path / "new" / "deeper" / "x.nc"
    assert check_writable(deep) == deep and not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="existing directory"):
        check_writable(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_writable(tmp_path / "f" / "x.nc")
    with pytest.raises(ConfigError, match="must be a directory"):
        check_writable(tmp_path / "f", directory=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no probe file left
