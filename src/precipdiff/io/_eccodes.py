"""The one import of ecCodes in the package: PROJ is loaded before it.

The ecCodes wheels (``eccodeslib`` → ``eckitlib``) bundle their own ``libproj`` and load it into
the process's global symbol scope. A ``pyproj`` imported *afterwards* binds its C++ statics to that
copy, and both libraries destroy the same objects at exit: the interpreter then aborts with
"double free or corruption" (exit status 134/139) after a run that succeeded. Loaded *first*,
pyproj's ``libproj`` binds to itself and ecCodes' copy (loaded later) to its own, so the process
exits cleanly in any later import order. Import ecCodes only through this module::

    from precipdiff.io._eccodes import eccodes
"""

from __future__ import annotations

import pyproj  # noqa: F401  (must be loaded before ecCodes; see the module docstring)

# isort: split
import eccodes

__all__ = ["eccodes"]
