"""``crackscope calibrate``: fit the deployed model's temperature and OK / REVIEW / DEFECT thresholds, in place.

The exported model itself (fp32 or int8: the file that will be deployed) is run through the runtime over a
labelled calibration set, in any layout ``train`` reads (class folders with an optional ``ambiguous/``, masks,
votes). Then:

1. a temperature is fitted by negative log-likelihood on the clear items and the ambiguous ones with their soft
   targets (:mod:`.temperature`), with the ECE of the clear items (15 bins) before and after (:mod:`.metrics`);
2. ``ok_below`` and ``defect_at_or_above`` are chosen so that, each with the stated confidence, the escape rate is
   at most ``escape_rate``, the false-reject rate at most ``false_reject_rate``, and at least ``ambiguous_review``
   (default 80%) of the ambiguous items land in REVIEW, with as little REVIEW of clear items as that allows
   (:mod:`.thresholds` and :mod:`.ambiguity`, Learn-Then-Test; ``ambiguous_review`` 0 keeps the clear items'
   guarantees only);
3. the calibration is written into the model's metadata (graph and weights untouched), and into the dense
   whole-frame graph beside it when there is one (``model.dense.onnx`` decides with ``model.onnx``'s calibration), and
   ``OUT/calibration.json`` and ``OUT/calibration.html`` (:mod:`.report`) describe it, including where the
   ambiguous items landed against the clear ones.

When the data cannot support the request, :class:`~.thresholds.InsufficientData` says how many labelled items
would be needed and nothing at all is written. Every input is checked before the model runs.

This package is torch-free. It reads labelled data with :mod:`crackscope.labelled`, the labelled-data reader that
sits below training, calibration and deploy and whose import needs only numpy, OpenCV and tqdm (a test runs
``crackscope calibrate`` with PyTorch unimportable, and ``tests/test_layout.py`` checks that this package imports
nothing from ``crackscope.training`` and no PyTorch).

Example:
    $ crackscope calibrate --model model.int8.onnx --data calib/ --escape-rate 0.01 --false-reject-rate 0.05 \\
        --confidence 0.9 --out calib-report/
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from crackscope.calibration.ambiguity import check_ambiguous, widen_band
from crackscope.calibration.metrics import expected_calibration_error, reliability, verdict_counts, verdict_rates
from crackscope.calibration.outcome import Fit, Outcome
from crackscope.calibration.report import render_report
from crackscope.calibration.score import Scores, score_samples
from crackscope.calibration.stats import clopper_pearson_upper
from crackscope.calibration.temperature import fit_temperature, nll
from crackscope.calibration.thresholds import (
    Certificate,
    as_probabilities,
    certify,
    check_request,
    one_per_group,
    one_per_group_and_class,
    smallest_temperature,
)
from crackscope.inspect.card import Calibration, ModelCard, calibration_folder, read_card, write_calibration
from crackscope.inspect.decision import is_identity, probability
from crackscope.inspect.model import OnnxModel, dense_path, file_sha256
from crackscope.inspect.results import utc_now
from crackscope.labelled import Clarity, DataConfig, LabelledSet, for_tile, load_samples

METHOD = "temperature scaling (NLL) + Learn-Then-Test thresholds (binomial tail, fixed sequence)"


@dataclass(frozen=True)
class Targets:
    """What the factory asks for: each rate at most its target, each with probability at least ``confidence``."""

    escape_rate: float = 0.01
    false_reject_rate: float = 0.05
    confidence: float = 0.9

    def __post_init__(self) -> None:
        for name in ("escape_rate", "false_reject_rate", "confidence"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}")


@dataclass(frozen=True)
class CalibrateConfig:
    """What ``crackscope calibrate`` does (YAML ``--config`` < flags)."""

    model: str = ""
    data: str = ""
    out: str | None = None  # default: <model file without .onnx>.calibration/ beside the model
    escape_rate: float = 0.01
    false_reject_rate: float = 0.05
    confidence: float = 0.9
    ambiguous_review: float = 0.8  # share of ambiguous items certified into REVIEW; 0: clear items only
    batch_size: int = 32
    providers: str = "auto"
    threads: int | None = None
    progress: bool = True
    data_config: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        Targets(self.escape_rate, self.false_reject_rate, self.confidence)  # raises for a value outside (0, 1)
        if self.batch_size < 1:
            raise ValueError(f"batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 <= self.ambiguous_review < 1.0:
            raise ValueError(f"ambiguous-review must be in [0, 1) (0 turns it off), got {self.ambiguous_review}")

    @property
    def targets(self) -> Targets:
        return Targets(self.escape_rate, self.false_reject_rate, self.confidence)

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return calibration_folder(self.model)


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    targets: Targets,
    fitted_on: dict[str, object] | None = None,
    *,
    ambiguous_logits: np.ndarray | None = None,
    ambiguous_targets: np.ndarray | None = None,
    ambiguous_review: float = 0.0,
    groups: Sequence[str] | None = None,
    ambiguous_groups: Sequence[str] | None = None,
) -> Fit:
    """Temperature and certified thresholds from the raw logits of clear items (labels 1 crack, 0 ok) and, when
    given, of ambiguous items with their soft targets (the crack share of their labellers).

    The ambiguous items join the temperature fit; with ``ambiguous_review`` > 0 the REVIEW band is also widened
    until that share of them is certified to land in it (:mod:`.ambiguity`). With ``groups`` (and
    ``ambiguous_groups``), each item's source image, the guarantees count images, not tiles: one item per image and
    class (:func:`~.thresholds.one_per_group`); the temperature is still fitted on every item.

    Raises:
        InsufficientData: too few clear items of a class, or (with ``ambiguous_review``) too few ambiguous items.
    """
    amb_z = np.zeros(0, np.float32) if ambiguous_logits is None else np.asarray(ambiguous_logits, np.float32)
    amb_y = np.zeros(0, np.float64) if ambiguous_targets is None else np.asarray(ambiguous_targets, np.float64)
    if len(amb_z) != len(amb_y):
        raise ValueError(f"{len(amb_z)} ambiguous logits but {len(amb_y)} targets")
    all_z, all_y = np.concatenate([logits, amb_z]), np.concatenate([np.asarray(labels, np.float64), amb_y])
    temperature = fit_temperature(all_z, all_y)
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels).astype(np.int64)
    # Every clear item orders the band's growth (a density); the guarantees count independent units.
    density = (logits[labels == 1], logits[labels == 0])
    n_ambiguous = len(amb_z)
    if groups is not None:
        keep = one_per_group_and_class(labels, groups)
        logits, labels = logits[keep], labels[keep]
    if ambiguous_groups is not None and n_ambiguous:
        amb_z = amb_z[one_per_group(list(ambiguous_groups))]
    escape, false_reject = certify(
        logits,
        labels,
        escape_rate=targets.escape_rate,
        false_reject_rate=targets.false_reject_rate,
        confidence=targets.confidence,
    )
    band = None
    if ambiguous_review > 0:
        crack_z, good_z = logits[labels == 1], logits[labels == 0]
        band = widen_band(
            escape.cut, false_reject.cut, amb_z, coverage=ambiguous_review, confidence=targets.confidence, clear=density
        )
        escape = _at_cut(escape, crack_z, band.low, below=True)
        false_reject = _at_cut(false_reject, good_z, band.high, below=False)
    # The cuts do not depend on T; T only must keep them where the runtime's sigmoid can still tell them apart.
    lowest = smallest_temperature(escape, false_reject)
    if temperature.temperature < lowest:
        temperature = replace(
            temperature,
            temperature=lowest,
            nll_after=nll(all_z, all_y, lowest),
            raised_to_represent_thresholds=True,
        )
    choice = as_probabilities(escape, false_reject, temperature.temperature)
    soft = f" and {n_ambiguous} ambiguous items (soft targets)" if n_ambiguous else ""
    method = METHOD + (f" + a REVIEW band for >= {ambiguous_review:.0%} of ambiguous items" if band else "")
    calibration = Calibration(
        temperature=temperature.temperature,
        ok_below=choice.ok_below,
        defect_at_or_above=choice.defect_at_or_above,
        method=f"{method} on {len(density[0]) + len(density[1])} clear items{soft}{temperature.note}",
        targets={**asdict(targets), **({"ambiguous_review": ambiguous_review} if band else {})},
        fitted_on={
            **(fitted_on or {}),
            "clear_crack": choice.escape.n,
            "clear_ok": choice.false_reject.n,
            "ambiguous": n_ambiguous,
            **({"counted_by": "image", "ambiguous_images": len(amb_z)} if groups is not None else {}),
            "joint_confidence": choice.joint_confidence * (band.confidence if band else 1.0),
            "fitted_at": utc_now(),
        },
    )
    return Fit(calibration, temperature, choice, band)


def _at_cut(certificate: Certificate, class_logits: np.ndarray, cut: float, *, below: bool) -> Certificate:
    """``certificate`` moved to a safer raw ``cut``, recounted on its class's logits: the escape cut (``below``:
    cracks under it are escapes) moved down, or the false-reject cut (good items at or above it) moved up."""
    z = np.asarray(class_logits, np.float32)
    count = int((z < np.float32(cut)).sum()) if below else int((z >= np.float32(cut)).sum())
    bound = clopper_pearson_upper(count, certificate.n, certificate.confidence)
    return replace(certificate, count=count, bound=bound, cut=float(cut))


# --- the command --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    model: Path
    out: Path
    card: ModelCard
    dataset: LabelledSet


def check_inputs(config: CalibrateConfig) -> _Plan:
    """Everything that can be checked before the model runs: targets, model, output folder, data, class counts."""
    if not config.model:
        raise ValueError("no model: pass --model FILE.onnx")
    if not config.data:
        raise ValueError("no calibration data: pass --data DIR")
    model = Path(config.model)
    card = read_card(model)  # a missing, foreign or corrupt model is a ModelCardError naming the file
    for path in (model, model.parent):
        if not os.access(path, os.W_OK):
            raise ValueError(f"{path}: no permission to write; the calibration is written into the model file")
    out = config.out_dir
    _check_writable_folder(out)
    # Mask images are cut into tiles of the model's input size unless a tile size was given.
    dataset = load_samples(*for_tile(config.data, config.data_config, card.input_size))
    clear = [s for s in dataset.samples if s.clarity is Clarity.CLEAR]
    weak = sum(s.clarity is Clarity.WEAK for s in dataset.samples)
    if weak and not any(s.label for s in clear):
        raise ValueError(
            f"{config.data}: {weak} tiles of images labelled only as a whole (data mode tiles) and no tile labelled "
            "crack: the guarantees are per tile, so calibrate on tiles with their own labels (class folders of "
            "tiles, or images with masks)"
        )
    # The guarantees count images (independent units), not the tiles cut from them.
    check_request(
        len({s.group for s in clear if s.label}),
        len({s.group for s in clear if not s.label}),
        config.escape_rate,
        config.false_reject_rate,
        config.confidence,
    )
    if config.ambiguous_review > 0:
        ambiguous = len({s.group for s in dataset.samples if s.clarity is Clarity.AMBIGUOUS})
        check_ambiguous(ambiguous, config.ambiguous_review, config.confidence)
    return _Plan(model, out, card, dataset)


def _check_writable_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"--out {out}: no permission to write in {existing}")


def calibrate(config: CalibrateConfig) -> Outcome:
    """Run ``crackscope calibrate`` (see the module docstring); nothing is written unless everything succeeded."""
    plan = check_inputs(config)
    with OnnxModel(plan.model, providers=config.providers, intra_op_threads=config.threads) as model:
        scores = score_samples(
            model, plan.dataset.samples, batch_size=config.batch_size, progress=config.progress, desc="calibrating"
        )
    sha_before = file_sha256(plan.model)
    ambiguous = np.array([s.clarity is Clarity.AMBIGUOUS for s in scores.samples], dtype=bool)
    outcome = evaluate_fit(
        scores,
        fit_calibration(
            scores.logits[scores.clear],
            scores.labels[scores.clear],
            config.targets,
            {"data": str(Path(config.data).resolve()), "items": len(scores.samples), "model_sha256": sha_before},
            ambiguous_logits=scores.logits[ambiguous],
            ambiguous_targets=np.array([s.target for s in scores.samples])[ambiguous],
            ambiguous_review=config.ambiguous_review,
            groups=[s.group for s, keep in zip(scores.samples, scores.clear, strict=True) if keep],
            ambiguous_groups=[s.group for s, keep in zip(scores.samples, ambiguous, strict=True) if keep],
        ),
        model=plan.model,
        out=plan.out,
        card=plan.card,
        data=plan.dataset.summary(),
    )
    # Render everything before writing anything, then the model, then the files that describe it.
    page = render_report(outcome)
    write_calibration(plan.model, outcome.calibration)
    dense = dense_path(plan.model)
    also = (dense,) if dense != Path(plan.model) and dense.is_file() else ()
    for path in also:
        write_calibration(path, outcome.calibration)
    outcome = replace(
        _with_hashes(outcome, sha_before, file_sha256(plan.model), plan.card.calibration), also_written=also
    )
    _write_text(plan.out / "calibration.json", json.dumps(outcome.to_dict(), indent=2))
    _write_text(plan.out / "calibration.html", page)
    return outcome


def evaluate_fit(scores: Scores, fit: Fit, *, model: Path, out: Path, card: ModelCard, data: dict) -> Outcome:
    """Measure a fit on the items it was fitted on: ECE before/after, verdict rates, where ambiguous items land."""
    clear = scores.clear
    logits, labels = scores.logits[clear], scores.labels[clear]
    before = probability(logits, Calibration())
    after = probability(logits, fit.calibration)
    ambiguous = probability(scores.logits[~clear], fit.calibration)
    voted = np.array([s.clarity is Clarity.AMBIGUOUS for s in scores.samples], dtype=bool)
    shares = np.array([s.target for s in scores.samples])[voted]
    raw, fitted = probability(scores.logits[voted], Calibration()), probability(scores.logits[voted], fit.calibration)
    brier = (float(np.mean((raw - shares) ** 2)), float(np.mean((fitted - shares) ** 2))) if voted.any() else None
    return Outcome(
        model=model,
        out=out,
        card=card,
        fit=fit,
        data=data,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        reliability_before=reliability(before, labels),
        reliability_after=reliability(after, labels),
        clear=verdict_rates(after, labels, fit.calibration),
        ambiguous=verdict_counts(ambiguous, fit.calibration),
        scores=scores,
        ambiguous_brier=brier,
    )


def _with_hashes(outcome: Outcome, before: str, after: str, previous: Calibration) -> Outcome:
    return replace(
        outcome, sha256_before=before, sha256_after=after, previous=None if is_identity(previous) else previous
    )


def _write_text(path: Path, text: str) -> None:
    from crackscope.config import replacing

    with replacing(path) as partial:
        partial.write_text(text, encoding="utf-8")


# --- the demo's step ----------------------------------------------------------------------------------------------


def calibrate_step(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    escape_rate: float = 0.02,
    false_reject_rate: float = 0.05,
    confidence: float = 0.9,
    ambiguous_review: float = 0.8,
    progress: bool = True,
    emit: Callable[[str], None] = print,
) -> Outcome:
    """Calibrate an exported model on a held-out labelled folder and print what it got (for ``crackscope demo``).

    The defaults fit a demo-sized split: an escape rate of 2% at 90% confidence needs at least 114 clear cracks
    (1% would need 230), a false-reject rate of 5% at least 45 good items.

    Example:
        >>> calibrate_step("demo-out/model.onnx", "demo-out/data/calib", "demo-out/calibration")   # doctest: +SKIP
    """
    outcome = calibrate(
        CalibrateConfig(
            model=str(model),
            data=str(data),
            out=str(out),
            escape_rate=escape_rate,
            false_reject_rate=false_reject_rate,
            confidence=confidence,
            ambiguous_review=ambiguous_review,
            progress=progress,
        )
    )
    for line in outcome.describe().splitlines():
        emit(f"  {line}")
    return outcome
