"""Which captured frames are worth inspecting: all of them, one per interval, or only those where something moved.

An idle line shows the same picture over and over; inspecting it again decides nothing new and fills the store.
The motion gate compares a small grey thumbnail of each frame with the last frame that *was* inspected, so a part
that arrives is inspected once, and a line that stands still is not inspected at all until something changes.

Example:
    >>> import numpy as np
    >>> a, b = np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 40, np.uint8)
    >>> motion_score(thumbnail(a), thumbnail(b))
    40.0
    >>> gate = FrameGate(TriggerConfig(mode="motion", motion_threshold=4.0))
    >>> [gate.admit(image, t) for image, t in ((a, 0.0), (a, 0.1), (b, 0.2))]
    [None, 'motion', None]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from crackscope.inspect.tiling import to_bgr8

THUMBNAIL_WIDTH = 64


@dataclass(frozen=True)
class TriggerConfig:
    """When a captured frame is inspected.

    Attributes:
        mode: ``none`` (every frame the source delivers), ``interval`` (at most one frame per ``interval_s`` of
            capture time), or ``motion`` (only when the frame differs from the last inspected one).
        interval_s: shortest capture-time gap between two inspected frames (``interval``).
        motion_threshold: mean absolute grey-level difference (0-255) of the 64-px-wide thumbnails at or above which
            a frame counts as changed (``motion``). Pixel noise of sigma 3 grey levels on a still scene scores below 1.
    """

    mode: Literal["none", "interval", "motion"] = "none"
    interval_s: float = 1.0
    motion_threshold: float = 4.0

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.motion_threshold < 0:
            raise ValueError(f"trigger interval_s and motion_threshold must be >= 0, got {self}")


def thumbnail(image: np.ndarray, width: int = THUMBNAIL_WIDTH) -> np.ndarray:
    """A small, slightly blurred float32 grey copy of a frame: cheap to compare, deaf to pixel noise."""
    grey = cv2.cvtColor(to_bgr8(image), cv2.COLOR_BGR2GRAY)
    height = max(1, round(grey.shape[0] * width / grey.shape[1]))
    small = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(small.astype(np.float32), (3, 3), 0)


def motion_score(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (infinite when their shapes differ: the camera changed)."""
    if previous.shape != current.shape:
        return float("inf")
    return float(np.mean(np.abs(current - previous)))


class FrameGate:
    """Applies a :class:`TriggerConfig` to a stream of frames (it remembers the last inspected frame)."""

    def __init__(self, config: TriggerConfig) -> None:
        self.config = config
        self._last_time: float | None = None
        self._last_thumbnail: np.ndarray | None = None

    def admit(self, image: np.ndarray, capture_time: float) -> str | None:
        """None when the frame should be inspected, else why it is skipped (``"interval"`` or ``"motion"``)."""
        mode = self.config.mode
        if mode == "interval":
            if self._last_time is not None and capture_time - self._last_time < self.config.interval_s:
                return "interval"
            self._last_time = capture_time
        elif mode == "motion":
            small = thumbnail(image)
            if (
                self._last_thumbnail is not None
                and motion_score(self._last_thumbnail, small) < self.config.motion_threshold
            ):
                return "motion"
            self._last_thumbnail = small
        return None
