"""From decoded inputs to records: the one step batch runs and the daemon share, with one error policy.

A batch run hands over image files it has read, the daemon frames of a camera, a video or a hot folder; both as
:class:`Input` items (source, sha256, the decoded image or why there is none, the seconds spent so far) and both get
one :class:`~crackscope.inspect.results.InspectionResult` per item back, in order, from :func:`frames_to_records`.

The error policy, the same for every kind of input:

* an input with no image (unreadable, truncated, too large, ...) is an ERROR record with the reader's reason;
* the images are inspected together (one model call per batch of tiles); if the pipeline raises, the batch is split
  and each image inspected alone, so an image the pipeline cannot take costs only its own record: an ERROR record
  "cannot inspect this image (<why>)", logged with its traceback, while its neighbours get their verdicts;
* only :class:`Exception` is caught: ``KeyboardInterrupt`` and ``SystemExit`` still end the run (both callers turn
  SIGINT and SIGTERM into a stop event instead, see :func:`~crackscope.inspect.runs.stop_on_signals`).

Saved images (frame, overlay, heatmap) are written for the verdicts the :class:`~crackscope.inspect.sinks.SavePolicy`
asks for before the record that points at them is built (:func:`~crackscope.inspect.sinks.record_inspection`).

Example:
    >>> inputs = [Input("a.png", sha256, image)]                                          # doctest: +SKIP
    >>> records = frames_to_records(model, inputs, config, folder=out, policy=policy)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crackscope.inspect.frames import FrameInspection
from crackscope.inspect.model import RuntimeModel
from crackscope.inspect.pipeline import InspectConfig, inspect_frames
from crackscope.inspect.results import InspectionResult, error_result
from crackscope.inspect.sinks import SavePolicy, record_inspection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Input:
    """One input to record: a file or a frame, decoded or not."""

    source: str  # a file path, or ``<source>#<frame index>``
    sha256: str
    image: np.ndarray | None = field(repr=False)  # None: it could not be read, and ``error`` says why
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds spent before inspection (read, queue)


def frames_to_records(
    model: RuntimeModel,
    inputs: Sequence[Input],
    config: InspectConfig,
    *,
    folder: Path,
    policy: SavePolicy,
    save_frame: bool = True,
) -> list[InspectionResult]:
    """One record per input, in order (see the module docstring for the error policy)."""
    outcomes = iter(_inspections(model, [item.image for item in inputs if item.image is not None], config))
    records = []
    for item in inputs:
        outcome = next(outcomes) if item.image is not None else (item.error or "unreadable")
        if isinstance(outcome, str):
            records.append(error_result(item.source, item.sha256, model.model_id, outcome, dict(item.timings)))
            continue
        records.append(
            record_inspection(
                folder,
                item.image,
                outcome,
                source=item.source,
                sha256=item.sha256,
                model_id=model.model_id,
                policy=policy,
                save_frame=save_frame,
                timings=dict(item.timings),
            )
        )
    return records


def _inspections(model: RuntimeModel, images: list[np.ndarray], config: InspectConfig) -> list[FrameInspection | str]:
    """The images inspected together; if that fails, one by one, each failure's reason (a string) in its place."""
    if not images:
        return []
    try:
        return list(inspect_frames(model, images, config))
    except Exception as error:  # one image must not stop the run nor spoil its neighbours; its record says why
        if len(images) == 1:
            log.warning("an image could not be inspected: %s", error, exc_info=True)
            return [f"cannot inspect this image ({error})"]
    return [outcome for image in images for outcome in _inspections(model, [image], config)]
