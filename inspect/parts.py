"""Part-level scores: one crack probability for a part (a frame, an image) from the probabilities of its tiles.

A part is cracked when any of its tiles is, so the plain score is the highest tile probability (``max``). Two
softer rules can rank parts better when single tiles are noisy: the mean of the ``k`` highest tiles (``topk``,
one hot tile among calm ones counts less) and the noisy-OR ``1 - prod(1 - p)`` (several lukewarm tiles add up).
Which one a model uses is chosen once, on validation images, by image-level average precision
(:func:`choose_part_scoring`), and travels in the model card; training, evaluation and the runtime all score
parts with :func:`part_score`, so they cannot disagree.

This module is torch-free (the runtime imports it); its average precision and ROC-AUC are small numpy versions
of scikit-learn's, which the runtime does not install.

Example:
    >>> part_score([0.2, 0.9, 0.5], PartScoring("max"))
    0.9
    >>> round(part_score([0.2, 0.9, 0.5], PartScoring("topk", k=2)), 6)
    0.7
    >>> round(part_score([0.5, 0.5], PartScoring("noisy_or")), 6)
    0.75
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["max", "topk", "noisy_or"]
METHODS: tuple[str, ...] = ("max", "topk", "noisy_or")
DEFAULT_K = 3
TIE_TOLERANCE = 1e-9  # average precisions closer than this are a tie (they differ only by rounding)


@dataclass(frozen=True)
class PartScoring:
    """How a part's tile probabilities become one score: ``max``, ``topk`` (mean of the ``k`` highest) or
    ``noisy_or``. ``k`` matters only for ``topk``."""

    method: Method = "max"
    k: int = DEFAULT_K

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"part scoring must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"part scoring k must be an integer of at least 1, got {self.k!r}")

    @property
    def label(self) -> str:
        """Short name, as in tables and ``metrics.json``: ``max``, ``top3``, ``noisy_or``."""
        return f"top{self.k}" if self.method == "topk" else self.method

    def describe(self) -> str:
        """What the score is, for people."""
        if self.method == "topk":
            return f"mean of the {self.k} highest tile probabilities (top-k, k={self.k})"
        if self.method == "noisy_or":
            return "noisy-OR of the tile probabilities, 1 - prod(1 - p)"
        return "highest tile probability (max)"

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "k": self.k}

    @classmethod
    def from_dict(cls, values: object, source: str = "part_scoring") -> PartScoring:
        """A scoring from its stored form ``{"method": ..., "k": ...}``; anything else is a one-line ValueError."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: expected a mapping with 'method' (and 'k'), got {values!r}")
        unknown = sorted(set(values) - {"method", "k"})
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; known: method, k")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from error


MAX = PartScoring("max")  # the default: a part is as cracked as its worst tile

CANDIDATES: tuple[PartScoring, ...] = (
    MAX,  # first: the simplest, and what a tie falls back to
    PartScoring("topk", 2),
    PartScoring("topk", 3),
    PartScoring("topk", 5),
    PartScoring("noisy_or"),
)


def part_score(tile_probabilities: Sequence[float] | np.ndarray, scoring: PartScoring) -> float:
    """The part's crack probability from its tiles' (0.0 for a part with no inspected tile).

    ``topk`` with fewer tiles than ``k`` is the mean of all of them. The noisy-OR is computed in log space,
    ``-expm1(sum(log1p(-p)))``, so thousands of tiles neither underflow the product nor lose small probabilities
    to rounding. One tile scores its own probability under every method.
    """
    probs = _checked(tile_probabilities)
    if probs.size == 0:
        return 0.0
    if scoring.method == "max":
        return float(probs.max())
    if scoring.method == "topk":
        highest = np.sort(probs)[::-1][: scoring.k]
        return float(highest.mean())
    with np.errstate(divide="ignore"):  # a tile at exactly 1.0 gives log(0) = -inf, and the part scores 1.0
        return float(-np.expm1(np.sum(np.log1p(-probs))))


def _checked(tile_probabilities: Sequence[float] | np.ndarray) -> np.ndarray:
    probs = np.asarray(tile_probabilities, dtype=np.float64).ravel()
    if probs.size and not (np.all(np.isfinite(probs)) and probs.min() >= 0.0 and probs.max() <= 1.0):
        raise ValueError(f"tile probabilities must lie in [0, 1], got values from {probs.min()} to {probs.max()}")
    return probs


# --- choosing a scoring on validation parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateScore:
    """How well one scoring ranks the validation parts (``None`` where both classes are needed and one is absent)."""

    scoring: PartScoring
    average_precision: float | None
    roc_auc: float | None


def choose_part_scoring(
    parts: Sequence[tuple[Sequence[float] | np.ndarray, int]], candidates: Sequence[PartScoring] = CANDIDATES
) -> tuple[PartScoring, tuple[CandidateScore, ...]]:
    """The candidate with the best image-level average precision on labelled parts, and every candidate's scores.

    ``parts`` are ``(tile probabilities, label)`` pairs, label 1 for a cracked part, 0 for a good one. The rule:
    the highest average precision wins; candidates within ``TIE_TOLERANCE`` of it are a tie, which goes to the one
    listed first (in :data:`CANDIDATES`, ``max`` leads: the simplest rule, and the runtime's behaviour before
    part scoring existed). With one class absent no candidate can be ranked, and the first one is returned.
    """
    if not candidates:
        raise ValueError("choose_part_scoring needs at least one candidate scoring")
    labels = np.array([_label(label) for _, label in parts], dtype=np.int64)
    table = tuple(_score_candidate([p for p, _ in parts], labels, scoring) for scoring in candidates)
    ranked = [row for row in table if row.average_precision is not None]
    if not ranked:
        return candidates[0], table
    best = max(row.average_precision for row in ranked)
    return next(row.scoring for row in ranked if row.average_precision >= best - TIE_TOLERANCE), table


def _label(label: object) -> int:
    if label not in (0, 1):
        raise ValueError(f"part labels must be 0 (ok) or 1 (crack), got {label!r}")
    return int(label)


def _score_candidate(tiles: list, labels: np.ndarray, scoring: PartScoring) -> CandidateScore:
    scores = np.array([part_score(p, scoring) for p in tiles], dtype=np.float64)
    return CandidateScore(scoring, average_precision(labels, scores), roc_auc(labels, scores))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall steps, ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds.

    The same definition as scikit-learn's ``average_precision_score`` (tied scores form one step); ``None`` when
    there is no crack or no good part.
    """
    labels, scores = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    if not _both_classes(labels):
        return None
    order = np.argsort(-scores, kind="mergesort")
    ranked_scores, ranked_labels = scores[order], labels[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(ranked_scores) - 1]  # last item of each tie group
    true_positives = np.cumsum(ranked_labels)[ends]
    precision = true_positives / (ends + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Chance that a random cracked part outscores a random good one (ties count half); ``None`` with one class."""
    labels, scores = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    if not _both_classes(labels):
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based rank of each distinct score, ties averaged
    ranks = mean_rank[inverse]
    n_crack = int(labels.sum())
    n_ok = len(labels) - n_crack
    return float((ranks[labels == 1].sum() - n_crack * (n_crack + 1) / 2.0) / (n_crack * n_ok))


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size
