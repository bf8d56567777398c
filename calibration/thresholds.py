r"""Risk-controlled OK / REVIEW / DEFECT thresholds: the escape rate with a finite-sample guarantee.

The runtime calls an item OK when its calibrated crack probability is below ``ok_below``, DEFECT at or above
``defect_at_or_above``, and sends the band between to a person (REVIEW). This module chooses the two thresholds
from labelled calibration items so that, with a stated confidence ``c``,

* the **escape rate** (true cracks called OK) is at most ``alpha``, and
* the **false-reject rate** (good items called DEFECT) is at most ``beta``,

and, subject to both, as few items as possible go to REVIEW. The method is Learn-Then-Test (Angelopoulos, Bates,
Candès, Jordan and Lei, 2021) with binomial tail p-values and fixed-sequence testing.

**Thresholds are cuts of the raw logit.** The calibrated probability ``sigmoid(z / T)`` is an increasing function
of the raw logit ``z``, so a pair of thresholds is a pair of raw cuts ``lam <= mu``: OK iff ``z < lam``, DEFECT iff
``z >= mu``. Working on raw logits makes the candidates below independent of the fitted temperature ``T`` (which is
fitted on the same items), so the guarantee holds whatever ``T`` is.

**The problem separates.** ``escape(lam) = P(z < lam | crack)`` depends on ``lam`` only and grows with it;
``false_reject(mu) = P(z >= mu | ok)`` depends on ``mu`` only and shrinks as ``mu`` grows; the review rate
``P(lam <= z < mu)`` falls as ``lam`` rises and ``mu`` falls. So the largest certified ``lam`` and the smallest
certified ``mu`` minimise the review rate subject to both bounds. When ``lam >= mu`` no band is needed: one cut
between them meets both bounds and nothing goes to REVIEW.

**Candidates, fixed in advance**: ``Lambda = {-64, -64 + 1/64, ..., 64}`` (raw logits, exact in float32).

**Escape test.** For each candidate ``lam_j`` take the null hypothesis ``H_j: escape(lam_j) > alpha``. With ``n``
clear cracks, ``K_j = #{cracks with z < lam_j}`` is Binomial(``n``, ``escape(lam_j)``); under ``H_j`` it is
stochastically larger than Binomial(``n``, ``alpha``), so

.. math:: p_j = P(\mathrm{Bin}(n, \alpha) \le K_j)

is a valid p-value: ``P(p_j <= delta) <= delta`` under ``H_j``. (``p_j <= delta`` is the same statement as "the
one-sided Clopper-Pearson upper bound of ``K_j / n`` at confidence ``1 - delta`` is at most ``alpha``".)

**Fixed-sequence testing, no multiplicity correction.** Test ``H_1, H_2, ...`` in the order fixed above (safest
cut first), each at level ``delta = 1 - c``, and stop at the first hypothesis not rejected. The family-wise error
rate is at most ``delta``: a wrong rejection means rejecting some true null, and the procedure can only reach a
true null by passing through the first true null of the sequence, which it rejects with probability at most
``delta``. Hence, with probability at least ``c`` over the draw of the calibration items, every rejected candidate
has ``escape <= alpha``; the chosen ``lam`` is the last rejected one. (Escape grows with ``lam``, so the true nulls
are a tail of the sequence and the test stops where the data can no longer vouch for the cut.) The false-reject
test is the mirror image on the good items, candidates taken from the top down.

**When the data cannot support the request.** Even with no escapes at the safest cut, ``p_1 = (1 - alpha)^n``,
which is at most ``delta`` only when

.. math:: n \ge \ln(1 - c) / \ln(1 - \alpha)

(230 clear cracks for ``alpha`` = 1 % at ``c`` = 90 %). With fewer, no cut that calls anything OK can be certified:
:func:`choose_thresholds` raises :class:`InsufficientData` with the count needed, never a silent best effort.

**Both guarantees together.** Each holds with probability at least ``c``. The escape test reads only the cracks and
the false-reject test only the good items; given the class counts these are independent draws, so both hold
together with probability at least ``c**2``.

**Assumptions.** Future items are exchangeable with the calibration items (same line, same camera, same mix of
defect types); ambiguous items, whose label nobody knows, are not part of these two guarantees.

**Independent units.** Tiles cut from one image are not independent draws: they share its surface, light and crack,
so counting them as independent makes the bound promise more than the images can vouch for. Given each
item's ``groups`` (its source image), :func:`certify` therefore counts images, not tiles: each image contributes one
of its tiles of the class, drawn at random with a fixed seed before any logit is looked at (:func:`one_per_group`).
Images are exchangeable, so these are independent draws of "a tile picked at random from an image picked at
random", and the binomial test above is exact for that rate: the escape rate with each image weighing the same.
Where every item is its own image (class folders of patches) nothing changes.

**From raw cuts to the card's probabilities**, through :func:`crackscope.inspect.decision.probability` itself (the
function the runtime applies), rounded towards safety: ``ok_below = probability(lam)`` (an item the runtime calls OK
has ``z < lam``), and ``defect_at_or_above`` is the smallest float above ``probability`` of the largest float32 logit
below ``mu`` (an item the runtime calls DEFECT has ``z >= mu``). Where probabilities lose resolution ties only
ever move items into REVIEW; the temperature must keep both cuts within 30 calibrated logits of 0, where the float64
sigmoid still resolves them (:func:`smallest_temperature`), since near 37 it returns exactly 0 or 1.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logits = np.concatenate([rng.normal(4, 1.5, 400), rng.normal(-4, 1.5, 400)])
    >>> labels = np.repeat([1, 0], 400)
    >>> choice = choose_thresholds(logits, labels, temperature=1.0, escape_rate=0.01, false_reject_rate=0.05)
    >>> choice.escape.bound <= 0.01 and choice.false_reject.bound <= 0.05
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from crackscope.calibration.stats import binomial_cdf, clopper_pearson_upper
from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import probability

GRID = (np.arange(-64 * 64, 64 * 64 + 1) / 64.0).astype(np.float32)  # the fixed candidate raw cuts
MAX_SCALED = 30.0  # largest |calibrated logit| of a threshold: float64 sigmoid resolves it (it saturates near 37)


class InsufficientData(ValueError):
    """The calibration items cannot support the requested rate at the requested confidence."""

    def __init__(self, message: str, *, kind: str, have: int, needed: int) -> None:
        super().__init__(message)
        self.kind = kind  # "crack" or "ok"
        self.have = have
        self.needed = needed


def items_needed(rate: float, confidence: float, events: int = 0) -> int:
    """Fewest items with ``events`` observed events that certify ``rate`` at ``confidence`` (binomial tail).

    For no events this is the closed form ``ceil(ln(1 - c) / ln(1 - rate))``.
    """
    delta = 1.0 - confidence

    def enough(n: int) -> bool:
        return float(binomial_cdf(events, n, rate)) <= delta

    # P(Bin(n, rate) <= events) falls as n grows: the zero-event closed form is a lower end, then double and bisect.
    low = max(events, math.ceil(math.log(delta) / math.log1p(-rate)) - 1)
    while low > events and enough(low):  # guard the closed form's rounding
        low -= 1
    high = max(low + 1, 1)
    while not enough(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


# --- the choice ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """What the data vouches for about one rate at the chosen cut.

    ``count`` of ``n`` clear items of the class fall on the wrong side of the cut (cracks called OK, good items
    called DEFECT); ``bound`` is the one-sided Clopper-Pearson upper bound of the rate at ``confidence``, at most
    ``target`` by construction.
    """

    target: float
    confidence: float
    n: int
    count: int
    bound: float
    cut: float  # the raw logit cut

    @property
    def observed(self) -> float:
        return self.count / self.n if self.n else float("nan")


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen thresholds, as probabilities for the card and as raw logit cuts, with their certificates."""

    ok_below: float
    defect_at_or_above: float
    escape: Certificate
    false_reject: Certificate
    review_band: bool  # False when one cut meets both bounds (nothing goes to REVIEW)

    @property
    def joint_confidence(self) -> float:
        return self.escape.confidence * self.false_reject.confidence

    def to_dict(self) -> dict[str, object]:
        return {
            "ok_below": self.ok_below,
            "defect_at_or_above": self.defect_at_or_above,
            "review_band": self.review_band,
            "escape": {**asdict(self.escape), "observed": self.escape.observed},
            "false_reject": {**asdict(self.false_reject), "observed": self.false_reject.observed},
            "joint_confidence": self.joint_confidence,
        }


