"""The shared statistics: binomial tails, Clopper-Pearson bounds and the logit, against closed forms and tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from crackscope.calibration.stats import binomial_cdf, clopper_pearson_lower, clopper_pearson_upper, logit


def _direct_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(("k", "n", "p"), [(0, 1, 0.3), (2, 10, 0.1), (5, 12, 0.5), (9, 20, 0.7), (3, 3, 0.9)])
def test_binomial_cdf_is_the_sum_of_the_probability_mass(k, n, p):
    assert float(binomial_cdf(k, n, p)) == pytest.approx(_direct_cdf(k, n, p), rel=1e-12)


@pytest.mark.parametrize(("k", "n", "p"), [(0, 1, 0.3), (3, 100, 0.05), (0, 230, 0.01), (50, 1000, 0.04), (7, 7, 0.5)])
def test_binomial_cdf_matches_scipy(k, n, p):
    assert float(binomial_cdf(k, n, p)) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-15)


def test_binomial_cdf_takes_an_array_of_counts_and_is_0_below_0_and_1_from_n():
    counts = np.array([-1, 0, 2, 10, 11])
    expected = [0.0, _direct_cdf(0, 10, 0.2), _direct_cdf(2, 10, 0.2), 1.0, 1.0]
    np.testing.assert_allclose(binomial_cdf(counts, 10, 0.2), expected, rtol=1e-12)


@pytest.mark.parametrize(("p", "expected"), [(0.0, [0.0, 1.0, 1.0]), (1.0, [0.0, 0.0, 1.0])])
def test_binomial_cdf_at_a_certain_rate_is_a_step(p, expected):
    np.testing.assert_array_equal(binomial_cdf(np.array([-1, 2, 5]), 5, p), expected)


@pytest.mark.parametrize(("n", "p"), [(-1, 0.5), (5, -0.1), (5, 1.5)])
def test_binomial_cdf_refuses_an_impossible_distribution(n, p):
    with pytest.raises(ValueError, match="need n >= 0"):
        binomial_cdf(0, n, p)


@pytest.mark.parametrize(
    ("k", "n", "confidence", "expected"),
    [
        (0, 10, 0.95, 1 - 0.05 ** (1 / 10)),  # 0.2589: no event in 10 trials
        (0, 30, 0.9, 1 - 0.1 ** (1 / 30)),
        (0, 1, 0.9, 0.9),
        (1, 10, 0.95, 0.3942),  # one-sided Clopper-Pearson tables
        (5, 100, 0.9, 0.0908),
        (10, 10, 0.9, 1.0),
    ],
)
def test_the_clopper_pearson_upper_bound_matches_known_values(k, n, confidence, expected):
    assert clopper_pearson_upper(k, n, confidence) == pytest.approx(expected, abs=5e-4)


def test_no_event_in_10_trials_bounds_the_rate_at_0_2589_with_95_percent_confidence():
    assert clopper_pearson_upper(0, 10, 0.95) == pytest.approx(0.25887, abs=1e-5)
    assert clopper_pearson_upper(0, 10, 0.95) == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-12)


@pytest.mark.parametrize(("n", "confidence"), [(1, 0.9), (10, 0.95), (57, 0.99)])
def test_the_lower_bound_when_every_trial_was_an_event_is_the_closed_form(n, confidence):
    assert clopper_pearson_lower(n, n, confidence) == pytest.approx((1 - confidence) ** (1 / n), rel=1e-12)


@pytest.mark.parametrize(("k", "n", "confidence"), [(0, 10, 0.9), (3, 100, 0.9), (0, 230, 0.95), (40, 500, 0.99)])
def test_clopper_pearson_bounds_match_the_beta_quantiles(k, n, confidence):
    assert clopper_pearson_upper(k, n, confidence) == pytest.approx(stats.beta.ppf(confidence, k + 1, n - k), rel=1e-9)
    lower = stats.beta.ppf(1 - confidence, k, n - k + 1) if k else 0.0
    assert clopper_pearson_lower(k, n, confidence) == pytest.approx(lower, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("k", "n"), [(0, 5), (2, 5), (5, 5), (13, 40)])
def test_the_bounds_enclose_the_observed_share(k, n):
    assert clopper_pearson_lower(k, n, 0.9) <= k / n <= clopper_pearson_upper(k, n, 0.9)


def test_with_no_trial_nothing_is_known_the_bounds_are_0_and_1():
    assert clopper_pearson_upper(0, 0, 0.9) == 1.0
    assert clopper_pearson_lower(0, 0, 0.9) == 0.0


@pytest.mark.parametrize(("k", "n"), [(-1, 5), (6, 5), (1, 0)])
def test_the_bounds_refuse_more_events_than_trials_or_fewer_than_none(k, n):
    with pytest.raises(ValueError, match="0 <= events <= trials"):
        clopper_pearson_upper(k, n, 0.9)
    with pytest.raises(ValueError, match="0 <= events <= trials"):
        clopper_pearson_lower(k, n, 0.9)


def test_the_logit_of_one_half_is_zero():
    assert logit(0.5) == 0.0


@pytest.mark.parametrize("z", [-30.0, -5.0, -0.3, 0.7, 5.0, 12.0])
def test_the_logit_inverts_the_sigmoid(z):
    assert logit(1.0 / (1.0 + math.exp(-z))) == pytest.approx(z, abs=1e-6)


@pytest.mark.parametrize("p", [1e-4, 0.1, 0.37, 0.9])
def test_the_logit_is_odd_about_one_half(p):
    assert logit(1.0 - p) == pytest.approx(-logit(p), rel=1e-9)


@pytest.mark.parametrize(("p", "expected"), [(0.0, -math.inf), (-0.1, -math.inf), (1.0, math.inf), (1.5, math.inf)])
def test_the_logit_is_infinite_at_and_beyond_0_and_1_not_clipped(p, expected):
    assert logit(p) == expected
