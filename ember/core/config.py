"""Config dataclasses from plain dicts, and presets: named tables of overrides.

A recipe module declares `PRESETS: dict[str, dict[str, Any]]`, each a table of dotted keys
(`"train.steps": 110`) over its `Config`'s defaults. The command line applies the table as
parser defaults, so any flag given explicitly still wins; `with_preset` does the same in
Python.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Inner:
    ...     steps: int = 10
    >>> @dataclass
    ... class Outer:
    ...     lr: float = 1e-3
    ...     inner: Inner = field(default_factory=Inner)
    >>> build_config(Outer, {"lr": 0.1, "inner": {"steps": 3}})
    Outer(lr=0.1, inner=Inner(steps=3))
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """`cls(**values)`, building nested dataclass fields from nested dicts; keys that are
    not fields of `cls` are an error naming the valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        sub = _nested_class(fields[name])
        kwargs[name] = build_config(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def _nested_class(f: dataclasses.Field) -> type | None:
    """The dataclass a field holds, told by its default (annotations may be strings that
    only resolve in the defining module)."""
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = f.default
    return type(default) if dataclasses.is_dataclass(default) and not isinstance(default, type) else None


def presets_of(cfg_cls: type) -> dict[str, dict[str, Any]]:
    """The `PRESETS` table of the module that defines `cfg_cls` (empty when it has none)."""
    return getattr(sys.modules.get(cfg_cls.__module__), "PRESETS", None) or {}


def preset_table(cfg_cls: type, name: str) -> dict[str, Any]:
    """The dotted overrides of preset `name`; an unknown name is an error listing the valid ones.

    >>> preset_table(int, "big")
    Traceback (most recent call last):
    ValueError: unknown preset 'big'; valid presets: []
    """
    presets = presets_of(cfg_cls)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(presets)}")
    return presets[name]


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """`values["train"]["steps"] = value` for key "train.steps".

    >>> d = {"train": {"steps": 1}}
    >>> set_dotted(d, "train.steps", 5); d
    {'train': {'steps': 5}}
    """
    *parents, leaf = key.split(".")
    for name in parents:
        if not isinstance(values.get(name), dict):
            raise ValueError(f"unknown config key {key!r}: {name!r} is not a group of options")
        values = values[name]
    if leaf not in values:
        raise ValueError(f"unknown config key {key!r}")
    values[leaf] = value


def with_preset(cfg_cls: type, name: str, **overrides: Any) -> Any:
    """`cfg_cls`'s defaults < preset `name` < `overrides` (dotted keys: pass them as
    `**{"train.steps": 5}`), built and validated like any config."""
    values = dataclasses.asdict(cfg_cls())
    for key, value in {**preset_table(cfg_cls, name), **overrides}.items():
        set_dotted(values, key, value)
    return build_config(cfg_cls, values)
