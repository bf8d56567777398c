"""Tile grids, frame conversion, ROI, and stitching per-tile maps back into one frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crackscope.inspect.tiling import (
    blend_window,
    cut_tiles,
    grid_positions,
    heat_factor,
    pad_to_grid,
    patch_boxes,
    polygon_mask,
    scaled_grid,
    stitch,
    stride_for,
    tile_grid,
    tiles_to_inspect,
    to_bgr8,
    upsample_cams,
)


@pytest.mark.parametrize(
    ("length", "patch", "stride", "expected"),
    [(100, 50, 50, [0, 50]), (120, 50, 50, [0, 50, 70]), (30, 50, 50, [0]), (100, 50, 25, [0, 25, 50])],
)
def test_grid_positions_cover_the_whole_axis_ending_flush(length, patch, stride, expected):
    assert grid_positions(length, patch, stride) == expected


def test_patch_boxes_of_a_small_image_is_the_whole_image():
    assert patch_boxes(30, 40, 64, 64) == [(0, 0, 40, 30)]


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap", "count", "stride"),
    [
        (224, 224, 224, 0.25, 1, 168),  # exactly one tile
        (480, 640, 224, 0.0, 9, 224),  # 3 x 3, last row/column snapped inside
        (480, 640, 224, 0.25, 12, 168),  # 3 rows x 4 columns
        (2048, 2448, 224, 0.0, 110, 224),  # the 5 MP frame of the benchmark: 10 x 11
        (100, 50, 224, 0.25, 1, 168),  # smaller than a tile: one padded tile
    ],
)
def test_tile_grid_counts_and_stride(height, width, size, overlap, count, stride):
    grid = tile_grid(height, width, size, overlap)
    assert (len(grid), grid.stride) == (count, stride)
    assert (grid.boxes[:, 0] + size <= grid.width).all() and (grid.boxes[:, 1] + size <= grid.height).all()
    covered = np.zeros((grid.height, grid.width), bool)
    for x, y, _, _ in grid.boxes:
        covered[y : y + size, x : x + size] = True
    assert covered.all()  # no pixel left out


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_overlap_outside_zero_to_one_is_refused(overlap):
    with pytest.raises(ValueError, match="overlap"):
        stride_for(224, overlap)


@pytest.mark.parametrize(
    ("frame", "expected_first_pixel"),
    [
        (np.full((4, 5), 7, np.uint8), [7, 7, 7]),  # grey
        (np.full((4, 5, 1), 9, np.uint8), [9, 9, 9]),  # grey with a channel axis
        (np.dstack([np.full((4, 5), 3, np.uint8), np.full((4, 5), 255, np.uint8)]), [3, 3, 3]),  # grey + alpha
        (np.dstack([np.full((4, 5, 3), (1, 2, 3), np.uint8), np.full((4, 5), 255, np.uint8)]), [1, 2, 3]),  # BGRA
        (np.full((4, 5, 3), 65535, np.uint16), [255, 255, 255]),  # 16-bit full scale
        (np.full((4, 5), 257 * 100, np.uint16), [100, 100, 100]),  # 16-bit grey
    ],
)
def test_frames_of_any_camera_format_become_uint8_bgr(frame, expected_first_pixel):
    converted = to_bgr8(frame)
    assert converted.dtype == np.uint8 and converted.shape == (4, 5, 3)
    assert converted[0, 0].tolist() == expected_first_pixel


def test_float_frames_are_refused_with_their_dtype():
    with pytest.raises(ValueError, match="float32"):
        to_bgr8(np.zeros((4, 4, 3), np.float32))


def test_a_frame_smaller_than_a_tile_is_reflect_padded_and_the_heatmap_cut_back():
    frame = np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3)
    grid = tile_grid(30, 40, 64)
    padded = pad_to_grid(frame, grid)
    assert padded.shape == (64, 64, 3)
    np.testing.assert_array_equal(padded[:30, :40], frame)
    np.testing.assert_array_equal(padded[30, :40], frame[28])  # reflection, not zeros
    heat = stitch(np.ones((1, 64, 64), np.float32), grid)
    assert heat.shape == (30, 40)


def test_cut_tiles_returns_the_pixels_under_each_box():
    frame = np.random.default_rng(0).integers(0, 255, (100, 130, 3), dtype=np.uint8)
    grid = tile_grid(100, 130, 64, 0.5)
    tiles = cut_tiles(frame, grid)
    assert tiles.shape == (len(grid), 64, 64, 3)
    for tile, (x, y, _, _) in zip(tiles, grid.boxes, strict=True):
        np.testing.assert_array_equal(tile, frame[y : y + 64, x : x + 64])


def test_roi_polygon_and_flat_background_skip_tiles():
    frame = np.full((128, 256, 3), 120, np.uint8)
    frame[:, 128:] = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)  # textured right half
    grid = tile_grid(128, 256, 64, 0.0)  # 2 rows x 4 columns
    keep_texture = tiles_to_inspect(frame, grid, min_std=5.0)
    assert keep_texture.tolist() == [False, False, True, True] * 2
    roi = polygon_mask(128, 256, [(0, 0), (100, 0), (100, 50), (0, 50)])  # top-left corner only
    assert tiles_to_inspect(frame, grid, roi=roi).tolist() == [True, True, False, False] + [False] * 4


def test_polygon_with_fewer_than_three_vertices_is_refused():
    with pytest.raises(ValueError, match="3"):
        polygon_mask(10, 10, [(0, 0), (5, 5)])


def test_stitch_averages_overlapping_tiles_and_keeps_single_coverage_values():
    grid = tile_grid(64, 96, 64, 0.5)  # three tiles along x: 0, 32 and 32 -> 0, 32
    maps = np.stack([np.full((64, 64), float(v), np.float32) for v in range(1, len(grid) + 1)])
    heat = stitch(maps, grid)
    first = grid.boxes[0, 0]
    assert heat[:, first : first + 16].min() == pytest.approx(1.0)  # only the first tile covers the left edge
    assert heat[:, -16:].max() == pytest.approx(float(len(grid)))  # only the last tile covers the right edge
    assert 1.0 < heat[32, 48] < float(len(grid))  # a blend in the overlap


def test_stitch_has_no_seam_for_a_constant_map():
    grid = tile_grid(300, 400, 64, 0.25)
    heat = stitch(np.full((len(grid), 64, 64), 2.5, np.float32), grid)
    np.testing.assert_allclose(heat, 2.5, rtol=1e-5)


def test_stitch_leaves_uninspected_pixels_cold():
    grid = tile_grid(64, 128, 64, 0.0)
    heat = stitch(np.ones((1, 64, 64), np.float32), grid, indices=np.array([1]))
    assert heat[:, :64].max() == 0.0 and heat[:, 64:].min() == 1.0


def test_blend_window_peaks_in_the_centre_and_stays_positive_at_the_border():
    window = blend_window(64)
    assert window.min() > 0 and window[32, 32] == window.max() and window[0, 0] < 0.01


def test_upsample_cams_applies_relu_and_resizes_many_tiles_at_once():
    cams = np.stack([np.full((3, 3), v, np.float32) for v in (-1.0, 2.0)] * 400)  # over 128 tiles, several chunks
    up = upsample_cams(cams, 96)
    assert up.shape == (800, 96, 96)
    assert up[0].max() == 0.0 and up[1].min() == pytest.approx(2.0) and up[-1].min() == pytest.approx(2.0)


def test_a_scaled_grid_stitches_to_the_same_heatmap_at_a_quarter_resolution():
    grid = tile_grid(300, 410, 64, 0.25)
    rng = np.random.default_rng(3)
    cams = rng.normal(size=(len(grid), 4, 4)).astype(np.float32)
    full = stitch(upsample_cams(cams, 64), grid)
    small = scaled_grid(grid, 4)
    coarse = stitch(upsample_cams(cams, 16), small)
    assert coarse.shape == (75, 103)
    resized = cv2.resize(coarse, (410, 300), interpolation=cv2.INTER_LINEAR)
    assert np.corrcoef(full.ravel(), resized.ravel())[0, 1] > 0.97


@pytest.mark.parametrize(("size", "factor"), [(224, 4), (96, 4), (64, 4), (30, 2), (9, 1)])
def test_heat_factor_divides_the_tile_side(size, factor):
    assert heat_factor(size) == factor
