"""Binomial tails, Clopper-Pearson bounds and the logit: the small statistics calibration and review share.

:mod:`.thresholds` certifies rates with the binomial tail, :mod:`.report` and :mod:`crackscope.inspect.review.stats`
bound observed shares with Clopper-Pearson, and :mod:`.report` and :mod:`.audit` place probabilities on the logit
axis. Only numpy is needed, so the review app and a runtime install (no PyTorch) can import it.

**With no trials nothing is known**: for ``n = 0`` the upper bound is 1.0 and the lower bound 0.0, the whole of
``[0, 1]``, rather than an error. A caller that wants to show "no bound yet" checks ``n`` itself.

Example:
    >>> round(clopper_pearson_upper(0, 10, 0.95), 4)  # no event in 10 trials: 1 - 0.05 ** (1 / 10)
    0.2589
    >>> clopper_pearson_upper(0, 0, 0.95), clopper_pearson_lower(0, 0, 0.95)
    (1.0, 0.0)
"""

from __future__ import annotations

import functools
import math

import numpy as np


def binomial_cdf(k: np.ndarray | int, n: int, p: float) -> np.ndarray:
    """``P(Binomial(n, p) <= k)`` for each ``k`` (exact sum of the probability mass, in log space)."""
    k = np.asarray(k)
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
    if p in (0.0, 1.0):
        return np.where(k >= (n if p == 1.0 else 0), 1.0, 0.0) * (k >= 0)
    top = int(np.clip(k.max(initial=0), 0, n))
    i = np.arange(top + 1)
    log_fact = _log_factorials(n)
    log_pmf = log_fact[n] - log_fact[i] - log_fact[n - i] + i * math.log(p) + (n - i) * math.log1p(-p)
    cdf = np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)
    return np.where(k < 0, 0.0, np.where(k >= n, 1.0, cdf[np.clip(k, 0, top)]))


@functools.lru_cache(maxsize=16)
def _log_factorials(n: int) -> np.ndarray:
    table = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    table.flags.writeable = False
    return table


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided upper confidence bound of a binomial rate after ``k`` events in ``n`` trials.

    It is the ``p`` with ``P(Binomial(n, p) <= k) = 1 - confidence``; with no event it is
    ``1 - (1 - confidence) ** (1 / n)`` (about 2.3 / n at 90%, the "rule of three" family). It is 1.0 when every
    trial was an event and when there was no trial at all (``n = 0``: nothing is known).

    Raises:
        ValueError: ``k`` is not between 0 and ``n``.
    """
    _check_counts(k, n)
    if k == n:  # also n = 0
        return 1.0
    delta = 1.0 - confidence
    i = np.arange(k + 1)
    log_fact = _log_factorials(n)
    log_choose = log_fact[n] - log_fact[i] - log_fact[n - i]
    low, high = k / n, 1.0
    for _ in range(64):  # P(Bin(n, p) <= k) falls as p grows: bisect for the p where it equals delta
        middle = 0.5 * (low + high)
        tail = float(np.exp(log_choose + i * math.log(middle) + (n - i) * math.log1p(-middle)).sum())
        low, high = (middle, high) if tail > delta else (low, middle)
    return high


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided lower confidence bound of a binomial rate after ``k`` events in ``n`` trials.

    The mirror of :func:`clopper_pearson_upper`: 0.0 with no event and with no trial (``n = 0``), and
    ``(1 - confidence) ** (1 / n)`` when every trial was an event.

    Raises:
        ValueError: ``k`` is not between 0 and ``n``.
    """
    _check_counts(k, n)
    if k == 0:  # also n = 0
        return 0.0
    return 1.0 - clopper_pearson_upper(n - k, n, confidence)


def _check_counts(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= events <= trials, got {k} of {n}")


def logit(p: float) -> float:
    """Log-odds ``ln(p / (1 - p))``, the inverse of the sigmoid: ``-inf`` for ``p <= 0`` and ``inf`` for ``p >= 1``.

    The ends are infinite, not clipped, so a threshold of exactly 0 or 1 stays outside every finite logit.
    """
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)
