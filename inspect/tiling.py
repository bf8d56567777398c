"""Tile geometry: frames into model-sized tiles, and per-tile heatmaps back into one frame-sized heatmap.

Pure functions over numpy arrays, shared by the runtime (frames) and by training (mask datasets cut on a grid).
A frame is covered by a grid of square tiles at the model's input size; the stride follows from the overlap and
the last tile of each row and column is snapped flush with the frame's edge, so no pixel is left out and no tile
hangs outside. A frame smaller than a tile is reflect-padded up to one tile (the padding is cut off the heatmap).

Stitching weights each tile's heatmap with a smooth window that is highest in the tile's centre, so overlapping
tiles blend without visible seams and a tile's border, where its receptive field sees the least context, counts
least.

Example:
    >>> grid = tile_grid(480, 640, 224, overlap=0.25)
    >>> len(grid), grid.boxes[-1].tolist()
    (12, [416, 256, 224, 224])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


def grid_positions(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets of patches along one axis, the last one flush with the far edge (no pixel left out)."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def patch_boxes(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(x, y, w, h)`` boxes covering an image; an image smaller than a patch is one box of its own size."""
    return [
        (x, y, min(patch, width), min(patch, height))
        for y in grid_positions(height, patch, stride)
        for x in grid_positions(width, patch, stride)
    ]


def stride_for(size: int, overlap: float) -> int:
    """Grid stride for a tile side and an overlap share in [0, 1)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, round(size * (1.0 - overlap)))


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of side ``size`` covering a (padded) frame of ``height`` x ``width``.

    ``boxes`` is ``int [N, 4]`` of ``(x, y, w, h)`` in padded-frame pixels; ``frame_shape`` is the frame's own
    ``(height, width)`` before padding (equal to ``(height, width)`` unless the frame was smaller than a tile).
    """

    height: int
    width: int
    size: int
    stride: int
    boxes: np.ndarray
    frame_shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.boxes)


def tile_grid(height: int, width: int, size: int, overlap: float = 0.25) -> TileGrid:
    """The tile grid of a ``height`` x ``width`` frame (padded up to ``size`` where smaller)."""
    padded_h, padded_w = max(height, size), max(width, size)
    stride = stride_for(size, overlap)
    boxes = np.array(patch_boxes(padded_h, padded_w, size, stride), dtype=np.int64).reshape(-1, 4)
    return TileGrid(padded_h, padded_w, size, stride, boxes, (height, width))


