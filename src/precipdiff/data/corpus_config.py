"""``CorpusConfig``: the schema of a multi-network ``precipdiff prepare`` run (a corpus store).

A corpus config is a YAML mapping with a ``sources:`` list (that key tells it apart from a
single-store :class:`~precipdiff.data.prepare_config.PrepareConfig`)::

    factor: 10                 # fine cells per coarse cell, every network
    pooling: mean              # coarse reference: block mean (areal, like satellites) or max
    seed: 2026                 # emulator seeds: [seed, crc32(network), valid time in s]
    emulator: {}               # EmulatorParams of the satellite-like coarse source
    sources:
      - network: mch           # group name in the store: [a-z0-9_-]
        files: ../shared/data/radar/mch/*/*.gif
        reader: null           # io reader (null: detected from content)
        options: {}            # reader keyword options (e.g. Z-R coefficients)
        region: null           # [x_min, y_min, x_max, y_max] of cell centres: metres on a
                               # projected grid, or lon/lat degrees (the reader's bbox)
        events: {spring: [2015-05-15T15:45, 2015-05-15T19:00], ...}
        held_out: spring       # event(s) of the "test" split
        validation: null       # event(s) of the "val" split; the other events are "train"

Events are inclusive UTC time windows; frames outside every window are left out. Without
``events`` each unbroken sequence (consecutive frames at most ``event_gap_s`` apart) is one
event named by its first time (``YYYY-MM-DDTHH:MM``). Paths are used as given (relative ones
from the working directory: run the CLI from the repository root for ``configs/``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from precipdiff.errors import ConfigError
from precipdiff.yamlfile import apply_overrides, dataclass_from_mapping, read_yaml_mapping

POOLINGS = ("max", "mean")
ACCUMULATION = ("to_rate", "error")
NETWORK_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
SOURCE_KEYS = ("network", "files", "reader", "variable", "options", "region", "events",
               "held_out", "validation")


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence):
        return tuple(str(v) for v in value)
    raise ConfigError(f"corpus config: {what} must be an event name or a list of them, "
                      f"found {value!r}")


def _time(value: Any, what: str) -> np.datetime64:
    if isinstance(value, dt.datetime):  # YAML parses times with seconds itself
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        value = value.isoformat()
    try:
        t = np.datetime64(str(value).replace(" ", "T").rstrip("Z"), "s")
    except ValueError:
        t = np.datetime64("NaT")
    if np.isnat(t):
        raise ConfigError(f"corpus config: {what}: {value!r} is not an ISO time "
                          "(expected e.g. 2017-01-31T09:45)")
    return t


@dataclass(frozen=True)
class SourceConfig:
    """One radar network of the corpus (see the module docstring for every key)."""

    network: str
    files: tuple[str, ...]
    reader: str | None = None
    variable: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    region: tuple[float, float, float, float] | None = None
    events: Mapping[str, tuple[str, str]] | None = None
    held_out: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen coercion)
        where = f"source {self.network!r}"
        if not isinstance(self.network, str) or not NETWORK_RE.match(self.network):
            raise ConfigError(f"corpus config: network names are 1-40 characters of [a-z0-9_-] "
                              f"starting with a letter or digit, found {self.network!r}")
        files = (self.files,) if isinstance(self.files, (str, os.PathLike)) else self.files
        if not isinstance(files, Sequence) or not files:
            raise ConfigError(f"corpus config: {where}: files must be a path, a glob or a "
                              f"non-empty list of them, found {self.files!r}")
        s("files", tuple(str(f) for f in files))
        if not isinstance(self.options or {}, Mapping):
            raise ConfigError(f"corpus config: {where}: options must be a mapping of reader "
                              f"keyword arguments, found {self.options!r}")
        s("options", dict(self.options or {}))
        if self.region is not None:
            r = tuple(self.region) if isinstance(self.region, Sequence) else ()
            if len(r) != 4 or not all(isinstance(v, (int, float)) for v in r) \
                    or not (r[0] < r[2] and r[1] < r[3]):
                raise ConfigError(f"corpus config: {where}: region must be [x_min, y_min, x_max, "
                                  f"y_max] with min < max (metres on projected grids, lon/lat "
                                  f"degrees on lat/lon grids), found {self.region!r}")
            s("region", tuple(float(v) for v in r))
        if self.events is not None:
            if not isinstance(self.events, Mapping) or not self.events:
                raise ConfigError(f"corpus config: {where}: events must map names to [start, end] "
                                  f"times, found {self.events!r}")
            events = {}
            for name, win in self.events.items():
                if not isinstance(win, Sequence) or isinstance(win, str) or len(win) != 2:
                    raise ConfigError(f"corpus config: {where}: event {name!r} must be [start, "
                                      f"end], found {win!r}")
                a, b = (_time(v, f"{where} event {name!r}") for v in win)
                if b < a:
                    raise ConfigError(f"corpus config: {where}: event {name!r} ends before it "
                                      f"starts ({win[0]} > {win[1]})")
                events[str(name)] = (str(a), str(b))
            ordered = sorted(events.items(), key=lambda kv: kv[1][0])
            for (n0, w0), (n1, w1) in zip(ordered, ordered[1:], strict=False):
                if np.datetime64(w1[0]) <= np.datetime64(w0[1]):
                    raise ConfigError(f"corpus config: {where}: events {n0!r} and {n1!r} overlap")
            s("events", events)
        s("held_out", _names(self.held_out, f"{where} held_out"))
        s("validation", _names(self.validation, f"{where} validation"))
        if not self.held_out:
            raise ConfigError(f"corpus config: {where}: held_out must name the event(s) of the "
                              "test split (splits are by whole events, never by frames)")
        both = set(self.held_out) & set(self.validation)
        if both:
            raise ConfigError(f"corpus config: {where}: event(s) {sorted(both)} are both held "
                              "out and validation")
        if self.events is not None:
            unknown = [e for e in self.held_out + self.validation if e not in self.events]
            if unknown:
                raise ConfigError(f"corpus config: {where}: held_out/validation name unknown "
                                  f"event(s) {unknown}; events are {list(self.events)}")

    def write_key(self) -> dict[str, Any]:
        """The settings that decide what is written (not the split): a resume key."""
        d = dataclasses.asdict(self)
        d.pop("held_out")
        d.pop("validation")
        return json.loads(json.dumps(d))


@dataclass(frozen=True)
class CorpusConfig:
    """How to build a corpus store: several radar networks, each on its native grid.

    factor / pooling / max_missing_fraction: as in ``PrepareConfig`` (``pooling`` default
      ``mean``: areal means, like satellites). The coarse source of every frame is emulated
      from the fine reference with ``data.emulate.emulate_satellite`` (``emulator``: its
      EmulatorParams keyword arguments; ``seed``).
    accumulation: "to_rate" turns amounts (e.g. 5-min or 1-h accumulations, mm) into mean rates
      (mm/h); "error" refuses them.
    event_gap_s: without ``events``, a gap longer than this starts a new event (seconds).
    transform_scale: ``s`` of the ``PrecipTransform`` fitted once over every network's train
      frames (fine-grid reference).
    """

    sources: tuple[SourceConfig, ...]
    factor: int = 10
    pooling: str = "mean"
    max_missing_fraction: float = 0.5
    emulator: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    accumulation: str = "to_rate"
    event_gap_s: float = 3600.0
    transform_scale: float = 1.0

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen coercion)
        if not isinstance(self.sources, Sequence) or isinstance(self.sources, str) \
                or not self.sources:
            raise ConfigError("corpus config: sources must be a non-empty list of networks")
        s("sources", tuple(x if isinstance(x, SourceConfig) else _source(x)
                           for x in self.sources))
        s("emulator", dict(self.emulator or {}))
        names = [x.network for x in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"corpus config: network names must be unique, found {dup} twice")
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"corpus config: {msg}")

        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            bad(f"factor must be a positive integer, found {self.factor!r}")
        if self.pooling not in POOLINGS:
            bad(f"pooling must be one of {list(POOLINGS)}, found {self.pooling!r}")
        if self.accumulation not in ACCUMULATION:
            bad(f"accumulation must be one of {list(ACCUMULATION)}, found {self.accumulation!r}")
        if not 0.0 <= self.max_missing_fraction <= 1.0:
            bad(f"max_missing_fraction must be in [0, 1], found {self.max_missing_fraction}")
        if not self.transform_scale > 0:
            bad(f"transform_scale must be > 0, found {self.transform_scale}")
        if not self.event_gap_s > 0:
            bad(f"event_gap_s must be > 0, found {self.event_gap_s}")
        from precipdiff.data.emulate import EmulatorParams

        known = {f.name for f in dataclasses.fields(EmulatorParams)}
        unknown = set(self.emulator) - known
        if unknown:
            bad(f"unknown emulator parameter(s) {sorted(unknown)}; known {sorted(known)}")
        EmulatorParams(**self.emulator)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (the inverse of :meth:`from_dict`)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def write_key(self) -> dict[str, Any]:
        """Everything that decides the written frames (not the splits nor the transform)."""
        d = self.to_dict()
        d.pop("transform_scale")
        d.pop("event_gap_s")
        d["sources"] = [x.write_key() for x in self.sources]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CorpusConfig:
        """Validated config from a mapping; unknown keys raise :class:`ConfigError`."""
        return dataclass_from_mapping(cls, d, "corpus config")


def _source(d: Any) -> SourceConfig:
    if not isinstance(d, Mapping):
        raise ConfigError(f"corpus config: each source must be a mapping, found {d!r}")
    unknown = sorted(set(d) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"corpus config: source {d.get('network')!r}: unknown key(s) {unknown}; "
                          f"allowed {list(SOURCE_KEYS)}")
    for key in ("network", "files", "held_out"):
        if key not in d:
            raise ConfigError(f"corpus config: source {d.get('network')!r} needs {key!r}")
    try:
        return SourceConfig(**d)
    except TypeError as exc:
        raise ConfigError(f"corpus config: source {d.get('network')!r}: {exc}") from exc


def is_corpus_config(d: Mapping[str, Any]) -> bool:
    """True when a prepare config mapping describes a corpus (it has a ``sources`` key)."""
    return isinstance(d, Mapping) and "sources" in d


def load_corpus_config(path: str | os.PathLike, sets: Sequence[str] = ()) -> CorpusConfig:
    """Read a YAML corpus config, apply ``--set key=value`` overrides, validate.

    ``--set`` reaches the top-level keys (``--set factor=8``, ``--set emulator.noise_sigma=0.3``).
    """
    d = read_yaml_mapping(path, "corpus config")
    try:
        return CorpusConfig.from_dict(apply_overrides(d, sets))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def is_corpus_file(path: str | os.PathLike) -> bool:
    """True when the YAML prepare config at ``path`` is a corpus config (a ``sources`` list)."""
    return is_corpus_config(read_yaml_mapping(path, "prepare config"))
