"""Several annotators: how reliable each one is, and how much each pair agrees beyond chance.

* **Reliability** comes from the Dawid-Skene model (crowd-kit): each annotator has a confusion matrix (how often they
  say crack when the item is a crack, and ok when it is ok), estimated jointly with each item's true label by EM.
  Sensitivity and specificity are read from it; the accuracy weighs them by the estimated class prior.
* **Agreement** is Cohen's kappa on the items both annotators labelled, ``(p_o - p_e) / (1 - p_e)``: 1 is perfect
  agreement, 0 no better than two annotators guessing with their own label frequencies.

Dawid-Skene needs the ``votes`` extra (``pip install 'crackscope[votes]'``: crowd-kit and pandas); kappa needs
nothing.

Example:
    >>> votes = [("a.png", "ann", 1.0), ("a.png", "bob", 1.0), ("b.png", "ann", 0.0), ("b.png", "bob", 1.0)]
    >>> [(k.first, k.second, k.items, round(k.kappa, 2)) for k in pairwise_kappa(votes)]
    [('ann', 'bob', 2, 0.0)]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

from crackscope.labelled import DataError

Vote = tuple[str, str, float]  # image, annotator, 1.0 crack / 0.0 ok


@dataclass(frozen=True)
class AnnotatorReliability:
    """One annotator under the Dawid-Skene model (``None`` where the model has no estimate)."""

    annotator: str
    votes: int
    sensitivity: float | None  # P(says crack | crack)
    specificity: float | None  # P(says ok | ok)
    accuracy: float | None  # prior-weighted
    agreement_with_consensus: float  # share of their votes equal to the Dawid-Skene label


@dataclass(frozen=True)
class Kappa:
    """Cohen's kappa of two annotators on the items both labelled (``None`` when undefined)."""

    first: str
    second: str
    items: int
    observed_agreement: float | None
    kappa: float | None


def cohen_kappa(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Cohen's kappa of two equally long 0/1 label sequences; ``None`` when chance agreement is 1 (undefined)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} labels against {len(second)}")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    p_first, p_second = sum(first) / n, sum(second) / n
    expected = p_first * p_second + (1 - p_first) * (1 - p_second)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def pairwise_kappa(votes: Iterable[Vote]) -> list[Kappa]:
    """Cohen's kappa for every pair of annotators (sorted by name), on the items both labelled."""
    by_annotator: dict[str, dict[str, float]] = defaultdict(dict)
    for image, annotator, vote in votes:
        by_annotator[annotator][image] = vote
    table = []
    for first, second in combinations(sorted(by_annotator), 2):
        common = sorted(set(by_annotator[first]) & set(by_annotator[second]))
        a = [by_annotator[first][i] for i in common]
        b = [by_annotator[second][i] for i in common]
        observed = sum(x == y for x, y in zip(a, b, strict=True)) / len(common) if common else None
        table.append(Kappa(first, second, len(common), observed, cohen_kappa(a, b)))
    return table


def dawid_skene(votes: Sequence[Vote], iterations: int = 100) -> tuple[dict[str, float], list[AnnotatorReliability]]:
    """Posterior crack probability per image and each annotator's reliability, by Dawid-Skene (crowd-kit)."""
    try:
        import pandas as pd
        from crowdkit.aggregation import DawidSkene
    except ImportError as error:
        raise DataError("annotator reliability needs crowd-kit: pip install 'crackscope[votes]'") from error
    frame = pd.DataFrame([(i, a, int(v)) for i, a, v in votes], columns=["task", "worker", "label"])
    model = DawidSkene(n_iter=iterations).fit(frame)
    posteriors = model.probas_
    crack = {str(task): float(row.get(1, 0.0)) for task, row in posteriors.iterrows()}
    prior = {label: float(p) for label, p in model.priors_.items()}
    errors = model.errors_  # index (worker, observed label), columns true label: P(observed | true)
    reliability = []
    for annotator in sorted(frame["worker"].unique()):
        mine = frame[frame["worker"] == annotator]
        sensitivity = _error(errors, annotator, 1, 1)
        specificity = _error(errors, annotator, 0, 0)
        accuracy = None
        if sensitivity is not None and specificity is not None:
            accuracy = prior.get(1, 0.0) * sensitivity + prior.get(0, 0.0) * specificity
        consensus = [int(crack[str(task)] >= 0.5) for task in mine["task"]]
        agree = sum(int(c == v) for c, v in zip(consensus, mine["label"], strict=True)) / len(mine)
        reliability.append(AnnotatorReliability(str(annotator), len(mine), sensitivity, specificity, accuracy, agree))
    return crack, reliability


def _error(errors, annotator: str, observed: int, true: int) -> float | None:
    try:
        return float(errors.loc[(annotator, observed), true])
    except KeyError:
        return None
