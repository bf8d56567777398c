"""Augmentation presets keep the input contract (uint8 BGR at the model's input size), keep cracks, and seed well."""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from crackscope.cli import build_parser
from crackscope.labelled import Clarity, Sample
from crackscope.training import synthetic
from crackscope.training.augment import (
    PRESETS,
    Augmentation,
    build_transform,
    centre_keeping_span,
    eval_transform,
    pick_references,
    read_references,
    resize_mask,
    zoom_in,
    zoom_out,
)
from crackscope.training.train import Runtime, TrainConfig, make_loader


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)


def _bright_references(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(180, 256, (80, 100, 3), dtype=np.uint8) for _ in range(count)]


INPUTS = {
    "grey": (150, 200),
    "grey one channel": (150, 200, 1),
    "small": (20, 30, 3),
    "large": (900, 700, 3),
    "non-square": (150, 400, 3),
}


# --- the contract -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("shape", INPUTS.values(), ids=INPUTS.keys())
def test_every_preset_returns_uint8_bgr_at_the_input_size(preset, shape):
    source = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    transform = build_transform(preset, 64, references=_bright_references(), seed=0)
    for _ in range(8):
        out = transform(source)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_a_four_channel_image_gets_an_error_naming_its_shape():
    with pytest.raises(ValueError, match=r"\[H, W, 3\].*got shape \[10, 10, 4\]"):
        build_transform("colour", 32)(np.zeros((10, 10, 4), np.uint8))


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
    with pytest.raises(ValueError, match="none, light, heavy, colour, scale, domain"):
        build_transform("extreme", 64)


def test_a_non_uint8_reference_is_refused_by_its_index():
    references = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)]
    with pytest.raises(ValueError, match="reference image 1 is float32"):
        build_transform("domain", 32, references=references)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_train_command_offers_every_preset(preset):
    assert build_parser().parse_args(["train", "--augment", preset]).augment == preset


# --- zooming about the centre -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "crop", "keep", "position", "span"),
    [
        (100, 0.5, 0.5, 0.0, (25, 50)),  # the smallest crop is the centre square itself, wherever it is asked to go
        (100, 0.5, 0.5, 1.0, (25, 50)),
        (100, 1.0, 0.5, 0.3, (0, 100)),  # the whole side
        (100, 0.8, 0.5, 0.0, (0, 80)),  # starts 0..20 keep pixels 25..74 inside
        (100, 0.8, 0.5, 1.0, (20, 80)),
        (100, 0.6, 0.5, 0.5, (20, 60)),  # starts 15..25
        (101, 0.5, 0.5, 0.7, (25, 50)),  # odd side: the centre pixel 50 stays inside
        (10, 0.7, 0.2, 1.0, (3, 7)),  # keep pixels 4..5: starts 0..3 (the crop may not run past the edge)
    ],
)
def test_centre_keeping_span_matches_hand_worked_crops(length, crop, keep, position, span):
    assert centre_keeping_span(length, crop, keep, position) == span


def test_zoom_in_at_half_the_side_shows_only_the_centre_square():
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:6, 2:6] = 200
    assert np.all(zoom_in(image, 0.5, 0.5, x_position=0.9, y_position=0.1) == 200)


def test_zoom_out_places_the_shrunk_image_and_reflects_it_into_the_border():
    blocks = np.array([[10, 20, 30, 40], [50, 60, 70, 80], [90, 100, 110, 120], [130, 140, 150, 160]], np.uint8)
    image = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[..., None].repeat(3, axis=2)  # 8x8, 2x2 blocks
    out = zoom_out(image, 0.5, x_position=1.0, y_position=1.0)[..., 0]
    assert out.shape == (8, 8)
    assert np.array_equal(out[4:, 4:], blocks)  # area shrinking of 2x2 blocks gives the block values exactly
    assert np.array_equal(out[3, 4:], blocks[1])  # reflect-101: the row above mirrors the shrunk image's row 1
    assert np.array_equal(out[4:, 3], blocks[:, 1])


