"""Reading YAML config files into plain mappings, with one-line :class:`ConfigError` messages."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` (a ``--set`` option) -> ``(["a", "b"], value)``, the value parsed as YAML
    (an empty value is the empty string)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected key=value or section.key=value, "
                          "e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML "
                          f"({' '.join(str(exc).split())})") from None
    return parts, value


def apply_overrides(d: dict[str, Any], sets: Sequence[str], *,
                    depth: int | None = None) -> dict[str, Any]:
    """A copy of mapping ``d`` with every ``--set`` override applied (nested keys by dots).

    ``depth`` requires keys of exactly that many parts (e.g. 2 for ``section.key``).
    """
    out = json.loads(json.dumps(d))
    for item in sets:
        parts, value = parse_override(item)
        if depth is not None and len(parts) != depth:
            raise ConfigError(f"--set {item!r}: expected a key of {depth} dotted parts "
                              f"(section.key=value, e.g. optim.lr=1e-4)")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a mapping")
        node[parts[-1]] = value
    return out
