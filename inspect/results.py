"""The inspection record: one per input (file, video frame, camera frame), stored by every sink.

An :class:`InspectionResult` is what a batch run, the daemon, the report and the QA review all read. It is plain
data (no arrays): the heatmap and overlay are saved as images and referenced by path, relative to the results
folder. An input that could not be inspected still gets a record, with verdict ERROR and the reason in ``error``,
so nothing is ever silently dropped.

Example:
    >>> record = error_result("a.jpg", "0" * 64, "m" * 64, "file is empty")
    >>> record.verdict.value, record.error
    ('ERROR', 'file is empty')
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from crackscope.inspect.decision import Verdict
from crackscope.inspect.frames import FrameInspection, Region


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class InspectionResult:
    """One decision about one input, as stored in ``results.sqlite`` and ``results.jsonl``.

    Attributes:
        id: unique id of the record (hex).
        source: the input: a file path, or ``<source>#<frame index>`` for video and camera frames.
        sha256: hash of the file's bytes (files) or of the raw frame pixels (frames); with ``source`` the resume key.
        time: when the decision was made (ISO 8601, UTC).
        verdict: OK, REVIEW, DEFECT, or ERROR when the input could not be inspected.
        score: the calibrated crack probability of the frame (its worst tile), at full float64 precision so that
            scores near 1 stay ordered; None for ERROR.
        model_id: sha256 of the ONNX file that decided.
        width, height: frame size in pixels (0 for ERROR).
        regions: defect regions (:class:`~crackscope.inspect.frames.Region`: box, score, peak heat, verdict),
            stored as ``{"box": [x, y, w, h], "score": p, "peak": heat, "verdict": v}`` each.
        tiles: inspected tiles, ``[x, y, w, h, probability]`` each (for per-tile scores in the review page).
        tiles_skipped: grid tiles not inspected (outside the ROI, flat background).
        image_path, overlay_path, heatmap_path: saved images, relative to the results folder (None when not saved).
        timings: seconds per stage (read, prepare, model, decide, save).
        error: why the input could not be inspected (ERROR only).
        reason: why the frame is REVIEW, in words (:func:`~crackscope.inspect.decision.review_reason`: in the
            ambiguity band, tiles disagree, or tiles add up); None for other verdicts and for records written before
            schema version 2.
        line, station: the production line and the station (camera, machine) that wrote the record, as its run
            was told (``--line``, ``--station``); None when not told, and for records written before schema
            version 3. A plant store holds the records of many lines; the review filters by line.
        fail_safe: the verdict the line was given instead of this one, because this one was not ready by the
            daemon's deadline (``--deadline-ms``, ``--fail-safe``); None when it was in time, without a deadline, and
            for records written before schema version 4.
    """

    id: str
    source: str
    sha256: str
    time: str
    verdict: Verdict
    score: float | None
    model_id: str
    width: int = 0
    height: int = 0
    regions: tuple[Region, ...] = ()
    tiles: tuple[tuple[int, int, int, int, float], ...] = ()
    tiles_skipped: int = 0
    image_path: str | None = None
    overlay_path: str | None = None
    heatmap_path: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None
    line: str | None = None
    station: str | None = None
    fail_safe: Verdict | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["fail_safe"] = self.fail_safe.value if self.fail_safe is not None else None
        data["regions"] = [region.to_json() for region in self.regions]
        data["tiles"] = [list(t) for t in self.tiles]
        return data

    @classmethod
    def from_json(cls, data: dict) -> InspectionResult:
        values = dict(data)
        values["verdict"] = Verdict(values["verdict"])
        values["fail_safe"] = Verdict(values["fail_safe"]) if values.get("fail_safe") else None
        values["regions"] = tuple(Region.from_json(region) for region in values.get("regions") or ())
        values["tiles"] = tuple(tuple(t) for t in values.get("tiles") or ())
        return cls(**values)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def new_id() -> str:
    return uuid.uuid4().hex


def result_from_inspection(
    inspection: FrameInspection,
    *,
    source: str,
    sha256: str,
    model_id: str,
    paths: dict[str, str | None] | None = None,
    timings: dict[str, float] | None = None,
) -> InspectionResult:
    """The record of a successful inspection."""
    height, width = inspection.shape
    regions = tuple(Region(r.box, float(r.score), round(r.peak, 6), r.verdict) for r in inspection.regions)
    tiles = tuple((*t.box, round(t.probability, 6)) for t in inspection.tiles)
    paths = paths or {}
    return InspectionResult(
        id=new_id(),
        source=source,
        sha256=sha256,
        time=utc_now(),
        verdict=inspection.verdict,
        score=float(inspection.score),
        model_id=model_id,
        width=int(width),
        height=int(height),
        regions=regions,
        tiles=tiles,
        tiles_skipped=inspection.tiles_skipped,
        image_path=paths.get("image"),
        overlay_path=paths.get("overlay"),
        heatmap_path=paths.get("heatmap"),
        timings={k: round(v, 6) for k, v in {**inspection.timings, **(timings or {})}.items()},
        reason=inspection.reason,
    )


def error_result(
    source: str, sha256: str, model_id: str, reason: str, timings: dict[str, float] | None = None
) -> InspectionResult:
    """The record of an input that could not be inspected."""
    return InspectionResult(
        id=new_id(),
        source=source,
        sha256=sha256,
        time=utc_now(),
        verdict=Verdict.ERROR,
        score=None,
        model_id=model_id,
        timings=dict(timings or {}),
        error=reason,
    )
