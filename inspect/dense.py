"""Dense whole-frame geometry: one CAM over the frame's stride grid, and each tile's logit read off it.

The network is fully convolutional and its head is average-pool + linear, so the CAM is linear in the feature map:
a tile's logit is ``bias + sum of its CAM cells``. The dense graph (``model.dense.onnx``) runs once over a whole
frame whose sides are multiples of the backbone's stride (32 px; the frame is reflect-padded on its bottom and
right up to the next multiple, and up to one tile where it is smaller) and returns the CAM on the frame's cell grid
(16 or 32 px cells, the model's heatmap stride), scaled per cell exactly as a tile's CAM is (divided by the tile's
number of cells). Any tile whose origin is a multiple of 32 then covers whole cells, ``S/c`` by ``S/c`` of them, and
its logit is a box sum of the CAM: tiles at any overlap for the price of one pass.

Why the tile origins are multiples of 32, the backbone's stride: a tile cut at such an origin has its own feature
cells where the frame's are (the same pixels under each cell of the last feature map), so the dense logit sums
exactly the cells the tiled model would have seen; a tile at any other origin would straddle cells. The stride is
therefore rounded *down* to a multiple of 32, so a dense grid overlaps at least as much as asked (25% of a 224 px
tile asks for a 168 px stride; the dense grid uses 160 px), and the last tile of each row and column is flush with
the padded frame.

What differs from tiled inference is context, not geometry: a tile's convolutions see zero padding at the tile's
edges, the dense pass sees the neighbouring pixels. How much that changes the decisions is measured per model
(:mod:`crackscope.inspect.agreement`), not assumed.

Pure functions over numpy arrays, like :mod:`.tiling`.

Example:
    >>> grid = dense_grid(480, 640, 224, overlap=0.25)
    >>> grid.stride, sorted({int(x) for x in grid.boxes[:, 0]})
    (160, [0, 160, 320, 416])
"""

from __future__ import annotations

import cv2
import numpy as np

from crackscope.inspect.tiling import TileGrid, grid_positions, tile_coverage

MOSAIC_ROWS, MOSAIC_COLUMNS = 2, 4  # tiles per mosaic (:func:`mosaics`): one call of the dense graph
MOSAIC_TILES = MOSAIC_ROWS * MOSAIC_COLUMNS
STRIDE = 32  # the stride of every backbone crackscope exports: frames and tile origins align to 32 px


