"""Several dataset folders in one run: per-source settings, names, counts, splits, fingerprints and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from crackscope.config import ConfigError, from_dict, to_dict
from crackscope.labelled import (
    AMBIGUOUS,
    CRACK,
    OK,
    Clarity,
    DataConfig,
    DataError,
    DataSource,
    MaskLabelling,
    Sample,
    describe,
    inherit_data_config,
    load_samples,
    load_sources,
    split_by_group,
    split_by_source,
)
from crackscope.training import synthetic
from crackscope.training.train import TrainConfig, data_fingerprint, load_split

FRAMES_CONFIG = DataConfig(mode="mask", masks=MaskLabelling(patch_size=32, stride=32))


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _frames(root: Path) -> Path:
    """images/ + masks/: four 32x64 photos, two 32-px patches each; the left patch of photos 0-2 holds a crack."""
    for i in range(4):
        mask = np.zeros((32, 64), np.uint8)
        if i < 3:
            mask[12:20, 12:20] = 255  # the centre of the left patch: crack; the right patch stays ok
        _write(root / "images" / f"photo{i}.jpg", np.full((32, 64, 3), 100 + 20 * i, np.uint8))
        _write(root / "masks" / f"photo{i}.png", mask)
    return root


@pytest.fixture
def patches(tmp_path) -> Path:
    """Class folders: 6 crack, 5 ok, 2 ambiguous 24-px patches."""
    return synthetic.write_patch_dataset(tmp_path / "patches", n_crack=6, n_ok=5, n_ambiguous=2, size=24, seed=1)


@pytest.fixture
def frames(tmp_path) -> Path:
    return _frames(tmp_path / "frames")


@pytest.fixture
def good_parts(tmp_path) -> Path:
    """A folder of good parts only: ok/ with 4 patches."""
    root = tmp_path / "good-parts"
    for i in range(4):
        _write(root / "ok" / f"part{i}.png", np.full((24, 24, 3), 90 + i, np.uint8))
    return root


def _both(patches: Path, frames: Path):
    return load_sources([patches, DataSource(str(frames), data_config=FRAMES_CONFIG)])


# --- reading several sources ----------------------------------------------------------------------------------------


def test_two_sources_of_different_layouts_load_into_one_dataset_with_their_own_counts(patches, frames):
    dataset = _both(patches, frames)
    summary = dataset.summary()
    assert list(summary["sources"]) == ["patches", "frames"]  # named after their folders, in the order given
    assert summary["sources"]["patches"] | {"root": ""} == {
        "root": "",
        "items": 13,
        "groups": 13,
        CRACK: 6,
        OK: 5,
        AMBIGUOUS: 2,
        "skipped_unreadable": 0,
    }
    # 4 photos x 2 patches: 3 crack patches, 5 ok ones, read with the source's own mask settings.
    frames_summary = summary["sources"]["frames"]
    assert (frames_summary["items"], frames_summary["groups"]) == (8, 4)
    assert (frames_summary[CRACK], frames_summary[OK], frames_summary[AMBIGUOUS]) == (3, 5, 0)
    assert (summary["items"], summary[CRACK], summary[OK], summary[AMBIGUOUS]) == (21, 9, 10, 2)


def test_every_sample_knows_its_source_and_groups_are_unique_across_sources(patches, frames):
    samples = _both(patches, frames).samples
    assert {s.source for s in samples} == {"patches", "frames"}
    assert all(s.group.startswith(f"{s.source}/") for s in samples)
    groups = {source: {s.group for s in samples if s.source == source} for source in ("patches", "frames")}
    assert len(groups["patches"]) == 13 and len(groups["frames"]) == 4
    assert not groups["patches"] & groups["frames"]


def test_a_source_given_a_name_uses_it_for_its_samples_and_groups(patches):
    dataset = load_sources([DataSource(str(patches), name="concrete")])
    assert {s.source for s in dataset.samples} == {"concrete"}
    assert all(s.group.startswith("concrete/") for s in dataset.samples)


def test_two_sources_with_the_same_name_are_rejected_naming_both_paths(tmp_path, patches):
    other = synthetic.write_patch_dataset(tmp_path / "elsewhere" / "patches", n_crack=2, n_ok=2, size=24)
    with pytest.raises(DataError, match=f"sources {patches} and {other} are both named 'patches'"):
        load_sources([patches, other])
    with pytest.raises(DataError, match="both named 'x'"):
        load_sources([DataSource(str(patches), "x"), DataSource(str(other), "x")])


def test_sources_that_share_a_folder_are_rejected_before_any_image_is_read(tmp_path, patches):
    with pytest.raises(DataError, match="overlap"):
        load_sources([patches, DataSource(str(patches), name="again")])
    with pytest.raises(DataError, match="overlap"):
        load_sources([tmp_path, patches])  # one inside the other


def test_an_unreadable_source_is_an_error_naming_the_source(patches, tmp_path):
    with pytest.raises(DataError, match=r"^source 'missing': .*missing: data path does not exist"):
        load_sources([patches, tmp_path / "missing"])


def test_a_source_of_one_class_is_allowed_when_the_sources_together_hold_both(patches, good_parts):
    dataset = load_sources([patches, good_parts])
    assert dataset.summary()["sources"]["good-parts"][CRACK] == 0
    lines: list[str] = []
    describe(dataset, lines.append)
    assert len(lines) == 3  # one per source, then the totals
    assert lines[1].startswith(f"good-parts ({good_parts}): 4 items") and "no crack items here" in lines[1]
    assert lines[2].startswith("all 2 sources: 17 items")


def test_sources_that_together_lack_a_class_are_rejected(good_parts, tmp_path):
    more = tmp_path / "more-parts"
    shutil.copytree(good_parts, more)
    with pytest.raises(DataError, match="no source holds readable crack images"):
        load_sources([good_parts, more])
    with pytest.raises(DataError, match="no readable crack images"):
        load_sources(good_parts)  # one folder: the same rule as load_samples


def test_each_source_follows_its_own_ambiguous_policy(tmp_path):
    keep = synthetic.write_patch_dataset(tmp_path / "keep", n_crack=2, n_ok=2, n_ambiguous=3, size=24, seed=1)
    drop = synthetic.write_patch_dataset(tmp_path / "drop", n_crack=2, n_ok=2, n_ambiguous=3, size=24, seed=2)
    dataset = load_sources([keep, DataSource(str(drop), data_config=DataConfig(ambiguous="exclude"))])
    view = dataset.training_view(dataset.samples)
    ambiguous = [s.source for s in view if s.clarity is Clarity.AMBIGUOUS]
    assert ambiguous == ["keep"] * 3 and len(view) == 7 + 4


# --- splits ---------------------------------------------------------------------------------------------------------


def _samples(source: str, groups: int, crack_every: int) -> list[Sample]:
    return [
        Sample(Path(f"{source}{g}.png"), float(g % crack_every == 0), Clarity.CLEAR, f"{source}/{g}", None, source)
        for g in range(groups)
    ]


def test_split_by_source_gives_every_source_its_share_of_validation_and_no_group_to_both_sides():
    # a: 20 images, 10 with cracks -> 2 + 2 to validation; b: 10 images, 2 with cracks -> 1 + 2 (round(1.6)).
    samples = _samples("a", 20, 2) + _samples("b", 10, 5)
    train, val = split_by_source(samples, 0.2, seed=0)
    assert not {s.group for s in train} & {s.group for s in val}
    assert sorted((s.source, s.label) for s in val) == [("a", 0)] * 2 + [("a", 1)] * 2 + [("b", 0)] * 2 + [("b", 1)]
    assert {s.source for s in train} == {"a", "b"} and len(train) + len(val) == 30


def test_a_sources_split_is_its_own_split_alone_so_adding_a_source_does_not_change_it():
    a, b = _samples("a", 30, 3), _samples("b", 12, 4)
    train, val = split_by_source(a + b, 0.25, seed=3)
    alone_train, alone_val = split_by_group(a, 0.25, seed=3)
    assert [s for s in val if s.source == "a"] == alone_val
    assert [s for s in train if s.source == "a"] == alone_train
    assert split_by_source(a + b, 0.25, seed=3) == (train, val)
    assert split_by_source(a + b, 0.25, seed=4)[1] != val


def test_load_split_reports_train_and_validation_counts_per_source(patches, frames):
    config = TrainConfig(data=(str(patches), DataSource(str(frames), data_config=FRAMES_CONFIG)), val_fraction=0.3)
    lines: list[str] = []
    train, val, summary = load_split(config, lines.append)
    per_source = summary["sources"]
    assert list(per_source) == ["patches", "frames"]
    expected = {"patches": {CRACK: 6, OK: 5, AMBIGUOUS: 2}, "frames": {CRACK: 3, OK: 5, AMBIGUOUS: 0}}
    for name, counts in per_source.items():
        assert {k: counts["train"][k] + counts["val"][k] for k in (CRACK, OK, AMBIGUOUS)} == expected[name]
    assert summary["val"][CRACK] == sum(c["val"][CRACK] for c in per_source.values())
    assert {s.source for s in train} == {s.source for s in val} == {"patches", "frames"}
    assert any("within each source" in line for line in lines) and sum("all 2 sources" in line for line in lines) == 1


# --- fingerprints ---------------------------------------------------------------------------------------------------


def test_one_source_has_the_fingerprint_of_its_folder_read_alone(patches):
    assert data_fingerprint(load_sources(patches)) == data_fingerprint(load_samples(patches))


def test_the_fingerprint_of_several_sources_ignores_their_order_and_place_but_not_their_names(
    patches, frames, tmp_path
):
    framed = DataSource(str(frames), data_config=FRAMES_CONFIG)
    both = data_fingerprint(load_sources([patches, framed]))
    assert data_fingerprint(load_sources([framed, patches])) == both
    moved = tmp_path / "moved"
    shutil.copytree(patches, moved / "patches")
    shutil.copytree(frames, moved / "frames")
    assert (
        data_fingerprint(load_sources([moved / "patches", DataSource(str(moved / "frames"), "", FRAMES_CONFIG)]))
        == both
    )
    assert data_fingerprint(load_sources([patches, DataSource(str(frames), "renamed", FRAMES_CONFIG)])) != both
    assert both != data_fingerprint(load_sources(patches))


# --- configs --------------------------------------------------------------------------------------------------------


SOURCES_YAML = """
data:
  - ../a
  - {path: ../b, name: deepcrack, data_config: {mode: mask, masks: {stride: 32}}}
