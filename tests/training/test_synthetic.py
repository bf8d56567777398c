"""Tests for the procedural crack generator in ``crackscope.training.synthetic``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crackscope.training import synthetic

FRAME_H, FRAME_W = 120, 160  # small frames keep the suite fast; the generator is size-agnostic


def _centre_region(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    return mask[h // 4 : h - h // 4, w // 4 : w - w // 4]


# ---------------------------------------------------------------------------------------------------------------
# make_texture
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", synthetic.TEXTURES)
def test_make_texture_returns_a_uint8_bgr_image_of_the_requested_size(kind: str) -> None:
    image = synthetic.make_texture(kind, 50, 70, np.random.default_rng(0))
    assert image.shape == (50, 70, 3)
    assert image.dtype == np.uint8


@pytest.mark.parametrize("kind", synthetic.TEXTURES)
def test_make_texture_is_deterministic_for_a_seed_and_varies_between_seeds(kind: str) -> None:
    a = synthetic.make_texture(kind, 64, 64, np.random.default_rng(5))
    b = synthetic.make_texture(kind, 64, 64, np.random.default_rng(5))
    c = synthetic.make_texture(kind, 64, 64, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", synthetic.TEXTURES)
def test_make_texture_has_some_texture_and_is_not_saturated(kind: str) -> None:
    image = synthetic.make_texture(kind, 96, 96, np.random.default_rng(1))
    assert image.std() > 0.5
    assert 20 < image.mean() < 240


def test_make_texture_accepts_an_integer_seed() -> None:
    np.testing.assert_array_equal(
        synthetic.make_texture("metal", 32, 48, 3), synthetic.make_texture("metal", 32, 48, np.random.default_rng(3))
    )


def test_make_texture_rejects_an_unknown_kind_and_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="concrete") as info:
        synthetic.make_texture("wood", 32, 32, np.random.default_rng(0))
    for kind in synthetic.TEXTURES:
        assert kind in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# draw_crack / render_crack
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_draw_crack_returns_a_non_empty_binary_mask(seed: int) -> None:
    mask = synthetic.draw_crack(FRAME_H, FRAME_W, np.random.default_rng(seed))
    assert mask.shape == (FRAME_H, FRAME_W)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_draw_crack_is_deterministic_for_a_seed_and_varies_between_seeds() -> None:
    a = synthetic.draw_crack(FRAME_H, FRAME_W, np.random.default_rng(2), branches=2)
    b = synthetic.draw_crack(FRAME_H, FRAME_W, np.random.default_rng(2), branches=2)
    c = synthetic.draw_crack(FRAME_H, FRAME_W, np.random.default_rng(3), branches=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_draw_crack_gets_wider_with_max_width() -> None:
    def area(max_width: float) -> float:
        masks = [synthetic.draw_crack(200, 200, s, max_width=max_width, branches=0, length=150) for s in range(8)]
        return float(np.mean([np.count_nonzero(m) for m in masks]))

    assert area(6.0) > 1.5 * area(1.0)


def test_draw_crack_rejects_a_max_width_below_one_pixel() -> None:
    with pytest.raises(ValueError):
        synthetic.draw_crack(32, 32, 0, max_width=0.5)


def test_render_crack_darkens_the_image_along_the_mask_at_full_contrast() -> None:
    rng = np.random.default_rng(0)
    image = synthetic.make_texture("concrete", FRAME_H, FRAME_W, rng)
    mask = synthetic.draw_crack(FRAME_H, FRAME_W, rng, max_width=3.0)
    out = synthetic.render_crack(image, mask, rng, contrast=1.0)
    grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    inside, outside = grey[mask > 0].mean(), grey[mask == 0].mean()
    assert inside < outside - 40
    assert out.shape == image.shape
    assert out.dtype == np.uint8


def test_render_crack_returns_a_new_image_and_leaves_the_input_untouched() -> None:
    rng = np.random.default_rng(1)
    image = synthetic.make_texture("tile", 48, 48, rng)
    before = image.copy()
    mask = synthetic.draw_crack(48, 48, rng)
    out = synthetic.render_crack(image, mask, rng)
    np.testing.assert_array_equal(image, before)
    assert out is not image


def test_render_crack_is_fainter_at_lower_contrast() -> None:
    image = synthetic.make_texture("tile", FRAME_H, FRAME_W, np.random.default_rng(4))
    mask = synthetic.draw_crack(FRAME_H, FRAME_W, np.random.default_rng(4), max_width=3.0)
    drops = []
    for contrast in (1.0, 0.5, 0.15):
        out = synthetic.render_crack(image, mask, np.random.default_rng(9), contrast=contrast)
        drops.append(float(image[mask > 0].mean()) - float(out[mask > 0].mean()))
    assert drops[0] > drops[1] > drops[2] > 0


def test_render_crack_at_zero_contrast_returns_an_unchanged_copy() -> None:
    image = synthetic.make_texture("metal", 40, 40, 0)
    mask = synthetic.draw_crack(40, 40, 0)
    np.testing.assert_array_equal(synthetic.render_crack(image, mask, 0, contrast=0.0), image)


def test_render_crack_rejects_a_mask_of_the_wrong_size() -> None:
    with pytest.raises(ValueError):
        synthetic.render_crack(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 11), np.uint8), 0)


# ---------------------------------------------------------------------------------------------------------------
# make_frame
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", synthetic.TEXTURES)
def test_make_frame_returns_an_image_and_a_binary_union_mask(kind: str) -> None:
    image, mask = synthetic.make_frame(FRAME_H, FRAME_W, np.random.default_rng(0), kind=kind, n_cracks=2)
    assert image.shape == (FRAME_H, FRAME_W, 3)
    assert image.dtype == np.uint8
    assert mask.shape == (FRAME_H, FRAME_W)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_make_frame_is_deterministic_for_a_seed() -> None:
    a_img, a_mask = synthetic.make_frame(FRAME_H, FRAME_W, np.random.default_rng(11))
    b_img, b_mask = synthetic.make_frame(FRAME_H, FRAME_W, np.random.default_rng(11))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)


def test_make_frame_differs_for_another_seed() -> None:
    a_img, a_mask = synthetic.make_frame(FRAME_H, FRAME_W, np.random.default_rng(11))
    b_img, b_mask = synthetic.make_frame(FRAME_H, FRAME_W, np.random.default_rng(12))
    assert not np.array_equal(a_img, b_img)
    assert not np.array_equal(a_mask, b_mask)


def test_make_frame_with_zero_cracks_has_an_empty_mask() -> None:
    _, mask = synthetic.make_frame(FRAME_H, FRAME_W, np.random.default_rng(0), n_cracks=0)
    assert not mask.any()


def test_make_frame_darkens_the_cracks_at_full_contrast() -> None:
    image, mask = synthetic.make_frame(FRAME_H, FRAME_W, 3, kind="metal", n_cracks=2, contrast=1.0)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    assert grey[mask > 0].mean() < grey[mask == 0].mean() - 40


def test_make_frame_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="allowed kinds"):
        synthetic.make_frame(FRAME_H, FRAME_W, 0, kind="glass")


# ---------------------------------------------------------------------------------------------------------------
# make_patch
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", synthetic.LABELS)
@pytest.mark.parametrize("kind", synthetic.TEXTURES)
def test_make_patch_returns_a_square_uint8_bgr_patch(label: str, kind: str) -> None:
    patch = synthetic.make_patch(64, label, np.random.default_rng(0), kind=kind)
    assert patch.shape == (64, 64, 3)
    assert patch.dtype == np.uint8


@pytest.mark.parametrize("label", synthetic.LABELS)
def test_make_patch_is_deterministic_for_a_seed_and_varies_between_seeds(label: str) -> None:
    a = synthetic.make_patch(96, label, np.random.default_rng(21))
    b = synthetic.make_patch(96, label, np.random.default_rng(21))
    c = synthetic.make_patch(96, label, np.random.default_rng(22))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", synthetic.TEXTURES)
@pytest.mark.parametrize("seed", range(6))
def test_crack_patches_have_a_dark_crack_through_the_centre_region(kind: str, seed: int) -> None:
    image, mask = synthetic._patch_with_mask(96, "crack", np.random.default_rng(seed), kind)
    assert set(np.unique(mask).tolist()) == {0, 255}
    assert np.count_nonzero(_centre_region(mask)) > 0
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    assert grey[mask > 0].mean() < grey[mask == 0].mean() - 25


@pytest.mark.parametrize("seed", range(6))
def test_ok_patches_have_no_crack_mask(seed: int) -> None:
    _, mask = synthetic._patch_with_mask(96, "ok", np.random.default_rng(seed), None)
    assert not mask.any()


@pytest.mark.parametrize("seed", range(12))
def test_ambiguous_patches_contain_some_crack_pixels(seed: int) -> None:
    _, mask = synthetic._patch_with_mask(96, "ambiguous", np.random.default_rng(seed), None)
    assert mask.any()


def test_make_patch_rejects_an_unknown_label() -> None:
    with pytest.raises(ValueError, match="crack"):
        synthetic.make_patch(96, "maybe", 0)


def test_make_patch_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="allowed kinds"):
        synthetic.make_patch(96, "ok", 0, kind="plastic")


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------


def test_write_patch_dataset_creates_the_expected_files_per_class(tmp_path) -> None:
    root = synthetic.write_patch_dataset(tmp_path / "patches", n_crack=4, n_ok=3, n_ambiguous=2, size=48, seed=1)
    assert root == tmp_path / "patches"
    assert sorted(p.name for p in (root / "crack").glob("*.png")) == [f"crack_{i:05d}.png" for i in range(4)]
    assert len(list((root / "ok").glob("ok_*.png"))) == 3
    assert len(list((root / "ambiguous").glob("ambiguous_*.png"))) == 2
    image = cv2.imread(str(root / "crack" / "crack_00000.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 48, 3)


def test_write_patch_dataset_skips_the_ambiguous_folder_when_none_are_asked_for(tmp_path) -> None:
    root = synthetic.write_patch_dataset(tmp_path, n_crack=1, n_ok=1)
    assert not (root / "ambiguous").exists()
    assert sorted(p.name for p in root.iterdir()) == ["crack", "ok"]


def test_write_patch_dataset_adds_corrupt_files_that_cv2_cannot_decode(tmp_path) -> None:
    root = synthetic.write_patch_dataset(tmp_path, n_crack=2, n_ok=1, corrupt=3, size=32)
    corrupt = sorted((root / "crack").glob("corrupt_*.jpg"))
    assert [p.name for p in corrupt] == ["corrupt_00.jpg", "corrupt_01.jpg", "corrupt_02.jpg"]
    for path in corrupt:
        assert path.stat().st_size > 0
        assert cv2.imread(str(path)) is None
    assert len(list((root / "crack").glob("crack_*.png"))) == 2


def test_write_patch_dataset_is_deterministic_for_a_seed(tmp_path) -> None:
    a = synthetic.write_patch_dataset(tmp_path / "a", n_crack=2, n_ok=2, size=32, seed=7)
    b = synthetic.write_patch_dataset(tmp_path / "b", n_crack=2, n_ok=2, size=32, seed=7)
    c = synthetic.write_patch_dataset(tmp_path / "c", n_crack=2, n_ok=2, size=32, seed=8)
    name = "crack/crack_00001.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_write_frame_dataset_pairs_each_image_with_a_same_stem_binary_mask(tmp_path) -> None:
    root = synthetic.write_frame_dataset(tmp_path / "frames", n=5, height=64, width=96, seed=3, crack_fraction=0.6)
    images = sorted((root / "images").glob("*.jpg"))
    masks = sorted((root / "masks").glob("*.png"))
    assert len(images) == 5
    assert [p.stem for p in images] == [p.stem for p in masks]
    with_cracks = 0
    for image_path, mask_path in zip(images, masks, strict=True):
        image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 96, 3)
        assert mask.shape == (64, 96)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255}
        with_cracks += int(mask.any())
    assert with_cracks == 3


def test_write_frame_dataset_with_no_crack_fraction_writes_only_empty_masks(tmp_path) -> None:
    root = synthetic.write_frame_dataset(tmp_path, n=3, height=48, width=64, crack_fraction=0.0)
    for mask_path in (root / "masks").glob("*.png"):
        assert not cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE).any()


def test_write_video_produces_a_file_that_videocapture_reads_back(tmp_path) -> None:
    frames = [synthetic.make_frame(96, 128, seed, n_cracks=1)[0] for seed in range(6)]
    path = synthetic.write_video(tmp_path / "clips" / "line.avi", frames, fps=12.0)
    assert path == tmp_path / "clips" / "line.avi"
    assert path.stat().st_size > 0
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened()
        read = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            read.append(frame)
    finally:
        cap.release()
    assert len(read) == len(frames)
    assert all(frame.shape == (96, 128, 3) for frame in read)
    # MJPG is lossy but the content must survive.
    assert np.abs(read[0].astype(np.int16) - frames[0].astype(np.int16)).mean() < 10


def test_write_video_rejects_an_empty_frame_list(tmp_path) -> None:
    with pytest.raises(ValueError):
        synthetic.write_video(tmp_path / "empty.avi", [])


def test_write_video_raises_runtime_error_naming_the_path_when_the_writer_cannot_open(tmp_path) -> None:
    target = tmp_path / "clip.avi"
    target.mkdir()  # a directory where the file should go: the writer cannot open it
    frames = [np.zeros((32, 32, 3), np.uint8)]
    with pytest.raises(RuntimeError, match=r"clip\.avi"):
        synthetic.write_video(target, frames)
