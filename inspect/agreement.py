"""How far dense whole-frame inference agrees with tiled inference, measured on frames (the dense mode's gate).

The dense graph's tile logits are exact sums of its CAM, but the CAM itself is not the tiled one: a tile's
convolutions see zero padding at the tile's edges where the dense pass sees the neighbouring pixels, and with a
receptive field as large as a tile that reaches every cell, not only the border ones. So the agreement is measured,
per model, on frames: every frame is cut on the dense grid (:func:`~crackscope.inspect.dense.dense_grid`, tile
origins on the 32 px cell grid), the very same tiles go through the tile model, and the dense graph runs once on the
padded frame. Reported:

- **decision agreement**: share of tiles whose logit is on the same side of 0 in both (the parity gate's decision;
  calibration is fitted later and moves the threshold for both alike). Dense mode runs only on a model whose
  recorded agreement is at least :data:`~crackscope.inspect.model.DENSE_MIN_AGREEMENT` (99%) unless forced;
- **heatmap correlation**: Pearson correlation of the two frame heatmaps (the stitched tile CAMs and the dense CAM,
  both ReLU'd and upsampled as the runtime does), averaged over frames;
- the logit differences, in all tiles and in tiles away from the frame's edge (no pixel of reflect padding).

This module is torch-free: export calls it with the file it has just written, the frames benchmark with saved
models.

Example:
    >>> with OnnxModel("model.onnx") as tiles, DenseModel("model.dense.onnx") as dense:      # doctest: +SKIP
    ...     print(measure_agreement(tiles, dense, frames, source="deepcrack").describe())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from crackscope.inspect.dense import dense_grid, dense_heat, tile_logits
from crackscope.inspect.model import DENSE_MIN_AGREEMENT, DenseModel, OnnxModel
from crackscope.inspect.pipeline import run_model
from crackscope.inspect.tiling import cut_tiles, heat_factor, pad_to_grid, scaled_grid, stitch, to_bgr8, upsample_cams


@dataclass(frozen=True)
class DenseAgreement:
    """Dense against tiled inference on the same tiles of the same frames."""

    frames: int
    tiles: int
    overlap: float  # asked; the dense grid's stride is rounded down to whole cells
    decision_agreement: float  # share of tiles with the same side of logit 0
    heatmap_correlation: float  # mean over frames of the Pearson correlation of the two heatmaps
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    interior_tiles: int  # tiles with no pixel of the frame's reflect padding
    interior_max_abs_logit_diff: float
    tiled_positive: float  # share of tiles at logit >= 0, tiled
    dense_positive: float  # and dense
    min_agreement: float = DENSE_MIN_AGREEMENT
    source: str = ""

    @property
    def passed(self) -> bool:
        return self.decision_agreement >= self.min_agreement

    def summary(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        return (
            f"dense vs tiled on {self.tiles} tiles of {self.frames} frames ({self.source}): decisions agree "
            f"{self.decision_agreement:.2%} (gate {self.min_agreement:.0%}: "
            f"{'passed' if self.passed else 'NOT passed'}), "
            f"heatmap correlation {self.heatmap_correlation:.3f}, |logit diff| mean {self.mean_abs_logit_diff:.3f} "
            f"max {self.max_abs_logit_diff:.3f}, crack share {self.tiled_positive:.1%} tiled / "
            f"{self.dense_positive:.1%} dense"
        )


@dataclass(frozen=True)
class FrameComparison:
    """One frame through both paths: tile logits ``[N]`` on the dense grid, and both heatmaps (coarse)."""

    tiled_logits: np.ndarray
    dense_logits: np.ndarray
    interior: np.ndarray  # bool [N]: tiles inside the frame's own pixels
    tiled_heat: np.ndarray
    dense_heat: np.ndarray


def compare_frame(tile_model: OnnxModel, dense_model: DenseModel, frame: np.ndarray, overlap: float) -> FrameComparison:
    """Run one frame through both paths on the same dense grid (see the module docstring)."""
    frame = to_bgr8(frame)
    height, width = frame.shape[:2]
    size = tile_model.input_size
    if dense_model.input_size != size:
        raise ValueError(f"{dense_model.path} scores {dense_model.input_size} px tiles, {tile_model.path} {size} px")
    grid = dense_grid(height, width, size, overlap, dense_model.stride)
    padded = np.ascontiguousarray(pad_to_grid(frame, grid))
    tiled_logits, cams = run_model(tile_model, cut_tiles(padded, grid), max_batch=32)
    output = dense_model.predict(padded)
    dense_logits = tile_logits(output.cam, output.bias, grid.boxes, dense_model.cell)
    small = scaled_grid(grid, heat_factor(size))
    boxes = grid.boxes
    interior = (boxes[:, 0] + boxes[:, 2] <= width) & (boxes[:, 1] + boxes[:, 3] <= height)
    return FrameComparison(
        tiled_logits,
        dense_logits,
        interior,
        stitch(upsample_cams(cams, small.size), small),
        dense_heat(output.cam, small),
    )


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays; 1.0 when both are constant and equal, 0.0 when only one is constant."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    if denominator == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float((a * b).sum() / denominator)


def measure_agreement(
    tile_model: OnnxModel,
    dense_model: DenseModel,
    frames: Sequence[np.ndarray],
    *,
    overlap: float = 0.25,
    source: str = "",
    min_agreement: float = DENSE_MIN_AGREEMENT,
) -> DenseAgreement:
    """Decision agreement, heatmap correlation and logit differences of dense vs tiled inference on ``frames``."""
    if not frames:
        raise ValueError("measuring dense agreement needs at least one frame")
    compared = [compare_frame(tile_model, dense_model, frame, overlap) for frame in frames]
    tiled = np.concatenate([c.tiled_logits for c in compared]).astype(np.float64)
    dense = np.concatenate([c.dense_logits for c in compared]).astype(np.float64)
    interior = np.concatenate([c.interior for c in compared])
    difference = np.abs(tiled - dense)
    return DenseAgreement(
        frames=len(compared),
        tiles=len(tiled),
        overlap=overlap,
        decision_agreement=float(((tiled >= 0) == (dense >= 0)).mean()),
        heatmap_correlation=float(np.mean([correlation(c.tiled_heat, c.dense_heat) for c in compared])),
        max_abs_logit_diff=float(difference.max()),
        mean_abs_logit_diff=float(difference.mean()),
        interior_tiles=int(interior.sum()),
        interior_max_abs_logit_diff=float(difference[interior].max()) if interior.any() else 0.0,
        tiled_positive=float((tiled >= 0).mean()),
        dense_positive=float((dense >= 0).mean()),
        min_agreement=min_agreement,
        source=source,
    )
