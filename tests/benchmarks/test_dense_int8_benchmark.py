"""benchmarks/dense_int8.py: each box of the 0%-overlap dense grid over a mosaic is exactly one of its tiles."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import dense_int8

from crackscope.inspect.dense import dense_grid


def test_the_dense_grid_over_a_mosaic_cuts_out_its_tiles_in_order():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (14, 64, 64, 3), dtype=np.uint8)
    frames = dense_int8.mosaics(tiles, rows=2, columns=3)
    assert frames.shape == (2, 128, 192, 3)  # 14 tiles make two whole mosaics; the last two are dropped
    grid = dense_grid(128, 192, 64, 0.0, 32)
    assert len(grid.boxes) == 6
    cut = [frame[y : y + h, x : x + w] for frame in frames for x, y, w, h in grid.boxes]
    for index, tile in enumerate(cut):
        np.testing.assert_array_equal(tile, tiles[index])
