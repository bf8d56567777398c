"""Calibrated probabilities and verdicts: the one place a score becomes a decision."""

from __future__ import annotations

import numpy as np
import pytest

from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import (
    Verdict,
    describe_calibration,
    is_identity,
    probability,
    verdict,
    verdicts,
    worst,
)

BAND = Calibration(temperature=2.0, ok_below=0.2, defect_at_or_above=0.8, method="test")


@pytest.mark.parametrize(
    ("logit", "temperature", "expected"),
    [(0.0, 1.0, 0.5), (2.0, 1.0, 0.8807970779778823), (2.0, 2.0, 0.7310585786300049), (-4.0, 2.0, 0.11920292202211755)],
)
def test_probability_is_the_sigmoid_of_the_tempered_logit(logit, temperature, expected):
    assert float(probability(logit, Calibration(temperature=temperature))) == pytest.approx(expected, rel=1e-12)


def test_probability_does_not_overflow_for_extreme_logits():
    with np.errstate(over="raise"):
        probs = probability(np.array([-1e4, 1e4]), Calibration())
    assert probs.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("prob", "expected"),
    [(0.0, Verdict.OK), (0.1999, Verdict.OK), (0.2, Verdict.REVIEW), (0.7999, Verdict.REVIEW), (0.8, Verdict.DEFECT)],
)
def test_verdict_bands_are_half_open_at_both_thresholds(prob, expected):
    assert verdict(prob, BAND) is expected


def test_identity_calibration_has_no_review_band():
    assert verdicts(np.array([0.4999, 0.5]), Calibration()) == [Verdict.OK, Verdict.DEFECT]
    assert is_identity(Calibration()) and not is_identity(BAND)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], Verdict.OK),
        ([Verdict.OK, Verdict.OK], Verdict.OK),
        ([Verdict.OK, Verdict.REVIEW], Verdict.REVIEW),
        ([Verdict.REVIEW, Verdict.DEFECT, Verdict.OK], Verdict.DEFECT),
    ],
)
def test_the_worst_tile_decides_the_frame(items, expected):
    assert worst(items) is expected


def test_the_start_of_run_line_names_the_thresholds_or_says_uncalibrated():
    assert describe_calibration(Calibration()).startswith("not calibrated")
    calibrated = Calibration(ok_below=0.2, defect_at_or_above=0.8, method="LTT", targets={"escape_rate": 0.01})
    line = describe_calibration(calibrated)
    assert "OK below 0.2000, DEFECT at or above 0.8000" in line and "escape_rate 0.01" in line
