"""The loaders read the real shared datasets as they are (skipped when ../shared/datasets is absent)."""

import pytest

from crackscope.labelled import AMBIGUOUS, CRACK, OK, DataConfig, MaskLabelling, load_samples, read_patch

pytestmark = pytest.mark.realdata


def test_ozgenel_concrete_reads_as_class_folders(shared_data):
    dataset = load_samples(shared_data / "ozgenel-concrete")
    assert dataset.counts() == {CRACK: 2000, OK: 2000, AMBIGUOUS: 0}
    assert read_patch(dataset.samples[0]).shape == (227, 227, 3)


def test_magnetic_tile_reads_as_defect_versus_free_without_its_masks(shared_data):
    dataset = load_samples(shared_data / "magnetic-tile")
    assert dataset.counts() == {CRACK: 115 + 85 + 57 + 32 + 103, OK: 952, AMBIGUOUS: 0}
    assert all(s.path.suffix.lower() == ".jpg" for s in dataset.samples)


def test_magnetic_tile_reads_as_a_mask_dataset_with_ambiguous_patches(shared_data):
    config = DataConfig(mode="mask", masks=MaskLabelling(patch_size=64, stride=64))
    dataset = load_samples(shared_data / "magnetic-tile", config)
    counts = dataset.counts()
    assert counts[CRACK] > 0 and counts[AMBIGUOUS] > 0 and counts[OK] > counts[CRACK]
    assert dataset.summary()["groups"] == 1344


def test_deepcrack_reads_as_a_mask_dataset_grouped_by_photo(shared_data):
    dataset = load_samples(shared_data / "deepcrack-train")
    assert dataset.summary()["groups"] == 300
    patch = dataset.samples[0]
    # The default tile is the runtime's: 224 px at the photo's own resolution.
    assert patch.box is not None and read_patch(patch).shape == (224, 224, 3)
    assert min(dataset.counts().values()) > 100
