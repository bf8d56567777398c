"""Pictures for people: the heatmap in colour, and the overlay (frame + heat + region boxes + verdict).

Pure rendering, no file I/O. The heatmap is shown relative to its own peak (a person needs to see *where*, the
score says *how sure*); on an OK frame the heat is drawn fainter so a glance at a gallery finds the flagged parts.

Example:
    >>> import numpy as np
    >>> colour_heatmap(np.zeros((4, 6), np.float32)).shape
    (4, 6, 3)
"""

from __future__ import annotations

import cv2
import numpy as np

from crackscope.inspect.decision import Verdict
from crackscope.inspect.frames import FrameInspection
from crackscope.inspect.tiling import to_bgr8

VERDICT_COLOURS = {  # BGR
    Verdict.OK: (80, 175, 76),
    Verdict.REVIEW: (0, 165, 255),
    Verdict.DEFECT: (40, 40, 230),
    Verdict.ERROR: (128, 128, 128),
}


def normalised_heat(heatmap: np.ndarray) -> np.ndarray:
    """Heat in [0, 1] relative to the map's peak (all zeros stays zeros)."""
    peak = float(heatmap.max()) if heatmap.size else 0.0
    return heatmap / peak if peak > 0 else np.zeros_like(heatmap)


def colour_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """uint8 BGR ``[H, W, 3]``: the heatmap through OpenCV's JET colour map (blue = cold, red = hot)."""
    scaled = (normalised_heat(heatmap) * 255.0 + 0.5).astype(np.uint8)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_JET)


def render_overlay(frame: np.ndarray, inspection: FrameInspection) -> np.ndarray:
    """The frame with its heatmap blended in, region boxes and a verdict banner (uint8 BGR, frame-sized)."""
    base = to_bgr8(frame)
    heat = normalised_heat(inspection.heatmap)
    strength = 0.55 if inspection.verdict in (Verdict.DEFECT, Verdict.REVIEW) else 0.25
    alpha = (heat * strength).astype(np.float32)
    # blendLinear is OpenCV's per-pixel weighted sum (vectorised, threaded): a 5 MP frame in a few ms.
    blended = cv2.blendLinear(base, colour_heatmap(inspection.heatmap), 1.0 - alpha, alpha)
    thickness = max(2, round(max(base.shape[:2]) / 400))
    for region in inspection.regions:
        x, y, w, h = region.box
        cv2.rectangle(blended, (x, y), (x + w - 1, y + h - 1), VERDICT_COLOURS[region.verdict], thickness)
    _banner(blended, f"{inspection.verdict.value} {inspection.score:.3f}", VERDICT_COLOURS[inspection.verdict])
    return blended


def _banner(image: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    scale = max(0.5, image.shape[1] / 900)
    thickness = max(1, round(scale * 2))
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(4, round(6 * scale))
    cv2.rectangle(image, (0, 0), (tw + 2 * pad, th + baseline + 2 * pad), colour, -1)
    cv2.putText(image, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
