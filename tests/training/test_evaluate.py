"""Evaluation metrics are typed: clear and ambiguous items apart, and metrics.json keeps its documented keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from crackscope.training.data import Clarity, Sample
from crackscope.training.evaluate import AmbiguousReport, BinaryMetrics, Metrics, Predictions, metrics_for


def _predictions(items: list[tuple[float, Clarity, float]]) -> Predictions:
    """(target, clarity, probability) per item -> Predictions (logits from the probabilities)."""
    samples = tuple(Sample(Path(f"{i}.png"), t, c, f"{i}.png") for i, (t, c, _) in enumerate(items))
    probabilities = np.array([p for _, _, p in items])
    return Predictions(samples, np.log(probabilities / (1 - probabilities)))


CLEAR, AMBIGUOUS = Clarity.CLEAR, Clarity.AMBIGUOUS
# Clear items: 2 ok (one called crack), 3 crack (one called ok) -> tn 1, fp 1, fn 1, tp 2.
ITEMS = [
    (0.0, CLEAR, 0.1),
    (0.0, CLEAR, 0.7),
    (1.0, CLEAR, 0.9),
    (1.0, CLEAR, 0.8),
    (1.0, CLEAR, 0.3),
    (0.5, AMBIGUOUS, 0.5),  # an even split: no majority
    (0.75, AMBIGUOUS, 0.6),  # 3 of 4 say crack, and the model agrees
    (0.25, AMBIGUOUS, 0.9),  # 1 of 4 says crack, the model calls it crack
]


def test_clear_items_are_scored_by_hand_countable_metrics():
    clear = metrics_for(_predictions(ITEMS)).clear
    assert clear.n == 5 and clear.confusion_matrix == ((1, 1), (1, 2))
    assert clear.accuracy == pytest.approx(3 / 5)
    assert clear.precision == pytest.approx(2 / 3) and clear.recall == pytest.approx(2 / 3)
    assert clear.f1 == pytest.approx(2 / 3)
    # Ranking: of the 6 (crack, ok) pairs the crack scores higher in 5 (0.9 and 0.8 beat both oks; 0.3 beats 0.1).
    assert clear.roc_auc == pytest.approx(5 / 6)


def test_ambiguous_items_are_reported_apart_with_their_majority_vote():
    ambiguous = metrics_for(_predictions(ITEMS)).ambiguous
    assert ambiguous.n == 3
    assert ambiguous.mean_probability == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert ambiguous.share_predicted_crack == pytest.approx(1.0)
    assert ambiguous.share_between_0_2_and_0_8 == pytest.approx(2 / 3)
    assert ambiguous.brier_vs_soft_target == pytest.approx((0 + 0.15**2 + 0.65**2) / 3)
    assert ambiguous.majority_vote is not None
    assert ambiguous.majority_vote.n == 2 and ambiguous.majority_vote.confusion_matrix == ((0, 1), (0, 1))


def test_a_set_without_ambiguous_items_or_without_one_class_has_none_where_a_score_needs_both():
    metrics = metrics_for(_predictions([(1.0, CLEAR, 0.9), (1.0, CLEAR, 0.2)]))
    assert metrics.ambiguous == AmbiguousReport()
    assert metrics.clear.roc_auc is None and metrics.clear.average_precision is None
    assert metrics.clear.accuracy == pytest.approx(0.5)


def test_metrics_json_keeps_the_documented_layout():
    written = json.loads(json.dumps(metrics_for(_predictions(ITEMS)).to_dict()))
    documented = ["accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "confusion_matrix"]
    for key in documented:
        assert key in written and written[key] == written["clear"][key]
    assert written["confusion_matrix"] == [[1, 1], [1, 2]] and written["n"] == 5
    ambiguous = written["ambiguous"]
    assert ambiguous["n"] == 3 and ambiguous["confusion_matrix"] == [[0, 1], [0, 1]]  # majority-vote metrics
    assert {"mean_probability", "share_between_0_2_and_0_8", "brier_vs_soft_target"} <= set(ambiguous)
    assert metrics_for(_predictions(ITEMS[:5])).to_dict()["ambiguous"] == {"n": 0}


def test_metrics_are_frozen():
    metrics = metrics_for(_predictions(ITEMS))
    assert isinstance(metrics, Metrics) and isinstance(metrics.clear, BinaryMetrics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.clear.accuracy = 1.0  # type: ignore[misc]
