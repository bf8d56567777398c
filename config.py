"""Typed configs from YAML files and command-line overrides.

Each entry point has one frozen dataclass config. Its values come, in increasing priority, from the dataclass
defaults, a YAML file, and command-line flags; the resolved config is saved next to the outputs so a run can be
repeated exactly.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Example:
    ...     epochs: int = 3
    >>> resolve(Example, {"epochs": 5}, {"epochs": None}).epochs
    5
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag that does not fit the config's fields."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping, rejecting unknown keys by name."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if _is_dataclass_type(annotation) and isinstance(value, Mapping):
            value = from_dict(annotation, value, f"{where}.{name}")
        elif _wants_tuple(annotation) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _wants_tuple(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_wants_tuple(arg) for arg in typing.get_args(annotation))
    return origin is tuple


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into ``base``; ``None`` in ``override`` means "not given" and keeps the base."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            nested = merge(merged.get(key) or {}, value)
            if nested or key in merged:
                merged[key] = nested
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return loaded


def resolve(cls: type[T], file_values: Mapping[str, Any] | None, flags: Mapping[str, Any]) -> T:
    """Defaults < YAML file values < flags (flags that are None were not given)."""
    return from_dict(cls, merge(file_values or {}, flags))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML/JSON-friendly dict of a dataclass config (tuples become lists, paths strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def write_yaml(config: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    return path
