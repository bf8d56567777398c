"""Evaluation metrics are typed: clear and ambiguous items apart, and metrics.json keeps its documented keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from crackscope.training.data import Clarity, Sample
from crackscope.training.evaluate import (
    AmbiguousReport,
    BinaryMetrics,
    Metrics,
    Predictions,
    metrics_by_source,
    metrics_for,
)


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


# --- several sources ------------------------------------------------------------------------------------------------


def _sourced(items: list[tuple[str, float, Clarity, float]]) -> Predictions:
    """(source, target, clarity, probability) per item -> Predictions."""
    samples = tuple(Sample(Path(f"{i}.png"), t, c, f"{src}/{i}", None, src) for i, (src, t, c, _) in enumerate(items))
    probabilities = np.array([p for *_, p in items])
    return Predictions(samples, np.log(probabilities / (1 - probabilities)))


# a: ok 0.1, ok 0.7 (called crack), crack 0.9 -> tn 1, fp 1, tp 1; the crack outscores both oks.
# b: crack 0.8, crack 0.3 (called ok), ok 0.2, and one ambiguous item -> tp 1, fn 1, tn 1; both cracks beat the ok.
# Pooled, the b crack at 0.3 ranks below a's ok at 0.7: 8 of 9 (crack, ok) pairs are in order, not 9.
MIXED = [
    ("a", 0.0, CLEAR, 0.1),
    ("b", 1.0, CLEAR, 0.8),
    ("a", 0.0, CLEAR, 0.7),
    ("b", 1.0, CLEAR, 0.3),
    ("a", 1.0, CLEAR, 0.9),
    ("b", 0.0, CLEAR, 0.2),
    ("b", 0.5, AMBIGUOUS, 0.4),
]


def test_metrics_by_source_scores_each_source_on_its_own_items():
    by_source = metrics_by_source(_sourced(MIXED))
    assert list(by_source) == ["a", "b"]
    a, b = by_source["a"].clear, by_source["b"].clear
    assert a.n == 3 and a.confusion_matrix == ((1, 1), (0, 1))
    assert a.accuracy == pytest.approx(2 / 3) and a.precision == pytest.approx(1 / 2) and a.recall == 1.0
    assert b.n == 3 and b.confusion_matrix == ((1, 0), (1, 1))
    assert b.accuracy == pytest.approx(2 / 3) and b.precision == 1.0 and b.recall == pytest.approx(1 / 2)
    assert a.roc_auc == 1.0 and b.roc_auc == 1.0
    assert by_source["a"].ambiguous.n == 0
    assert by_source["b"].ambiguous.n == 1 and by_source["b"].ambiguous.mean_probability == pytest.approx(0.4)


def test_pooled_metrics_of_several_sources_carry_the_per_source_ones():
    metrics = metrics_for(_sourced(MIXED))
    assert metrics.clear.n == 6 and metrics.clear.roc_auc == pytest.approx(8 / 9)
    assert list(metrics.per_source) == ["a", "b"] and metrics.per_source["a"].clear.roc_auc == 1.0
    assert all(not m.per_source for m in metrics.per_source.values())


def test_metrics_json_has_per_source_only_when_the_set_mixes_sources():
    written = json.loads(json.dumps(metrics_for(_sourced(MIXED)).to_dict()))
    assert set(written["per_source"]) == {"a", "b"}
    assert written["per_source"]["b"]["confusion_matrix"] == [[1, 0], [1, 1]]
    assert written["per_source"]["b"]["ambiguous"]["n"] == 1 and "per_source" not in written["per_source"]["b"]
    one_source = [("a", t, c, p) for _, t, c, p in MIXED]
    assert "per_source" not in metrics_for(_sourced(one_source)).to_dict()
    assert "per_source" not in metrics_for(_predictions(ITEMS)).to_dict()
