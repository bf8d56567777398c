"""The labelled-data reader: dataset discovery, labels from masks, votes and grouped splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from crackscope.inspect.images import ImageReadError
from crackscope.labelled import (
    AMBIGUOUS,
    CRACK,
    OK,
    Clarity,
    DataConfig,
    DataError,
    MaskLabelling,
    Sample,
    classify_folder,
    consensus_targets,
    label_from_mask,
    load_samples,
    read_mask_patch,
    read_patch,
    split_by_group,
    training_view,
)

RULES = MaskLabelling(patch_size=20, stride=20, center_fraction=0.5, crack_min_center_fraction=0.05, ok_max_pixels=0)


def _mask(points: list[tuple[int, int]], size: int = 20) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for y, x in points:
        mask[y, x] = 255
    return mask


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], OK),  # no crack pixel anywhere
        ([(0, 0)], AMBIGUOUS),  # one pixel at the border only
        ([(y, 0) for y in range(20)], AMBIGUOUS),  # a long crack, but only along the edge
        ([(10, 10)], AMBIGUOUS),  # in the centre but below 5% of the 10x10 centre
        ([(10, x) for x in range(5, 15)], CRACK),  # 10 centre pixels = 10%
        ([(10, x) for x in range(20)], CRACK),  # crosses the whole patch
    ],
)
def test_label_from_mask_follows_the_centre_and_border_rules(points, expected):
    assert label_from_mask(_mask(points), RULES) == expected


def test_label_from_mask_allows_a_few_pixels_in_an_ok_patch_when_configured():
    lenient = MaskLabelling(ok_max_pixels=2, crack_min_center_fraction=0.05)
    assert label_from_mask(_mask([(0, 0), (0, 1)]), lenient) == OK


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("crack", CRACK),
        ("Positive", CRACK),
        ("defect", CRACK),
        ("Negative", OK),
        ("MT_Free", OK),
        ("ok", OK),
        ("MT_Blowhole", CRACK),
        ("ambiguous", AMBIGUOUS),
        ("misc", None),
    ],
)
def test_class_folders_map_by_alias_and_pattern(name, expected):
    assert classify_folder(name, {}) == expected


def test_user_class_map_overrides_defaults_and_adds_patterns():
    assert classify_folder("MT_Uneven", {"MT_Uneven": "ignore"}) == "ignore"
    assert classify_folder("scratch_a", {"scratch_*": "crack"}) == CRACK


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def mt_like(tmp_path) -> Path:
    """A magnetic-tile-like tree: MT_<class>/x.jpg with its mask x.png beside it."""
    rng = np.random.default_rng(0)
    for folder, n in (("MT_Free", 3), ("MT_Crack", 2), ("MT_Blowhole", 2)):
        for i in range(n):
            image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
            mask = np.zeros((40, 60), np.uint8)
            if folder != "MT_Free":
                mask[5:15, 5:15] = 255  # the centre of patch (0, 0): crack
                mask[0:2, 45:50] = 255  # the top border of patch (40, 0): ambiguous
            _write(tmp_path / folder / f"img{i}.jpg", image)
            _write(tmp_path / folder / f"img{i}.png", mask)
    return tmp_path


def test_folder_mode_never_takes_a_mask_for_a_training_image(mt_like):
    dataset = load_samples(mt_like)
    assert all(s.path.suffix == ".jpg" for s in dataset.samples)
    assert dataset.counts() == {CRACK: 4, OK: 3, AMBIGUOUS: 0}


def test_mask_mode_cuts_patches_and_labels_them_from_masks(mt_like):
    config = DataConfig(mode="mask", masks=MaskLabelling(patch_size=20, stride=20, crack_min_center_fraction=0.05))
    dataset = load_samples(mt_like, config)
    # 7 images of 40x60 -> 2x3 patches of 20 px each; each of the 4 defect images has one crack and one ambiguous.
    assert len(dataset.samples) == 7 * 6
    assert dataset.counts() == {CRACK: 4, OK: 7 * 6 - 8, AMBIGUOUS: 4}
    assert {s.box for s in dataset.samples if s.label and s.clarity is Clarity.CLEAR} == {(0, 0, 20, 20)}
    assert all(s.box is not None and s.group for s in dataset.samples)


def test_images_and_masks_folders_are_read_as_a_mask_dataset(tmp_path):
    for i in range(3):
        mask = np.zeros((64, 64), np.uint8)
        mask[:, 30:34] = 255 if i else 0
        _write(tmp_path / "images" / f"{i}.jpg", np.full((64, 64, 3), 128, np.uint8))
        _write(tmp_path / "masks" / f"{i}.png", mask)
    dataset = load_samples(tmp_path, DataConfig(masks=MaskLabelling(patch_size=64, stride=64)))
    assert dataset.counts() == {CRACK: 2, OK: 1, AMBIGUOUS: 0}


def test_samples_from_a_mask_folder_carry_their_mask_and_class_folder_samples_do_not(mt_like):
    as_masks = load_samples(mt_like, DataConfig(mode="mask", masks=MaskLabelling(patch_size=20, stride=20)))
    assert all(s.mask == s.path.with_suffix(".png") for s in as_masks.samples)
    as_folders = load_samples(mt_like)
    assert all(s.mask is None for s in as_folders.samples)


def test_the_mask_does_not_change_a_samples_key():
    plain = Sample(Path("a.jpg"), 1.0, Clarity.CLEAR, "a.jpg", (0, 20, 20, 20))
    with_mask = Sample(Path("a.jpg"), 1.0, Clarity.CLEAR, "a.jpg", (0, 20, 20, 20), mask=Path("a.png"))
    assert with_mask.key == plain.key == "a.jpg@0,20,20,20"


def test_read_mask_patch_cuts_the_samples_box_as_0_or_255(tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[25:30, 3:8] = 1  # stored as 0/1, as some datasets do
    image = np.zeros((40, 60, 3), np.uint8)
    _write(tmp_path / "x.jpg", image)
    _write(tmp_path / "x.png", mask)
    sample = Sample(tmp_path / "x.jpg", 1.0, Clarity.CLEAR, "x.jpg", (0, 20, 20, 20), mask=tmp_path / "x.png")
    patch = read_mask_patch(sample)
    assert patch.shape == read_patch(sample).shape[:2] == (20, 20) and patch.dtype == np.uint8
    expected = np.zeros((20, 20), np.uint8)
    expected[5:10, 3:8] = 255
    assert np.array_equal(patch, expected)


def test_read_mask_patch_is_none_without_a_mask_and_an_image_read_error_for_a_missing_one(tmp_path):
    assert read_mask_patch(Sample(tmp_path / "x.jpg", 0.0, Clarity.CLEAR, "x.jpg")) is None
    missing = Sample(tmp_path / "x.jpg", 0.0, Clarity.CLEAR, "x.jpg", mask=tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match=r"gone\.png"):
        read_mask_patch(missing)


def test_unreadable_images_are_skipped_and_counted(patch_data, caplog):
    dataset = load_samples(patch_data)
    assert len(dataset.skipped) == 1
    assert "corrupt_00.jpg" in dataset.skipped[0]
    assert dataset.summary()["skipped_unreadable"] == 1
    assert "corrupt_00.jpg" in caplog.text


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "nope")


def test_empty_class_is_a_clear_error(tmp_path):
    _write(tmp_path / "crack" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "ok").mkdir()
    with pytest.raises(DataError, match="no readable ok"):
        load_samples(tmp_path)


def test_unknown_class_folder_is_a_clear_error_naming_it(tmp_path):
    for name in ("crack", "ok", "scratches"):
        _write(tmp_path / name / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="scratches"):
        load_samples(tmp_path)


def test_unknown_class_folder_error_names_the_config_key_that_fixes_it(tmp_path):
    for name in ("crack", "ok", "scratches"):
        _write(tmp_path / name / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"add them to data_config\.class_map"):
        load_samples(tmp_path)
    # The key named in the message is the one TrainConfig really has, and setting it there fixes the error.
    from crackscope.config import resolve
    from crackscope.training.train import TrainConfig

    config = resolve(TrainConfig, {"data_config": {"class_map": {"scratches": "crack"}}}, {})
    assert load_samples(tmp_path, config.data_config).counts()["crack"] == 2


def test_votes_become_soft_targets_and_split_votes_are_ambiguous(tmp_path):
    for name in ("crack", "ok"):
        for i in range(2):
            _write(tmp_path / name / f"{name}{i}.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "votes.csv").write_text(
        "image,annotator,label\n"
        "crack/crack0.png,a,crack\ncrack/crack0.png,b,ok\ncrack/crack0.png,c,crack\ncrack/crack0.png,d,crack\n"
        "ok0.png,a,ok\nok0.png,b,ok\n"
    )
    by_name = {s.path.name: s for s in load_samples(tmp_path).samples}
    assert by_name["crack0.png"].target == pytest.approx(0.75)
    assert by_name["crack0.png"].clarity is Clarity.AMBIGUOUS
    assert by_name["ok0.png"].target == 0.0 and by_name["ok0.png"].clarity is Clarity.CLEAR
    assert by_name["crack1.png"].target == 1.0


def test_votes_file_with_missing_columns_is_a_clear_error(tmp_path):
    for name in ("crack", "ok"):
        _write(tmp_path / name / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "votes.csv").write_text("file,who,label\n")
    with pytest.raises(DataError, match="missing column"):
        load_samples(tmp_path)


def test_groups_csv_names_the_photo_tiles_were_cut_from_and_frames_are_skipped(tmp_path):
    for name in ("crack", "ok"):
        for i in range(2):
            _write(tmp_path / name / f"{name}{i}.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "frames" / "crack" / "whole.png", np.zeros((16, 16, 3), np.uint8))  # a review export's frames
    (tmp_path / "groups.csv").write_text("image,group\ncrack/crack0.png,photo1\nok/ok0.png,photo1\n")
    by_name = {s.path.name: s.group for s in load_samples(tmp_path).samples}
    assert by_name == {
        "crack0.png": "photo1",
        "ok0.png": "photo1",
        "crack1.png": "crack/crack1.png",
        "ok1.png": "ok/ok1.png",
    }
    (tmp_path / "groups.csv").write_text("image,group\ncrack/gone.png,photo1\n")
    with pytest.raises(DataError, match=r"groups\.csv: 1 image.*not in.*crack/gone\.png"):
        load_samples(tmp_path)
    (tmp_path / "groups.csv").write_text("image,photo\n")
    with pytest.raises(DataError, match="needs the columns image,group"):
        load_samples(tmp_path)


def test_dawid_skene_downweights_an_annotator_who_always_disagrees():
    pytest.importorskip("crowdkit")
    votes = []
    for i in range(30):
        truth = float(i % 2)
        votes += [(f"x{i}", "good1", truth), (f"x{i}", "good2", truth), (f"x{i}", "contrarian", 1 - truth)]
    votes.append(("tie", "good1", 1.0))
    votes.append(("tie", "contrarian", 0.0))
    share = consensus_targets(votes, "share")
    skene = consensus_targets(votes, "dawid-skene")
    assert share["tie"] == 0.5
    assert skene["tie"] > 0.9
    assert skene["x1"] > 0.9 and skene["x0"] < 0.1


def _samples(groups: int, per_group: int, crack_every: int) -> list[Sample]:
    return [
        Sample(Path(f"g{g}.png"), float(g % crack_every == 0), Clarity.CLEAR, f"g{g}", (i, 0, 1, 1))
        for g in range(groups)
        for i in range(per_group)
    ]


def test_split_keeps_every_source_image_on_one_side():
    train, val = split_by_group(_samples(50, 4, 5), 0.2, seed=0)
    assert not {s.group for s in train} & {s.group for s in val}
    assert len(train) + len(val) == 200


def test_split_is_stratified_so_rare_cracks_reach_both_sides():
    train, val = split_by_group(_samples(50, 1, 10), 0.2, seed=0)
    assert sum(s.label for s in val) == 1 and sum(s.label for s in train) == 4


def test_split_is_reproducible_for_a_seed_and_changes_with_it():
    samples = _samples(40, 2, 3)
    assert split_by_group(samples, 0.25, 1) == split_by_group(samples, 0.25, 1)
    assert split_by_group(samples, 0.25, 1)[1] != split_by_group(samples, 0.25, 2)[1]


def test_ambiguous_items_are_kept_as_soft_targets_or_excluded_by_config(patch_data):
    samples = load_samples(patch_data).samples
    soft = training_view(samples, DataConfig(ambiguous="soft"))
    excluded = training_view(samples, DataConfig(ambiguous="exclude"))
    assert len(soft) - len(excluded) == 10
    assert {s.target for s in soft if s.clarity is Clarity.AMBIGUOUS} == {0.5}


def test_ambiguous_target_is_configurable(patch_data):
    samples = load_samples(patch_data, DataConfig(ambiguous_target=0.3)).samples
    assert {s.target for s in samples if s.clarity is Clarity.AMBIGUOUS} == {0.3}


def test_mask_tiles_default_to_the_runtimes_tiles_at_the_models_input_size():
    from crackscope.inspect.pipeline import InspectConfig
    from crackscope.labelled import RUNTIME_OVERLAP

    assert InspectConfig().overlap == RUNTIME_OVERLAP
    assert MaskLabelling().for_tile(160) == MaskLabelling(patch_size=160, stride=120)
    assert MaskLabelling(patch_size=100).for_tile(160) == MaskLabelling(patch_size=100, stride=75)
    assert MaskLabelling(stride=64).for_tile(160) == MaskLabelling(patch_size=160, stride=64)


def test_a_mask_folder_read_without_a_model_is_cut_into_224_px_tiles_with_a_quarter_overlap(tmp_path):
    image = np.zeros((300, 500, 3), np.uint8)
    mask = np.zeros((300, 500), np.uint8)
    mask[100:200, 330:334] = 255  # one crack, so the set has both classes
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), mask)
    boxes = sorted(s.box for s in load_samples(tmp_path, DataConfig(mode="mask")).samples)
    # Columns at 0, 168 and 276 (flush with the edge), rows at 0 and 76: the runtime's grid for this frame.
    assert boxes == sorted((x, y, 224, 224) for x in (0, 168, 276) for y in (0, 76))
