"""Temperature scaling: the NLL optimum, found without an optimiser library, recovers a known over-confidence."""

from __future__ import annotations

import numpy as np
import pytest

from crackscope.calibration.temperature import T_BOUNDS, fit_temperature, nll


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
    grid = np.exp(np.linspace(np.log(1.0), np.log(3.0), 4_001))
    best = grid[np.argmin([nll(logits, labels, t) for t in grid])]
    assert fit_temperature(logits, labels).temperature == pytest.approx(best, rel=5e-4)


def test_separable_items_stop_at_the_lowest_temperature_and_say_so():
    # Every item is on its right side: the NLL keeps falling as T -> 0, so the fit stops at the bound.
    logits = np.array([-6.0, -4.0, -3.0, -1.0, 1.5, 2.0, 5.0, 7.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(T_BOUNDS[0]) and fit.at_bound
    one_error = fit_temperature(np.append(logits, 0.5), np.append(labels, 0))
    assert T_BOUNDS[0] < one_error.temperature < T_BOUNDS[1] and not one_error.at_bound


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([], [], "at least one"),
        ([1.0, 2.0], [1], "as many labels"),
        ([1.0, 2.0], [1, 1.5], r"targets must lie in \[0, 1\]"),
        ([np.inf, 2.0], [1, 0], "finite"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(np.array(logits), np.array(labels))
