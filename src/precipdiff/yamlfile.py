"""Reading YAML config files into plain mappings, with one-line :class:`ConfigError` messages.

Anchors and aliases are allowed, but a document whose alias expansion would exceed
:data:`MAX_NODES` nodes (an alias bomb, "billion laughs") or that refers to itself is refused
after parsing and before any Python object is built, so memory stays bounded by the file size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from precipdiff.errors import ConfigError

T = TypeVar("T")

#: Most YAML nodes a document may expand to (aliases counted at every use).
MAX_NODES = 100_000
#: Largest config file read (bytes).
MAX_BYTES = 4 * 2**20


def _expanded_size(root: yaml.Node, where: str) -> int:
    """Nodes of ``root`` with every alias expanded; :class:`ConfigError` above the bound."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{where}: a YAML alias refers to the node that contains it")
        active.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if n > MAX_NODES:
            raise ConfigError(f"{where}: the YAML expands to more than {MAX_NODES} nodes "
                              "(aliases of aliases?); refusing to build it")
        sizes[key] = n
        return n

    try:
        return size(root)
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply") from None


def safe_load_bounded(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` that refuses alias bombs and self-references (see module doc);
    ``where`` names the text in messages. YAML syntax errors propagate as ``yaml.YAMLError``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The top-level mapping of YAML file ``path`` (empty file -> ``{}``); ``what`` names it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found (the path does not exist)")
    if p.stat().st_size > MAX_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes, more than a {what} can be "
                          f"({MAX_BYTES} bytes); is it the right file?")
    try:
        d = safe_load_bounded(p.read_text(), str(p)) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (expected a YAML {what})") from None
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
        value = safe_load_bounded(raw, f"--set {key}") if raw.strip() else ""
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


def dataclass_from_mapping(cls: type[T], d: Any, what: str) -> T:
    """``cls(**d)`` for a config dataclass, every problem one :class:`ConfigError`.

    ``what`` names the config in the message (e.g. ``"prepare config"``): a ``d`` that is not a
    mapping, keys that are not fields of ``cls`` (listing the allowed ones), missing or mistyped
    arguments and values the dataclass's own checks refuse (``ValueError``/``AttributeError``).
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{what} must be a mapping, found {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {unknown}; allowed {names}")
    try:
        return cls(**d)
    except TypeError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{what}: invalid value ({exc})") from exc
