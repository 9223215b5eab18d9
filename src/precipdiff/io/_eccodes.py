"""The one import of ecCodes in the package: PROJ is loaded before it.

The ecCodes wheels (``eccodeslib`` → ``eckitlib``) bundle their own ``libproj`` and load it into
the process's global symbol scope. A ``pyproj`` imported *afterwards* binds its C++ statics to that
copy, and both libraries destroy the same objects at exit: the interpreter then aborts with
"double free or corruption" (exit status 134/139) after a run that succeeded. Loaded *first*,
pyproj's ``libproj`` binds to itself and ecCodes' copy (loaded later) to its own, so the process
exits cleanly in any later import order. Import ecCodes only through this module::

    from precipdiff.io._eccodes import eccodes

ecCodes also prints its own "ECCODES ERROR" lines to stderr when it meets a corrupt message, on
top of the one-line :class:`~precipdiff.errors.InputFileError` the readers raise. Its log is sent
to the null device here unless the user chose a stream with ``ECCODES_LOG_STREAM``.
"""

from __future__ import annotations

import pyproj  # noqa: F401  (must be loaded before ecCodes; see the module docstring)

# isort: split
import ctypes
import logging
import os

import eccodes

__all__ = ["eccodes"]

log = logging.getLogger(__name__)


def _silence_eccodes_log() -> None:
    """Send ecCodes' own log lines to the null device (they duplicate our error messages)."""
    if os.environ.get("ECCODES_LOG_STREAM") or os.name != "posix":
        return
    try:
        from gribapi.bindings import ffi, lib

        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        stream = libc.fopen(os.devnull.encode(), b"w")
        if stream:
            lib.grib_context_set_logging_file(lib.grib_context_get_default(),
                                              ffi.cast("FILE *", stream))
    except (ImportError, AttributeError, OSError) as exc:  # other builds: keep their default
        log.debug("ecCodes log left on stderr: %s", exc)


_silence_eccodes_log()
