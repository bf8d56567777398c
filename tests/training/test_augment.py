"""Augmentation presets keep the input contract: uint8 BGR at the model's input size."""

import numpy as np
import pytest

from crackscope.training.augment import PRESETS, build_transform, eval_transform


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_returns_uint8_bgr_at_the_input_size(preset, image):
    out = build_transform(preset, 96)(image)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8


def test_heavy_preset_changes_the_image_from_call_to_call(image):
    transform = build_transform("heavy", 96)
    outputs = [transform(image) for _ in range(4)]
    assert any(not np.array_equal(outputs[0], other) for other in outputs[1:])


def test_eval_transform_is_deterministic_and_only_resizes(image):
    transform = eval_transform(96)
    assert np.array_equal(transform(image), transform(image))
    flat = np.full((150, 200, 3), 77, np.uint8)
    assert np.all(transform(flat) == 77)


def test_none_preset_is_the_eval_transform(image):
    assert np.array_equal(build_transform("none", 64)(image), eval_transform(64)(image))


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="none, light, heavy"):
        build_transform("extreme", 64)
