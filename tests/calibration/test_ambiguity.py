"""The REVIEW band for ambiguous items: certified coverage, refusal with the count needed, soft-target temperature."""

from __future__ import annotations

import numpy as np
import pytest

from crackscope.calibration.ambiguity import check_ambiguous, growth_path, widen_band
from crackscope.calibration.calibrate import Targets, fit_calibration
from crackscope.calibration.stats import binomial_cdf
from crackscope.calibration.temperature import fit_temperature
from crackscope.calibration.thresholds import InsufficientData, certify
from crackscope.inspect.decision import probability, verdict


def _draw(rng: np.random.Generator, n_clear: int, n_ambiguous: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clear cracks around +4, good items around -4, ambiguous items spread around +0.5 (a model leaning crack)."""
    logits = np.concatenate([rng.normal(4.0, 1.5, n_clear), rng.normal(-4.0, 1.5, n_clear)]).astype(np.float32)
    labels = np.repeat([1, 0], n_clear)
    return logits, labels, rng.normal(0.5, 2.5, n_ambiguous).astype(np.float32)


def test_the_coverage_guarantee_holds_on_fresh_ambiguous_items_in_seeded_splits():
    """Fit on one draw, measure on a large fresh one: the band may fall short of 80% in at most 1 - c of the splits
    (plus the sampling slack of 300 splits); the escape guarantee still holds after widening."""
    short, escaped = 0, 0
    splits, coverage, confidence, escape_rate = 300, 0.8, 0.9, 0.05
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        logits, labels, ambiguous = _draw(rng, 150, 40)
        escape, reject = certify(logits, labels, escape_rate=escape_rate, false_reject_rate=0.05, confidence=0.9)
        clear = (logits[labels == 1], logits[labels == 0])
        band = widen_band(escape.cut, reject.cut, ambiguous, coverage=coverage, confidence=confidence, clear=clear)
        fresh_logits, fresh_labels, fresh = _draw(rng, 5000, 20000)
        inside = (fresh >= band.low) & (fresh < band.high)
        short += inside.mean() < coverage
        escaped += (fresh_logits[fresh_labels == 1] < band.low).mean() > escape_rate
    # Under a valid procedure short ~ Binomial(300, <= 0.1): above 42 has probability below 0.3%.
    assert short <= 42, short
    assert escaped <= 42, escaped
    assert short > 0  # the band is as narrow as the data allows, not a wide band that never misses


def test_the_chosen_band_is_the_narrowest_candidate_the_test_certifies():
    rng = np.random.default_rng(3)
    logits, labels, ambiguous = _draw(rng, 150, 60)
    escape, reject = certify(logits, labels, escape_rate=0.05, false_reject_rate=0.05, confidence=0.9)
    clear = (logits[labels == 1], logits[labels == 0])
    band = widen_band(escape.cut, reject.cut, ambiguous, coverage=0.8, confidence=0.9, clear=clear)
    assert band.widened and band.low <= escape.cut and band.high >= reject.cut and band.bound <= 0.2
    lows, highs = growth_path(escape.cut, reject.cut, clear)
    (chosen,) = np.flatnonzero((lows == np.float32(band.low)) & (highs == np.float32(band.high)))
    narrower = (ambiguous < lows[chosen - 1]).sum() + (ambiguous >= highs[chosen - 1]).sum()
    assert float(binomial_cdf(int(narrower), len(ambiguous), 0.2)) > 0.1  # one step narrower is not certified


def test_the_band_grows_first_where_clear_items_are_sparse():
    rng = np.random.default_rng(1)
    goods, cracks = rng.normal(-3.0, 0.5, 300), rng.normal(6.0, 0.5, 300)  # goods crowd the band's lower edge
    lows, highs = growth_path(-1.0, 1.0, (cracks, goods))
    assert (lows[0], highs[0]) == (-1.0, 1.0) and (lows[-1], highs[-1]) == (-128.0, 128.0)
    assert np.all(np.diff(lows) <= 0) and np.all(np.diff(highs) >= 0) and np.all(np.diff(highs - lows) > 0)
    two_logits = int(np.argmax(highs - lows >= 4.0))  # the first band two logits wider than the start
    assert highs[two_logits] - 1.0 > 1.0 - (-1.0 - lows[two_logits])  # it grew more towards the sparse crack side


def test_a_band_that_already_holds_the_ambiguous_items_is_not_widened():
    clear = (np.linspace(4.0, 8.0, 50), np.linspace(-8.0, -4.0, 50))
    band = widen_band(-3.0, 3.0, np.linspace(-2.5, 2.5, 30), coverage=0.8, confidence=0.9, clear=clear)
    assert not band.widened and (band.low, band.high) == (-3.0, 3.0) and band.missed == 0


@pytest.mark.parametrize(("n", "coverage", "needed"), [(0, 0.8, 11), (10, 0.8, 11), (20, 0.9, 22)])
def test_too_few_ambiguous_items_are_refused_with_the_number_needed(n, coverage, needed):
    with pytest.raises(InsufficientData, match=rf"need at least {needed} .* have {n}") as refusal:
        check_ambiguous(n, coverage, 0.9)
    assert (refusal.value.kind, refusal.value.needed) == ("ambiguous", needed)
    check_ambiguous(needed, coverage, 0.9)  # enough: no refusal


def test_soft_targets_keep_the_temperature_finite_where_clear_items_alone_drive_it_to_its_bound():
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.normal(8, 1, 200), rng.normal(-8, 1, 200)])
    labels = np.repeat([1.0, 0.0], 200)
    assert fit_temperature(logits, labels).at_bound  # separable: T -> its lower bound
    ambiguous = rng.normal(0.0, 3.0, 40)
    soft = fit_temperature(np.concatenate([logits, ambiguous]), np.concatenate([labels, np.full(40, 0.5)]))
    assert not soft.at_bound and soft.temperature > 1.0
    assert abs(np.mean(1 / (1 + np.exp(-ambiguous / soft.temperature))) - 0.5) < 0.1


def test_fit_calibration_puts_the_promised_share_of_ambiguous_items_in_review_and_keeps_the_clear_guarantees():
    rng = np.random.default_rng(5)
    logits, labels, ambiguous = _draw(rng, 200, 60)
    targets = Targets(escape_rate=0.05, false_reject_rate=0.05, confidence=0.9)
    plain = fit_calibration(logits, labels, targets)
    fit = fit_calibration(
        logits, labels, targets, ambiguous_logits=ambiguous, ambiguous_targets=np.full(60, 0.5), ambiguous_review=0.8
    )
    in_review = [verdict(p, fit.calibration).value == "REVIEW" for p in probability(ambiguous, fit.calibration)]
    plain_review = [verdict(p, plain.calibration).value == "REVIEW" for p in probability(ambiguous, plain.calibration)]
    assert np.mean(in_review) >= 0.8 > np.mean(plain_review)
    assert fit.thresholds.escape.bound <= 0.05 and fit.thresholds.false_reject.bound <= 0.05
    assert fit.ambiguous is not None and fit.joint_confidence == pytest.approx(0.9**3)
    assert fit.calibration.fitted_on["ambiguous"] == 60 and fit.calibration.targets["ambiguous_review"] == 0.8


def _images(rng: np.random.Generator, images: int, tiles: int, centre: float) -> tuple[np.ndarray, list[str]]:
    """Tiles of ``images`` images whose tiles share a per-image shift (surface, light): correlated within an image."""
    shift = rng.normal(0.0, 2.5, images)
    logits = (centre + np.repeat(shift, tiles) + rng.normal(0.0, 0.5, images * tiles)).astype(np.float32)
    return logits, [f"{centre}-{i}" for i in np.repeat(np.arange(images), tiles)]


def test_counting_images_keeps_the_escape_guarantee_where_counting_correlated_tiles_breaks_it():
    by_tile = by_image = 0
    splits = 200
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        cracks, crack_groups = _images(rng, 60, 20, 4.0)
        goods, good_groups = _images(rng, 60, 20, -4.0)
        logits, labels = np.concatenate([cracks, goods]), np.repeat([1, 0], len(cracks))
        fresh, _ = _images(rng, 4000, 5, 4.0)  # the population of crack tiles, many images
        for grouped in (False, True):
            groups = crack_groups + good_groups if grouped else None
            escape, _ = certify(logits, labels, escape_rate=0.1, false_reject_rate=0.1, confidence=0.9, groups=groups)
            broken = (fresh < escape.cut).mean() > 0.1
            by_image += grouped and broken
            by_tile += (not grouped) and broken
    assert by_image <= 0.1 * splits + 12  # valid: at most 10% of splits (plus sampling slack, 3 sigma)
    assert by_tile > 0.2 * splits  # 1,200 correlated tiles counted as independent promise too much
