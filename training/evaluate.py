"""Evaluate a checkpoint on a dataset: metrics for clear and ambiguous items, PR and ROC curves.

Clear items are scored with the usual binary metrics at a 0.5 probability threshold. Ambiguous items are reported
apart: experts disagree on them, so what matters is where their scores fall (a calibrated model should put them
near the middle, which is what later routes them to human review), not whether they are "right". When the items
come from several sources, each source is also scored on its own (``per_source``): pooled numbers can hide a
source the model does badly on.

When the items are patches of larger images (mask datasets: ``Sample.group`` is the source image), each image is
also scored as a part, from all its patches, with :func:`crackscope.inspect.parts.part_score`, the function the
runtime scores frames with. An image is a crack when any of its patches is a clear crack, ok when all of them are
clear ok, and otherwise (ambiguous patches, no clear crack) it is counted apart and not scored. Image-level metrics
are given for every candidate scoring and for the one in force: in training, the candidate with the best
image-level average precision on the validation images (it is stored with the model); in ``crackscope evaluate``,
the checkpoint's.

Example:
    $ crackscope evaluate --checkpoint runs/demo/model.pt --data data/val --out runs/demo/eval
    $ crackscope evaluate --checkpoint runs/mix/model.pt --data concrete/test --data tiles/test --out runs/mix/eval
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from crackscope.config import replacing
from crackscope.inspect.parts import CANDIDATES, PartScoring, choose_part_scoring, part_score
from crackscope.labelled import Clarity, DataArgument, DataConfig, Sample, for_tile, load_sources
from crackscope.training.augment import eval_transform
from crackscope.training.backbones import CrackNet
from crackscope.training.checkpoint import load_checkpoint
from crackscope.training.dataset import PatchDataset, collate


@dataclass(frozen=True)
class Predictions:
    """Model scores for a list of samples, in the same order."""

    samples: tuple[Sample, ...]
    logits: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits))

    def subset(self, clarity: Clarity) -> tuple[np.ndarray, np.ndarray]:
        """(soft targets, probabilities) of the samples with this clarity."""
        keep = np.array([s.clarity is clarity for s in self.samples], dtype=bool)
        targets = np.array([s.target for s in self.samples], dtype=np.float64)
        return targets[keep], self.probabilities[keep]


@torch.inference_mode()
def predict(
    model: CrackNet,
    samples: Sequence[Sample],
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> Predictions:
    """Logits of ``model`` for ``samples`` with the evaluation transform."""
    model.eval()
    dataset = PatchDataset(samples, eval_transform(model.spec.input_size))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    logits = []
    for batch in tqdm(loader, desc="predicting", leave=False, disable=not progress):
        logits.append(model(batch.images.to(device)).float().cpu())
    values = torch.cat(logits).numpy() if logits else np.zeros(0, dtype=np.float32)
    return Predictions(tuple(samples), values)


@dataclass(frozen=True)
class BinaryMetrics:
    """Binary metrics of crack (1) against ok (0) at one probability threshold.

    Scores that need both classes (ROC-AUC, average precision) are ``None`` when one class is absent; accuracy is
    ``None`` when there are no items.
    """

    n: int
    accuracy: float | None
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    average_precision: float | None
    confusion_matrix: tuple[tuple[int, int], tuple[int, int]]  # ((tn, fp), (fn, tp)): rows true ok, true crack
    threshold: float = 0.5

    def to_dict(self) -> dict[str, object]:
        """The JSON form (keys as in ``metrics.json``; the confusion matrix as nested lists)."""
        return {**asdict(self), "confusion_matrix": [list(row) for row in self.confusion_matrix]}


@dataclass(frozen=True)
class AmbiguousReport:
    """Where ambiguous items' scores fall; experts disagree on them, so "right" is not the question.

    ``majority_vote`` scores the items whose soft target leans one way (votes of 0.75, say) against that side;
    it is ``None`` when every ambiguous item is an even split.
    """

    n: int = 0
    mean_probability: float | None = None
    share_predicted_crack: float | None = None
    share_between_0_2_and_0_8: float | None = None
    brier_vs_soft_target: float | None = None
    majority_vote: BinaryMetrics | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON form: the majority-vote metrics flattened in, as ``metrics.json`` has always had them."""
        if self.n == 0:
            return {"n": 0}
        spread = {k: v for k, v in asdict(self).items() if k != "majority_vote"}
        return {**(self.majority_vote.to_dict() if self.majority_vote else {}), **spread}


