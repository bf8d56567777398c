"""The trigger: every frame, one per interval, or only frames that changed since the last inspected one."""

from __future__ import annotations

import numpy as np
import pytest

from crackscope.inspect.trigger import FrameGate, TriggerConfig, motion_score, thumbnail
from crackscope.training.synthetic import make_frame

SCENE_A = make_frame(120, 160, 1, n_cracks=0)[0]
SCENE_B = make_frame(120, 160, 2, n_cracks=1)[0]


def _noisy(image: np.ndarray, seed: int, sigma: float = 3.0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_sensor_noise_on_a_still_scene_scores_far_below_the_default_threshold():
    still = motion_score(thumbnail(_noisy(SCENE_A, 1)), thumbnail(_noisy(SCENE_A, 2)))
    moved = motion_score(thumbnail(SCENE_A), thumbnail(SCENE_B))
    assert still < 1.0 < TriggerConfig().motion_threshold < moved


def test_a_change_of_frame_size_always_counts_as_motion():
    assert motion_score(thumbnail(SCENE_A), thumbnail(SCENE_A[:60])) == float("inf")


def test_motion_gate_skips_identical_frames_and_compares_with_the_last_inspected_one():
    gate = FrameGate(TriggerConfig(mode="motion"))
    sequence = [SCENE_A, _noisy(SCENE_A, 1), SCENE_A, SCENE_B, SCENE_B, _noisy(SCENE_B, 2), SCENE_A]
    decisions = [gate.admit(image, float(t)) for t, image in enumerate(sequence)]
    assert decisions == [None, "motion", "motion", None, "motion", "motion", None]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0.0, 0.4, 0.9, 1.0, 1.5, 2.2], [None, "interval", "interval", None, "interval", None]),
        ([5.0, 5.0, 7.0], [None, "interval", None]),
    ],
)
def test_interval_trigger_inspects_at_most_one_frame_per_interval_of_capture_time(times, expected):
    gate = FrameGate(TriggerConfig(mode="interval", interval_s=1.0))
    assert [gate.admit(SCENE_A, t) for t in times] == expected


def test_without_a_trigger_every_frame_is_admitted():
    gate = FrameGate(TriggerConfig())
    assert [gate.admit(SCENE_A, 0.0) for _ in range(3)] == [None, None, None]
