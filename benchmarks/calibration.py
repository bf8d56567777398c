"""Calibration on real data: ECE before and after, certified thresholds, and what they do on unseen items.

For each model the accuracy benchmark trained and exported (``benchmarks/results/models/<job>.onnx`` and
``<job>.int8.onnx``), the images it never saw (its test split, ``<job>.split.json``) are split by source image into a
**calibration half** and a **test half**: disjoint from training, validation and int8 calibration, and from each
other. On the calibration half the temperature and the thresholds are fitted exactly as ``crackscope calibrate``
fits them with ``--ambiguous-review 0`` (:func:`crackscope.calibration.calibrate.fit_calibration` on the clear items
only, the deployed ONNX file run through the runtime, no PyTorch); on the test half the script measures:

- ECE (15 bins) of the crack probability before (raw sigmoid) and after temperature scaling;
- at escape 1% / false-reject 5% / confidence 90%, and at the tightest setting of a looser ladder that the
  calibration half can certify: the thresholds, and the measured escape, false-reject and review rates;
- with the Özgenel model (concrete, never trained on DeepCrack): the share of DeepCrack's mask-derived *ambiguous*
  128 px patches sent to REVIEW against that of its clear patches.

When a setting needs more labelled items than the calibration half has, the row says so and how many (that is
what ``crackscope calibrate`` does too). Goals: ECE <= 1% after scaling; measured escape rate within target;
review rate as low as the data allows; ambiguous items in REVIEW at least 3x as often as clear ones.

Run (after ``python benchmarks/accuracy.py``, which writes the models and splits):
    python benchmarks/calibration.py                          # both jobs, fp32 and int8, a few minutes
    python benchmarks/calibration.py --only magnetic-tile --precision int8
    python benchmarks/calibration.py --quick                  # smoke run: small subsets
    python benchmarks/calibration.py --model m.onnx --data labelled/ [--ambiguous-data DIR]   # any model and folder
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from saved_models import DATA_DIR, MODELS_DIR, model_path, read_held_out

from crackscope.calibration.calibrate import Targets, fit_calibration
from crackscope.calibration.metrics import expected_calibration_error, verdict_counts, verdict_rates
from crackscope.calibration.score import Scores, score_samples
from crackscope.calibration.temperature import fit_temperature
from crackscope.calibration.thresholds import InsufficientData
from crackscope.inspect.card import Calibration
from crackscope.inspect.decision import probability
from crackscope.inspect.model import OnnxModel
from crackscope.labelled import Clarity, DataConfig, MaskLabelling, Sample, load_samples, split_by_group

REPO = Path(__file__).resolve().parents[1]
PATCHES_128 = DataConfig(masks=MaskLabelling(patch_size=128, stride=128))  # the tiles of the published figures
STRICT = Targets(escape_rate=0.01, false_reject_rate=0.05, confidence=0.9)
LOOSER = tuple(  # tried in order after the strict setting; the first the calibration half can certify is reported
    Targets(escape, reject, 0.9) for escape in (0.02, 0.05, 0.1, 0.2) for reject in (0.05, 0.1, 0.2)
)


@dataclass(frozen=True)
class Job:
    name: str  # the accuracy benchmark's job (model file stem)
    dataset: str  # folder under the datasets root
    ambiguous: str | None = None  # a mask dataset whose ambiguous patches are scored with this job's model


JOBS = (Job("ozgenel-concrete", "ozgenel-concrete", ambiguous="deepcrack-train"), Job("magnetic-tile", "magnetic-tile"))


@dataclass(frozen=True)
class Settings:
    datasets: Path
    models_dir: Path
    jobs: tuple[Job, ...]
    precisions: tuple[str, ...]
    seed: int = 0
    calibration_share: float = 0.5
    max_items: int | None = None  # per job, held-out items (smoke runs)
    max_ambiguous_images: int | None = None  # DeepCrack photos scored (12 patches each)
    batch_size: int = 32
    model: Path | None = None  # --model/--data: any model on a folder held out as a whole
    data: Path | None = None
    ambiguous_data: Path | None = None
    json_out: Path = REPO / "benchmarks" / "results" / "calibration" / "results.json"


@dataclass(frozen=True)
class Row:
    """One model at one setting, measured on the test half."""

    dataset: str
    model: str
    setting: str
    calibration_items: dict[str, int]
    test_items: dict[str, int]
    temperature: float
    ece_before: float
    ece_after: float
    load: float
    targets: dict[str, float] = field(default_factory=dict)
    refused: str | None = None
    ok_below: float | None = None
    defect_at_or_above: float | None = None
    review_band: bool | None = None
    escape_rate: float | None = None
    false_reject_rate: float | None = None
    review_rate: float | None = None
    test_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    ambiguous: dict[str, object] = field(default_factory=dict)


# --- data -----------------------------------------------------------------------------------------------------------


def held_out_samples(job: Job, settings: Settings) -> list[Sample]:
    """The job's test-split samples: never trained on, early-stopped on or int8-calibrated on."""
    held_out = read_held_out(job.name, settings.models_dir)
    dataset = load_samples(settings.datasets / held_out.dataset, PATCHES_128)
    test = set(held_out.test)
    samples = [s for s in dataset.samples if s.group in test]
    missing = len(test) - len({s.group for s in samples})
    if missing:
        print(f"warning: {missing} held-out images of {job.name} are no longer readable in the dataset", flush=True)
    return samples


