"""Temperature scaling: one number that makes a model's crack probabilities honest.

A fine-tuned network is usually over- or under-confident. Temperature scaling divides every logit by one fitted
number ``T`` before the sigmoid, ``p = sigmoid(z / T)``: it never changes which of two items scores higher (so it
cannot change accuracy or ROC-AUC), only how far from 0.5 the probabilities sit (Guo et al., 2017).

``T`` minimises the negative log-likelihood (NLL) of the calibration items: the clear ones with targets 0 and 1,
and the ambiguous ones (when :func:`crackscope.calibration.calibrate.fit_calibration` is given them) with their
soft targets, the share of labellers who call them cracked (votes), or 0.5 (an ``ambiguous/`` folder). With the
soft targets, a calibrated probability near 0.5 means "labellers would split": a model that separates the clear
items perfectly no longer drives ``T`` to its lower bound, which pushed ambiguous items to 0 or 1 (the demo's
clear-only ``T`` was 0.139). Written with ``s = 1 / T``,

    NLL(s) = sum_i softplus(s z_i) - y_i s z_i

is a one-parameter logistic regression without intercept: convex in ``s``, with derivative
``g(s) = sum_i (sigmoid(s z_i) - y_i) z_i`` and second derivative ``sum_i sigmoid' (s z_i) z_i^2 >= 0``. So the
minimiser is the root of an increasing function, found here by Newton steps kept inside a shrinking bracket
(bisection when a step would leave it). No optimiser library is needed.

When the logit separates the clear items perfectly (common for a fine-tuned model on a few hundred items), the NLL
keeps falling as ``T`` goes to 0: the items themselves say "always right". The fit then stops at the lower bound
of ``T_BOUNDS`` and says so (``TemperatureFit.at_bound``); probabilities are then close to 0 and 1, as the items
support. (Platt's smoothed targets, ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``, would keep ``T`` finite, but on
held-out items from a very accurate model they raise the calibration error: on the synthetic 96 px model, ECE on a
held-out half went from 0.0% to 1.75%.) The thresholds do not depend on ``T`` (see :mod:`.thresholds`), except that
it must keep them representable, which ``crackscope calibrate`` ensures.

Example:
    >>> import numpy as np
    >>> logits = np.array([-4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 3.0, -3.0])
    >>> labels = np.array([0, 0, 1, 0, 1, 1, 1, 0])
    >>> fit = fit_temperature(logits, labels)
    >>> round(fit.temperature, 3) > 1.0       # an error at |z| = 1 makes these logits over-confident
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T_BOUNDS = (0.02, 50.0)


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the NLL (mean per item) before (``T = 1``) and after."""

    temperature: float
    nll_before: float
    nll_after: float
    items: int
    at_bound: bool  # the optimum lies at (or beyond) a bound of ``T_BOUNDS``: see the module docstring
    raised_to_represent_thresholds: bool = False  # set by calibrate when the NLL optimum was too low (see thresholds)

    @property
    def note(self) -> str:
        """Why the temperature is not the plain NLL optimum (empty when it is), for messages and reports."""
        if self.raised_to_represent_thresholds:
            return "; clear items separable: raised from the NLL's lower bound so the thresholds stay representable"
        if self.at_bound:
            return "; at its bound: the clear items are separable"
        return ""


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood (cross-entropy) of ``labels`` (targets in [0, 1]) under
    ``sigmoid(logits / temperature)``."""
    z = np.asarray(logits, np.float64) / temperature
    y = np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _gradient(s: float, z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    sz = s * z
    p = 0.5 * (1.0 + np.tanh(0.5 * sz))  # sigmoid without overflow
    return float(np.sum((p - y) * z)), float(np.sum(p * (1.0 - p) * z * z))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS, tolerance: float = 1e-10
) -> TemperatureFit:
    """The NLL-optimal temperature for raw ``logits`` of items with ``labels``: 0/1 for clear items, soft targets in
    [0, 1] for ambiguous ones (see the module docstring).

    Raises:
        ValueError: no items, targets outside [0, 1], or non-finite logits.
    """
    z = np.asarray(logits, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel()
    if len(z) == 0 or len(z) != len(y):
        raise ValueError(f"need as many labels as logits (at least one), got {len(z)} logits and {len(y)} labels")
    if not ((y >= 0.0) & (y <= 1.0)).all():
        raise ValueError("targets must lie in [0, 1]: 0 or 1 for clear items, the crack share for ambiguous ones")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    s_low, s_high = 1.0 / bounds[1], 1.0 / bounds[0]
    s = _root(z, y, s_low, s_high, tolerance)
    temperature = 1.0 / s
    at_bound = bool(np.isclose(s, s_low, rtol=1e-9) or np.isclose(s, s_high, rtol=1e-9))
    return TemperatureFit(temperature, nll(z, y), nll(z, y, temperature), len(z), at_bound)


def _root(z: np.ndarray, y: np.ndarray, low: float, high: float, tolerance: float) -> float:
    """The root of the increasing gradient in ``[low, high]``, or the bound it lies beyond."""
    if _gradient(low, z, y)[0] >= 0.0:
        return low
    if _gradient(high, z, y)[0] <= 0.0:
        return high
    s = min(max(1.0, low), high)
    for _ in range(200):
        g, h = _gradient(s, z, y)
        if abs(g) <= tolerance * len(z):
            return s
        if g > 0:
            high = s
        else:
            low = s
        if high - low <= tolerance * s:
            return s
        step = s - g / h if h > 0 else None
        s = step if step is not None and low < step < high else 0.5 * (low + high)
    return s