def cell_stride(size: int, overlap: float, cell: int = STRIDE) -> int:
    """Grid stride for a tile side and overlap share: ``size * (1 - overlap)`` rounded down to whole ``cell``."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size % cell:
        raise ValueError(f"tile side {size} is not a multiple of the backbone's {cell} px stride")
    return max(cell, int(size * (1.0 - overlap) + 1e-9) // cell * cell)


def padded_side(length: int, size: int, cell: int = STRIDE) -> int:
    """A frame side padded up to a multiple of ``cell``, and to at least one tile."""
    return max(size, -(-length // cell) * cell)


def dense_grid(height: int, width: int, size: int, overlap: float = 0.25, cell: int = STRIDE) -> TileGrid:
    """The tile grid of the dense path: origins on multiples of ``cell`` (the backbone's stride), over the frame
    padded to whole multiples of it.

    ``height`` and ``width`` of the result are the padded frame's; ``frame_shape`` is the frame's own, so
    :func:`~crackscope.inspect.tiling.stitch` and :func:`~crackscope.inspect.tiling.tile_coverage` cut the padding
    off as for a tiled frame.
    """
    stride = cell_stride(size, overlap, cell)
    padded_h, padded_w = padded_side(height, size, cell), padded_side(width, size, cell)
    rows, columns = grid_positions(padded_h, size, stride), grid_positions(padded_w, size, stride)
    boxes = np.array([(x, y, size, size) for y in rows for x in columns], dtype=np.int64).reshape(-1, 4)
    return TileGrid(padded_h, padded_w, size, stride, boxes, (height, width))


def tile_logits(cam: np.ndarray, bias: float, boxes: np.ndarray, cell: int) -> np.ndarray:
    """``bias + sum of the CAM cells under each box`` (float32 ``[N]``), by an integral image of the CAM.

    ``cam`` is ``[h, w]`` on the frame's grid of ``cell`` px CAM cells; ``boxes`` are ``(x, y, w, h)`` in
    padded-frame pixels, all on whole cells. The sums run in float64, so a tile of thousands of cells loses nothing
    to rounding.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if np.any(boxes % cell):
        raise ValueError(f"tile boxes must lie on the {cell} px cell grid")
    cells = boxes // cell
    if np.any(cells[:, 1] + cells[:, 3] > cam.shape[0]) or np.any(cells[:, 0] + cells[:, 2] > cam.shape[1]):
        raise ValueError(f"a tile reaches beyond the CAM's {cam.shape[0]} x {cam.shape[1]} cells")
    integral = np.zeros((cam.shape[0] + 1, cam.shape[1] + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(cam.astype(np.float64), axis=0), axis=1)
    x0, y0 = cells[:, 0], cells[:, 1]
    x1, y1 = x0 + cells[:, 2], y0 + cells[:, 3]
    sums = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (float(bias) + sums).astype(np.float32)


def dense_heat(cam: np.ndarray, grid: TileGrid, indices: np.ndarray | None = None) -> np.ndarray:
    """The frame's heatmap from its CAM: ReLU, bilinear upsampling to the padded frame, cut to the frame.

    On the same scale as the tiled heatmap (:func:`~crackscope.inspect.tiling.stitch` of upsampled tile CAMs):
    each cell holds the same logit contribution, and a cell's value lands on the same pixels. Pass the frame's
    :func:`~crackscope.inspect.tiling.scaled_grid` for a heatmap that many times coarser than the frame. Pixels
    outside the tiles ``indices`` (when given: the inspected ones) are 0, as in a stitched heatmap.
    """
    positive = np.maximum(cam, 0.0).astype(np.float32, copy=False)
    heat = cv2.resize(positive, (grid.width, grid.height), interpolation=cv2.INTER_LINEAR)
    height, width = grid.frame_shape
    heat = heat[:height, :width]
    if indices is not None and len(indices) < len(grid):
        heat = np.where(tile_coverage(grid, indices), heat, np.float32(0.0))
    return np.ascontiguousarray(heat)


def mosaics(tiles: np.ndarray, rows: int = MOSAIC_ROWS, columns: int = MOSAIC_COLUMNS) -> np.ndarray:
    """``tiles`` ``[N, S, S, 3]`` laid out as frames of ``rows x columns`` tiles, row by row: ``[ceil(N / k), rows * S,
    columns * S, 3]`` with ``k = rows * columns``.

    The last frame is filled up with the first tiles again, so every tile is in a frame and :func:`mosaic_boxes`
    of the first ``N`` positions are the tiles in order. This is how the dense graph is quantised and verified on
    tiles: it sees frame-sized inputs, and each tile sits on its own whole CAM cells (0% overlap, origins on the
    32 px grid), so its dense logit is comparable tile by tile.
    """
    if rows < 1 or columns < 1:
        raise ValueError(f"a mosaic needs at least one row and one column, got {rows} x {columns}")
    if len(tiles) == 0:
        raise ValueError("no tiles to lay out")
    per = rows * columns
    count = -(-len(tiles) // per)
    filled = np.resize(tiles, (count * per, *tiles.shape[1:]))  # repeats the first tiles at the end
    grid = filled.reshape(count, rows, columns, *tiles.shape[1:])
    return np.ascontiguousarray(grid.transpose(0, 1, 3, 2, 4, 5).reshape(count, rows * tiles.shape[1], -1, 3))


def mosaic_boxes(size: int, rows: int = MOSAIC_ROWS, columns: int = MOSAIC_COLUMNS) -> np.ndarray:
    """The ``(x, y, w, h)`` box of each tile position of a :func:`mosaics` frame, row by row."""
    return np.array([(c * size, r * size, size, size) for r in range(rows) for c in range(columns)], np.int64)