def one_per_group(groups: Sequence[str], seed: int = 0) -> np.ndarray:
    """Indices of one item per group, each drawn at random (``seed``) among its group's items: independent units
    when items of one group (tiles of one image) are not. Depends on the groups only, never on scores."""
    order = np.random.default_rng(seed).permutation(len(groups))
    chosen: dict[str, int] = {}
    for index in order:
        chosen.setdefault(groups[index], int(index))
    return np.sort(np.fromiter(chosen.values(), dtype=np.int64, count=len(chosen)))


def one_per_group_and_class(labels: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Indices of one item per group and class (labels 1 / 0), each by :func:`one_per_group`, in item order."""
    labels, named = np.asarray(labels).ravel().astype(bool), np.asarray(groups, dtype=object)
    chosen = [
        members[one_per_group(list(named[members]))] for members in (np.flatnonzero(labels), np.flatnonzero(~labels))
    ]
    return np.sort(np.concatenate(chosen))


def fixed_sequence(counts: np.ndarray, n: int, target: float, delta: float) -> int:
    """How many leading hypotheses the fixed-sequence test rejects (``counts`` in test order)."""
    rejected = binomial_cdf(counts, n, target) <= delta
    return len(rejected) if rejected.all() else int(np.argmin(rejected))


def check_request(n_crack: int, n_ok: int, escape_rate: float, false_reject_rate: float, confidence: float) -> None:
    """Refuse before any scoring when the class counts alone cannot support the request (zero events at best)."""
    for kind, have, rate, what in (
        ("crack", n_crack, escape_rate, "an escape rate"),
        ("ok", n_ok, false_reject_rate, "a false-reject rate"),
    ):
        needed = items_needed(rate, confidence)
        if have < needed:
            raise InsufficientData(
                f"too few labelled {'defects' if kind == 'crack' else 'good items'} to certify "
                f"{what} of {rate:.4g} at {confidence:.4g} confidence: need at least {needed} clear {kind} items "
                f"(n >= ln(1-c)/ln(1-a), with none misjudged), have {have}",
                kind=kind,
                have=have,
                needed=needed,
            )


def certify(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    escape_rate: float,
    false_reject_rate: float,
    confidence: float = 0.9,
    groups: Sequence[str] | None = None,
) -> tuple[Certificate, Certificate]:
    """The certified raw cuts (escape, false reject) by fixed-sequence testing (see the module docstring); with
    ``groups`` (each item's source image), one item per image and class is counted (:func:`one_per_group`).

    Raises:
        InsufficientData: too few clear cracks or good items, or even the safest cut cannot be certified; the
            message says how many labelled items would be needed.
    """
    for name, value in (
        ("escape_rate", escape_rate),
        ("false_reject_rate", false_reject_rate),
        ("confidence", confidence),
    ):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    z = np.asarray(logits, np.float32).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if groups is not None:
        keep = one_per_group_and_class(y, groups)
        z, y = z[keep], y[keep]
    cracks, goods = np.sort(z[y]), np.sort(z[~y])
    check_request(len(cracks), len(goods), escape_rate, false_reject_rate, confidence)
    delta = 1.0 - confidence
    # Escape: candidates from the lowest cut up; K_j = cracks below the cut.
    escape_counts = np.searchsorted(cracks, GRID, side="left")
    passed = fixed_sequence(escape_counts, len(cracks), escape_rate, delta)
    if passed == 0:
        _refuse_at_safest("crack", int(escape_counts[0]), len(cracks), escape_rate, confidence)
    lam = passed - 1
    # False reject: candidates from the highest cut down; K_j = good items at or above the cut.
    reject_counts = len(goods) - np.searchsorted(goods, GRID[::-1], side="left")
    passed = fixed_sequence(reject_counts, len(goods), false_reject_rate, delta)
    if passed == 0:
        _refuse_at_safest("ok", int(reject_counts[0]), len(goods), false_reject_rate, confidence)
    mu = len(GRID) - passed
    escaped, rejected = int(escape_counts[lam]), int(reject_counts[passed - 1])
    return (
        Certificate(
            escape_rate,
            confidence,
            len(cracks),
            escaped,
            clopper_pearson_upper(escaped, len(cracks), confidence),
            float(GRID[lam]),
        ),
        Certificate(
            false_reject_rate,
            confidence,
            len(goods),
            rejected,
            clopper_pearson_upper(rejected, len(goods), confidence),
            float(GRID[mu]),
        ),
    )


def smallest_temperature(escape: Certificate, false_reject: Certificate) -> float:
    """The lowest temperature at which both cuts stay within ``MAX_SCALED`` calibrated logits of 0.

    Beyond about 36 the runtime's float64 sigmoid returns exactly 0 or 1, and a threshold there cannot be written.
    """
    return max(abs(escape.cut), abs(false_reject.cut)) / MAX_SCALED


def choose_thresholds(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    temperature: float,
    escape_rate: float,
    false_reject_rate: float,
    confidence: float = 0.9,
) -> ThresholdChoice:
    """OK / DEFECT thresholds with both rates certified at ``confidence`` (see the module docstring).

    Args:
        logits: raw logits of the clear calibration items (the model's ``logit`` output, before temperature).
        labels: 1 for crack, 0 for ok.
        temperature: the temperature the card will carry (used only to express the cuts as probabilities); at
            least :func:`smallest_temperature` of the certified cuts.
        escape_rate, false_reject_rate: the targets ``alpha`` and ``beta``, in (0, 1).
        confidence: ``c``, in (0, 1); each guarantee holds with at least this probability.

    Raises:
        InsufficientData: see :func:`certify`.
        ValueError: a temperature so low that a threshold would saturate at probability 0 or 1.
    """
    escape, false_reject = certify(
        logits, labels, escape_rate=escape_rate, false_reject_rate=false_reject_rate, confidence=confidence
    )
    return as_probabilities(escape, false_reject, temperature)


def _refuse_at_safest(kind: str, events: int, have: int, rate: float, confidence: float) -> None:
    needed = items_needed(rate, confidence, events)
    what = "cracks score below" if kind == "crack" else "good items score at or above"
    raise InsufficientData(
        f"{events} of {have} clear {kind} items: {what} every candidate threshold, so no "
        f"{'escape' if kind == 'crack' else 'false-reject'} rate of {rate:.4g} can be certified at {confidence:.4g} "
        f"confidence; with {events} such items at least {needed} clear {kind} items would be needed",
        kind=kind,
        have=have,
        needed=needed,
    )


def as_probabilities(escape: Certificate, false_reject: Certificate, temperature: float) -> ThresholdChoice:
    """Card thresholds whose runtime verdicts never call OK above ``escape.cut`` nor DEFECT below the reject cut."""
    lowest = smallest_temperature(escape, false_reject)
    if temperature < lowest:
        raise ValueError(
            f"temperature {temperature:.4g} would put a threshold where probabilities saturate at 0 or 1; "
            f"use at least {lowest:.4g}"
        )
    unit = Calibration(temperature=temperature)
    ok_below = float(probability(np.float32(escape.cut), unit))
    below_cut = np.nextafter(np.float32(false_reject.cut), np.float32(-np.inf))
    defect_at = float(np.nextafter(probability(below_cut, unit), np.inf))
    if ok_below <= defect_at:
        return ThresholdChoice(ok_below, defect_at, escape, false_reject, review_band=True)
    # Both bounds hold for any single cut between the two: take the one nearest 0.5 (no REVIEW band).
    single = min(max(0.5, defect_at), ok_below)
    return ThresholdChoice(single, single, escape, false_reject, review_band=False)
