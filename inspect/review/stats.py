"""What the reviewers' decisions say about the model: agreement per verdict and the error rates they imply.

QA sees here whether the line still looks like the data the model was calibrated on. Calibration promised an
escape rate (true defects called OK, as a share of all true defects) and a false-reject rate (good parts called
DEFECT, as a share of all good parts) below its targets; the reviewed items estimate both.

The estimate is stratified by the model's verdict. Within each verdict, the reviewed items with a clear label
(every reviewer said ok, or every reviewer said defect) give the share of true defects ``p_v``; the verdict's
record count ``N_v`` scales it up::

    defects_v = N_v * p_v                 good_v = N_v * (1 - p_v)
    escape rate       = defects_OK / (defects_OK + defects_REVIEW + defects_DEFECT)
    false-reject rate = good_DEFECT / (good_OK + good_REVIEW + good_DEFECT)

This is unbiased when the reviewed items of each verdict are a random sample of it: the queue's OK sample is (see
:mod:`.store`); REVIEW and DEFECT items are usually all reviewed. A verdict that has records but no clearly
labelled reviewed item leaves the rate unknown (it is named), rather than guessed. Items the reviewers call
ambiguous or disagree on are counted, but carry no clear label.

The raw counts behind each rate are shown too: escapes found among the reviewed OK items and good parts found
among the reviewed DEFECT items, each with a one-sided Clopper-Pearson upper bound on that share
(:func:`crackscope.calibration.stats.clopper_pearson_upper`; none while no item is clearly labelled).

Example:
    >>> clopper_pearson_upper(0, 30, 0.9) < 0.075
    True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from crackscope.calibration.stats import clopper_pearson_upper
from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import Verdict
from crackscope.inspect.review.store import Decision, Label, consensus

REVIEWED_VERDICTS = (Verdict.REVIEW, Verdict.DEFECT, Verdict.OK)
DEFAULT_CONFIDENCE = 0.9


@dataclass(frozen=True)
class VerdictReview:
    """The reviewed items of one model verdict, by their label."""

    verdict: Verdict
    records: int  # all records with this verdict
    reviewed: int  # of which at least one reviewer decided
    ok: int  # reviewers said ok (all of them)
    defect: int  # reviewers said defect (all of them)
    ambiguous: int  # reviewers said ambiguous, or disagree

    @property
    def clear(self) -> int:
        return self.ok + self.defect

    @property
    def agreement(self) -> float | None:
        """Share of reviewed items whose label is the model's verdict (None for REVIEW: it asks a person)."""
        agreeing = {Verdict.OK: self.ok, Verdict.DEFECT: self.defect}.get(self.verdict)
        if agreeing is None or not self.reviewed:
            return None
        return agreeing / self.reviewed


@dataclass(frozen=True)
class RateEstimate:
    """One error rate implied by the reviews, against the calibration's target."""

    key: str  # escape_rate | false_reject_rate
    value: float | None  # None when a verdict with records has no clearly labelled review
    target: float | None
    found: int  # escapes among reviewed OK items / good parts among reviewed DEFECT items
    among: int  # clearly labelled reviewed OK / DEFECT items
    share_upper: float | None  # upper confidence bound on found / among
    missing: tuple[Verdict, ...] = ()  # verdicts that need clearly labelled reviews first

    @property
    def status(self) -> str:
        if self.value is None:
            return "unknown"
        if self.target is None:
            return "no target"
        return "above target" if self.value > self.target else "within target"


@dataclass(frozen=True)
class ReviewStats:
    """Everything the stats page shows for one model."""

    model_id: str
    verdicts: tuple[VerdictReview, ...]
    escape: RateEstimate
    false_reject: RateEstimate
    reviewers: dict[str, int]  # reviewer -> current decisions
    decisions: int
    multi_reviewed: int  # items with two or more reviewers
    disputed: int  # of which the reviewers disagree
    confidence: float

    @property
    def reviewed(self) -> int:
        return sum(v.reviewed for v in self.verdicts)


def review_stats(
    model_id: str,
    totals: Mapping[str, int],
    reviewed: Iterable[tuple[str, Verdict, list[Decision]]],
    calibration: Calibration | None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ReviewStats:
    """Stats of one model from its record counts per verdict and its reviewed items (see the module docstring)."""
    reviewed = [item for item in reviewed if item[2]]
    labels: dict[Verdict, Counter[Label]] = {v: Counter() for v in REVIEWED_VERDICTS}
    reviewers: Counter[str] = Counter()
    multi = disputed = 0
    for _, verdict, decisions in reviewed:
        reviewers.update(d.reviewer for d in decisions)
        if len(decisions) > 1:
            multi += 1
            disputed += len({d.label for d in decisions}) > 1
        if verdict in labels:
            labels[verdict][consensus(d.label for d in decisions)] += 1
    verdicts = tuple(
        VerdictReview(
            verdict=v,
            records=int(totals.get(v.value, 0)),
            reviewed=sum(labels[v].values()),
            ok=labels[v][Label.OK],
            defect=labels[v][Label.DEFECT],
            ambiguous=labels[v][Label.AMBIGUOUS],
        )
        for v in REVIEWED_VERDICTS
    )
    targets = calibration.targets if calibration is not None else {}
    return ReviewStats(
        model_id=model_id,
        verdicts=verdicts,
        escape=_rate("escape_rate", verdicts, targets.get("escape_rate"), confidence),
        false_reject=_rate("false_reject_rate", verdicts, targets.get("false_reject_rate"), confidence),
        reviewers=dict(sorted(reviewers.items())),
        decisions=sum(reviewers.values()),
        multi_reviewed=multi,
        disputed=disputed,
        confidence=confidence,
    )


def _rate(key: str, verdicts: tuple[VerdictReview, ...], target: float | None, confidence: float) -> RateEstimate:
    # escape rate: true defects called OK, among all true defects; false-reject rate: good parts called DEFECT,
    # among all good parts
    called, truth = (Verdict.OK, "defect") if key == "escape_rate" else (Verdict.DEFECT, "ok")
    wrong = next(v for v in verdicts if v.verdict is called)
    found, among = getattr(wrong, truth), wrong.clear
    upper = clopper_pearson_upper(found, among, confidence) if among else None  # the page shows no bound yet
    missing = tuple(v.verdict for v in verdicts if v.records and not v.clear)
    if missing:
        return RateEstimate(key, None, target, found, among, upper, missing)
    expected = {v.verdict: v.records * getattr(v, truth) / v.clear for v in verdicts if v.records}
    total = sum(expected.values())
    value = expected.get(called, 0.0) / total if total > 0 else None
    return RateEstimate(key, value, target, found, among, upper)
