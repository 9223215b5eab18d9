"""dataclass_from_mapping: the one mapping -> dataclass path of the prepare/corpus configs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from precipdiff.data.corpus_config import CorpusConfig
from precipdiff.data.prepare_config import PrepareConfig
from precipdiff.errors import ConfigError
from precipdiff.yamlfile import dataclass_from_mapping


@dataclass(frozen=True)
class _Cfg:
    size: int
    name: str = "a"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")


def test_builds_the_dataclass() -> None:
    assert dataclass_from_mapping(_Cfg, {"size": 3}, "toy config") == _Cfg(3)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ([1, 2], r"^toy config must be a mapping, found list$"),
        ({"size": 1, "colour": 2},
         r"^toy config: unknown key\(s\) \['colour'\]; allowed \['size', 'name'\]$"),
        ({"name": "b"}, r"^toy config: .*size"),
        ({"size": -1}, r"^toy config: invalid value \(size must be positive, got -1\)$"),
    ],
)
def test_every_problem_is_one_config_error(d, match) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        dataclass_from_mapping(_Cfg, d, "toy config")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("cls", "what"), [(PrepareConfig, "prepare config"),
                                           (CorpusConfig, "corpus config")])
def test_config_classes_name_themselves(cls, what) -> None:
    with pytest.raises(ConfigError, match=rf"^{what}: unknown key\(s\) \['colour'\]"):
        cls.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match=rf"^{what} must be a mapping"):
        cls.from_dict("x")
