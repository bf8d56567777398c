"""The training dataset batches uint8 images, and brings each item's crack mask along when it has one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crackscope.labelled import DataConfig, MaskLabelling, load_samples
from crackscope.training import synthetic
from crackscope.training.augment import build_transform, eval_transform
from crackscope.training.dataset import PatchDataset, collate


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def frames(tmp_path) -> Path:
    """images/ + masks/: two 32x64 photos; a dark vertical crack crosses the left 32-px patch of each."""
    for i in range(2):
        image = np.full((32, 64, 3), 180, np.uint8)
        mask = np.zeros((32, 64), np.uint8)
        mask[:, 14:17] = 255
        image[mask > 0] = 40
        _write(tmp_path / "frames" / "images" / f"photo{i}.png", image)
        _write(tmp_path / "frames" / "masks" / f"photo{i}.png", mask)
    return tmp_path / "frames"


@pytest.fixture
def mask_samples(frames):
    return load_samples(frames, DataConfig(mode="mask", masks=MaskLabelling(patch_size=32, stride=32))).samples


def test_a_batch_of_mask_samples_holds_their_masks_at_the_input_size(mask_samples):
    dataset = PatchDataset(mask_samples, eval_transform(64), masks=True)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.images.shape == (4, 64, 64, 3) and batch.images.dtype == torch.uint8
    assert batch.masks.shape == (4, 64, 64) and batch.masks.dtype == torch.float32
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    assert batch.has_mask.tolist() == [True] * 4
    for sample, mask in zip(mask_samples, batch.masks, strict=True):
        if sample.box[0] == 0:  # the left patch: the crack runs down columns 28-33 at 64 px
            assert mask[:, 28:34].all() and mask.sum() == 64 * 6
        else:
            assert not mask.any()


def test_class_folder_samples_get_an_empty_mask_and_no_has_mask(tmp_path, mask_samples):
    root = synthetic.write_patch_dataset(tmp_path / "patches", n_crack=2, n_ok=2, n_ambiguous=0, size=24, seed=0)
    folder_samples = load_samples(root).samples
    dataset = PatchDataset([*folder_samples[:2], mask_samples[0]], build_transform("heavy", 32, seed=0), masks=True)
    batch = collate([dataset[i] for i in range(3)])
    assert batch.has_mask.tolist() == [False, False, True]
    assert not batch.masks[:2].any() and batch.masks.shape == (3, 32, 32)


def test_an_augmented_mask_still_lies_on_the_dark_crack(mask_samples):
    dataset = PatchDataset([s for s in mask_samples if s.box[0] == 0], build_transform("light", 32, seed=3), masks=True)
    for _ in range(10):
        image, _, _, _, mask = dataset[0]
        assert mask.shape == (32, 32) and mask.any()
        assert image[mask > 0].mean() < image[mask == 0].mean() - 50


def test_masks_are_off_unless_asked_for_and_then_the_batch_holds_a_zero_view(mask_samples):
    dataset = PatchDataset(mask_samples, eval_transform(32))
    image, _, _, _, mask = dataset[0]
    assert mask is None and image.shape == (32, 32, 3)
    batch = collate([dataset[0], dataset[1]])
    assert batch.has_mask.tolist() == [False, False]
    assert batch.masks.shape == (2, 32, 32) and batch.masks.dtype == torch.float32 and not batch.masks.any()


def test_a_transform_that_cannot_move_masks_is_refused_for_mask_samples(mask_samples):
    with pytest.raises(TypeError, match="pair"):
        PatchDataset(mask_samples, lambda image: image, masks=True)
    PatchDataset(mask_samples, lambda image: image)


@pytest.mark.gpu
def test_on_a_gpu_the_loader_pins_every_tensor_of_a_batch_with_masks(mask_samples):
    dataset = PatchDataset(mask_samples, eval_transform(64), masks=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate, pin_memory=True)
    batch = next(iter(loader))
    assert all(t.is_pinned() for t in (batch.images, batch.targets, batch.masks, batch.has_mask))
