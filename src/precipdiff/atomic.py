"""Atomic writes: write to a temporary sibling, then rename over the target.

A crash (or SIGKILL) in the middle of a write leaves the previous file intact and, at worst,
a ``.<name>.tmp-<host>-<pid>-*`` sibling; the next write of the same target removes such
siblings whose process is gone (:func:`sweep_stale`). :func:`check_writable` tells, before any
work, whether a target can be written at all.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from precipdiff.errors import ConfigError

log = logging.getLogger(__name__)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _temp_prefix(target: Path, kind: str = "tmp") -> str:
    """``.<name>.<kind>-<host>-<pid>-``: whose temporary sibling of ``target`` this is."""
    return f".{target.name}.{kind}-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process
        return True
    return True


def sweep_stale(target: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of ``target`` left by dead processes on this host.

    Only names of our own pattern (``.<name>.tmp-<host>-<pid>-*`` and ``.<name>.old-…``) whose
    process no longer exists are removed (a live writer's files are kept). Returns the removed
    paths.
    """
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-{_host()}-(\d+)-")
    removed = []
    with contextlib.suppress(OSError):
        for sibling in target.parent.iterdir():
            m = pattern.match(sibling.name)
            if m is None or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    sibling.unlink()
            log.info("removed %s, left by an interrupted run", sibling)
            removed.append(sibling)
    return removed


def check_writable(target: str | os.PathLike, *, directory: bool = False,
                   what: str = "output") -> Path:
    """Refuse, before any work, a ``target`` that cannot be written (:class:`ConfigError`).

    A file target must not be an existing directory (nor a directory target an existing
    file); the nearest existing folder above it must be a directory where a file can be
    created (checked by creating and removing an empty probe file, which also catches
    read-only file systems and root-owned folders).
    """
    target = Path(target)
    if directory and target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: the {what} must be a directory, found an existing file")
    if not directory and target.is_dir():
        raise ConfigError(f"{target}: the {what} is an existing directory, expected a file "
                          "name (e.g. out.nc)")
    folder = target if directory and target.is_dir() else target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{target}: cannot write the {what}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(target, "probe"), dir=folder)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (read-only folder or file system?)"
        raise ConfigError(f"{target}: cannot write the {what} in {folder}: {reason}") from None
    os.close(fd)
    os.unlink(probe)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``; an existing ``target`` is moved aside
    first and deleted only after the rename, so ``target`` always holds a complete tree."""
    if target.exists():
        old = target.with_name(_temp_prefix(target, "old") + "0")
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
    sweep_stale(target)
    prefix = _temp_prefix(target)
    tmp = Path(
        tempfile.mkdtemp(prefix=prefix, dir=target.parent)
        if is_dir
        else tempfile.mktemp(prefix=prefix, dir=target.parent)
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