@pytest.mark.parametrize("orientation", ["horizontal", "diagonal"])
def test_scale_preset_keeps_a_centred_crack_in_the_centre_region(orientation):
    size = 224
    patch = np.random.default_rng(2).normal(190, 4, (size, size, 3)).clip(0, 255).astype(np.uint8)
    end = (size - 1, size // 2) if orientation == "horizontal" else (size - 1, size - 1)
    start = (0, size // 2) if orientation == "horizontal" else (0, 0)
    cv2.line(patch, start, end, (40, 40, 40), thickness=3)
    transform = build_transform("scale", size, seed=5)
    quarter = size // 4
    for _ in range(50):
        out = transform(patch).astype(np.int16)
        centre = out[quarter : size - quarter, quarter : size - quarter]
        assert centre.min() < np.median(out) - 60  # the line is still there, dark against the surface


# --- histogram matching -----------------------------------------------------------------------------------------------


def test_a_dark_image_matched_to_bright_references_gets_brighter():
    dark = np.random.default_rng(3).integers(20, 60, (64, 64, 3), dtype=np.uint8)
    with_references = build_transform("colour", 64, references=_bright_references(), seed=0)
    without = build_transform("colour", 64, seed=0)
    bright_mean = np.mean([with_references(dark).mean() for _ in range(60)])
    plain_mean = np.mean([without(dark).mean() for _ in range(60)])
    assert bright_mean > plain_mean + 30


@pytest.mark.parametrize("preset", ["colour", "domain"])
def test_presets_without_references_skip_histogram_matching(preset, image):
    transform = build_transform(preset, 64, seed=0)
    steps = _all_steps(transform.pipeline)
    assert not any(isinstance(step, A.HistogramMatching) for step in steps)
    with_references = _all_steps(build_transform(preset, 64, references=_bright_references()).pipeline)
    assert any(isinstance(step, A.HistogramMatching) for step in with_references)
    for _ in range(20):
        transform(image)


def _all_steps(compose) -> list:
    steps = []
    for step in compose.transforms:
        steps.extend(_all_steps(step) if isinstance(step, A.BaseCompose) else [step])
    return steps


@dataclass(frozen=True)
class SourcedSample(Sample):
    source: str = ""


def _samples(sources: dict[str, int]) -> list[SourcedSample]:
    return [
        SourcedSample(Path(f"{source}/{index}.png"), 1.0, Clarity.CLEAR, f"{source}{index}", source=source)
        for source, count in sources.items()
        for index in range(count)
    ]


def test_references_are_spread_evenly_over_sources():
    picked = pick_references(_samples({"concrete": 40, "pavement": 3, "wall": 5}), count=9, seed=0)
    assert Counter(sample.source for sample in picked) == {"concrete": 3, "pavement": 3, "wall": 3}


def test_references_are_a_seeded_sample_without_repeats():
    samples = _samples({"": 30})
    first = pick_references(samples, count=10, seed=4)
    assert first == pick_references(samples, count=10, seed=4)
    assert first != pick_references(samples, count=10, seed=5)
    assert len(set(first)) == 10
    assert sorted(pick_references(samples, count=100, seed=4), key=str) == sorted(samples, key=str)


def test_read_references_reads_the_patch_of_each_picked_item(tmp_path):
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    sample = Sample(tmp_path / "a.png", 0.0, Clarity.CLEAR, "a", box=(5, 2, 10, 8))
    (reference,) = read_references([sample])
    assert np.array_equal(reference, image[2:10, 5:15])


def test_make_loader_gives_references_only_to_presets_that_match_histograms(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for index in range(6):
        cv2.imwrite(str(tmp_path / f"{index}.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        samples.append(Sample(tmp_path / f"{index}.png", float(index % 2), Clarity.CLEAR, str(index)))
    runtime = Runtime(torch.device("cpu"))
    for preset, expected in [("colour", 6), ("domain", 6), ("heavy", 0)]:
        config = TrainConfig(augment=preset, input_size=32, workers=0, batch_size=4)
        loader, _ = make_loader(samples, config, runtime, train=True, batch_size=config.batch_size)
        assert len(loader.dataset.transform.references) == expected
        assert next(iter(loader)).images.shape == (4, 32, 32, 3)


# --- seeding and pickling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_repeat_themselves_under_a_fixed_seed(preset, image):
    first = build_transform(preset, 64, references=_bright_references(), seed=7)
    second = build_transform(preset, 64, references=_bright_references(), seed=7)
    for _ in range(6):
        assert np.array_equal(first(image), second(image))


@pytest.mark.parametrize("preset", [preset for preset in PRESETS if preset != "none"])
def test_different_seeds_give_different_augmentations(preset, image):
    first = build_transform(preset, 64, references=_bright_references(), seed=1)
    second = build_transform(preset, 64, references=_bright_references(), seed=2)
    assert any(not np.array_equal(first(image), second(image)) for _ in range(6))


def test_seeded_steps_draw_independently_so_two_flips_are_not_tied():
    # albumentations' own Compose(seed=...) seeds every step alike, which makes the two flips fire together.
    transform = Augmentation(A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]), 2, [], seed=3)
    corners = Counter(int(transform(np.array([[0, 1], [2, 3]], np.uint8))[0, 0, 0]) for _ in range(200))
    assert set(corners) == {0, 1, 2, 3}  # none, horizontal, vertical, both


@pytest.mark.parametrize("preset", PRESETS)
def test_transforms_survive_a_pickle_round_trip(preset, image):
    transform = build_transform(preset, 64, references=_bright_references(), seed=0)
    copy = pickle.loads(pickle.dumps(transform))
    assert np.array_equal(copy(image), transform(image))  # the copy carries on the same stream


class _Repeated(TorchDataset):
    """One image augmented eight times, with the id of the worker that did it."""

    def __init__(self, transform) -> None:
        self.transform = transform
        self.image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.transform(self.image), torch.utils.data.get_worker_info().id


def _augment_in_two_workers(transform, seed: int) -> list[tuple[np.ndarray, int]]:
    loader = DataLoader(
        _Repeated(transform), batch_size=None, num_workers=2, generator=torch.Generator().manual_seed(seed)
    )
    return [(image.numpy(), int(worker)) for image, worker in loader]


def test_dataloader_workers_draw_different_augmentations():
    items = _augment_in_two_workers(build_transform("heavy", 32, seed=0), seed=0)
    by_worker = {worker: [image for image, w in items if w == worker] for worker in (0, 1)}
    assert all(len(images) == 4 for images in by_worker.values())
    assert not all(np.array_equal(a, b) for a, b in zip(by_worker[0], by_worker[1], strict=True))


def test_a_seeded_loader_repeats_its_augmentations():
    first = _augment_in_two_workers(build_transform("domain", 32, seed=0), seed=11)
    second = _augment_in_two_workers(build_transform("domain", 32, seed=0), seed=11)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, second, strict=True))


# --- masks carried with the image -------------------------------------------------------------------------------------


@pytest.fixture
def cracked() -> tuple[np.ndarray, np.ndarray]:
    """A 150x200 surface with a dark, 3-px crack and its 0/255 mask."""
    mask = np.zeros((150, 200), np.uint8)
    cv2.line(mask, (10, 20), (190, 130), 255, thickness=3)
    image = np.random.default_rng(4).normal(200, 5, (150, 200, 3)).clip(0, 255).astype(np.uint8)
    image[mask > 0] = 30
    return image, mask


@pytest.mark.parametrize("preset", PRESETS)
def test_a_paired_call_gives_the_image_a_plain_call_gives_under_the_same_seed(preset):
    image, mask = synthetic.make_frame(150, 200, 5, kind="concrete", n_cracks=2)
    plain = build_transform(preset, 64, references=_bright_references(), seed=9)
    paired = build_transform(preset, 64, references=_bright_references(), seed=9)
    for _ in range(12):
        augmented, moved = paired.pair(image, mask)
        assert np.array_equal(augmented, plain(image))
        assert moved.shape == (64, 64) and moved.dtype == np.uint8


@pytest.mark.parametrize("preset", PRESETS)
def test_the_mask_stays_on_the_crack_and_binary_under_every_preset(preset, cracked):
    # No references: matching to the bright ones washes the crack out, which is tone, not geometry.
    transform = build_transform(preset, 64, seed=0)
    for _ in range(40):
        augmented, moved = transform.pair(*cracked)
        assert set(np.unique(moved)) <= {0, 255}
        grey = augmented.astype(np.float32).mean(axis=2)
        if moved.any() and not moved.all():
            assert grey[moved > 0].mean() < grey[moved == 0].mean() - 10  # a mask left behind: about 0


def test_the_mask_follows_a_horizontal_flip():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:10, 2:6] = 255
    transform = Augmentation(A.Compose([A.HorizontalFlip(p=1.0)]), 32, [], seed=0)
    flipped, moved = transform.pair(image, mask)
    assert np.array_equal(flipped, image[:, ::-1])
    assert np.array_equal(moved, mask[:, ::-1])


