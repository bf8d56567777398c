"""Evaluation metrics are typed: clear and ambiguous items apart, and metrics.json keeps its documented keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from crackscope.inspect.parts import PartScoring
from crackscope.labelled import Clarity, Sample
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


# --- whole images from their patches ---------------------------------------------------------------------------------


def _grouped(images: dict[str, list[tuple[float, Clarity, float]]]) -> Predictions:
    """{image: [(target, clarity, probability) per patch]} -> Predictions whose samples are grouped by image."""
    items = [(image, *patch) for image, patches in images.items() for patch in patches]
    samples = tuple(
        Sample(Path(image), t, c, image, (i * 128, 0, 128, 128)) for i, (image, t, c, _) in enumerate(items)
    )
    probabilities = np.array([p for *_, p in items])
    return Predictions(samples, np.log(probabilities / (1 - probabilities)))


CRACK, OK = (1.0, CLEAR), (0.0, CLEAR)
# Part scores by hand (max | top-2, top-3 and top-5 alike here | noisy-OR 1 - prod(1 - p)):
#   A crack [0.5 x 6]        0.5  | 0.5   | 1 - 0.5^6 = 0.984375
#   B crack [0.9, 0.05]      0.9  | 0.475 | 1 - 0.1 * 0.95 = 0.905
#   F crack [0.5 amb, 0.95]  0.95 | 0.725 | 1 - 0.5 * 0.05 = 0.975   (a clear crack patch makes a crack image)
#   C ok    [0.6, 0.6]       0.6  | 0.6   | 0.84
#   D ok    [0.1]            0.1  | 0.1   | 0.1
#   E       [0.7 amb, 0.2]   ambiguous patch, no clear crack: counted, not scored
# max ranks F B C A D: AP = 1/3 + 1/3 + 1/3 * 3/4 = 11/12, ROC-AUC 5/6 (only A < C is misordered);
# top-k ranks F C A B D: AP = 1/3 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36, ROC-AUC 4/6; noisy-OR puts every crack first: AP 1.
IMAGES = {
    "A.png": [(*CRACK, 0.5)] + [(*OK, 0.5)] * 5,
    "B.png": [(*CRACK, 0.9), (*OK, 0.05)],
    "F.png": [(0.5, AMBIGUOUS, 0.5), (*CRACK, 0.95)],
    "C.png": [(*OK, 0.6), (*OK, 0.6)],
    "D.png": [(*OK, 0.1)],
    "E.png": [(0.5, AMBIGUOUS, 0.7), (*OK, 0.2)],
}
EXPECTED_AP = {"max": 11 / 12, "top2": 29 / 36, "top3": 29 / 36, "top5": 29 / 36, "noisy_or": 1.0}


def test_images_are_labelled_from_their_patches_and_the_ambiguous_ones_are_only_counted():
    image_level = metrics_for(_grouped(IMAGES)).image_level
    assert image_level is not None
    assert (image_level.crack, image_level.ok, image_level.ambiguous) == (3, 2, 1)
    assert image_level.metrics.n == 5


def test_every_candidate_scoring_gets_image_level_metrics_and_the_best_average_precision_is_chosen():
    image_level = metrics_for(_grouped(IMAGES)).image_level
    ap = {scoring.label: metrics.average_precision for scoring, metrics in image_level.candidates}
    assert ap == pytest.approx(EXPECTED_AP, rel=1e-12)
    auc = {scoring.label: metrics.roc_auc for scoring, metrics in image_level.candidates}
    assert auc == pytest.approx({"max": 5 / 6, "top2": 4 / 6, "top3": 4 / 6, "top5": 4 / 6, "noisy_or": 1.0})
    assert image_level.scoring == PartScoring("noisy_or") and image_level.metrics.average_precision == 1.0
    # At 0.5, noisy-OR calls every crack image a crack and the ok image C (0.84) one too; D (0.1) ok.
    assert image_level.metrics.confusion_matrix == ((1, 1), (0, 3))


def test_a_given_scoring_is_used_as_it_is_and_recorded_with_where_it_came_from():
    image_level = metrics_for(_grouped(IMAGES), PartScoring("max"), "the checkpoint's").image_level
    assert image_level.scoring == PartScoring("max") and image_level.chosen_by == "the checkpoint's"
    assert image_level.metrics.average_precision == pytest.approx(11 / 12)
    assert image_level.metrics.roc_auc == pytest.approx(5 / 6)


def test_metrics_json_gets_image_level_metrics_and_the_part_scoring_beside_the_patch_level():
    written = json.loads(json.dumps(metrics_for(_grouped(IMAGES)).to_dict()))
    assert written["n"] == 13 and written["clear"]["n"] == 13  # the patch level is unchanged
    assert written["part_scoring"] == {"method": "noisy_or", "k": 3}
    image_level = written["image_level"]
    assert image_level["images"] == {"crack": 3, "ok": 2, "ambiguous": 1} and image_level["n"] == 5
    assert image_level["scoring"]["label"] == "noisy_or" and image_level["average_precision"] == 1.0
    assert {k: v["average_precision"] for k, v in image_level["candidates"].items()} == pytest.approx(EXPECTED_AP)


def test_with_one_item_per_image_the_image_level_equals_the_patch_level_and_is_left_out():
    metrics = metrics_for(_predictions(ITEMS))
    assert metrics.image_level is None
    assert "image_level" not in metrics.to_dict() and "part_scoring" not in metrics.to_dict()
    assert metrics.describe_parts().startswith("image level: same as patch level")


def test_the_image_level_line_names_the_scoring_and_each_candidates_average_precision():
    line = metrics_for(_grouped(IMAGES)).describe_parts()
    assert line.startswith("image level (3 crack, 2 ok, 1 ambiguous not scored): noisy_or scoring (best image-level")
    assert "AP 1.0000" in line and "max 0.9167, top2 0.8056" in line
