"""Exception hierarchy: every user-facing error is a :class:`PrecipdiffError`.

Messages name the file and/or variable, what was found and what was expected,
so the CLI can print them in one line and exit non-zero.
"""

from __future__ import annotations

from os import PathLike


class PrecipdiffError(Exception):
    """Base class of all errors caused by user input or configuration."""


class InputFileError(PrecipdiffError):
    """A file that cannot be read or does not hold what was expected."""

    def __init__(self, path: str | PathLike, problem: str, *, variable: str | None = None):
        self.path = str(path)
        self.variable = variable
        self.problem = problem
        where = f"{self.path}" + (f" [variable {variable!r}]" if variable else "")
        super().__init__(f"{where}: {problem}")


class GridError(PrecipdiffError):
    """Grids that do not nest, factors that do not divide, misaligned coordinates."""


class ConfigError(PrecipdiffError):
    """Unknown keys, wrong types or impossible values in a run configuration."""


class StoreError(PrecipdiffError):
    """A missing, foreign, incomplete or mismatched training store."""


class CheckpointError(PrecipdiffError):
    """A corrupt checkpoint, or weights that do not fit the requested run."""
