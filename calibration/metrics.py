"""How honest the probabilities are (ECE, reliability) and what the verdicts cost (escape, false-reject, review).

* **Expected calibration error** (ECE), 15 equal-width bins of the crack probability ``p``: the item-weighted
  mean gap between the mean ``p`` in a bin and the share of cracks in it. This is the reliability of the crack
  probability itself; the "top-label" ECE of Guo et al. folds ``p`` and ``1 - p`` into one confidence bin, where
  errors on both sides can cancel, so it is never larger than this one.
* **Escape rate**: share of true cracks called OK (cracked parts let through); **false-reject rate**: share of good
  parts called DEFECT; **review rate**: share of items sent to a person. Verdicts come from
  :func:`crackscope.inspect.decision.verdicts`, the one place a score becomes a verdict, so these are the rates of
  the runtime itself.

Example:
    >>> import numpy as np
    >>> expected_calibration_error(np.array([0.1, 0.9]), np.array([0, 1]))
    0.1
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import Verdict, verdicts

BINS = 15
DECIDED = (Verdict.OK, Verdict.REVIEW, Verdict.DEFECT)


@dataclass(frozen=True)
class Reliability:
    """Per-bin counts, mean predicted crack probability and observed crack share (NaN for empty bins)."""

    edges: np.ndarray  # [bins + 1]
    counts: np.ndarray  # [bins]
    mean_probability: np.ndarray  # [bins]
    crack_share: np.ndarray  # [bins]

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total == 0:
            return 0.0
        filled = self.counts > 0
        gaps = np.abs(self.mean_probability[filled] - self.crack_share[filled])
        return float(np.sum(self.counts[filled] * gaps) / total)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin the crack probabilities into ``bins`` equal-width bins of [0, 1] (the last bin includes 1)."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel()
    if len(p) != len(y):
        raise ValueError(f"{len(p)} probabilities for {len(y)} labels")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=bins) / counts
        share = np.bincount(index, weights=y, minlength=bins) / counts
    return Reliability(edges, counts, mean_p, share)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE of the crack probability over ``bins`` equal-width bins (0 for no items)."""
    return round(reliability(probabilities, labels, bins).ece, 12)


@dataclass(frozen=True)
class VerdictRates:
    """Verdict counts of clear items by true class, and the rates a factory asks about.

    Rates are ``None`` where their denominator is empty (no cracks: no escape rate).
    """

    crack: dict[str, int]  # verdict -> count among true cracks
    ok: dict[str, int]  # verdict -> count among good items

    @property
    def n_crack(self) -> int:
        return sum(self.crack.values())

    @property
    def n_ok(self) -> int:
        return sum(self.ok.values())

    @property
    def escape_rate(self) -> float | None:
        return self.crack["OK"] / self.n_crack if self.n_crack else None

    @property
    def false_reject_rate(self) -> float | None:
        return self.ok["DEFECT"] / self.n_ok if self.n_ok else None

    @property
    def review_rate(self) -> float | None:
        total = self.n_crack + self.n_ok
        return (self.crack["REVIEW"] + self.ok["REVIEW"]) / total if total else None

    def to_dict(self) -> dict[str, object]:
        return {
            "crack": dict(self.crack),
            "ok": dict(self.ok),
            "escape_rate": self.escape_rate,
            "false_reject_rate": self.false_reject_rate,
            "review_rate": self.review_rate,
        }


def verdict_counts(probabilities: np.ndarray, calibration: Calibration) -> dict[str, int]:
    """``{"OK": n, "REVIEW": n, "DEFECT": n}`` for calibrated probabilities under ``calibration``."""
    tally = Counter(v.value for v in verdicts(np.asarray(probabilities), calibration))
    return {v.value: tally.get(v.value, 0) for v in DECIDED}


def verdict_rates(probabilities: np.ndarray, labels: np.ndarray, calibration: Calibration) -> VerdictRates:
    """Escape, false-reject and review rates of clear items (labels 0/1) under ``calibration``."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    return VerdictRates(crack=verdict_counts(p[y], calibration), ok=verdict_counts(p[~y], calibration))


def shares(counts: dict[str, int]) -> dict[str, float | None]:
    """Verdict counts as shares of their total (``None`` each when there are no items)."""
    total = sum(counts.values())
    return {k: (v / total if total else None) for k, v in counts.items()}
