"""Reading YAML config files into plain mappings, with one-line :class:`ConfigError` messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from precipdiff.errors import ConfigError


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The top-level mapping of YAML file ``path`` (empty file -> ``{}``); ``what`` names it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found (the path does not exist)")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a mapping in the {what}, found {type(d).__name__}")
    return d
