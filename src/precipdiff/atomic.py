"""Atomic writes: write to a temporary sibling, then rename over the target.

A crash (or SIGKILL) in the middle of a write leaves the previous file intact and,
at worst, a ``*.tmp-*`` sibling that the next write replaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``; an existing ``target`` is moved aside
    first and deleted only after the rename, so ``target`` always holds a complete tree."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file/directory is removed and ``path`` is untouched.
    For directories (zarr stores) an existing target is replaced only after the new
    one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        if is_dir
        else tempfile.mktemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    )
    try:
        yield tmp
        if is_dir:
            replace_dir(tmp, target)
        else:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