def limit(samples: Sequence[Sample], count: int | None, seed: int) -> list[Sample]:
    """A seeded, class-stratified subset of at most ``count`` samples (all of them when ``count`` is None)."""
    if count is None or len(samples) <= count:
        return list(samples)
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in (0, 1):
        members = [s for s in samples if s.label == label]
        share = round(count * len(members) / len(samples))
        chosen += [members[i] for i in sorted(rng.permutation(len(members))[:share])]
    return chosen


def halves(samples: Sequence[Sample], share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Calibration and test parts, grouped by source image and stratified by class (``share`` to calibration)."""
    test, calibration = split_by_group(samples, share, seed)
    return calibration, test


def counts(samples: Sequence[Sample]) -> dict[str, int]:
    clear = [s for s in samples if s.clarity is Clarity.CLEAR]
    return {
        "crack": sum(s.label for s in clear),
        "ok": sum(1 - s.label for s in clear),
        "ambiguous": len(samples) - len(clear),
    }


# --- measuring -----------------------------------------------------------------------------------------------------


def setting_name(targets: Targets) -> str:
    return f"escape {targets.escape_rate:g} / false reject {targets.false_reject_rate:g} / conf {targets.confidence:g}"


def measure(
    dataset: str,
    model: str,
    calibration: Scores,
    test: Scores,
    ambiguous: Scores | None,
) -> list[Row]:
    """The strict row and the first looser row the calibration half certifies (or the refusals on the way)."""
    cal_clear, test_clear = calibration.clear, test.clear
    cal_logits, cal_labels = calibration.logits[cal_clear], calibration.labels[cal_clear]
    test_logits, test_labels = test.logits[test_clear], test.labels[test_clear]
    temperature = fit_temperature(cal_logits, cal_labels).temperature
    base = Row(
        dataset=dataset,
        model=model,
        setting="",
        calibration_items={k: int(v) for k, v in _counts(calibration).items()},
        test_items={k: int(v) for k, v in _counts(test).items()},
        temperature=temperature,
        ece_before=expected_calibration_error(probability(test_logits, Calibration()), test_labels),
        ece_after=expected_calibration_error(
            probability(test_logits, Calibration(temperature=temperature)), test_labels
        ),
        load=load_average(),
    )
    rows = []
    for targets in (STRICT, *LOOSER):
        try:
            fit = fit_calibration(cal_logits, cal_labels, targets)
        except InsufficientData as refusal:
            refused = replace(base, setting=setting_name(targets), targets=asdict(targets), refused=str(refusal))
            if targets is STRICT or targets is LOOSER[-1]:  # the strict one, and the loosest when none passed
                rows.append(replace(refused, load=load_average()))
            continue
        rows.append(evaluate(base, targets, fit.calibration, fit.thresholds.review_band, test, ambiguous))
        if targets is not STRICT:
            break
    return rows


def evaluate(base: Row, targets: Targets, card: Calibration, band: bool, test: Scores, ambiguous: Scores | None) -> Row:
    clear = test.clear
    probs = probability(test.logits[clear], card)
    rates = verdict_rates(probs, test.labels[clear], card)
    extra: dict[str, object] = {}
    if ambiguous is not None:
        amb_clear = ambiguous.clear
        clear_counts = verdict_counts(probability(ambiguous.logits[amb_clear], card), card)
        amb_counts = verdict_counts(probability(ambiguous.logits[~amb_clear], card), card)
        clear_share = _share(clear_counts["REVIEW"], sum(clear_counts.values()))
        amb_share = _share(amb_counts["REVIEW"], sum(amb_counts.values()))
        ratio = amb_share / clear_share if clear_share else (math.inf if amb_share else None)
        extra = {
            "clear": clear_counts,
            "ambiguous": amb_counts,
            "clear_review_share": clear_share,
            "ambiguous_review_share": amb_share,
            "ratio": ratio,
        }
    return replace(
        base,
        setting=setting_name(targets),
        targets=asdict(targets),
        temperature=card.temperature,  # the deployed one: raised where thresholds would not be representable
        ece_after=expected_calibration_error(probs, test.labels[clear]),
        ok_below=card.ok_below,
        defect_at_or_above=card.defect_at_or_above,
        review_band=band,
        escape_rate=rates.escape_rate,
        false_reject_rate=rates.false_reject_rate,
        review_rate=rates.review_rate,
        test_counts={"crack": rates.crack, "ok": rates.ok},
        ambiguous=extra,
        load=load_average(),
    )


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def _counts(scores: Scores) -> dict[str, int]:
    return counts(scores.samples)


def score(model: Path, samples: Sequence[Sample], settings: Settings, desc: str) -> Scores:
    started = time.perf_counter()
    with OnnxModel(model) as session:
        scores = score_samples(session, samples, batch_size=settings.batch_size, progress=False, desc=desc)
    seconds = time.perf_counter() - started
    print(f"  scored {len(samples)} items with {model.name} in {seconds:.0f}s (load {load_average()})", flush=True)
    return scores


def ambiguous_samples(folder: Path, settings: Settings) -> list[Sample]:
    """Clear and ambiguous patches of a labelled folder (masks: 128 px patches), on at most N source images."""
    dataset = load_samples(folder, PATCHES_128)
    groups = sorted({s.group for s in dataset.samples})
    if settings.max_ambiguous_images is not None and len(groups) > settings.max_ambiguous_images:
        rng = np.random.default_rng(settings.seed)
        keep = {groups[i] for i in rng.permutation(len(groups))[: settings.max_ambiguous_images]}
        return [s for s in dataset.samples if s.group in keep]
    return list(dataset.samples)


def run_job(job: Job, settings: Settings) -> list[Row]:
    samples = limit(held_out_samples(job, settings), settings.max_items, settings.seed)
    if len({s.group for s in samples}) < 4:
        print(f"\n=== {job.name}: only {len(samples)} held-out items; nothing to measure ===", flush=True)
        return []
    calibration, test = halves(samples, settings.calibration_share, settings.seed)
    print(
        f"\n=== {job.name}: {len(samples)} held-out items -> calibration {counts(calibration)}, "
        f"test {counts(test)} ===",
        flush=True,
    )
    amb = ambiguous_samples(settings.datasets / job.ambiguous, settings) if job.ambiguous else None
    rows = []
    for precision in settings.precisions:
        path = model_path(job.name, precision, settings.models_dir)
        if not path.is_file():
            print(f"  {path} not found (run benchmarks/accuracy.py first); skipped", flush=True)
            continue
        scored = score(path, calibration + test, settings, f"{job.name} {precision}")
        rows += measure(
            job.name,
            path.name,
            scored.subset(np.arange(len(scored.samples)) < len(calibration)),
            scored.subset(np.arange(len(scored.samples)) >= len(calibration)),
            score(path, amb, settings, f"{job.ambiguous} {precision}") if amb else None,
        )
    return rows


def run_custom(settings: Settings) -> list[Row]:
    """``--model/--data``: the whole folder is taken as held out (the caller vouches for it)."""
    assert settings.model is not None and settings.data is not None
    samples = limit(load_samples(settings.data, PATCHES_128).samples, settings.max_items, settings.seed)
    calibration, test = halves(samples, settings.calibration_share, settings.seed)
    print(f"\n=== {settings.data}: calibration {counts(calibration)}, test {counts(test)} ===", flush=True)
    scored = score(settings.model, calibration + test, settings, settings.data.name)
    amb = ambiguous_samples(settings.ambiguous_data, settings) if settings.ambiguous_data else None
    return measure(
        settings.data.name,
        settings.model.name,
        scored.subset(np.arange(len(scored.samples)) < len(calibration)),
        scored.subset(np.arange(len(scored.samples)) >= len(calibration)),
        score(settings.model, amb, settings, "ambiguous") if amb else None,
    )


# --- reporting -----------------------------------------------------------------------------------------------------


def load_average() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def pct(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    return "inf" if math.isinf(value) else f"{value:.{digits}%}"


def main_table(rows: Sequence[Row]) -> str:
    head = (
        "| dataset | model | setting | calibration half (crack / ok) | test half (crack / ok) | T "
        "| ECE before -> after (test) | OK below | DEFECT from | escape (test) | false reject (test) | review (test) "
        "| load 1 min |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        cal = f"{r.calibration_items['crack']} / {r.calibration_items['ok']}"
        test = f"{r.test_items['crack']} / {r.test_items['ok']}"
        ece = f"{pct(r.ece_before)} -> {pct(r.ece_after)}"
        if r.refused:
            needed = r.refused.split("need at least ")[-1].split(" clear")[0] if "need at least" in r.refused else "?"
            verdict = f"refused: needs >= {needed} clear items of a class"
            lines.append(
                f"| {r.dataset} | {r.model} | {r.setting} | {cal} | {test} | {r.temperature:.3g} | {ece} | "
                f"{verdict} | | | | | {r.load} |"
            )
            continue
        escaped = r.test_counts["crack"]["OK"]
        rejected = r.test_counts["ok"]["DEFECT"]
        lines.append(
            f"| {r.dataset} | {r.model} | {r.setting} | {cal} | {test} | {r.temperature:.3g} | {ece} | "
            f"{r.ok_below:.4g} | {r.defect_at_or_above:.4g} | {pct(r.escape_rate)} ({escaped}) | "
            f"{pct(r.false_reject_rate)} ({rejected}) | {pct(r.review_rate)} | {r.load} |"
        )
    return "\n".join(lines)


def ambiguous_table(rows: Sequence[Row]) -> str:
    shown = [r for r in rows if r.ambiguous]
    if not shown:
        return ""
    lines = [
        "| model | setting | ambiguous patches in REVIEW | clear patches in REVIEW | ratio | load 1 min |",
        "|---|---|---|---|---|---|",
    ]
    for r in shown:
        a = r.ambiguous
        n_amb, n_clear = sum(a["ambiguous"].values()), sum(a["clear"].values())
        ratio = "" if a["ratio"] is None else ("inf" if math.isinf(a["ratio"]) else f"{a['ratio']:.1f}x")
        lines.append(
            f"| {r.model} | {r.setting} | {pct(a['ambiguous_review_share'], 1)} of {n_amb} | "
            f"{pct(a['clear_review_share'], 1)} of {n_clear} | {ratio} | {r.load} |"
        )
    return "\n".join(lines)


def goals(rows: Sequence[Row]) -> str:
    lines = ["| goal | row | measured | met |", "|---|---|---|---|"]
    for r in rows:
        name = f"{r.model}, {r.setting}"
        met_ece = "yes" if r.ece_after <= 0.01 else "no"
        lines.append(f"| ECE <= 1% after scaling | {r.model} ({r.dataset}) | {pct(r.ece_after)} | {met_ece} |")
        if r.refused:
            continue
        met = r.escape_rate is not None and r.escape_rate <= r.targets["escape_rate"]
        lines.append(f"| escape within target | {name} | {pct(r.escape_rate)} | {'yes' if met else 'no'} |")
        if r.ambiguous and r.ambiguous["ratio"] is not None:
            ratio = r.ambiguous["ratio"]
            lines.append(
                f"| ambiguous in REVIEW >= 3x clear | {name} | {'inf' if math.isinf(ratio) else f'{ratio:.1f}x'} | "
                f"{'yes' if ratio >= 3 else 'no'} |"
            )
    return "\n".join(dict.fromkeys(lines))


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=str(DATA_DIR), help="datasets root (default: %(default)s)")
    parser.add_argument("--models", default=str(MODELS_DIR), help="exported models and splits (default: %(default)s)")
    parser.add_argument("--only", choices=[j.name for j in JOBS], action="append")
    parser.add_argument("--precision", default="fp32,int8", help="comma-separated: fp32, int8 (default both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-share", type=float, default=0.5, help="held-out share used to calibrate")
    parser.add_argument("--max-items", type=int, help="at most N held-out items per job (class-stratified)")
    parser.add_argument("--max-ambiguous-images", type=int, help="at most N DeepCrack photos (12 patches each)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 items per job, 20 DeepCrack photos")
    parser.add_argument("--model", help="any exported model, with --data: a labelled folder taken as held out")
    parser.add_argument("--data", help="labelled folder for --model (split into calibration and test halves)")
    parser.add_argument("--ambiguous-data", help="with --model: a folder whose ambiguous vs clear items to compare")
    parser.add_argument("--json", help="where to write the rows (default benchmarks/results/calibration/results.json)")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.data):
        parser.error("--model and --data go together")
    settings = Settings(
        datasets=Path(args.datasets),
        models_dir=Path(args.models),
        jobs=tuple(j for j in JOBS if not args.only or j.name in args.only),
        precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
        seed=args.seed,
        calibration_share=args.calibration_share,
        max_items=args.max_items or (300 if args.quick else None),
        max_ambiguous_images=args.max_ambiguous_images or (20 if args.quick else None),
        model=Path(args.model) if args.model else None,
        data=Path(args.data) if args.data else None,
        ambiguous_data=Path(args.ambiguous_data) if args.ambiguous_data else None,
    )
    return replace(settings, json_out=Path(args.json)) if args.json else settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.perf_counter()
    print(f"load average (1, 5, 15 min) at start {os.getloadavg()}", flush=True)
    try:
        rows = run_custom(settings) if settings.model else [r for job in settings.jobs for r in run_job(job, settings)]
    except FileNotFoundError as error:
        print(f"benchmarks/calibration.py: {error}", file=sys.stderr)
        return 2
    print(f"\n{main_table(rows)}\n")
    amb = ambiguous_table(rows)
    if amb:
        print(f"{amb}\n")
    print(f"{goals(rows)}\n")
    for row in rows:
        if row.refused:
            print(f"refused ({row.model}, {row.setting}): {row.refused}")
    print(f"total {time.perf_counter() - started:.0f}s; load average (1, 5, 15 min) at end {os.getloadavg()}")
    settings.json_out.parent.mkdir(parents=True, exist_ok=True)
    settings.json_out.write_text(json.dumps([asdict(r) for r in rows], indent=2, default=str), encoding="utf-8")
    print(f"rows: {settings.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