@pytest.mark.parametrize("shape", [(300, 400), (20, 30), (64, 200)], ids=["shrink", "enlarge", "mixed"])
def test_the_mask_stays_binary_after_the_resize_and_a_hairline_survives_shrinking(shape):
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 2, :] = 1  # a one-pixel line, stored as 0/1
    image = np.zeros((*shape, 3), np.uint8)
    fitted_image, fitted = eval_transform(64).pair(image, mask)
    assert fitted_image.shape == (64, 64, 3) and fitted.shape == (64, 64)
    assert set(np.unique(fitted)) == {0, 255}
    assert np.all(fitted.max(axis=0) == 255)  # the line crosses every column still


def test_resize_mask_enlarges_by_the_nearest_pixel_and_keeps_any_covered_pixel_when_shrinking():
    mask = np.array([[0, 255], [0, 0]], np.uint8)
    assert np.array_equal(resize_mask(mask, 4, 4)[:2, 2:], np.full((2, 2), 255))
    assert resize_mask(mask, 4, 4).sum() == 4 * 255
    dot = np.zeros((8, 8), np.uint8)
    dot[5, 2] = 255
    assert np.array_equal(resize_mask(dot, 2, 2), np.array([[0, 0], [255, 0]], np.uint8))


@pytest.mark.parametrize("zoom", ["in", "out"])
def test_zooming_a_mask_moves_it_like_the_image(zoom, cracked):
    image, mask = cracked
    if zoom == "in":
        grey, moved = zoom_in(image, 0.6, 0.5, 0.3, 0.8), zoom_in(mask, 0.6, 0.5, 0.3, 0.8, mask=True)
    else:
        grey, moved = zoom_out(image, 0.7, 0.3, 0.8), zoom_out(mask, 0.7, 0.3, 0.8, mask=True)
    assert moved.shape == mask.shape and set(np.unique(moved)) == {0, 255}
    dark = grey.mean(axis=2) < 115
    assert (dark & (moved > 0)).sum() >= 0.95 * dark.sum()  # every dark crack pixel is marked


def test_a_mask_of_another_size_than_its_image_is_refused():
    with pytest.raises(ValueError, match=r"like its image \[150, 200\], got shape \[150, 100\]"):
        build_transform("light", 32, seed=0).pair(np.zeros((150, 200, 3), np.uint8), np.zeros((150, 100), np.uint8))
