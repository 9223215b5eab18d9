"""Exception hierarchy: every user-facing error is a :class:`PrecipdiffError`.

Messages name the file and/or variable, what was found and what was expected,
so the CLI can print them in one line and exit non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable
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


class UnknownMethodError(ConfigError, KeyError, ValueError):
    """A name that no registry entry answers to (reader, sampler, baseline, metric).

    Raised by every ``get_*`` registry function. The message names the kind of method, the
    name asked for and the names available. It is a :class:`ConfigError` (a wrong name in a
    run's options), and also a ``KeyError`` (a registry is a mapping) and a ``ValueError``
    (what the sampler registry raised before), so older ``except`` clauses keep working.
    """

    def __init__(self, kind: str, name: object, available: Iterable[str]):
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(self.available)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])

    def __reduce__(self):  # pickle (dask workers) with the constructor's arguments
        return (type(self), (self.kind, self.name, self.available))
