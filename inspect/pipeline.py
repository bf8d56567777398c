"""Frames in, decisions out: tiling -> model -> calibrated verdicts -> stitched heatmap -> defect regions.

No I/O here: a frame is a numpy array, the result is a :class:`FrameInspection` (arrays included). Sources, sinks,
batch runs and the daemon build on :func:`inspect_frames`; they add file names, hashes, storage and timing.

Several frames can be inspected together: their tiles share model batches, so a folder of small patches (one tile
each) runs at the model's batch throughput instead of one tile per call.

In dense mode (``InspectConfig(mode="dense")``, with the dense graph that :func:`~crackscope.inspect.model.open_model`
opens) each frame is one pass of the dense graph, its tiles' logits are summed from the frame's CAM
(:mod:`crackscope.inspect.dense`), and the same :func:`conclude` turns them into the same :class:`FrameInspection`,
so sinks, overlays and reports do not know which mode ran.

Example:
    >>> from crackscope.inspect.model import OnnxModel, open_model
    >>> with OnnxModel("model.onnx") as model:                                # doctest: +SKIP
    ...     [result] = inspect_frames(model, [frame], InspectConfig(overlap=0.25))
    ...     print(result.verdict, result.score, [r.box for r in result.regions])
    >>> with open_model("model.onnx", "dense") as dense:                     # doctest: +SKIP
    ...     [result] = inspect_frames(dense, [frame], InspectConfig(mode="dense"))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import Verdict, probability, review_reason, verdict
from crackscope.inspect.dense import dense_grid, dense_heat, tile_logits
from crackscope.inspect.frames import FrameInspection, Region, TileResult  # still importable from here
from crackscope.inspect.model import DENSE_MIN_AGREEMENT, DenseModel, OnnxModel, RuntimeModel
from crackscope.inspect.parts import DEFAULT_K, MAX, PartScoring, part_score
from crackscope.inspect.tiling import (
    TileGrid,
    cut_tiles,
    heat_factor,
    pad_to_grid,
    polygon_mask,
    scaled_grid,
    stitch,
    tile_coverage,
    tile_grid,
    tiles_to_inspect,
    to_bgr8,
    upsample_cams,
)


@dataclass(frozen=True)
class InspectConfig:
    """How frames are cut and decided (everything else, input size and calibration, comes from the model).

    Attributes:
        overlap: share of a tile shared with its neighbour, in [0, 1).
        max_batch: most tiles per model call.
        roi: polygon of ``(x, y)`` frame pixels; tiles entirely outside it are not inspected.
        skip_uniform_std: skip tiles whose grey-level standard deviation is below this (flat background).
        region_threshold: a heatmap pixel belongs to a region when its heat is at least this share of the
            frame's peak heat inside DEFECT/REVIEW tiles.
        min_region_area: smaller connected components (pixels) are not reported.
        part_scoring: how a frame's score comes from its tiles' probabilities (``max``, ``topk``, ``noisy_or``);
            ``None`` (the default) uses the model card's, which training chose on validation images.
        part_k: ``k`` of ``topk`` (default 3); only with ``part_scoring: topk``.
        mode: ``tiled`` (each tile through the tile model) or ``dense`` (one pass of the dense graph over the whole
            frame, tile logits summed from its CAM on a 32 px-aligned grid; see :mod:`crackscope.inspect.dense`).
        force_dense: run dense mode even on a dense graph whose recorded agreement with tiled inference is below
            the gate (99% of tile decisions), or was never measured.
    """

    overlap: float = 0.25
    max_batch: int = 32
    roi: tuple[tuple[float, float], ...] | None = None
    skip_uniform_std: float | None = None
    region_threshold: float = 0.5
    min_region_area: int = 16
    part_scoring: Literal["max", "topk", "noisy_or"] | None = None
    part_k: int | None = None
    mode: Literal["tiled", "dense"] = "tiled"
    force_dense: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if not 0.0 < self.region_threshold <= 1.0:
            raise ValueError(f"region_threshold must be in (0, 1], got {self.region_threshold}")
        if self.part_k is not None and self.part_scoring != "topk":
            raise ValueError(f"part_k applies only to part_scoring topk, got part_scoring {self.part_scoring}")
        self.scoring(MAX)  # raises for an unknown method or a k below 1
        if self.mode not in ("tiled", "dense"):
            raise ValueError(f"mode must be tiled or dense, got {self.mode!r}")
        if self.force_dense and self.mode != "dense":
            raise ValueError("force_dense applies only to mode dense")

    def scoring(self, card_scoring: PartScoring) -> PartScoring:
        """The part scoring in force: this config's override, else the model card's."""
        if self.part_scoring is None:
            return card_scoring
        return PartScoring(self.part_scoring, DEFAULT_K if self.part_k is None else self.part_k)

    def describe_scoring(self, card_scoring: PartScoring) -> str:
        """One line for the start of a run: how frames are scored, and whether the model card or a setting says so."""
        scoring = self.scoring(card_scoring)
        if self.part_scoring is None:
            return f"frame score: {scoring.describe()}, from the model card"
        return f"frame score: {scoring.describe()}, set by part_scoring (the model card says {card_scoring.label})"


@dataclass(frozen=True)
class _Prepared:
    frame: np.ndarray
    grid: TileGrid
    keep: np.ndarray
    tiles: np.ndarray


def _prepare(frame: np.ndarray, size: int, config: InspectConfig) -> _Prepared:
    frame = to_bgr8(frame)
    height, width = frame.shape[:2]
    grid = tile_grid(height, width, size, config.overlap)
    padded = pad_to_grid(frame, grid)
    roi = polygon_mask(height, width, config.roi) if config.roi else None
    keep = tiles_to_inspect(padded, grid, roi=roi, min_std=config.skip_uniform_std)
    return _Prepared(frame, grid, keep, cut_tiles(padded, grid, keep))


def batch_bounds(count: int, max_batch: int, workers: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of the model calls for ``count`` tiles: at most ``max_batch`` tiles each.

    With one session: full batches and a remainder. With several, the calls are made a multiple of ``workers``
    and near-equal in size, so that every session gets the same share of a frame (110 tiles in batches of 32 on
    two sessions: 27, 28, 27, 28 instead of 32, 32, 32, 14, which would keep one session busy 64 tiles and the
    other 46).
    """
    if count <= 0:
        return []
    if workers <= 1:
        return [(start, min(start + max_batch, count)) for start in range(0, count, max_batch)]
    calls = -(-count // max_batch)
    calls = min(count, -(-calls // workers) * workers)
    edges = [count * k // calls for k in range(calls + 1)]
    return list(itertools.pairwise(edges))


def run_model(model: OnnxModel, tiles: np.ndarray, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N]`` and CAMs ``[N, h, w]`` for any number of tiles, in model calls of at most ``max_batch``,
    spread over the model's sessions (see :func:`batch_bounds`)."""
    if len(tiles) == 0:
        side = model.card.feature_size
        return np.zeros(0, np.float32), np.zeros((0, side, side), np.float32)
    bounds = batch_bounds(len(tiles), max_batch, model.layout.workers)
    outputs = model.predict_batches([tiles[start:stop] for start, stop in bounds])
    return np.concatenate([o.logits for o in outputs]), np.concatenate([o.cams for o in outputs])


def inspect_frames(model: RuntimeModel, frames: Sequence[np.ndarray], config: InspectConfig) -> list[FrameInspection]:
    """Inspect frames (any size, grey/colour/16-bit) with one model.

    Tiled mode: tiles of all frames share model batches. Dense mode (``config.mode``, with the
    :class:`~crackscope.inspect.model.DenseModel` that :func:`~crackscope.inspect.model.open_model` opens): one pass
    of the dense graph per frame, tile logits summed from its CAM; the result is the same :class:`FrameInspection`.
    """
    if config.mode == "dense":
        if not isinstance(model, DenseModel):
            raise TypeError(f"dense mode needs the dense graph (open_model(path, 'dense')), got {model!r}")
        return [_inspect_dense(model, frame, config) for frame in frames]
    if isinstance(model, DenseModel):
        raise TypeError(f"{model.path} is a dense graph: it runs with mode dense, not tiled")
    return _inspect_tiled(model, frames, config)


def _inspect_tiled(model: OnnxModel, frames: Sequence[np.ndarray], config: InspectConfig) -> list[FrameInspection]:
    started = time.perf_counter()
    prepared = [_prepare(frame, model.input_size, config) for frame in frames]
    tiles = np.concatenate([p.tiles for p in prepared]) if prepared else np.zeros((0,), np.uint8)
    prepare_seconds = time.perf_counter() - started
    started = time.perf_counter()
    logits, cams = run_model(model, tiles, config.max_batch)
    model_seconds = time.perf_counter() - started
    results, offset = [], 0
    total_tiles = max(1, len(tiles))
    scoring = config.scoring(model.card.part_scoring)
    for item in prepared:
        count = len(item.tiles)
        share = count / total_tiles if len(tiles) else 1 / len(prepared)
        started = time.perf_counter()
        result = decide(
            item,
            logits[offset : offset + count],
            cams[offset : offset + count],
            model.card.calibration,
            config,
            scoring,
        )
        timings = {
            "prepare": prepare_seconds / len(prepared),
            "model": model_seconds * share,
            "decide": time.perf_counter() - started,
        }
        results.append(replace(result, timings=timings))
        offset += count
    return results


@dataclass(frozen=True)
class _DensePrepared:
    frame: np.ndarray
    grid: TileGrid  # on the padded frame, origins on the CAM cell grid
    keep: np.ndarray
    padded: np.ndarray  # the frame reflect-padded to whole cells (and at least one tile)


def _prepare_dense(frame: np.ndarray, size: int, stride: int, config: InspectConfig) -> _DensePrepared:
    frame = to_bgr8(frame)
    height, width = frame.shape[:2]
    grid = dense_grid(height, width, size, config.overlap, stride)
    padded = np.ascontiguousarray(pad_to_grid(frame, grid))
    roi = polygon_mask(height, width, config.roi) if config.roi else None
    keep = tiles_to_inspect(padded, grid, roi=roi, min_std=config.skip_uniform_std)
    return _DensePrepared(frame, grid, keep, padded)


def _inspect_dense(model: DenseModel, frame: np.ndarray, config: InspectConfig) -> FrameInspection:
    """One frame through the dense graph: its CAM, each kept tile's logit summed from it, then :func:`conclude`."""
    started = time.perf_counter()
    item = _prepare_dense(frame, model.input_size, model.stride, config)
    prepared = time.perf_counter()
    output = model.predict(item.padded)
    modelled = time.perf_counter()
    indices = np.flatnonzero(item.keep)
    logits = tile_logits(output.cam, output.bias, item.grid.boxes[indices], model.cell)
    factor = heat_factor(item.grid.size)
    small = scaled_grid(item.grid, factor)
    heat = Heat(dense_heat(output.cam, small, indices), factor, small.size // model.card.feature_size)
    scoring = config.scoring(model.card.part_scoring)
    result = conclude(item.frame.shape[:2], item.grid, indices, logits, heat, model.card.calibration, config, scoring)
    timings = {"prepare": prepared - started, "model": modelled - prepared, "decide": time.perf_counter() - modelled}
    return replace(result, timings=timings)


@dataclass(frozen=True)
class Heat:
    """A frame's heatmap before it is brought to the frame's size: ``factor`` times coarser than the frame."""

    coarse: np.ndarray  # float32, ReLU'd CAM on the frame's (scaled) pixels
    factor: int
    cell: int  # one CAM cell, in coarse pixels


def decide(
    item: _Prepared,
    logits: np.ndarray,
    cams: np.ndarray,
    calibration: Calibration,
    config: InspectConfig,
    scoring: PartScoring = MAX,
) -> FrameInspection:
    """Tile verdicts, the frame verdict, the stitched heatmap and the defect regions of one prepared frame.

    The tile CAMs are upsampled and stitched into the frame's heatmap; the rest is :func:`conclude`.
    """
    indices = np.flatnonzero(item.keep)
    factor = heat_factor(item.grid.size)
    small = scaled_grid(item.grid, factor)
    coarse = stitch(upsample_cams(cams, small.size), small, indices)
    cell = small.size // cams.shape[-1] if cams.ndim == 3 and cams.shape[-1] else 1  # one CAM cell, coarse pixels
    heat = Heat(coarse, factor, cell)
    return conclude(item.frame.shape[:2], item.grid, indices, logits, heat, calibration, config, scoring)


def conclude(
    shape: tuple[int, int],
    grid: TileGrid,
    indices: np.ndarray,
    logits: np.ndarray,
    heat: Heat,
    calibration: Calibration,
    config: InspectConfig,
    scoring: PartScoring = MAX,
) -> FrameInspection:
    """From the logits of the inspected tiles (``indices`` of ``grid``) and the heatmap to a :class:`FrameInspection`.

    Shared by the tiled and the dense path, so both decide alike. The frame's score is
    :func:`~crackscope.inspect.parts.part_score` of its tiles' calibrated probabilities, and its verdict is the
    calibrated thresholds applied to that score. Under ``max`` scoring that is the worst tile verdict, since a
    verdict only rises with the probability; a frame with no inspected tile is OK with score 0.
    """
    probs = probability(logits, calibration)
    tiles = tuple(
        TileResult(int(i), tuple(int(v) for v in grid.boxes[i]), float(lg), float(p), verdict(float(p), calibration))
        for i, lg, p in zip(indices, logits, probs, strict=True)
    )
    height, width = shape
    small = scaled_grid(grid, heat.factor)
    regions = find_regions(heat.coarse, small, tiles, config, heat.factor, (height, width), join=max(1, heat.cell // 2))
    heatmap = (
        cv2.resize(heat.coarse, (width, height), interpolation=cv2.INTER_LINEAR) if heat.factor > 1 else heat.coarse
    )
    score = part_score(probs, scoring)
    frame_verdict = verdict(score, calibration) if tiles else Verdict.OK
    reason = review_reason(score, probs, calibration) if frame_verdict is Verdict.REVIEW else None
    return FrameInspection(frame_verdict, score, tiles, regions, heatmap, (height, width), len(grid), reason=reason)


def describe_mode(model: RuntimeModel, config: InspectConfig) -> str:
    """One line for the start of a run: tiled or dense, the tile grid, and for dense the agreement in force."""
    size = model.input_size
    if not isinstance(model, DenseModel):
        return f"tiled mode: {size} px tiles at {config.overlap:.0%} overlap, {model.path.name} on every tile"
    stride = dense_grid(size, size, size, config.overlap, model.stride).stride
    agreement = model.agreement.get("decision_agreement")
    measured = (
        f"its tile decisions agreed with tiled inference on {agreement:.2%} of {model.agreement.get('tiles')} tiles "
        f"at export"
        if isinstance(agreement, (int, float))
        else "no agreement with tiled inference recorded"
    )
    forced = config.force_dense and not (isinstance(agreement, (int, float)) and agreement >= DENSE_MIN_AGREEMENT)
    return (
        f"dense mode: one pass of {model.path.name} per frame, {size} px tiles on the {model.stride} px grid "
        f"({model.cell} px heatmap cells) at "
        f"{1 - stride / size:.0%} overlap (asked {config.overlap:.0%}); {measured} "
        f"(gate {DENSE_MIN_AGREEMENT:.0%}{', FORCED past it' if forced else ''})"
    )


def find_regions(
    heatmap: np.ndarray,
    grid: TileGrid,
    tiles: Sequence[TileResult],
    config: InspectConfig,
    factor: int = 1,
    frame_shape: tuple[int, int] | None = None,
    join: int = 1,
) -> tuple[Region, ...]:
    """Connected components of the thresholded heatmap inside DEFECT/REVIEW tiles, as boxes (largest score first).

    ``heatmap`` and ``grid`` may be ``factor`` times coarser than the frame (see ``heat_factor``); boxes come back
    in frame pixels, clipped to ``frame_shape``. Hot spots closer than ``join`` heatmap pixels (half a CAM cell by
    default) are one region: a crack lights up cell by cell, and a person wants one box per crack, not one per cell.
    """
    flagged = [t for t in tiles if t.verdict in (Verdict.DEFECT, Verdict.REVIEW)]
    if not flagged:
        return ()
    inside = tile_coverage(grid, np.array([t.index for t in flagged]))
    peak = float(heatmap[inside].max()) if inside.any() else 0.0
    if peak <= 0:
        return ()
    hot = ((heatmap >= config.region_threshold * peak) & inside).astype(np.uint8)
    if join > 1:
        hot = cv2.morphologyEx(hot, cv2.MORPH_CLOSE, np.ones((join, join), np.uint8)) & inside.astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(hot, connectivity=8)
    height, width = frame_shape or heatmap.shape
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area * factor * factor < config.min_region_area:
            continue
        peak_heat = float(heatmap[y : y + h, x : x + w].max())
        x, y = x * factor, y * factor
        w, h = min(w * factor, width - x), min(h * factor, height - y)
        touching = [t for t in flagged if _overlaps((x, y, w, h), t.box)]
        worst_tile = max(touching, key=lambda t: t.probability)
        regions.append(Region((x, y, w, h), worst_tile.probability, peak_heat, worst_tile.verdict))
    return tuple(sorted(regions, key=lambda r: (-r.score, -r.peak)))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
