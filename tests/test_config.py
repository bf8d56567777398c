"""Config resolution: defaults < YAML < flags, unknown keys rejected by name."""

from dataclasses import dataclass, field

import pytest

from crackscope.config import ConfigError, from_dict, merge, read_yaml, resolve, to_dict, write_yaml


@dataclass(frozen=True)
class Inner:
    size: int = 128
    names: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Outer:
    epochs: int = 3
    mode: str = "auto"
    inner: Inner = field(default_factory=Inner)


def test_flags_override_yaml_which_overrides_defaults():
    config = resolve(Outer, {"epochs": 5, "mode": "mask"}, {"epochs": 7, "mode": None})
    assert (config.epochs, config.mode) == (7, "mask")


def test_nested_flags_that_were_not_given_keep_the_defaults():
    assert resolve(Outer, None, {"inner": {"size": None}}) == Outer()
    assert resolve(Outer, {"inner": {"size": 64}}, {"inner": {"size": None}}).inner.size == 64


def test_unknown_keys_are_rejected_by_name():
    with pytest.raises(ConfigError, match=r"inner: unknown key.*colour"):
        from_dict(Outer, {"inner": {"colour": 1}})


def test_config_round_trips_through_yaml(tmp_path):
    config = Outer(epochs=9, inner=Inner(size=32, names=("x", "y")))
    path = write_yaml(config, tmp_path / "config.yaml")
    assert from_dict(Outer, read_yaml(path)) == config
    assert to_dict(config)["inner"]["names"] == ["x", "y"]


def test_a_yaml_file_that_is_not_a_mapping_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        read_yaml(path)


def test_merge_drops_none_values():
    assert merge({"a": 1}, {"a": None, "b": 2}) == {"a": 1, "b": 2}
