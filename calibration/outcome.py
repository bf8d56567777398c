"""What ``crackscope calibrate`` produced: the fit (:class:`Fit`) and all it measured and wrote (:class:`Outcome`).

These records sit apart from :mod:`.calibrate` so that :mod:`.report`, which renders an :class:`Outcome` into
``calibration.html``, and :mod:`.calibrate`, which builds one and calls the report, both import them without a cycle.

Example:
    >>> print(outcome.describe())               # doctest: +SKIP
    >>> json.dumps(outcome.to_dict())           # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from crackscope import __version__
from crackscope.calibration.ambiguity import AmbiguousBand
from crackscope.calibration.metrics import Reliability, VerdictRates, shares
from crackscope.calibration.score import Scores
from crackscope.calibration.temperature import TemperatureFit
from crackscope.calibration.thresholds import ThresholdChoice
from crackscope.inspect.card import Calibration, ModelCard
from crackscope.inspect.results import utc_now


@dataclass(frozen=True)
class Fit:
    """A fitted calibration with what it rests on."""

    calibration: Calibration
    temperature: TemperatureFit
    thresholds: ThresholdChoice
    ambiguous: AmbiguousBand | None = None  # the band widened for ambiguous items (None: clear items only)

    @property
    def joint_confidence(self) -> float:
        """All guarantees together: escape and false reject, and the ambiguous coverage when there is one."""
        together = self.thresholds.joint_confidence
        return together * self.ambiguous.confidence if self.ambiguous is not None else together


@dataclass(frozen=True)
class Outcome:
    """What ``crackscope calibrate`` measured and wrote (see :meth:`to_dict` for ``calibration.json``)."""

    model: Path
    out: Path
    card: ModelCard
    fit: Fit
    data: dict[str, object]
    ece_before: float
    ece_after: float
    reliability_before: Reliability
    reliability_after: Reliability
    clear: VerdictRates  # clear items on the calibration set, under the new calibration
    ambiguous: dict[str, int]  # verdict -> ambiguous items on the calibration set
    scores: Scores = field(repr=False)
    sha256_before: str = ""
    sha256_after: str = ""
    previous: Calibration | None = None
    also_written: tuple[Path, ...] = ()  # the dense graph beside the model, given the same calibration
    ambiguous_brier: tuple[float, float] | None = None  # before, after: ambiguous items against their soft targets

    @property
    def calibration(self) -> Calibration:
        return self.fit.calibration

    @property
    def ambiguous_review_share(self) -> float | None:
        return shares(self.ambiguous)["REVIEW"]

    @property
    def review_ratio(self) -> float | None:
        """How much more often ambiguous items reach REVIEW than clear ones (``None`` when undefined)."""
        clear, ambiguous = self.clear.review_rate, self.ambiguous_review_share
        if clear is None or ambiguous is None:
            return None
        return ambiguous / clear if clear > 0 else (math.inf if ambiguous > 0 else None)

    def to_dict(self) -> dict[str, object]:
        card = self.card
        return {
            "crackscope_version": __version__,
            "written": utc_now(),
            "model": {
                "path": str(self.model),
                "backbone": card.backbone,
                "input_size": card.input_size,
                "precision": card.precision,
                "sha256_before": self.sha256_before,
                "sha256_after": self.sha256_after,
                "previous_calibration": asdict(self.previous) if self.previous else None,
                "also_written": [str(path) for path in self.also_written],
            },
            "data": self.data,
            "targets": self.calibration.targets,
            "calibration": asdict(self.calibration),
            "temperature": asdict(self.fit.temperature),
            "ece": {"bins": len(self.reliability_after.counts), "before": self.ece_before, "after": self.ece_after},
            "thresholds": self.fit.thresholds.to_dict(),
            "ambiguous_review": self.fit.ambiguous.to_dict() if self.fit.ambiguous is not None else None,
            "calibration_set": {
                "clear": self.clear.to_dict(),
                "ambiguous": {**self.ambiguous, "review_share": self.ambiguous_review_share},
                "ambiguous_to_clear_review_ratio": _finite(self.review_ratio),
                "ambiguous_brier": (
                    {"before": self.ambiguous_brier[0], "after": self.ambiguous_brier[1]}
                    if self.ambiguous_brier
                    else None
                ),
                "note": "measured on the calibration items themselves (in-sample); the guarantee is the target",
            },
            "reliability": {"before": _bins(self.reliability_before), "after": _bins(self.reliability_after)},
        }

    def describe(self) -> str:
        c, choice, fit = self.calibration, self.fit.thresholds, self.fit.temperature
        n_amb = sum(self.ambiguous.values())
        lines = [
            f"calibrated {self.model} ({self.card.precision}) on {self.clear.n_crack + self.clear.n_ok} clear items "
            f"({self.clear.n_crack} crack, {self.clear.n_ok} ok) and {n_amb} ambiguous from {self.data['root']}",
            f"temperature {c.temperature:.4g}{fit.note}"
            f"; ECE of clear items {self.ece_before:.2%} -> {self.ece_after:.2%} (15 bins, calibration set)"
            + (
                f"; Brier score of ambiguous items against their labellers' share {self.ambiguous_brier[0]:.3f} -> "
                f"{self.ambiguous_brier[1]:.3f}"
                if self.ambiguous_brier
                else ""
            ),
            f"verdicts: OK below {c.ok_below:.6g}, DEFECT at or above {c.defect_at_or_above:.6g}"
            + (", REVIEW between" if choice.review_band else " (one threshold meets both targets: no REVIEW band)"),
            _rate_line(
                "escape rate", choice.escape.target, self.clear.crack["OK"], self.clear.n_crack, "cracks called OK"
            ),
            _rate_line(
                "false-reject rate",
                choice.false_reject.target,
                self.clear.ok["DEFECT"],
                self.clear.n_ok,
                "good items called DEFECT",
            ),
            *_units_line(choice, self.clear),
            *_ambiguous_lines(self.fit.ambiguous),
            f"each guarantee holds with >= {choice.escape.confidence:.0%} confidence, all together with >= "
            f"{self.fit.joint_confidence:.1%} (they rest on different items)",
            f"review rate on the calibration set: clear {_pct(self.clear.review_rate)}, ambiguous "
            f"{_pct(self.ambiguous_review_share)}" + _ratio(self.review_ratio),
            f"wrote {self.model} (metadata only; graph and weights unchanged), {self.out / 'calibration.json'}, "
            f"{self.out / 'calibration.html'}",
        ]
        dense = "the dense graph decides with its tile model's calibration"
        lines += [f"wrote {path} too ({dense})" for path in self.also_written]
        return "\n".join(lines)


def _units_line(choice: ThresholdChoice, clear: VerdictRates) -> list[str]:
    """Say so when the guarantees count images rather than tiles (tiles of one image are not independent)."""
    if choice.escape.n == clear.n_crack and choice.false_reject.n == clear.n_ok:
        return []
    return [
        f"the guarantees count images, not tiles (tiles of one image are not independent): {choice.escape.n} images "
        f"with crack tiles and {choice.false_reject.n} with good tiles, one tile of each drawn before scoring"
    ]


def _ambiguous_lines(band: AmbiguousBand | None) -> list[str]:
    if band is None:
        return []
    how = "the band was widened for them" if band.widened else "the clear items' band already held them"
    return [
        f"ambiguous items in REVIEW >= {band.coverage:.0%} guaranteed with the stated confidence; on the calibration "
        f"set {band.n - band.missed} of {band.n} ({how})"
    ]


def _rate_line(name: str, target: float, count: int, n: int, what: str) -> str:
    return f"{name} <= {target:.4g} guaranteed with the stated confidence; on the calibration set {count} of {n} {what}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return " (ambiguous items reach REVIEW; clear ones never do)" if math.isinf(value) else f" ({value:.1f}x)"


def _finite(value: float | None) -> float | str | None:
    return "inf" if value is not None and math.isinf(value) else value


def _bins(rel: Reliability) -> dict[str, list]:
    def plain(values: np.ndarray) -> list:
        return [None if not np.isfinite(v) else float(v) for v in values]

    return {
        "edges": [float(e) for e in rel.edges],
        "counts": [int(c) for c in rel.counts],
        "mean_probability": plain(rel.mean_probability),
        "crack_share": plain(rel.crack_share),
    }
