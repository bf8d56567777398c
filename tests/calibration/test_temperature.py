"""Temperature scaling: the NLL optimum, found without an optimiser library, recovers a known over-confidence."""

from __future__ import annotations

import numpy as np
import pytest

from crackscope.calibration.temperature import T_BOUNDS, fit_temperature, nll, platt_targets


def _overconfident(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated logits, then the logits multiplied by ``scale`` (so the right T is ``scale``)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 3.0, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_logits))).astype(int)
    return true_logits * scale, labels


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.5])
def test_temperature_recovers_the_factor_by_which_logits_were_scaled(scale):
    logits, labels = _overconfident(20_000, scale, seed=1)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(scale, rel=0.05)
    assert fit.nll_after <= fit.nll_before + 1e-12 and not fit.at_bound


def test_fitted_temperature_is_the_minimum_of_the_nll_on_a_dense_grid():
    logits, labels = _overconfident(3_000, 1.7, seed=2)
    targets = platt_targets(labels)
    grid = np.exp(np.linspace(np.log(1.0), np.log(3.0), 4_001))
    best = grid[np.argmin([nll(logits, targets, t) for t in grid])]
    assert fit_temperature(logits, labels).temperature == pytest.approx(best, rel=5e-4)


def test_separable_items_get_a_finite_temperature_and_probabilities_short_of_zero_and_one():
    # With hard targets the NLL would fall all the way to T -> 0; Platt's targets keep the optimum finite.
    logits = np.array([-6.0, -4.0, -3.0, -1.0, 1.5, 2.0, 5.0, 7.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fit = fit_temperature(logits, labels)
    assert T_BOUNDS[0] < fit.temperature < T_BOUNDS[1] and not fit.at_bound
    assert 1.0 / (1.0 + np.exp(1.0 / fit.temperature)) > 1e-3  # the item at logit -1 is not called certain


def test_platt_targets_pull_each_class_towards_the_middle_by_one_over_its_count_plus_two():
    assert platt_targets(np.array([1, 1, 1, 0])).tolist() == [0.8, 0.8, 0.8, pytest.approx(1 / 3)]


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([], [], "at least one"),
        ([1.0, 2.0], [1], "as many labels"),
        ([1.0, 2.0], [1, 0.5], "clear items only"),
        ([np.inf, 2.0], [1, 0], "finite"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(np.array(logits), np.array(labels))
