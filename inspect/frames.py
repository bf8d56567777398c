"""What the model said about a frame: tiles, defect regions and the frame's verdict, as plain typed values.

These types sit at the bottom of ``inspect/``: the pipeline builds them, and the records, the stores, the overlay
and the review app read them, without importing the pipeline or ONNX Runtime. A :class:`Region` is also what an
:class:`~crackscope.inspect.results.InspectionResult` stores, with its JSON form (:meth:`Region.to_json`) the one
``results.jsonl`` and ``results.sqlite`` have always held.

Example:
    >>> region = Region.from_json({"box": [20, 10, 40, 30], "score": 0.97, "peak": 1.5, "verdict": "DEFECT"})
    >>> region.box, region.verdict.value, region.to_json()["box"]
    ((20, 10, 40, 30), 'DEFECT', [20, 10, 40, 30])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from crackscope.inspect.decision import Verdict


@dataclass(frozen=True)
class TileResult:
    """One inspected tile: where it is (frame pixels, ``x, y, w, h``), its logit, probability and verdict."""

    index: int
    box: tuple[int, int, int, int]
    logit: float
    probability: float
    verdict: Verdict


@dataclass(frozen=True)
class Region:
    """A defect region: a box around heat inside DEFECT/REVIEW tiles, scored by the worst tile under it."""

    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    score: float  # highest calibrated probability of the flagged tiles it touches
    peak: float  # highest heat inside the region (logit contribution per CAM cell)
    verdict: Verdict

    def to_json(self) -> dict:
        """``{"box": [x, y, w, h], "score": p, "peak": heat, "verdict": v}``, keys in the order records store."""
        return {"box": list(self.box), "score": self.score, "peak": self.peak, "verdict": self.verdict.value}

    @classmethod
    def from_json(cls, data: Mapping) -> Region:
        x, y, w, h = (int(v) for v in data["box"])
        return cls((x, y, w, h), float(data["score"]), float(data["peak"]), Verdict(data["verdict"]))


@dataclass(frozen=True)
class FrameInspection:
    """Everything the model said about one frame."""

    verdict: Verdict  # the calibrated thresholds applied to ``score``
    score: float  # the frame's crack probability: part_score of its tiles' (the highest, under max scoring)
    tiles: tuple[TileResult, ...]
    regions: tuple[Region, ...]
    heatmap: np.ndarray = field(repr=False)  # float32 [H, W], ReLU'd CAM blended across tiles
    shape: tuple[int, int] = (0, 0)
    tiles_total: int = 0  # tiles in the grid, inspected or skipped (ROI, flat background)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prepare, model, decide
    reason: str | None = None  # why a REVIEW frame is one (decision.review_reason); None for other verdicts

    @property
    def tiles_skipped(self) -> int:
        return self.tiles_total - len(self.tiles)
