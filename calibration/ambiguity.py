r"""A REVIEW band that catches what labellers disagree on: at least a share of ambiguous items, certified.

The clear-item thresholds (:mod:`.thresholds`) give the narrowest band that keeps the escape and false-reject
guarantees. Items even experts disagree on (an ``ambiguous/`` folder, split votes, mask-ambiguous tiles) are not
part of those guarantees, and a sharp model pushes many of them out of that band. This module widens the band until,
with confidence ``c``, at least ``coverage`` (default 80%) of ambiguous items land in REVIEW, and no further.

**Candidates, fixed before the ambiguous items are looked at.** The clear items fix the certified raw cuts
``lam* <= mu*`` (OK below ``lam*``, DEFECT from ``mu*``; when ``lam* > mu*`` no band was needed, and the band starts
empty at their midpoint). From there the band grows one step of 1/64 logit at a time, on the side where the clear
items are sparser (a Gaussian kernel density of the clear logits, Silverman's bandwidth per class, on the 1/64 grid),
until it spans [-128, 128]. Ambiguous items are the ones between the classes, so growing into the valley of the
clear items' density reaches them first while sending the fewest clear items to REVIEW: on the demo model, the
band that holds 80% of ambiguous items sends 14% of clear items to REVIEW, where widening both sides alike sent 43%
(the ambiguous items sat nearer the good side). The candidate bands ``B_k = [low_k, high_k)`` are this path, tested
widest first. Widening only moves cuts away from the clear items' certified ones (``lam`` down, ``mu`` up), so
the escape and false-reject guarantees hold for every candidate: fewer cracks below a lower ``lam``, fewer good
items above a higher ``mu``. The clear items' review rate is what widening costs, and it is measured.

**The test.** The ambiguous items are a different draw from the clear ones, so, given the clear items, the
candidates are fixed in advance. For candidate ``k`` let ``K_k`` be the ambiguous items outside ``B_k`` among
``n``; under the null ``H_k``: "more than ``1 - coverage`` of ambiguous items fall outside ``B_k``",
``p_k = P(Bin(n, 1 - coverage) <= K_k)`` is a valid p-value. The misses grow as the band narrows, so
fixed-sequence testing from the widest band, each at level ``1 - c``, stopping at the first null not rejected,
controls the family-wise error at ``1 - c`` (Learn-Then-Test, Angelopoulos et al. 2021, as for the clear-item
cuts). The chosen band is the narrowest rejected one. This is the coverage half of conformal prediction under
ambiguous ground truth (Stutz et al. 2023): the "true" answer of an ambiguous item is "a person decides", and the
band must contain it with the promised frequency.

**Too few ambiguous items.** Even the widest band, with no misses, needs ``coverage**n <= 1 - c``, i.e.
``n >= ln(1 - c) / ln(coverage)`` (11 items for 80% at 90% confidence); with fewer the request is refused with that
number (:class:`~.thresholds.InsufficientData`, kind ``ambiguous``).

**Together.** Each of the three guarantees (escape, false reject, ambiguous coverage) holds with probability at
least ``c``, on independent draws given the class counts: all three with at least ``c**3``.

Example:
    >>> import numpy as np
    >>> ambiguous = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.5] * 4)
    >>> clear = [np.array([4.0, 5.0, 6.0]), np.array([-6.0, -5.0, -4.0])]
    >>> band = widen_band(-2.0, 2.0, ambiguous, coverage=0.8, confidence=0.9, clear=clear)
    >>> band.low <= -2.0 and band.high >= 2.0 and band.bound <= 0.2
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from crackscope.calibration.stats import clopper_pearson_upper
from crackscope.calibration.thresholds import InsufficientData, fixed_sequence, items_needed

STEP = 1.0 / 64.0  # logits per step of the band's growth (exact in float32)
LIMIT = 128.0  # the widest band spans [-LIMIT, LIMIT]


@dataclass(frozen=True)
class AmbiguousBand:
    """The widened band in raw logits and what it certifies about ambiguous items.

    ``missed`` of ``n`` ambiguous items fall outside ``[low, high)``; ``bound`` is the one-sided Clopper-Pearson
    upper bound of that share at ``confidence``, at most ``1 - coverage`` by construction.
    """

    coverage: float
    confidence: float
    n: int
    missed: int
    bound: float
    low: float  # raw logit: OK below it
    high: float  # raw logit: DEFECT at or above it
    widened: bool  # False when the clear items' band already held the coverage

    @property
    def observed(self) -> float:
        return 1.0 - self.missed / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "observed_coverage": self.observed}


def check_ambiguous(n: int, coverage: float, confidence: float) -> None:
    """Refuse before any scoring when ``n`` ambiguous items cannot certify ``coverage`` even with no misses."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"ambiguous-review must be between 0 and 1 (exclusive; 0 turns it off), got {coverage}")
    needed = items_needed(1.0 - coverage, confidence)
    if n < needed:
        raise InsufficientData(
            f"too few ambiguous items to certify that {coverage:.0%} of them go to REVIEW at {confidence:.4g} "
            f"confidence: need at least {needed} (n >= ln(1-c)/ln(coverage)), have {n}; add items experts disagree "
            "on (an ambiguous/ folder, votes.csv, or masks with an ambiguous band), or pass --ambiguous-review 0 to "
            "calibrate for the clear items' guarantees only",
            kind="ambiguous",
            have=n,
            needed=needed,
        )