data_config:
  class_map: {scratch: crack}
  masks: {patch_size: 64, stride: 64}
"""


def test_a_yaml_list_of_sources_reads_paths_and_mappings_and_a_source_inherits_the_runs_settings():
    config = from_dict(TrainConfig, inherit_data_config(yaml.safe_load(SOURCES_YAML)))
    deepcrack = DataConfig(mode="mask", class_map={"scratch": "crack"}, masks=MaskLabelling(patch_size=64, stride=32))
    assert config.data == ("../a", DataSource("../b", "deepcrack", deepcrack))
    assert config.data_config.masks == MaskLabelling(patch_size=64, stride=64)


def test_a_config_with_sources_round_trips_through_yaml_and_a_single_folder_stays_a_string():
    config = from_dict(TrainConfig, inherit_data_config(yaml.safe_load(SOURCES_YAML)))
    assert from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(config)))) == config
    assert to_dict(TrainConfig(data="runs/x"))["data"] == "runs/x"
    assert from_dict(TrainConfig, {"data": "runs/x"}).data == "runs/x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: [../a, {path: ../b, data_config: {mode: 3}}]", r"config\.data\[1\]\.data_config\.mode: expected str"),
        (
            "data: [../a, {path: ../b, data_config: {masks: {patch_size: big}}}]",
            r"config\.data\[1\]\.data_config\.masks",
        ),
        ("data: [{path: ../b, nmae: x}]", r"config\.data\[0\]: unknown key\(s\) nmae"),
        # A mistake in the run's settings is reported there, not at the source that inherits it.
        ("data: [{path: ../b, data_config: {}}]\ndata_config: {mode: 3}", r"config\.data_config\.mode: expected str"),
    ],
)
def test_a_bad_value_in_a_source_is_rejected_with_its_key_path(text, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        from_dict(TrainConfig, inherit_data_config(yaml.safe_load(text)))


# --- a real run on two sources --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_on_two_sources_writes_validation_metrics_per_source(tmp_path, capsys):
    from crackscope.cli import main
    from crackscope.training.train import train

    crack_patches = synthetic.write_patch_dataset(tmp_path / "patches", n_crack=10, n_ok=10, size=64, seed=2)
    frames = synthetic.write_frame_dataset(tmp_path / "frames", n=6, height=64, width=128, seed=2, crack_fraction=0.5)
    config = TrainConfig(
        data=(str(crack_patches), str(frames)),  # a folder of class folders and one of images + masks
        out=str(tmp_path / "run"),
        input_size=64,
        epochs=1,
        head_epochs=1,
        batch_size=8,
        steps_per_epoch=2,
        workers=0,
        augment="none",
        progress=False,
        val_fraction=0.34,
        data_config=DataConfig(masks=MaskLabelling(patch_size=64, stride=64)),
    )
    result = train(config)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics["per_source"]) == {"patches", "frames"}
    assert metrics["per_source"]["patches"]["n"] + metrics["per_source"]["frames"]["n"] == metrics["n"]
    assert set(metrics["data"]["sources"]) == {"patches", "frames"}
    # The checkpoint is evaluated on both sources again from the command line, read with the run's settings.
    out = tmp_path / "eval"
    arguments = [
        "evaluate",
        "--checkpoint",
        str(result.checkpoint),
        "--data",
        str(crack_patches),
        "--data",
        str(frames),
    ]
    assert main([*arguments, "--out", str(out)]) == 0
    evaluated = json.loads((out / "metrics.json").read_text())
    assert set(evaluated["per_source"]) == {"patches", "frames"} and evaluated["per_source"]["patches"]["n"] == 20
    assert evaluated["per_source"]["frames"]["n"] + evaluated["per_source"]["frames"]["ambiguous"]["n"] == 6 * 2
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_source"]) == {"patches", "frames"}
