"""Config resolution: defaults < YAML < flags, unknown keys and values of the wrong type rejected by name."""

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

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


# --- every value is checked against its field's type, and the error names the full key path ---------------------


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Leaf:
    patch_size: int = 128


@dataclass(frozen=True)
class Typed:
    epochs: int = 3
    lr: float = 1e-3
    pretrained: bool = True
    mode: str = "auto"
    input_size: int | None = None
    sizes: tuple[int, ...] = (1, 8)
    pair: tuple[int, str] = (1, "a")
    names: list[str] = field(default_factory=list)
    class_map: dict[str, str] = field(default_factory=dict)
    preset: Literal["none", "light"] = "none"
    colour: Colour = Colour.RED
    folder: Path = Path(".")
    leaf: Leaf = field(default_factory=Leaf)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": "many"}, "config.epochs: expected int, got str 'many'"),
        ({"epochs": 2.5}, "config.epochs: expected int, got float 2.5"),
        ({"epochs": True}, "config.epochs: expected int, got bool True"),
        ({"epochs": None}, "config.epochs: expected int, got None"),
        ({"lr": "fast"}, "config.lr: expected float, got str 'fast'"),
        ({"lr": False}, "config.lr: expected float, got bool False"),
        ({"pretrained": 1}, "config.pretrained: expected bool, got int 1"),
        ({"pretrained": "yes"}, "config.pretrained: expected bool, got str 'yes'"),
        ({"mode": 3}, "config.mode: expected str, got int 3"),
        ({"input_size": "big"}, "config.input_size: expected int or None, got str 'big'"),
        ({"sizes": 8}, "config.sizes: expected a list, got int 8"),
        ({"sizes": [1, "x"]}, r"config.sizes\[1\]: expected int, got str 'x'"),
        ({"pair": [1]}, "config.pair: expected a list of 2 items, got 1"),
        ({"pair": [1, 2]}, r"config.pair\[1\]: expected str, got int 2"),
        ({"names": "abc"}, "config.names: expected a list, got str 'abc'"),
        ({"class_map": ["a"]}, "config.class_map: expected a mapping, got list"),
        ({"class_map": {"MT_*": 1}}, r"config.class_map.MT_\*: expected str, got int 1"),
        ({"preset": "heavy"}, "config.preset: expected 'none' or 'light', got str 'heavy'"),
        ({"colour": "green"}, "config.colour: expected 'red' or 'blue', got str 'green'"),
        ({"folder": 5}, "config.folder: expected Path, got int 5"),
        ({"leaf": 5}, "config.leaf: expected a mapping, got int 5"),
        ({"leaf": {"patch_size": "many"}}, "config.leaf.patch_size: expected int, got str 'many'"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_naming_its_key_path(values, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        from_dict(Typed, values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"lr": 1}, {"lr": 1.0}),  # an int is a float
        ({"lr": "1e-3"}, {"lr": 0.001}),  # PyYAML reads 1e-3 as a string
        ({"input_size": None}, {"input_size": None}),
        ({"input_size": 64}, {"input_size": 64}),
        ({"sizes": [2, 4]}, {"sizes": (2, 4)}),
        ({"pair": [2, "b"]}, {"pair": (2, "b")}),
        ({"names": ("a", "b")}, {"names": ["a", "b"]}),
        ({"colour": "blue"}, {"colour": Colour.BLUE}),
        ({"folder": "runs/x"}, {"folder": Path("runs/x")}),
        ({"leaf": {"patch_size": 64}}, {"leaf": Leaf(64)}),
    ],
)
def test_values_of_the_right_type_are_read_and_normalised(values, expected):
    config = from_dict(Typed, values)
    assert {key: getattr(config, key) for key in expected} == expected
    assert type(config.lr) is float


def test_a_wrong_type_in_a_nested_train_config_names_the_full_path():
    from crackscope.training.train import TrainConfig

    with pytest.raises(
        ConfigError, match=r"^config\.data_config\.masks\.patch_size: expected int or None, got str 'many'"
    ):
        resolve(TrainConfig, {"data_config": {"masks": {"patch_size": "many"}}}, {})


def test_a_yaml_file_with_a_wrong_type_fails_before_any_data_is_read(tmp_path, capsys):
    from crackscope.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(f"data: {tmp_path / 'no-such-folder'}\nepochs: many\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "config.epochs: expected int or None, got str 'many'" in err and "no-such-folder" not in err
    assert not (tmp_path / "run").exists()


# --- unions of a plain value and a container: a value of the container's shape is checked inside ----------------


@dataclass(frozen=True)
class Entry:
    path: str
    leaf: Leaf | None = None


@dataclass(frozen=True)
class Sources:
    data: str | tuple[str | Entry, ...] = ""


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"data": "a"}, Sources("a")),
        ({"data": ["a", "b"]}, Sources(("a", "b"))),
        ({"data": ["a", {"path": "b", "leaf": {"patch_size": 64}}]}, Sources(("a", Entry("b", Leaf(64))))),
    ],
)
def test_a_union_of_a_string_and_a_list_of_strings_or_dataclasses_reads_either(values, expected):
    assert from_dict(Sources, values) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # The list fits the list arm, so the error says where inside it, not "expected str or a list".
        ({"data": ["a", {"path": "b", "leaf": {"patch_size": "many"}}]}, r"config\.data\[1\]\.leaf\.patch_size: "),
        ({"data": ["a", {"pth": "b"}]}, r"config\.data\[1\]: unknown key\(s\) pth; known: leaf, path"),
        ({"data": ["a", 3]}, r"config\.data\[1\]: expected str or Entry, got int 3"),
        ({"data": 5}, r"config\.data: expected str or a list of \(str or Entry\), got int 5"),
    ],
)
def test_a_bad_value_inside_a_union_names_the_deepest_key_path_it_reached(values, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        from_dict(Sources, values)
