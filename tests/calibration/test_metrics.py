"""ECE and the factory's rates, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

from crackscope.calibration.metrics import expected_calibration_error, reliability, verdict_rates
from crackscope.inspect.card import Calibration


def _sklearn_ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    from sklearn.calibration import calibration_curve

    share, mean_p = calibration_curve(labels, probabilities, n_bins=bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], probabilities, side="right"), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts * np.abs(share - mean_p)) / len(labels))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_one_computed_from_sklearn_calibration_curve(seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.beta(0.5, 0.5, 5_000)
    labels = (rng.random(5_000) < probabilities**2).astype(int)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(_sklearn_ece(probabilities, labels))


def test_ece_is_near_zero_for_calibrated_scores_and_large_for_distorted_ones():
    rng = np.random.default_rng(3)
    probabilities = rng.random(200_000)
    labels = (rng.random(200_000) < probabilities).astype(int)
    assert expected_calibration_error(probabilities, labels) < 0.005
    assert expected_calibration_error(probabilities**3, labels) > 0.15


def test_reliability_puts_a_probability_of_one_in_the_last_bin_and_counts_every_item():
    rel = reliability(np.array([0.0, 0.5, 1.0, 1.0]), np.array([0, 1, 1, 1]))
    assert rel.counts.sum() == 4 and rel.counts[-1] == 2 and rel.counts[0] == 1 and rel.counts[7] == 1


@pytest.mark.parametrize(
    ("probabilities", "labels", "band", "escape", "false_reject", "review"),
    [
        ([0.1, 0.4, 0.6, 0.95], [1, 1, 1, 1], (0.5, 0.5), 0.5, None, 0.0),
        ([0.1, 0.4, 0.6, 0.95], [0, 0, 0, 0], (0.5, 0.5), None, 0.5, 0.0),
        ([0.1, 0.4, 0.6, 0.95], [1, 0, 1, 0], (0.3, 0.9), 0.5, 0.5, 0.5),
        ([0.3, 0.9, 0.2999], [1, 0, 1], (0.3, 0.9), 0.5, 1.0, 1 / 3),  # ok_below is exclusive, DEFECT inclusive
    ],
)
def test_escape_false_reject_and_review_rates_follow_the_runtime_verdicts(
    probabilities, labels, band, escape, false_reject, review
):
    rates = verdict_rates(np.array(probabilities), np.array(labels), Calibration(1.0, *band, method="test"))
    assert rates.escape_rate == escape and rates.false_reject_rate == false_reject
    assert rates.review_rate == pytest.approx(review)
