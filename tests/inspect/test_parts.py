"""Part scores from tile probabilities, and the choice of a scoring by image-level average precision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crackscope.inspect.parts import (
    CANDIDATES,
    MAX,
    PartScoring,
    average_precision,
    choose_part_scoring,
    part_score,
    roc_auc,
)

TOP2, TOP3, TOP5, NOISY_OR = (
    PartScoring("topk", 2),
    PartScoring("topk", 3),
    PartScoring("topk", 5),
    PartScoring("noisy_or"),
)


@pytest.mark.parametrize(
    ("tiles", "scoring", "expected"),
    [
        ([0.2, 0.9, 0.5], MAX, 0.9),
        ([0.2, 0.9, 0.5], TOP2, (0.9 + 0.5) / 2),
        ([0.2, 0.9, 0.5], TOP3, (0.2 + 0.9 + 0.5) / 3),
        ([0.2, 0.9, 0.5], TOP5, (0.2 + 0.9 + 0.5) / 3),  # fewer tiles than k: the mean of all
        ([0.2, 0.9, 0.5], NOISY_OR, 1 - 0.8 * 0.1 * 0.5),
        ([0.5, 0.5], NOISY_OR, 0.75),
        ([0.5] * 4, TOP2, 0.5),
        ([0.1, 0.7, 0.3, 0.6, 0.2, 0.4], TOP5, (0.7 + 0.6 + 0.4 + 0.3 + 0.2) / 5),
        ([1.0, 0.2], NOISY_OR, 1.0),
        ([0.0, 0.0], NOISY_OR, 0.0),
    ],
)
def test_part_score_matches_hand_worked_values(tiles, scoring, expected):
    assert part_score(tiles, scoring) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("scoring", CANDIDATES)
def test_one_tile_scores_its_own_probability_and_no_tile_scores_zero_under_every_method(scoring):
    assert part_score([0.37], scoring) == pytest.approx(0.37, rel=1e-12)
    assert part_score([], scoring) == 0.0


def test_noisy_or_keeps_tiny_probabilities_that_one_minus_a_product_would_round_away():
    # 1 - (1 - 1e-20)^3 is 3e-20, but 1 - 1e-20 rounds to 1.0 in float64, so the naive product gives exactly 0.
    assert 1 - np.prod(1 - np.full(3, 1e-20)) == 0.0
    assert part_score([1e-20] * 3, NOISY_OR) == pytest.approx(3e-20, rel=1e-9)


def test_noisy_or_of_many_small_tiles_is_one_minus_exp_of_their_summed_log():
    # 10 000 tiles of 1e-6: 1 - (1 - 1e-6)^10000 = 1 - exp(10000 log(1 - 1e-6)) ~ 1 - exp(-0.01) = 0.0099501663
    assert part_score(np.full(10_000, 1e-6), NOISY_OR) == pytest.approx(-math.expm1(-0.01), rel=1e-6)


@pytest.mark.parametrize("tiles", [[0.5, 1.2], [-0.1], [float("nan")]])
def test_probabilities_outside_zero_to_one_are_refused(tiles):
    with pytest.raises(ValueError, match=r"tile probabilities must lie in \[0, 1\]"):
        part_score(tiles, MAX)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "mean"}, "must be one of max, topk, noisy_or, got 'mean'"),
        ({"method": "topk", "k": 0}, "k must be an integer of at least 1, got 0"),
        ({"method": "topk", "k": "3"}, "k must be an integer of at least 1, got '3'"),
        ({"method": "max", "kk": 3}, "unknown key"),
        (["max"], "expected a mapping"),
    ],
)
def test_a_stored_scoring_that_cannot_be_one_is_a_one_line_error_naming_where(values, message):
    with pytest.raises(ValueError, match=message) as error:
        PartScoring.from_dict(values, "model.onnx part_scoring")
    assert str(error.value).startswith("model.onnx part_scoring: ") and "\n" not in str(error.value)


def test_scorings_have_short_labels_and_round_trip_through_their_stored_form():
    assert [c.label for c in CANDIDATES] == ["max", "top2", "top3", "top5", "noisy_or"]
    assert all(PartScoring.from_dict(c.to_dict()) == c for c in CANDIDATES)
    assert PartScoring.from_dict({}) == MAX


# Four validation parts, worked by hand (see each candidate's scores in the comments):
#   A crack [0.5 x 6]   max/top-k 0.5   noisy-OR 1 - 0.5^6 = 0.984375
#   B crack [0.9]       0.9 under every method
#   C ok    [0.6, 0.6]  max/top-k 0.6   noisy-OR 1 - 0.4^2 = 0.84
#   D ok    [0.1]       0.1 under every method
# Max and top-k rank B > C > A > D: precision 1 at recall 1/2, then 2/3 at recall 1, so AP = 1/2 + 1/2 * 2/3 = 5/6;
# of the four (crack, ok) pairs only (A, C) is misordered, so ROC-AUC = 3/4. Noisy-OR ranks A > B > C > D: AP 1.
LUKEWARM_CRACK = [([0.5] * 6, 1), ([0.9], 1), ([0.6, 0.6], 0), ([0.1], 0)]


def test_the_candidate_with_the_best_average_precision_is_chosen_and_every_candidate_is_in_the_table():
    chosen, table = choose_part_scoring(LUKEWARM_CRACK)
    assert chosen == NOISY_OR
    assert [row.scoring for row in table] == list(CANDIDATES)
    expected = {"max": (5 / 6, 3 / 4), "top2": (5 / 6, 3 / 4), "top3": (5 / 6, 3 / 4), "top5": (5 / 6, 3 / 4)}
    expected["noisy_or"] = (1.0, 1.0)
    for row in table:
        assert (row.average_precision, row.roc_auc) == pytest.approx(expected[row.scoring.label], rel=1e-12)


def test_a_tie_goes_to_the_simplest_candidate_max():
    clear_cut = [([0.9, 0.8], 1), ([0.7], 1), ([0.1, 0.2], 0), ([0.3], 0)]  # every candidate ranks both cracks first
    chosen, table = choose_part_scoring(clear_cut)
    assert chosen == MAX and all(row.average_precision == pytest.approx(1.0) for row in table)


def test_a_tie_between_other_candidates_goes_to_the_one_listed_first():
    separable = [([0.9, 0.8], 1), ([0.1, 0.2], 0)]
    assert choose_part_scoring(separable, candidates=(TOP5, TOP2))[0] == TOP5
    assert choose_part_scoring(separable, candidates=(TOP2, TOP5))[0] == TOP2


def test_with_one_class_absent_nothing_can_be_ranked_and_max_is_kept():
    chosen, table = choose_part_scoring([([0.9], 1), ([0.4, 0.2], 1)])
    assert chosen == MAX and all(row.average_precision is None and row.roc_auc is None for row in table)
    assert choose_part_scoring([])[0] == MAX


def test_part_labels_must_be_zero_or_one():
    with pytest.raises(ValueError, match=r"part labels must be 0 \(ok\) or 1 \(crack\), got 0.5"):
        choose_part_scoring([([0.9], 0.5)])


@pytest.mark.parametrize(
    ("labels", "scores", "ap", "auc"),
    [
        # Ranked 0.8 (crack), 0.6 (ok), 0.4 (crack), 0.2 (ok): AP = 1/2 * 1 + 1/2 * 2/3; pairs in order 3 of 4.
        ([1, 0, 1, 0], [0.8, 0.6, 0.4, 0.2], 5 / 6, 3 / 4),
        # A tie between a crack and an ok at the top is one step: precision 1/2 at recall 1/2, then 2/3 at 1.
        ([1, 0, 1, 0], [0.9, 0.9, 0.5, 0.1], 1 / 2 * 1 / 2 + 1 / 2 * 2 / 3, (1 + 0.5 + 1 + 0) / 4),
        ([0, 1], [0.9, 0.1], 1 / 2, 0.0),  # the crack last: precision 1/2 when it is finally found
    ],
)
def test_average_precision_and_roc_auc_match_hand_counts(labels, scores, ap, auc):
    assert average_precision(np.array(labels), np.array(scores)) == pytest.approx(ap, rel=1e-12)
    assert roc_auc(np.array(labels), np.array(scores)) == pytest.approx(auc, rel=1e-12)


def test_average_precision_and_roc_auc_agree_with_scikit_learn_on_random_tied_scores():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = np.r_[0, 1, rng.integers(0, 2, 40)]
        scores = rng.integers(0, 8, len(labels)) / 7  # coarse scores: many ties
        assert average_precision(labels, scores) == pytest.approx(metrics.average_precision_score(labels, scores))
        assert roc_auc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores))