def to_bgr8(frame: np.ndarray) -> np.ndarray:
    """Any camera frame as uint8 BGR ``[H, W, 3]``: grey, grey+alpha, BGRA, and 16-bit frames are converted.

    16-bit frames are scaled from their full range (``/ 257``), so 0 and 65535 map to 0 and 255; a camera that
    fills only 12 of the 16 bits looks darker, as it would on any 8-bit display.
    """
    if frame.dtype == np.uint16:
        frame = (frame.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"frames must be 8- or 16-bit, got {frame.dtype}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an image [H, W] or [H, W, C] with C in 1..4, got shape {list(frame.shape)}")
    channels = frame.shape[2]
    if channels == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
    if channels == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(frame[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def pad_to_grid(frame: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Reflect-pad a frame smaller than a tile up to the grid's size (a no-op for larger frames)."""
    height, width = frame.shape[:2]
    if (height, width) == (grid.height, grid.width):
        return frame
    # Reflection needs the image to be at least 2 px wide; BORDER_REFLECT_101 repeats as often as needed.
    return cv2.copyMakeBorder(
        frame, 0, grid.height - height, 0, grid.width - width, cv2.BORDER_REFLECT_101 if min(height, width) > 1 else 0
    )


def cut_tiles(frame: np.ndarray, grid: TileGrid, keep: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``[N, S, S, C]`` tiles of a (padded) frame, in grid order; only the kept ones when ``keep`` is given."""
    boxes = grid.boxes if keep is None else grid.boxes[keep]
    size = grid.size
    if len(boxes) == 0:
        return np.empty((0, size, size, frame.shape[2]), dtype=frame.dtype)
    return np.stack([frame[y : y + size, x : x + size] for x, y, _, _ in boxes])


def polygon_mask(height: int, width: int, polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """A boolean ``[H, W]`` region of interest from a polygon of ``(x, y)`` pixel vertices."""
    points = np.asarray(polygon, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError(f"an ROI polygon needs at least 3 (x, y) vertices, got {np.asarray(polygon).tolist()}")
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def tiles_to_inspect(
    frame: np.ndarray, grid: TileGrid, *, roi: np.ndarray | None = None, min_std: float | None = None
) -> np.ndarray:
    """Boolean ``[N]``: the tiles worth sending to the model.

    A tile is skipped when it lies entirely outside the ROI mask, or (``min_std``) when its grey values are
    near-uniform (standard deviation below ``min_std``): background, a conveyor belt, an empty tray.
    """
    keep = np.ones(len(grid), dtype=bool)
    size = grid.size
    if roi is not None:
        padded = np.zeros((grid.height, grid.width), bool)
        padded[: roi.shape[0], : roi.shape[1]] = roi
        keep &= np.array([padded[y : y + size, x : x + size].any() for x, y, _, _ in grid.boxes], dtype=bool)
    if min_std is not None:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        # Measured on a 4x-reduced copy: the variance test only needs to tell texture from a flat surface.
        small = grey[::4, ::4].astype(np.float32)
        step = max(1, size // 4)
        for index in np.flatnonzero(keep):
            x, y = grid.boxes[index, :2] // 4
            keep[index] = float(small[y : y + step, x : x + step].std()) >= min_std
    return keep


@lru_cache(maxsize=8)
def blend_window(size: int) -> np.ndarray:
    """A ``[S, S]`` float32 weight, highest in the centre and small but positive at the border.

    A raised cosine (Hann) plus a floor: tiles that overlap hand over smoothly, and a pixel covered by only one
    tile (the frame's border) still gets that tile's value.
    """
    ramp = 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(size) + 0.5) / size)
    ramp = 0.02 + 0.98 * ramp
    window = np.outer(ramp, ramp).astype(np.float32)
    window.setflags(write=False)
    return window


def upsample_cams(cams: np.ndarray, size: int) -> np.ndarray:
    """ReLU'd CAMs ``[N, h, w]`` resized to the tile side ``[N, S, S]`` (bilinear)."""
    positive = np.maximum(cams, 0.0).astype(np.float32, copy=False)
    if len(positive) == 0:
        return np.zeros((0, size, size), np.float32)
    # cv2.resize takes many channels at once (up to 128 in OpenCV 5): tiles as channels instead of a loop per tile.
    out = np.empty((len(positive), size, size), np.float32)
    for start in range(0, len(positive), 128):
        chunk = positive[start : start + 128]
        resized = cv2.resize(np.moveaxis(chunk, 0, -1), (size, size), interpolation=cv2.INTER_LINEAR)
        out[start : start + len(chunk)] = resized.reshape(size, size, -1).transpose(2, 0, 1)
    return out


def stitch(tile_maps: np.ndarray, grid: TileGrid, indices: np.ndarray | None = None) -> np.ndarray:
    """One frame-sized float32 heatmap from per-tile maps ``[K, S, S]`` (window-weighted mean where they overlap).

    ``indices`` says which grid tiles the maps belong to (default: all, in order). Pixels that no inspected tile
    covers are 0. The result has the frame's own shape (padding cut off).
    """
    indices = np.arange(len(grid)) if indices is None else np.asarray(indices)
    if len(indices) != len(tile_maps):
        raise ValueError(f"{len(tile_maps)} tile maps for {len(indices)} tiles")
    size = grid.size
    weighted = tile_maps * blend_window(size)
    total = np.zeros((grid.height, grid.width), np.float32)
    for tile_map, (x, y) in zip(weighted, grid.boxes[indices, :2], strict=True):
        total[y : y + size, x : x + size] += tile_map
    weight = _weight_sum(grid) if len(indices) == len(grid) else _weights_of(grid, indices)
    np.divide(total, weight, out=total, where=weight > 0)
    height, width = grid.frame_shape
    return total[:height, :width]


def _weights_of(grid: TileGrid, indices: np.ndarray) -> np.ndarray:
    window = blend_window(grid.size)
    weight = np.zeros((grid.height, grid.width), np.float32)
    for x, y in grid.boxes[indices, :2]:
        weight[y : y + grid.size, x : x + grid.size] += window
    return weight


_WEIGHT_CACHE: dict[tuple[int, int, int, int], np.ndarray] = {}


def _weight_sum(grid: TileGrid) -> np.ndarray:
    """The summed windows of a whole grid: the same for every frame of a size, so computed once per size."""
    key = (grid.height, grid.width, grid.size, grid.stride)
    if key not in _WEIGHT_CACHE:
        if len(_WEIGHT_CACHE) >= 8:
            _WEIGHT_CACHE.pop(next(iter(_WEIGHT_CACHE)))
        weight = _weights_of(grid, np.arange(len(grid)))
        weight.setflags(write=False)
        _WEIGHT_CACHE[key] = weight
    return _WEIGHT_CACHE[key]


def heat_factor(size: int) -> int:
    """How much coarser than the frame the heatmap is stitched: 4 where the tile side allows it.

    A CAM cell covers 16 or 32 px of a tile (the model's heatmap stride), so a heatmap at a quarter of the frame's
    resolution loses nothing; stitching and region finding then touch 16x fewer pixels.
    """
    return next(f for f in (4, 2, 1) if size % f == 0 and size // f >= 8) if size >= 8 else 1


def scaled_grid(grid: TileGrid, factor: int) -> TileGrid:
    """The same grid on a frame ``factor`` times smaller (tile sides must divide by ``factor``)."""
    if factor == 1:
        return grid
    if grid.size % factor:
        raise ValueError(f"tile side {grid.size} does not divide by {factor}")
    boxes = grid.boxes.copy()
    boxes[:, :2] //= factor
    boxes[:, 2:] //= factor
    height, width = -(-grid.height // factor), -(-grid.width // factor)
    frame = (-(-grid.frame_shape[0] // factor), -(-grid.frame_shape[1] // factor))
    return TileGrid(height, width, grid.size // factor, max(1, grid.stride // factor), boxes, frame)


def tile_coverage(grid: TileGrid, indices: np.ndarray) -> np.ndarray:
    """Boolean frame-sized mask of the pixels covered by the given tiles."""
    covered = np.zeros((grid.height, grid.width), bool)
    for x, y, _, _ in grid.boxes[np.asarray(indices, dtype=np.int64)]:
        covered[y : y + grid.size, x : x + grid.size] = True
    height, width = grid.frame_shape
    return covered[:height, :width]
