"""From logits to decisions: calibrated probability, verdict per tile, verdict per frame.

The calibration travels in the model's card (:class:`~crackscope.inspect.card.Calibration`):
``probability = sigmoid(logit / temperature)``; below ``ok_below`` a tile is OK, at or above
``defect_at_or_above`` it is DEFECT, in between it goes to a person (REVIEW). A frame's verdict is the same
thresholds applied to its part score (:mod:`.parts`); under the default ``max`` scoring that is the worst verdict
of its tiles (DEFECT > REVIEW > OK): one cracked tile makes a cracked part.

These are the only functions that turn a score into a verdict, so training, evaluation, calibration and the
factory line cannot disagree about what a threshold means.

Example:
    >>> from crackscope.calibration.stats import logit
from crackscope.inspect.card import Calibration
    >>> band = Calibration(temperature=2.0, ok_below=0.2, defect_at_or_above=0.8)
    >>> [verdict(p, band).value for p in (0.1, 0.5, 0.9)]
    ['OK', 'REVIEW', 'DEFECT']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

import numpy as np

from crackscope.calibration.stats import logit
from crackscope.inspect.card import Calibration


class Verdict(str, Enum):
    """The decision about a tile, a frame or an input file."""

    OK = "OK"
    REVIEW = "REVIEW"  # in the calibrated ambiguous band: a person decides
    DEFECT = "DEFECT"
    ERROR = "ERROR"  # the input could not be inspected (unreadable, truncated, too large); the reason is recorded

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Verdict.OK: 0, Verdict.REVIEW: 1, Verdict.DEFECT: 2, Verdict.ERROR: 3}


def probability(logit: float | np.ndarray, calibration: Calibration) -> np.ndarray:
    """Calibrated crack probability ``sigmoid(logit / temperature)`` (float64, same shape as ``logit``)."""
    scaled = np.asarray(logit, dtype=np.float64) / calibration.temperature
    # Two branches keep exp() from overflowing for large |logit|.
    return np.where(scaled >= 0, 1.0 / (1.0 + np.exp(-np.abs(scaled))), 1.0 - 1.0 / (1.0 + np.exp(-np.abs(scaled))))


def verdict(prob: float, calibration: Calibration) -> Verdict:
    """OK below ``ok_below``, DEFECT at or above ``defect_at_or_above``, REVIEW in between."""
    if prob >= calibration.defect_at_or_above:
        return Verdict.DEFECT
    if prob < calibration.ok_below:
        return Verdict.OK
    return Verdict.REVIEW


def verdicts(probs: np.ndarray, calibration: Calibration) -> list[Verdict]:
    """:func:`verdict` for each probability."""
    return [verdict(float(p), calibration) for p in np.asarray(probs).ravel()]


def worst(items: Iterable[Verdict]) -> Verdict:
    """The most severe verdict (OK for none): a frame's, under max part scoring, is the worst of its tiles'."""
    return max(items, key=lambda v: v.severity, default=Verdict.OK)


def is_identity(calibration: Calibration) -> bool:
    """True for an uncalibrated model (temperature 1, one threshold at 0.5, no REVIEW band)."""
    return calibration.method == "identity"


def review_reason(score: float, tile_probabilities: Sequence[float], calibration: Calibration) -> str | None:
    """Why a frame is REVIEW, in words for the person deciding; None when its score is not in the band.

    One rule decides every frame: the card's thresholds applied to its part score (:mod:`.parts`: the highest tile
    under the default ``max`` scoring, else the mean of the top ``k`` or the noisy-OR of its tiles). A REVIEW frame
    is then one of three cases:

    * **in the ambiguity band**: its uncertain tiles (in the band, none DEFECT) make it so; under ``max`` scoring
      this is the only case;
    * **tiles disagree**: a tile scores DEFECT, but the part score of all its tiles falls in the band (one DEFECT
      tile among calmer ones, under ``topk`` or noisy-OR);
    * **tiles add up**: no tile is in the band, but several OK tiles together score in it (noisy-OR).
    """
    if verdict(score, calibration) is not Verdict.REVIEW:
        return None
    probs = np.asarray(tile_probabilities, np.float64)
    defect = int((probs >= calibration.defect_at_or_above).sum())
    uncertain = int(((probs >= calibration.ok_below) & (probs < calibration.defect_at_or_above)).sum())
    if defect:
        return (
            f"tiles disagree: {defect} tile(s) score DEFECT, but the part score of all {len(probs)} tiles "
            f"({readable_probability(score)}) is in the band"
        )
    if uncertain:
        return (
            f"in the ambiguity band: {uncertain} uncertain tile(s), the part score {readable_probability(score)} lies "
            f"between OK below {calibration.ok_below:.3g} and DEFECT from {calibration.defect_at_or_above:.3g}"
        )
    return f"tiles add up: every tile is OK, but together they score {readable_probability(score)}, in the band"


def readable_probability(prob: float) -> str:
    """A calibrated probability with the digits that tell two scores apart, for people.

    Three decimals in the middle of the scale; near 1 the distance from 1 (``1 − 4.0e-06``) and near 0 the value
    itself (``2.3e-05``), so DEFECTs a sharp calibration puts at 0.99999 and 0.9999999 no longer both read
    ``1.000``. A value 1 in float64 (log-odds above about 37) reads ``1 − <1e-16``.
    """
    prob = float(prob)
    if 1e-3 <= prob <= 0.999:
        return f"{prob:.3f}"
    if prob > 0.999:
        rest = 1.0 - prob
        return f"1 − {rest:.1e}" if rest > 0 else "1 − <1e-16"
    return f"{prob:.1e}" if prob > 0 else "<1e-300"


def log_odds(prob: float) -> float:
    """:func:`~crackscope.calibration.stats.logit` of a score, kept finite for display: a probability of 0 or 1
    is taken as the nearest float64 inside (about -744 and +36.7; none lies closer to 1 than ``1 - 2**-53``)."""
    return logit(min(max(float(prob), 5e-324), 1.0 - 2.0**-53))


def describe_calibration(calibration: Calibration) -> str:
    """One line for the start of a run: the thresholds in force, or that the model is not calibrated."""
    if is_identity(calibration):
        return (
            "not calibrated (temperature 1, one threshold at 0.5, no REVIEW band); run 'crackscope calibrate' to "
            "get OK / REVIEW / DEFECT thresholds with a guaranteed escape rate"
        )
    targets = ", ".join(f"{k} {v}" for k, v in calibration.targets.items())
    return (
        f"calibrated ({calibration.method}): OK below {calibration.ok_below:.4f}, DEFECT at or above "
        f"{calibration.defect_at_or_above:.4f}, REVIEW between" + (f"; targets {targets}" if targets else "")
    )
