"""Keep freed memory for reuse: the C allocator policy of CPU runs.

A network pass on a CPU allocates and frees activations of tens to hundreds of MB at every
layer (a 448-px window of 8 members: ~0.5 GB per feature map at full resolution). glibc serves
every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back
with ``munmap`` when freed, so the kernel zero-fills every page of it again at the next layer.
Measured on one Stage-II block (``benchmarks/bench_allocator.py``, BENCHMARKS.md "Allocator"),
that page zeroing was a third of the CPU time. :func:`keep_freed_memory` tells glibc to serve
large blocks from its heap and not to give freed memory back below 2 GiB at the top
(``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)``): the same pages are
reused, at the price of a higher resident set (the high-water mark stays mapped).
:func:`release_freed_memory` gives the freed pages back between blocks (``malloc_trim``), so
a process's resident set stays that of its largest block, not the sum of its fragments; the
next block faults its pages in once, not once per layer.

The CLI applies it to every command, Stage-II window workers and archive workers to
themselves. It does nothing where the C library is not glibc, or where the user chose a
policy (``GLIBC_TUNABLES`` or a ``MALLOC_*`` variable set, or ``PRECIPDIFF_MALLOC=default``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Freed memory at the top of the heap kept up to this many bytes (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_applied = False
_libc: ctypes.CDLL | None = None


def user_chose_policy(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether the environment already sets the allocator's behaviour."""
    return (environ.get("PRECIPDIFF_MALLOC", "").lower() == "default"
            or "GLIBC_TUNABLES" in environ
            or any(k.startswith("MALLOC_") for k in environ))


def keep_freed_memory() -> bool:
    """Apply the policy above to this process (once); True when it is in force."""
    global _applied, _libc
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" \
            or user_chose_policy():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                               TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    if ok:
        _applied, _libc = True, libc
        log.debug("allocator: large blocks from the heap, freed memory kept for reuse")
    return ok


def release_freed_memory() -> None:
    """Give the freed pages of the heap back to the system (``malloc_trim(0)``) where
    :func:`keep_freed_memory` is in force; call it between units of work."""
    if _libc is not None:
        _libc.malloc_trim(0)
