"""Risk-controlled thresholds: exact binomial maths, refusals, safe rounding, and the guarantee itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from crackscope.calibration.temperature import fit_temperature
from crackscope.calibration.thresholds import (
    GRID,
    InsufficientData,
    as_probabilities,
    certify,
    choose_thresholds,
    fixed_sequence,
    items_needed,
    smallest_temperature,
)
from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import Verdict, probability, verdict, verdicts


@pytest.mark.parametrize(("rate", "confidence"), [(0.01, 0.9), (0.001, 0.95), (0.05, 0.9), (0.02, 0.99)])
def test_items_needed_for_zero_events_is_the_closed_form(rate, confidence):
    assert items_needed(rate, confidence) == math.ceil(math.log(1 - confidence) / math.log(1 - rate))


def test_230_defects_are_needed_for_one_percent_escape_at_90_percent_confidence():
    assert items_needed(0.01, 0.9) == 230
    assert 0.99**230 <= 0.1 < 0.99**229


@pytest.mark.parametrize(("rate", "confidence", "events"), [(0.01, 0.9, 3), (0.05, 0.95, 10), (0.001, 0.9, 2)])
def test_items_needed_with_events_is_the_smallest_n_whose_binomial_tail_is_within_one_minus_confidence(
    rate, confidence, events
):
    n = items_needed(rate, confidence, events)
    assert stats.binom.cdf(events, n, rate) <= 1 - confidence < stats.binom.cdf(events, n - 1, rate)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [([0, 0, 1, 5, 0], 3), ([9, 0, 0], 0), ([0, 0, 0], 3), ([0, 1, 2, 3], 2)],
)
def test_fixed_sequence_testing_stops_at_the_first_hypothesis_it_cannot_reject(counts, expected):
    # n = 100 at 5% and delta 0.1: P(Bin(100, .05) <= 2) = 0.118 > 0.1 >= P(<= 1) = 0.037, so up to 1 event passes.
    assert fixed_sequence(np.array(counts), 100, 0.05, 0.1) == expected


def _scores(n_crack: int, n_ok: int, seed: int = 0, spread: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = np.concatenate([rng.normal(3, spread, n_crack), rng.normal(-3, spread, n_ok)]).astype(np.float32)
    return logits, np.repeat([1, 0], [n_crack, n_ok])


def test_too_few_defects_are_refused_with_the_count_needed():
    logits, labels = _scores(229, 300)
    with pytest.raises(InsufficientData, match=r"need at least 230 clear crack items.*have 229") as refusal:
        choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.01, false_reject_rate=0.05, confidence=0.9)
    assert (refusal.value.kind, refusal.value.needed, refusal.value.have) == ("crack", 230, 229)
    logits, labels = _scores(230, 300)
    choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.01, false_reject_rate=0.05, confidence=0.9)


def test_too_few_good_items_are_refused_with_the_count_needed():
    logits, labels = _scores(300, 40)
    with pytest.raises(InsufficientData, match=r"good items.*need at least 45 clear ok items"):
        choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.05, false_reject_rate=0.05, confidence=0.9)


def test_cracks_scoring_below_every_candidate_are_refused_rather_than_certified():
    logits, labels = _scores(300, 300)
    logits[:5] = -100.0  # five cracks the model scores as certainly good
    needed = items_needed(0.01, 0.9, events=5)
    with pytest.raises(InsufficientData, match=f"5 of 300 clear crack items.*at least {needed} clear crack"):
        choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.01, false_reject_rate=0.05, confidence=0.9)


def test_the_chosen_cuts_are_the_last_ones_the_binomial_tail_can_vouch_for():
    logits, labels = _scores(400, 400, seed=4, spread=2.5)  # overlapping classes: a REVIEW band is needed
    choice = choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.01, false_reject_rate=0.05)
    assert choice.review_band
    cracks, goods = logits[labels == 1], logits[labels == 0]
    step = GRID[1] - GRID[0]
    # The chosen escape cut passes, the next one up does not (checked with scipy's binomial tail).
    assert stats.binom.cdf(np.sum(cracks < choice.escape.cut), 400, 0.01) <= 0.1
    assert stats.binom.cdf(np.sum(cracks < choice.escape.cut + step), 400, 0.01) > 0.1
    assert stats.binom.cdf(np.sum(goods >= choice.false_reject.cut), 400, 0.05) <= 0.1
    assert stats.binom.cdf(np.sum(goods >= choice.false_reject.cut - step), 400, 0.05) > 0.1
    assert choice.escape.bound <= 0.01 and choice.false_reject.bound <= 0.05


@pytest.mark.parametrize("temperature", [0.12, 0.37, 1.0, 3.0, 50.0])
def test_runtime_verdicts_never_call_ok_above_the_escape_cut_nor_defect_below_the_reject_cut(temperature):
    logits, labels = _scores(400, 400, seed=5, spread=2.5)
    choice = choose_thresholds(logits, labels, temperature=temperature, escape_rate=0.01, false_reject_rate=0.05)
    card = Calibration(temperature, choice.ok_below, choice.defect_at_or_above, method="test")
    # Every float32 logit in a window around both cuts, through the runtime's own probability and verdict.
    sweep = np.concatenate(
        [
            cut + np.arange(-2000, 2001, dtype=np.float32) * np.spacing(np.float32(cut)) * 64
            for cut in (choice.escape.cut, choice.false_reject.cut)
        ]
    ).astype(np.float32)
    decided = np.array([v.value for v in verdicts(probability(sweep, card), card)])
    assert np.all(sweep[decided == "OK"] < choice.escape.cut)
    assert np.all(sweep[decided == "DEFECT"] >= choice.false_reject.cut)


def test_a_temperature_that_would_saturate_a_threshold_is_refused_with_the_lowest_usable_one():
    logits, labels = _scores(400, 400, seed=5, spread=2.5)
    escape, false_reject = certify(logits, labels, escape_rate=0.01, false_reject_rate=0.05)
    lowest = smallest_temperature(escape, false_reject)
    with pytest.raises(ValueError, match=f"use at least {lowest:.4g}"):
        as_probabilities(escape, false_reject, lowest * 0.5)
    choice = as_probabilities(escape, false_reject, lowest)
    assert 0.0 < choice.ok_below <= choice.defect_at_or_above < 1.0


def test_classes_the_model_separates_get_one_threshold_and_no_review_band():
    logits, labels = _scores(400, 400, seed=6, spread=0.5)
    choice = choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.01, false_reject_rate=0.05)
    assert not choice.review_band and choice.ok_below == choice.defect_at_or_above == 0.5
    card = Calibration(1.0, choice.ok_below, choice.defect_at_or_above, method="test")
    assert {verdict(float(p), card) for p in probability(logits, card)} == {Verdict.OK, Verdict.DEFECT}


def test_the_escape_rate_stays_within_target_in_at_least_the_stated_share_of_random_calibration_splits():
    """500 random calibration / test splits of one fixed score pool, the whole chain as the runtime runs it.

    Fit the temperature and thresholds on 300 + 300 items, call the other 1,700 + 1,700 with the runtime's own
    ``probability`` and ``verdicts``, and count the splits whose test escape (false-reject) rate exceeds its target.
    The guarantee says at most 1 - 0.9 = 10% of them, up to sampling error: 3 standard errors of a share out of 500
    (4%) plus the test rate's own noise. Choosing the empirical 1% quantile of the calibration cracks instead, with
    no finite-sample bound, exceeds the target in about half the splits: the check can tell the two apart.
    """
    rng = np.random.default_rng(2024)
    pool_crack = rng.normal(2.5, 2.0, 2_000).astype(np.float32)
    pool_ok = rng.normal(-2.5, 2.0, 2_000).astype(np.float32)
    splits, n_cal = 500, 300
    escapes_over = rejects_over = naive_over = 0
    for _ in range(splits):
        crack, ok = rng.permutation(pool_crack), rng.permutation(pool_ok)
        logits = np.concatenate([crack[:n_cal], ok[:n_cal]])
        labels = np.repeat([1, 0], n_cal)
        temperature = fit_temperature(logits, labels).temperature
        choice = choose_thresholds(logits, labels, temperature=temperature, escape_rate=0.01, false_reject_rate=0.05)
        card = Calibration(temperature, choice.ok_below, choice.defect_at_or_above, method="test")
        test_crack = verdicts(probability(crack[n_cal:], card), card)
        test_ok = verdicts(probability(ok[n_cal:], card), card)
        escapes_over += test_crack.count(Verdict.OK) / len(test_crack) > 0.01
        rejects_over += test_ok.count(Verdict.DEFECT) / len(test_ok) > 0.05
        naive_over += np.mean(crack[n_cal:] < np.quantile(crack[:n_cal], 0.01)) > 0.01
    allowed = 0.1 + 3 * math.sqrt(0.1 * 0.9 / splits)
    print(f"over target: escape {escapes_over}, false reject {rejects_over}, naive {naive_over} of {splits} splits")
    assert escapes_over / splits <= allowed
    assert rejects_over / splits <= allowed
    assert naive_over / splits > 0.3