@dataclass(frozen=True)
class ImageLevel:
    """Metrics of whole images (parts), each scored from its patches; see the module docstring.

    ``metrics`` are those of ``scoring``, the scoring in force; ``candidates`` has every candidate's, in the order
    of :data:`~crackscope.inspect.parts.CANDIDATES`. ``chosen_by`` says where ``scoring`` came from.
    """

    crack: int  # images with at least one clear crack patch, or labelled crack as a whole
    ok: int  # images whose patches are all clear ok
    ambiguous: int  # images with ambiguous patches and no clear crack: counted, not scored
    scoring: PartScoring
    chosen_by: str
    metrics: BinaryMetrics
    candidates: tuple[tuple[PartScoring, BinaryMetrics], ...]

    def to_dict(self) -> dict[str, object]:
        """The JSON form (``metrics.json``'s ``image_level``): counts, the scoring, its metrics, the candidates'."""
        return {
            "images": {"crack": self.crack, "ok": self.ok, "ambiguous": self.ambiguous},
            "scoring": {**self.scoring.to_dict(), "label": self.scoring.label, "chosen_by": self.chosen_by},
            **self.metrics.to_dict(),
            "candidates": {scoring.label: metrics.to_dict() for scoring, metrics in self.candidates},
        }

    def describe(self) -> str:
        """One line for people: the scoring in force, its image-level scores, and the candidates' AP."""
        m = self.metrics
        candidates = ", ".join(f"{s.label} {_number(c.average_precision)}" for s, c in self.candidates)
        return (
            f"image level ({self.crack} crack, {self.ok} ok, {self.ambiguous} ambiguous not scored): "
            f"{self.scoring.label} scoring ({self.chosen_by}): AP {_number(m.average_precision)}, "
            f"ROC-AUC {_number(m.roc_auc)}, accuracy {_number(m.accuracy)}; AP of each candidate: {candidates}"
        )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class Metrics:
    """Evaluation of a model on a set: clear items and ambiguous items apart, whole images when items are patches
    of them, and each source apart.

    ``image_level`` is ``None`` when every image is one item (it would equal the patch level); ``per_source`` is
    empty unless the set mixes several sources.
    """

    clear: BinaryMetrics
    ambiguous: AmbiguousReport
    image_level: ImageLevel | None = None
    per_source: dict[str, Metrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """The JSON form: clear-item metrics at the top level and under ``clear``, then ``ambiguous``; with images
        of several items also ``image_level`` and ``part_scoring`` (the scoring in force, as the model stores it);
        with several sources ``per_source`` (each source's own form)."""
        clear = self.clear.to_dict()
        written: dict[str, object] = {**clear, "clear": clear, "ambiguous": self.ambiguous.to_dict()}
        if self.image_level is not None:
            written["image_level"] = self.image_level.to_dict()
            written["part_scoring"] = self.image_level.scoring.to_dict()
        if self.per_source:
            written["per_source"] = {name: metrics.to_dict() for name, metrics in self.per_source.items()}
        return written

    def describe_parts(self) -> str:
        """One line on image-level results, or that the image level equals the patch level here."""
        if self.image_level is None:
            return "image level: same as patch level (each image is one item); frames are scored by max"
        return self.image_level.describe()


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
    """Accuracy, precision, recall, F1, ROC-AUC, average precision and the confusion matrix at ``threshold``."""
    from sklearn import metrics

    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    (tn, fp), (fn, tp) = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).tolist()
    return BinaryMetrics(
        n=len(labels),
        accuracy=float(metrics.accuracy_score(labels, predicted)) if len(labels) else None,
        precision=float(metrics.precision_score(labels, predicted, zero_division=0)),
        recall=float(metrics.recall_score(labels, predicted, zero_division=0)),
        f1=float(metrics.f1_score(labels, predicted, zero_division=0)),
        roc_auc=float(metrics.roc_auc_score(labels, probabilities)) if both else None,
        average_precision=float(metrics.average_precision_score(labels, probabilities)) if both else None,
        confusion_matrix=((tn, fp), (fn, tp)),
        threshold=threshold,
    )


