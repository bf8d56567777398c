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
import re
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag that does not fit the config's fields."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], values: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a (possibly nested) mapping, checking every key and value as it is read.

    Unknown keys and values of the wrong type are a :class:`ConfigError` naming the full key path (e.g.
    ``config.data_config.masks.patch_size: expected int, got str 'many'``), so a bad YAML file fails before any
    data is loaded instead of deep inside training.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(values)}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {name: check_value(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    return cls(**kwargs)


# A number written like 1e-3 is a string to PyYAML (YAML 1.1 wants 1.0e-3), so a float field accepts a string
# that spells a number; nothing else is converted.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def check_value(annotation: Any, value: Any, where: str) -> Any:
    """``value`` checked against a field annotation (and made a tuple, float or nested dataclass where it says so).

    Understands ``int``, ``float`` (ints accepted), ``bool`` (never 0/1), ``str``, ``Path`` (from a string),
    ``None``, unions and ``Optional``, ``Literal``, enums, ``tuple[...]``, ``list[...]``, ``dict[..., ...]``,
    nested dataclasses, other classes (by ``isinstance``) and ``Any``. ``bool`` is not accepted for ``int`` or
    ``float``, though Python would.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _check_union(args, value, where)
    if origin is typing.Literal:
        if any(value == allowed and type(value) is type(allowed) for allowed in args):
            return value
        raise _mismatch(" or ".join(repr(a) for a in args), value, where)
    if origin in (tuple, list):
        return _check_sequence(origin, args, value, where)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return _check_mapping(args, value, where)
    if _is_dataclass_type(annotation):
        return from_dict(annotation, value, where)
    return _check_plain(annotation, value, where)


def _check_plain(annotation: Any, value: Any, where: str) -> Any:
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return annotation(value)
        except ValueError:
            raise _mismatch(" or ".join(repr(m.value) for m in annotation), value, where) from None
    elif isinstance(annotation, type) and issubclass(annotation, PurePath):
        if isinstance(value, (str, PurePath)):
            return annotation(value)
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value  # an annotation this reader does not know (a Callable, a TypeVar): not checked
    raise _mismatch(_type_name(annotation), value, where)


def _check_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None and type(None) in args:
        return None
    fitting: list[ConfigError] = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return check_value(arg, value, where)
        except ConfigError as error:
            if _has_shape_of(arg, value):
                fitting.append(error)
    # A list given for ``str | list[...]`` failed inside the list: saying where inside (``config.data[1].mode``)
    # helps more than "expected str or list".
    if fitting:
        raise fitting[0]
    raise _mismatch(" or ".join(_type_name(a) for a in args), value, where)


def _has_shape_of(annotation: Any, value: Any) -> bool:
    """Whether ``value`` is the kind of container ``annotation`` wants (a list for a list, a mapping for a dict)."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or annotation in (dict, Mapping) or _is_dataclass_type(annotation):
        return isinstance(value, Mapping)
    return False


def _check_sequence(origin: type, args: tuple[Any, ...], value: Any, where: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _mismatch("a list", value, where)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {len(value)}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    checked = [check_value(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(item_types, value, strict=True))]
    return tuple(checked) if origin is tuple else checked


def _check_mapping(args: tuple[Any, ...], value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch("a mapping", value, where)
    key_type, value_type = args if args else (Any, Any)
    return {
        check_value(key_type, k, f"{where} key {k!r}"): check_value(value_type, v, f"{where}.{k}")
        for k, v in value.items()
    }


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (tuple, list) and args and (origin is list or args[-1] is Ellipsis):
        item = _type_name(args[0])
        return f"a list of ({item})" if " or " in item else f"a list of {item}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    return str(annotation).replace("typing.", "")


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _mismatch(expected: str, value: Any, where: str) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got {_describe(value)}")


def _is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


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
    """Save a config as YAML, atomically (see :func:`replacing`)."""
    path = Path(path)
    with replacing(path) as partial:
        partial.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, moved over ``path`` in one step when the block succeeds.

    A reader never sees half a file, and a failure leaves the old file as it was and no partial file behind.

    Example:
        >>> with replacing("runs/x/metrics.json") as partial:       # doctest: +SKIP
        ...     partial.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
