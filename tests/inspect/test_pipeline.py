"""Frames through a real exported model: verdicts, stitched heatmaps and regions on synthetic cracks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crackscope.inspect.decision import Verdict
from crackscope.inspect.model import OnnxModel
from crackscope.inspect.pipeline import InspectConfig, inspect_frames
from crackscope.training.synthetic import make_frame

pytestmark = pytest.mark.slow

CRACKED_SEEDS = (100, 101, 102, 103, 104, 105)
CLEAN_SEEDS = (200, 201, 202, 203)


def _frames(seeds, n_cracks):
    return [make_frame(384, 544, np.random.default_rng(seed), n_cracks=n_cracks) for seed in seeds]


@pytest.fixture(scope="module")
def model(line_model):
    with OnnxModel(line_model.fp32, providers="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def cracked(model):
    frames = _frames(CRACKED_SEEDS, 1)
    return frames, inspect_frames(model, [f for f, _ in frames], InspectConfig(overlap=0.25))


def _near_crack(mask: np.ndarray, model: OnnxModel) -> np.ndarray:
    """The crack widened by one CAM cell: the heatmap's resolution (a 96-px tile has a 3 x 3 CAM of 32-px cells)."""
    cell = model.input_size // model.card.feature_size
    return cv2.dilate(mask, np.ones((2 * cell + 1, 2 * cell + 1), np.uint8)) > 0


def test_cracked_frames_are_defects_with_regions_on_the_crack(cracked, model):
    frames, results = cracked
    defects = [r for r in results if r.verdict is Verdict.DEFECT]
    assert len(defects) >= len(frames) - 1
    on_crack = total = 0
    for (_, mask), result in zip(frames, results, strict=True):
        near = _near_crack(mask, model)
        for region in result.regions:
            x, y, w, h = region.box
            total += 1
            on_crack += bool(near[y : y + h, x : x + w].any())
        assert result.heatmap.shape == mask.shape
    assert total >= len(defects) and on_crack / total >= 0.8


def test_the_stitched_heatmap_peaks_on_the_crack(cracked, model):
    frames, results = cracked
    hits = 0
    for (_, mask), result in zip(frames, results, strict=True):
        near = _near_crack(mask, model)
        peak = np.unravel_index(int(result.heatmap.argmax()), result.heatmap.shape)
        hits += bool(near[peak])
    assert hits >= len(frames) - 1


def test_crack_free_frames_are_ok_without_regions(model):
    results = inspect_frames(model, [f for f, _ in _frames(CLEAN_SEEDS, 0)], InspectConfig())
    assert [r.verdict for r in results] == [Verdict.OK] * len(CLEAN_SEEDS)
    assert all(r.regions == () and r.score < 0.5 for r in results)


def test_frames_inspected_together_get_the_same_results_as_alone(model, cracked):
    frames, together = cracked
    for (frame, _), joint in zip(frames[:2], together[:2], strict=True):
        [alone] = inspect_frames(model, [frame], InspectConfig(overlap=0.25, max_batch=5))
        assert alone.verdict is joint.verdict
        alone_probs, joint_probs = [t.probability for t in alone.tiles], [t.probability for t in joint.tiles]
        np.testing.assert_allclose(alone_probs, joint_probs, atol=1e-5)
        np.testing.assert_allclose(alone.heatmap, joint.heatmap, atol=1e-4)


def test_grey_sixteen_bit_and_small_frames_are_inspected(model):
    frame, _ = make_frame(200, 260, np.random.default_rng(7), n_cracks=1)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    deep = grey.astype(np.uint16) * 257
    small = frame[:50, :70]
    results = inspect_frames(model, [grey, deep, small], InspectConfig())
    assert results[0].verdict is results[1].verdict
    np.testing.assert_allclose(results[0].score, results[1].score, atol=1e-3)
    assert results[2].shape == (50, 70) and results[2].heatmap.shape == (50, 70) and len(results[2].tiles) == 1


def test_roi_limits_which_tiles_are_inspected(model):
    frame, _ = make_frame(384, 544, np.random.default_rng(9), n_cracks=1)
    roi = ((0, 0), (200, 0), (200, 150), (0, 150))
    [full] = inspect_frames(model, [frame], InspectConfig(overlap=0.0))
    [part] = inspect_frames(model, [frame], InspectConfig(overlap=0.0, roi=roi))
    assert part.tiles_total == full.tiles_total and 0 < len(part.tiles) < len(full.tiles)
    assert all(t.box[0] < 200 and t.box[1] < 150 for t in part.tiles)
    assert part.heatmap[300:, 400:].max() == 0.0


def test_the_int8_model_reaches_the_same_frame_verdicts(line_model, cracked):
    frames, fp32 = cracked
    with OnnxModel(line_model.int8, providers="cpu") as int8:
        results = inspect_frames(int8, [f for f, _ in frames], InspectConfig(overlap=0.25))
    assert sum(a.verdict is b.verdict for a, b in zip(results, fp32, strict=True)) >= len(frames) - 1
