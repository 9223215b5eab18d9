"""``PrepareConfig``: the validated schema of a ``precipdiff prepare`` run, from code, dict or YAML.

Paths (and globs) are used as given: relative ones are relative to the working directory
(run the CLI from the repository root for the configs in ``configs/``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from precipdiff.errors import ConfigError
from precipdiff.yamlfile import apply_overrides, dataclass_from_mapping, read_yaml_mapping

POOLINGS = ("max", "mean")
REGRID = ("none", "bilinear", "conservative")
ACCUMULATION = ("to_rate", "error")
SPLITS = ("time", "space")
EXTRA_KEYS = ("name", "files", "reader", "variable", "variables", "levels")


def _as_tuple(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        return (str(value),)
    if isinstance(value, Sequence):
        return tuple(str(v) for v in value)
    raise ConfigError(f"prepare config: {name} must be a path, a glob or a list of them, "
                      f"found {value!r}")


@dataclass(frozen=True)
class PrepareConfig:
    """How to build a paired store. Units: degrees, seconds, mm/h.

    reference / source: files or globs (reference = fine-grid truth, source = biased input).
    emulate: make the source from the reference with ``data.emulate.emulate_satellite``
      (``emulator``: EmulatorParams keyword arguments; ``seed``: per-frame seeds ``[seed, t]``).
    *_reader / *_variable: io reader name and variable (None: auto-detect / reader default).
    bbox: (lon_min, lat_min, lon_max, lat_max) crop of the reference; the fine grid is then
      trimmed so that coarse blocks start on multiples of ``factor`` cells from 0 deg (so a
      0.01 deg grid coarsens onto the 0.1 deg IMERG cells) and both sizes divide ``factor``.
    factor: fine cells per coarse cell (per axis). pooling: reference pooling ("max" as in
      PrecipDiff, or "mean"); source_pooling: pooling of a source finer than the coarse grid
      (None: same as ``pooling``). max_missing_fraction: a coarse cell is NaN above it.
    time_tolerance_s: largest |t_source - t_reference| paired (nearest source wins).
    accumulation: "to_rate" divides amounts (mm over a period, e.g. 1-h QPE) by the period in
      hours -> mm/h, keeping the reader's time label (period end for MRMS); "error" refuses them.
    regrid: how a source that does not nest in the coarse grid is put on it ("none": error).
    transform_scale: ``s`` of ``PrecipTransform`` (y = log1p(x/s)/sigma), sigma fitted on the
      train split's fine-grid reference.
    split: "time" (contiguous blocks of time steps) or "space" (contiguous bands of coarse
      columns, all times); fractions: {name: weight} in order, must contain "train";
      split_gap: time steps / coarse columns left out between consecutive parts.
    extras: extra fine-grid conditioning fields, each {name, files, reader, variable} (a field
      an io reader returns, e.g. a second precipitation product) or {name, files, reader,
      variables, levels} (pressure-level fields, e.g. ERA5 t/u/v at 850/500 hPa: one channel
      per variable and level, native units); paired with the reference by time (same
      tolerance), bilinearly regridded if not on the fine grid, standardised by the dataset.
    """

    reference: tuple[str, ...]
    source: tuple[str, ...] = ()
    emulate: bool = False
    emulator: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    reference_reader: str | None = None
    source_reader: str | None = None
    reference_variable: str | None = None
    source_variable: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    factor: int = 10
    pooling: str = "max"
    source_pooling: str | None = None
    max_missing_fraction: float = 0.5
    time_tolerance_s: float = 60.0
    accumulation: str = "to_rate"
    regrid: str = "none"
    transform_scale: float = 1.0
    split: str = "time"
    fractions: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    split_gap: int = 0
    extras: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen coercion)
        s("reference", _as_tuple(self.reference, "reference"))
        s("source", _as_tuple(self.source, "source") if self.source else ())
        s("emulator", dict(self.emulator or {}))
        s("fractions", {str(k): float(v) for k, v in dict(self.fractions).items()})
        s("extras", tuple(self._check_extra(e) for e in self.extras))
        if self.bbox is not None:
            if len(self.bbox) != 4:
                raise ConfigError(f"prepare config: bbox must be (lon_min, lat_min, lon_max, "
                                  f"lat_max), found {self.bbox!r}")
            s("bbox", tuple(float(v) for v in self.bbox))
            if not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3]):
                raise ConfigError(f"prepare config: bbox needs min < max, found {self.bbox}")
        self._validate()

    @staticmethod
    def _check_extra(e: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(e, Mapping) or "name" not in e or "files" not in e:
            raise ConfigError(f"prepare config: each extra needs 'name' and 'files', found {e!r}")
        unknown = set(e) - set(EXTRA_KEYS)
        if unknown:
            raise ConfigError(f"prepare config: unknown extra key(s) {sorted(unknown)}; allowed "
                              f"{list(EXTRA_KEYS)}")
        levels, variables = e.get("levels"), e.get("variables")
        if bool(levels) != bool(variables):
            raise ConfigError(f"prepare config: extra {e['name']!r} needs both 'variables' and "
                              "'levels' (pressure-level fields) or neither")
        return {"name": str(e["name"]), "files": list(_as_tuple(e["files"], "extras.files")),
                "reader": e.get("reader"), "variable": e.get("variable"),
                "variables": [str(v) for v in variables] if variables else None,
                "levels": [int(v) for v in levels] if levels else None}

    def extra_channel_names(self) -> list[str]:
        """Names of the ``extra_hr`` channels: an extra's ``name``, or for pressure-level
        extras ``f"{variable}{level}"`` for each variable and level (io's order)."""
        out = []
        for e in self.extras:
            if e["levels"]:
                out += [f"{v}{lev}" for v in e["variables"] for lev in e["levels"]]
            else:
                out.append(e["name"])
        return out

    def _validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"prepare config: {msg}")

        if not self.reference:
            bad("reference files are required")
        if self.emulate == bool(self.source):
            bad("give either source files or emulate: true (exactly one of them)")
        if isinstance(self.factor, bool) or int(self.factor) != self.factor or self.factor < 1:
            bad(f"factor must be a positive integer, found {self.factor!r}")
        for name, value, allowed in (("pooling", self.pooling, POOLINGS),
                                     ("regrid", self.regrid, REGRID),
                                     ("accumulation", self.accumulation, ACCUMULATION),
                                     ("split", self.split, SPLITS)):
            if value not in allowed:
                bad(f"{name} must be one of {list(allowed)}, found {value!r}")
        if self.source_pooling not in (None, *POOLINGS):
            bad(f"source_pooling must be null, 'max' or 'mean', found {self.source_pooling!r}")
        if not 0.0 <= self.max_missing_fraction <= 1.0:
            bad(f"max_missing_fraction must be in [0, 1], found {self.max_missing_fraction}")
        if not 0 <= self.time_tolerance_s < math.inf:
            bad(f"time_tolerance_s must be a finite number >= 0, found {self.time_tolerance_s}")
        if not 0 < self.transform_scale < math.inf:
            bad(f"transform_scale must be a finite number > 0, found {self.transform_scale}")
        if "train" not in self.fractions \
                or not all(0 <= v < math.inf for v in self.fractions.values()) \
                or self.fractions["train"] <= 0:
            bad(f"fractions need a positive 'train' and finite weights >= 0, found "
                f"{dict(self.fractions)}")
        if int(self.split_gap) != self.split_gap or self.split_gap < 0:
            bad(f"split_gap must be an integer >= 0, found {self.split_gap!r}")
        names = self.extra_channel_names()
        if len(set(names)) != len(names):
            bad(f"extra channel names must be unique, found {names}")
        if self.emulator:
            from precipdiff.data.emulate import EmulatorParams

            known = {f.name for f in dataclasses.fields(EmulatorParams)}
            unknown = set(self.emulator) - known
            if unknown:
                bad(f"unknown emulator parameter(s) {sorted(unknown)}; known {sorted(known)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (the inverse of :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d["reference"], d["source"] = list(self.reference), list(self.source)
        d["bbox"] = list(self.bbox) if self.bbox else None
        d["extras"] = [dict(e) for e in self.extras]
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrepareConfig:
        """Validated config from a mapping; unknown keys raise :class:`ConfigError`."""
        return dataclass_from_mapping(cls, d, "prepare config")


def load_prepare_config(path: str | os.PathLike, sets: Sequence[str] = ()) -> PrepareConfig:
    """Read a YAML prepare config, apply ``--set key=value`` overrides, validate."""
    d = read_yaml_mapping(path, "prepare config")
    for f in dataclasses.fields(PrepareConfig):  # "--set fractions.val=0.2" edits the default
        if f.name not in d and any(str(x).startswith(f"{f.name}.") for x in sets) \
                and f.default_factory is not dataclasses.MISSING:
            d[f.name] = dict(f.default_factory())
    try:
        return PrepareConfig.from_dict(apply_overrides(d, sets))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