def ambiguous_report(targets: np.ndarray, probabilities: np.ndarray) -> AmbiguousReport:
    """Where ambiguous items' scores fall, plus binary metrics against their majority vote where one exists."""
    if len(targets) == 0:
        return AmbiguousReport()
    decided = targets != 0.5
    return AmbiguousReport(
        n=len(targets),
        mean_probability=float(probabilities.mean()),
        share_predicted_crack=float((probabilities >= 0.5).mean()),
        share_between_0_2_and_0_8=float(((probabilities > 0.2) & (probabilities < 0.8)).mean()),
        brier_vs_soft_target=float(np.mean((probabilities - targets) ** 2)),
        majority_vote=binary_metrics(targets[decided] > 0.5, probabilities[decided]) if decided.any() else None,
    )


CHOSEN_HERE = "best image-level AP on these images, ties to the simpler"


def metrics_for(predictions: Predictions, part_scoring: PartScoring | None = None, chosen_by: str = "given") -> Metrics:
    """Metrics of clear items, of ambiguous items apart, of whole images when items are patches of them, and of
    each source apart when there are several.

    Args:
        predictions: scores of the items.
        part_scoring: the part scoring in force at the image level; ``None`` chooses it on these images
            (:func:`~crackscope.inspect.parts.choose_part_scoring`), as training does on its validation set.
        chosen_by: where a given ``part_scoring`` came from, recorded beside it.
    """
    pooled = _pooled_metrics(predictions, part_scoring, chosen_by)
    if pooled.image_level is not None:  # every source is scored the way the whole set chose
        part_scoring, chosen_by = pooled.image_level.scoring, pooled.image_level.chosen_by
    by_source = metrics_by_source(predictions, part_scoring, chosen_by)
    return replace(pooled, per_source=by_source if len(by_source) > 1 else {})


def metrics_by_source(
    predictions: Predictions, part_scoring: PartScoring | None = None, chosen_by: str = "given"
) -> dict[str, Metrics]:
    """Each source's metrics (clear and ambiguous items apart), by source name in order of first appearance."""
    positions: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(predictions.samples):
        positions[sample.source].append(index)
    return {
        name: _pooled_metrics(
            Predictions(tuple(predictions.samples[i] for i in indices), predictions.logits[np.asarray(indices)]),
            part_scoring,
            chosen_by,
        )
        for name, indices in positions.items()
    }


def _pooled_metrics(predictions: Predictions, part_scoring: PartScoring | None, chosen_by: str) -> Metrics:
    clear_targets, clear_probs = predictions.subset(Clarity.CLEAR)
    return Metrics(
        clear=binary_metrics(clear_targets >= 0.5, clear_probs),
        ambiguous=ambiguous_report(*predictions.subset(Clarity.AMBIGUOUS)),
        image_level=image_level(predictions, part_scoring, chosen_by),
    )


@dataclass(frozen=True)
class Parts:
    """Source images as parts: the patch probabilities and label of each clearly labelled image."""

    probabilities: tuple[np.ndarray, ...]
    labels: tuple[int, ...]  # 1 crack, 0 ok
    ambiguous: int  # images with ambiguous patches and no clear crack


