"""How a frame's tiles are cut into model calls and spread over a model's sessions (pipeline.batch_bounds)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from crackscope.inspect.model import OnnxModel
from crackscope.inspect.pipeline import InspectConfig, batch_bounds, inspect_frames, run_model


@pytest.mark.parametrize(
    ("count", "max_batch", "workers", "sizes"),
    [
        (110, 32, 1, [32, 32, 32, 14]),  # one session: full batches and a remainder, as always
        (110, 32, 2, [27, 28, 27, 28]),  # two sessions: 55 tiles each instead of 64 and 46
        (64, 32, 2, [32, 32]),
        (33, 32, 2, [16, 17]),
        (100, 32, 3, [16, 17, 17, 16, 17, 17]),  # 4 calls are needed; 6 share evenly among 3 sessions
        (5, 32, 4, [1, 1, 1, 2]),
        (1, 32, 4, [1]),
        (0, 32, 2, []),
    ],
)
def test_calls_are_at_most_max_batch_and_shared_evenly_among_sessions(count, max_batch, workers, sizes):
    bounds = batch_bounds(count, max_batch, workers)
    assert [stop - start for start, stop in bounds] == sizes
    assert all(first[1] == second[0] for first, second in itertools.pairwise(bounds))
    assert not bounds or (bounds[0][0], bounds[-1][1]) == (0, count)


def test_two_sessions_score_a_frame_exactly_as_one_does(brightness_model):
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (200, 260, 3), np.uint8)
    frame[40:120, 60:200] = 250  # a bright (DEFECT) patch among noise
    config = InspectConfig(overlap=0.25, max_batch=8)
    with OnnxModel(brightness_model, providers="cpu") as one:
        [expected] = inspect_frames(one, [frame], config)
        tiles = np.stack([frame[:32, :32]] * 21)
        logits_one, cams_one = run_model(one, tiles, 8)
    with OnnxModel(brightness_model, providers="cpu", workers=2, intra_op_threads=1) as two:
        [got] = inspect_frames(two, [frame], config)
        logits_two, cams_two = run_model(two, tiles, 8)
    assert [(t.index, t.logit, t.verdict) for t in got.tiles] == [(t.index, t.logit, t.verdict) for t in expected.tiles]
    assert got.verdict == expected.verdict and got.regions == expected.regions
    np.testing.assert_array_equal(got.heatmap, expected.heatmap)
    np.testing.assert_array_equal(logits_two, logits_one)
    np.testing.assert_array_equal(cams_two, cams_one)
