"""Do the calibration guarantees hold on images the calibration never saw? Fit on one half of the images, measure on
the other, many seeded splits; counting tiles against counting images.

A model inspects the tiles of a folder of photos with pixel masks (default: DeepCrack's 300 training photos, which
the Özgenel model of ``benchmarks/int8_suite.py`` never saw), cut and labelled as ``crackscope calibrate`` cuts and
labels them (crack, ok, or ambiguous from the mask). The tiles are scored once. Then, for each seeded split of the
*photos* into two halves, :func:`crackscope.calibration.calibrate.fit_calibration` fits on the first half twice:

- **by tile**: every tile counted as an independent item (what ``calibrate`` did before it counted images);
- **by image**: one tile per photo and class (what it does now, :func:`~crackscope.calibration.thresholds.certify`);

each with the ambiguous REVIEW band (``--ambiguous-review``, default 0.8). On the second half it measures the escape
rate (crack tiles called OK), the false-reject rate (good tiles called DEFECT), the share of ambiguous tiles in
REVIEW and of clear tiles in REVIEW; each way on the rate it promises: pooled over the tiles (by tile), or with every
photo weighing the same (by image: the rate of a tile picked at random from a photo picked at random). A guarantee
made with confidence ``c`` may fail in at most ``1 - c`` of the splits: the table gives how often each one failed,
next to that allowance.

Run (after ``benchmarks/int8_suite.py`` has trained its Özgenel 3,744 model):
    python benchmarks/calibration_halves.py
    python benchmarks/calibration_halves.py --model model.onnx --data photos-with-masks/ --splits 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from saved_models import REPO, data_missing

from crackscope.calibration.calibrate import Targets, fit_calibration
from crackscope.calibration.score import score_samples
from crackscope.calibration.thresholds import InsufficientData
from crackscope.inspect.decision import Verdict, probability, verdicts
from crackscope.inspect.model import OnnxModel
from crackscope.labelled import Clarity, DataConfig, for_tile, load_samples

DEFAULT_MODEL = REPO / "benchmarks" / "results" / "int8-suite" / "models" / "ozgenel-3744" / "model.onnx"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "deepcrack-train"


def _pooled(hits: np.ndarray, where: np.ndarray) -> float:
    """The share of ``where``'s tiles that are ``hits``."""
    return float(hits[where].mean())


def _per_photo(hits: np.ndarray, where: np.ndarray, groups: np.ndarray) -> float:
    """The share of ``hits`` per photo among ``where``'s tiles, averaged over the photos: the rate of a tile picked
    at random from a photo picked at random, which counting images guarantees."""
    names, index = np.unique(groups[where], return_inverse=True)
    return float(np.mean(np.bincount(index, weights=hits[where]) / np.bincount(index))) if len(names) else np.nan


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported model (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photos with masks (default: %(default)s)")
    parser.add_argument("--splits", type=int, default=100, help="seeded halvings of the photos (default 100)")
    parser.add_argument("--escape-rate", type=float, default=0.05)
    parser.add_argument("--false-reject-rate", type=float, default=0.10)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--ambiguous-review", type=float, default=0.8)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    if data_missing():
        return 2
    if not settings.model.is_file():
        print(f"{settings.model} is missing: run benchmarks/int8_suite.py first, or pass --model", file=sys.stderr)
        return 2
    started, load = time.perf_counter(), os.getloadavg()[0]
    with OnnxModel(settings.model, providers="cpu") as model:
        dataset = load_samples(*for_tile(str(settings.data), DataConfig(), model.input_size))
        scores = score_samples(model, dataset.samples, desc="scoring")
    samples, logits = scores.samples, scores.logits
    clarity = np.array([s.clarity.value for s in samples])
    labels, groups = np.array([s.label for s in samples]), np.array([s.group for s in samples])
    targets_of = np.array([s.target for s in samples])
    photos = np.unique(groups)
    print(
        f"{settings.model.name} on {settings.data}: {len(photos)} photos, {len(samples)} tiles "
        f"({(clarity == 'clear').sum()} clear: {((clarity == 'clear') & (labels == 1)).sum()} crack; "
        f"{(clarity == Clarity.AMBIGUOUS.value).sum()} ambiguous), scored in {time.perf_counter() - started:.0f} s"
    )
    targets = Targets(settings.escape_rate, settings.false_reject_rate, settings.confidence)
    failures = {way: {"escape": 0, "false reject": 0, "ambiguous": 0} for way in ("by tile", "by image")}
    measured = {way: [] for way in failures}
    refused = dict.fromkeys(failures, 0)
    for seed in range(settings.splits):
        first = set(np.random.default_rng(seed).permutation(photos)[: len(photos) // 2])
        fit_half = np.array([g in first for g in groups])
        for way in failures:
            clear_fit, amb_fit = fit_half & (clarity == "clear"), fit_half & (clarity == Clarity.AMBIGUOUS.value)
            try:
                fit = fit_calibration(
                    logits[clear_fit],
                    labels[clear_fit],
                    targets,
                    ambiguous_logits=logits[amb_fit],
                    ambiguous_targets=targets_of[amb_fit],
                    ambiguous_review=settings.ambiguous_review,
                    groups=list(groups[clear_fit]) if way == "by image" else None,
                    ambiguous_groups=list(groups[amb_fit]) if way == "by image" else None,
                )
            except InsufficientData:
                refused[way] += 1
                continue
            test = ~fit_half
            decided = np.array([v.value for v in verdicts(probability(logits, fit.calibration), fit.calibration)])
            crack, good = test & (clarity == "clear") & (labels == 1), test & (clarity == "clear") & (labels == 0)
            ambiguous = test & (clarity == Clarity.AMBIGUOUS.value)
            # Each way is judged on the rate it promises: pooled over tiles, or with every photo weighing the same.
            rate = _pooled if way == "by tile" else lambda hits, where: _per_photo(hits, where, groups)
            rates = (
                rate(decided == Verdict.OK.value, crack),
                rate(decided == Verdict.DEFECT.value, good),
                rate(decided == Verdict.REVIEW.value, ambiguous),
                _pooled(decided == Verdict.REVIEW.value, crack | good),
            )
            measured[way].append(rates)
            failures[way]["escape"] += rates[0] > settings.escape_rate
            failures[way]["false reject"] += rates[1] > settings.false_reject_rate
            failures[way]["ambiguous"] += rates[2] < settings.ambiguous_review
    allowed = (1 - settings.confidence) * settings.splits
    print(
        f"\n{settings.splits} seeded halvings by photo; targets: escape <= {settings.escape_rate:g}, false reject <= "
        f"{settings.false_reject_rate:g}, ambiguous in REVIEW >= {settings.ambiguous_review:g}, each at confidence "
        f"{settings.confidence:g} (so each may fail in at most {allowed:.0f} splits)\n"
    )
    print(
        "| counted | fits refused | escape failed | false reject failed | ambiguous coverage failed | median escape | "
        "median false reject | median ambiguous in REVIEW | median clear in REVIEW |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for way, counts in failures.items():
        rows = np.array(measured[way]) if measured[way] else np.full((1, 4), np.nan)
        medians = np.median(rows, axis=0)
        print(
            f"| {way} | {refused[way]} | {counts['escape']} | {counts['false reject']} | {counts['ambiguous']} | "
            f"{medians[0]:.2%} | {medians[1]:.2%} | {medians[2]:.1%} | {medians[3]:.1%} |"
        )
    print(f"\n{time.perf_counter() - started:.0f} s; load {load:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
