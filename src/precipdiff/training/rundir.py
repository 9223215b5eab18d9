"""The run directory of one training: an exclusive lock, and a killed run's temporary files.

``<run>/.lock`` holds ``{"pid": ..., "host": ...}`` of the training that owns the directory and is
held with ``flock(LOCK_EX)`` while it runs. The kernel drops the lock when that process dies, by
any signal, so a lock file left by a dead process is taken over by the next training; a second
live training in the same directory gets a one-line :class:`RunLockedError`. (On a file system
without ``flock`` the check falls back to whether the recorded pid is alive on this host.)

Temporary files of atomic writes (``.<name>.tmp-*``) and the hard link of a checkpoint rotation
(``.previous.pt.link``) that a SIGKILL left behind are removed once the lock is held;
``checkpoints/.staged.pt`` (a verified checkpoint) is kept for the resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from precipdiff.errors import PrecipdiffError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]


class RunLockedError(PrecipdiffError):
    """Another live training holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """Context manager: hold ``run_dir``'s lock and clean its stale temporary files.

    ``enabled=False`` (a non-zero DDP rank) does nothing. When the lock is taken by a directory
    this lock created, and the training fails before writing anything, the empty directory is
    removed again: a failed start leaves no files behind.
    """

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.enabled = enabled
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrecipdiffError(f"train.out_dir: cannot create {self.run_dir} "
                                  f"({exc.strerror or exc})") from None
        self._created = missing
        try:
            self._acquire()
        except BaseException:
            self._remove_created()
            raise
        remove_stale_temps(self.run_dir)
        return self

    def _acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PrecipdiffError(f"train.out_dir: cannot write {self.path} "
                                      f"({exc.strerror or exc})") from None
            if not self._lock(fd):
                os.close(fd)
                owner = _owner(self.path)
                raise RunLockedError(
                    f"train.out_dir: {self.run_dir} is in use by another training (pid "
                    f"{owner.get('pid', '?')} on {owner.get('host', '?')}, lock {self.path}); "
                    "wait for it to finish or choose another out_dir")
            try:  # the file may have been removed by its previous owner meanwhile
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _owner(self.path)
        if previous.get("pid") not in (None, os.getpid()):
            log.warning("%s: taking over the lock of pid %s, which is gone", self.path,
                        previous.get("pid"))
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        os.fsync(fd)
        self._fd = fd

    def _lock(self, fd: int) -> bool:
        """Try the exclusive lock; without ``flock`` judge the pid recorded in the file."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:  # file system without flock
                pass
        owner = _owner(self.path)
        pid, host = owner.get("pid"), owner.get("host")
        if not isinstance(pid, int) or pid == os.getpid():
            return True
        return host == socket.gethostname() and not _pid_alive(pid)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        if exc_type is not None:
            self._remove_created()

    def _remove_created(self) -> None:
        """Remove the directories this lock created, if nothing else was written into them."""
        for path in self._created:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            elif path.is_dir() and {p.name for p in path.iterdir()} <= {LOCK_NAME}:
                shutil.rmtree(path, ignore_errors=True)


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files of interrupted atomic writes in ``run_dir`` and its checkpoints.

    Call only while holding the run's lock (a live training's temporary files look the same).
    """
    run_dir = Path(run_dir)
    stale = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir()
             for p in folder.iterdir() if ".tmp-" in p.name and p.name.startswith(".")]
    link = run_dir / "checkpoints" / ".previous.pt.link"
    stale += [link] if link.exists() else []
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    if stale:
        log.info("%s: removed %d temporary file(s) of an interrupted run: %s", run_dir,
                 len(stale), ", ".join(p.name for p in stale[:3]))
    return stale