def clear_density(clear: Sequence[np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Kernel density of the clear logits (one array per class, each with Silverman's bandwidth, weighted by its
    count) at the points of ``grid``, a regular grid of step :data:`STEP`; binned onto it and smoothed by
    convolution, so its cost does not grow with the number of items."""
    total = np.zeros(len(grid), np.float64)
    edges = np.append(grid - STEP / 2, grid[-1] + STEP / 2)
    for values in clear:
        values = np.clip(np.asarray(values, np.float64), grid[0], grid[-1])
        if len(values) == 0:
            continue
        spread = float(values.std()) if len(values) > 1 else 1.0
        bandwidth = max(1.06 * spread * len(values) ** -0.2, 4 * STEP)
        offsets = np.arange(-int(4 * bandwidth / STEP), int(4 * bandwidth / STEP) + 1) * STEP
        kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
        counts, _ = np.histogram(values, bins=edges)
        total += np.convolve(counts, kernel, mode="same")[: len(grid)]
    return total


def growth_path(escape_cut: float, reject_cut: float, clear: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The candidate bands ``[low_k, high_k)``, narrowest first: from the clear items' cuts (or their midpoint when
    no band was needed), one :data:`STEP` at a time on the side where ``clear`` logits are sparser (on a tie, the
    side that has grown less), to ``[-LIMIT, LIMIT]`` (module docstring)."""
    low, high = float(escape_cut), float(reject_cut)
    if low > high:
        low = high = round((low + high) / 2 / STEP) * STEP
    low, high = min(max(low, -LIMIT), LIMIT), min(max(high, -LIMIT), LIMIT)
    grid = np.arange(-LIMIT, LIMIT, STEP) + STEP / 2  # centres of the steps
    density = clear_density(clear, grid)
    left = round((low + LIMIT) / STEP)  # steps below the band: the next one down is grid[left - 1]
    right = round((high + LIMIT) / STEP)  # the next one up is grid[right]
    sides = np.empty(left + (len(grid) - right), dtype=bool)  # True: the step extends the band downwards
    grown = [0, 0]  # steps taken down, up
    for step in range(len(sides)):
        below = density[left - 1] if left > 0 else np.inf
        above = density[right] if right < len(grid) else np.inf
        sides[step] = below < above or (below == above and grown[0] <= grown[1])
        left, right = (left - 1, right) if sides[step] else (left, right + 1)
        grown[0 if sides[step] else 1] += 1
    lows = np.concatenate([[low], low - STEP * np.cumsum(sides)]).astype(np.float32)
    highs = np.concatenate([[high], high + STEP * np.cumsum(~sides)]).astype(np.float32)
    return lows, highs


def widen_band(
    escape_cut: float,
    reject_cut: float,
    ambiguous: np.ndarray,
    *,
    coverage: float,
    confidence: float,
    clear: Sequence[np.ndarray],
) -> AmbiguousBand:
    """The narrowest candidate band around the clear items' cuts that certifies ``coverage`` of the ``ambiguous``
    raw logits in REVIEW at ``confidence``; ``clear`` holds the clear items' raw logits, one array per class, which
    decide the order in which the band grows (module docstring).

    Raises:
        InsufficientData: too few ambiguous items, or even the widest band is not certified.
    """
    z = np.sort(np.asarray(ambiguous, np.float32).ravel())
    check_ambiguous(len(z), coverage, confidence)
    lows, highs = growth_path(escape_cut, reject_cut, clear)
    lows, highs = lows[::-1], highs[::-1]  # widest first
    misses = np.searchsorted(z, lows, side="left") + (len(z) - np.searchsorted(z, highs, side="left"))
    passed = fixed_sequence(misses, len(z), 1.0 - coverage, 1.0 - confidence)
    if passed == 0:
        needed = items_needed(1.0 - coverage, confidence, int(misses[0]))
        raise InsufficientData(
            f"{int(misses[0])} of {len(z)} ambiguous items lie outside even the widest band, so {coverage:.0%} of "
            f"them in REVIEW cannot be certified at {confidence:.4g} confidence; at least {needed} ambiguous items "
            "would be needed",
            kind="ambiguous",
            have=len(z),
            needed=needed,
        )
    chosen = passed - 1
    missed = int(misses[chosen])
    low, high = float(lows[chosen]), float(highs[chosen])
    return AmbiguousBand(
        coverage,
        confidence,
        len(z),
        missed,
        clopper_pearson_upper(missed, len(z), confidence),
        low,
        high,
        widened=low < escape_cut or high > reject_cut,
    )