def group_parts(predictions: Predictions) -> Parts | None:
    """Items grouped by source image (``Sample.group``); ``None`` when no image has more than one item."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(predictions.samples):
        groups[sample.group].append(index)
    if all(len(members) == 1 for members in groups.values()):
        return None
    probabilities, labels, ambiguous = [], [], 0
    all_probabilities = predictions.probabilities
    for members in groups.values():
        samples = [predictions.samples[i] for i in members]
        label = _image_label(samples)
        if label is None:
            ambiguous += 1
            continue
        probabilities.append(all_probabilities[members])
        labels.append(label)
    return Parts(tuple(probabilities), tuple(labels), ambiguous)


def _image_label(samples: Sequence[Sample]) -> int | None:
    """1 when any patch is a clear crack or the image is labelled crack as a whole (weak tiles of target 1), 0 when
    all are clear ok, ``None`` (ambiguous image) otherwise."""
    if any(s.clarity is Clarity.CLEAR and s.label == 1 for s in samples):
        return 1
    weak = [s for s in samples if s.clarity is Clarity.WEAK]
    if weak:
        return 1 if all(s.target == 1.0 for s in weak) else None
    if all(s.clarity is Clarity.CLEAR for s in samples):
        return 0
    return None


def image_level(
    predictions: Predictions, part_scoring: PartScoring | None = None, chosen_by: str = "given"
) -> ImageLevel | None:
    """Image-level metrics (see :func:`metrics_for`); ``None`` when every image is one item."""
    parts = group_parts(predictions)
    if parts is None:
        return None
    if part_scoring is None:
        part_scoring, _ = choose_part_scoring(list(zip(parts.probabilities, parts.labels, strict=True)), CANDIDATES)
        chosen_by = CHOSEN_HERE
    labels = np.array(parts.labels, dtype=int)
    candidates = tuple((c, _part_metrics(parts, labels, c)) for c in CANDIDATES)
    known = dict(candidates)
    chosen = known[part_scoring] if part_scoring in known else _part_metrics(parts, labels, part_scoring)
    return ImageLevel(
        crack=int(labels.sum()),
        ok=int(len(labels) - labels.sum()),
        ambiguous=parts.ambiguous,
        scoring=part_scoring,
        chosen_by=chosen_by,
        metrics=chosen,
        candidates=candidates,
    )


def _part_metrics(parts: Parts, labels: np.ndarray, scoring: PartScoring) -> BinaryMetrics:
    scores = np.array([part_score(p, scoring) for p in parts.probabilities], dtype=np.float64)
    return binary_metrics(labels, scores)


def plot_curves(labels: np.ndarray, probabilities: np.ndarray, out_dir: Path, title: str = "") -> list[Path]:
    """Write ``pr_curve.png`` and ``roc_curve.png`` for clear items; nothing when one class is absent."""
    if len(np.unique(labels)) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn import metrics

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    precision, recall, _ = metrics.precision_recall_curve(labels, probabilities)
    fpr, tpr, _ = metrics.roc_curve(labels, probabilities)
    curves = (
        ("pr_curve.png", recall, precision, "recall", "precision", metrics.average_precision_score, "AP"),
        ("roc_curve.png", fpr, tpr, "false positive rate", "true positive rate", metrics.roc_auc_score, "AUC"),
    )
    for name, x, y, xlabel, ylabel, score_fn, score_name in curves:
        figure, axis = plt.subplots(figsize=(5, 4.5), dpi=100)
        score = score_fn(labels, probabilities)
        axis.plot(x, y, lw=2, label=f"{score_name} = {score:.4f}")
        axis.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{title} {name[:-10].upper()}")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right" if name.startswith("roc") else "lower left")
        figure.tight_layout()
        figure.savefig(out_dir / name)
        plt.close(figure)
        written.append(out_dir / name)
    return written


@dataclass(frozen=True)
class Evaluation:
    """What ``crackscope evaluate`` measured and wrote."""

    metrics: Metrics
    data: dict[str, object]  # the evaluated set: items, groups, counts, unreadable files skipped; each source's
    checkpoint: Path
    curves: tuple[Path, ...]  # pr_curve.png, roc_curve.png (none when one class is absent)
    metrics_path: Path

    def to_dict(self) -> dict[str, object]:
        """The contents of ``metrics.json``."""
        return {
            **self.metrics.to_dict(),
            "data": self.data,
            "checkpoint": str(self.checkpoint),
            "curves": [str(p) for p in self.curves],
        }


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: DataArgument,
    out: str | os.PathLike | None = None,
    *,
    data_config: DataConfig | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
) -> Evaluation:
    """Score ``data`` with the checkpoint; write ``metrics.json`` and curves to ``out`` (default: beside it).

    ``data`` is one folder or several sources (folders or :class:`~crackscope.labelled.DataSource`); sources
    without settings of their own are read with ``data_config``, by default the way the training data was read.
    """
    model, header = load_checkpoint(checkpoint, device)
    # Mask images are cut into tiles of the model's input size unless a tile size was given.
    dataset = load_sources(*for_tile(data, data_config or header.data_config(), model.spec.input_size))
    predictions = predict(model, dataset.samples, batch_size=batch_size, workers=workers, device=device)
    out_dir = Path(out) if out else Path(checkpoint).parent / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_targets, clear_probs = predictions.subset(Clarity.CLEAR)
    stored = "part_scoring" in header.metrics
    evaluation = Evaluation(
        # The checkpoint's scoring, chosen on its validation images: choosing on the test set would flatter it.
        metrics=metrics_for(
            predictions,
            header.part_scoring(),
            "the checkpoint's, chosen on validation" if stored else "max: the checkpoint stores none",
        ),
        data=dataset.summary(),
        checkpoint=Path(checkpoint),
        curves=tuple(
            plot_curves(clear_targets >= 0.5, clear_probs, out_dir, " + ".join(s.name for s in dataset.sources))
        ),
        metrics_path=out_dir / "metrics.json",
    )
    with replacing(evaluation.metrics_path) as partial:
        partial.write_text(json.dumps(evaluation.to_dict(), indent=2), encoding="utf-8")
    return evaluation
