"""benchmarks/calibration_halves.py: each way of counting is judged on the rate it promises."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import calibration_halves


def test_a_photo_with_many_tiles_weighs_one_photo_in_the_per_photo_rate_and_its_tiles_in_the_pooled_one():
    groups = np.array(["a", "a"] + ["b"] * 8 + ["c"])
    hits = np.array([True, True] + [False] * 8 + [True])
    where = np.array([True] * 10 + [False])  # photo c is not among the tiles measured
    assert calibration_halves._pooled(hits, where) == 0.2
    assert calibration_halves._per_photo(hits, where, groups) == 0.5
