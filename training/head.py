"""Stage 1 in seconds: fit the new head by logistic regression on frozen, pooled backbone features.

With the feature extractor frozen, the classifier is ``logit = w . mean_hw(A) + b``: a linear model of the pooled
features, so the best head for the training set is a (regularised) logistic regression, which L-BFGS solves
exactly from one pass of features. That replaces an epoch or two of SGD on a random head (which, on a few hundred
images, takes dozens of steps just to find the right sign), and fine-tuning then starts from a head that already
separates the classes. Soft targets (ambiguous items, split votes) enter as two weighted copies of the item, one
per label; classes are balanced with weights, as ``pos_weight`` does for the SGD loss.

Tiles of images labelled as a whole (:attr:`~crackscope.labelled.Clarity.WEAK`: some tile of the image shows the
defect, nobody said which) are fitted by multiple-instance learning on the same features (mi-SVM, Andrews et al.
2002, with a logistic model): first every weak tile counts as crack with its image's weight shared among its tiles,
then, a few rounds, only the ``k`` tiles of each image the current head scores highest count as crack (the rest of
the image's tiles are left out), until that choice stops changing. One feature pass serves every round.

With ``context`` (px), tiles cut from larger images enter the fit twice: once alone, as tiled inference sees them,
and once as dense mode sees them, averaged over their cells of a crop that holds ``context`` px of their surroundings
(:mod:`crackscope.training.context`), both with the tile's target. The head is linear in either view, so one fit
chooses the weights that decide a tile alike with and without its neighbours.

Example:
    >>> from crackscope.training.head import fit_head
    >>> fit = fit_head(model, samples, batch_size=32)      # doctest: +SKIP
    >>> fit.describe()                                     # doctest: +SKIP
    'logistic head on 800 items x 1280 features, C=1.0: train accuracy 0.998 (4.1s features, 0.3s fit)'
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from crackscope.labelled import Clarity, Sample
from crackscope.training.augment import eval_transform
from crackscope.training.backbones import CrackNet
from crackscope.training.context import ContextDataset, collate_context
from crackscope.training.dataset import PatchDataset, collate
from crackscope.training.sampling import top_per_group

MIL_ROUNDS = 5  # most re-selections of each weak image's top tiles; the fit usually settles in two or three


@dataclass(frozen=True)
class HeadFit:
    """What the logistic fit found, for the run's log."""

    items: int
    features: int
    c: float
    train_accuracy: float
    feature_seconds: float
    fit_seconds: float
    weak_selected: tuple[int, ...] = ()  # positions (in the samples) of the weak tiles the fit took as crack
    mil_rounds: int = 0  # re-selection rounds run (0: no weak tiles)
    context_items: int = 0  # tiles also fitted as dense mode sees them, inside their surroundings

    def describe(self) -> str:
        mil = (
            f"; weak tiles: {len(self.weak_selected)} taken as crack after {self.mil_rounds} round(s) of selection"
            if self.mil_rounds
            else ""
        )
        context = f" + {self.context_items} in context" if self.context_items else ""
        return (
            f"logistic head on {self.items} items{context} x {self.features} features, C={self.c:g}: train accuracy "
            f"{self.train_accuracy:.3f} ({self.feature_seconds:.1f}s features, {self.fit_seconds:.1f}s fit){mil}"
        )


def pooled_features(
    model: CrackNet,
    samples: Sequence[Sample],
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """``[N, C]`` global-average-pooled feature maps (:meth:`CrackNet.pooled`), evaluation transform, eval mode."""
    dataset = PatchDataset(samples, eval_transform(model.spec.input_size))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return _collect(model, loader, "head: features", device, progress, lambda maps, batch: model.pooled(maps))


def region_features(
    model: CrackNet,
    samples: Sequence[Sample],
    margin: int,
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """``[N, C (+ C16)]``: each tile's features as the dense graph sees them, the feature maps of the tile with
    ``margin`` px of its surroundings averaged over the tile's cells (:meth:`CrackNet.region_pooled`); every sample
    needs a ``box``."""
    size = model.spec.input_size
    dataset = ContextDataset(samples, eval_transform(size + 2 * margin), size, margin)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_context)
    return _collect(
        model,
        loader,
        "head: features in context",
        device,
        progress,
        lambda maps, batch: model.region_pooled(maps, batch.regions.to(device)),
    )


@torch.inference_mode()
def _collect(model: CrackNet, loader: DataLoader, desc: str, device, progress: bool, pool) -> np.ndarray:
    """``pool(feature maps, batch)`` of every batch in ``loader``, stacked (eval mode)."""
    model.eval()
    out = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        maps = model.feature_maps(batch.images.to(device, non_blocking=True))
        out.append(pool(maps, batch).float().cpu().numpy())
    channels = model.spec.channels + (0 if model.fine is None else model.fine.in_features)
    return np.concatenate(out) if out else np.zeros((0, channels), dtype=np.float32)


def logistic_head(
    features: np.ndarray, targets: np.ndarray, c: float = 1.0, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """``(weight [C], bias, train accuracy)`` of a class-balanced logistic regression on raw features.

    Features are standardised for the solver (so one ``C`` suits any backbone) and the standardisation is folded
    back into the weights, so the result applies to the raw pooled features the head sees. ``weights`` (default 1)
    scale each item's say.
    """
    from sklearn.linear_model import LogisticRegression

    targets = np.clip(np.asarray(targets, dtype=np.float64), 0.0, 1.0)
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    scaled = (features - mean) / std
    # A soft target t is the item once as crack with weight t and once as ok with weight 1 - t.
    x = np.concatenate([scaled, scaled])
    y = np.concatenate([np.ones(len(targets)), np.zeros(len(targets))])
    item_weights = np.ones(len(targets)) if weights is None else np.asarray(weights, dtype=np.float64)
    weight = np.concatenate([targets * item_weights, (1.0 - targets) * item_weights])
    positive, negative = weight[y == 1].sum(), weight[y == 0].sum()
    if positive <= 0 or negative <= 0:
        raise ValueError("the logistic head needs both crack and ok items in the training set")
    balance = np.where(y == 1, len(targets) / (2 * positive), len(targets) / (2 * negative))
    keep = weight > 0
    solver = LogisticRegression(C=c, max_iter=2000)
    solver.fit(x[keep], y[keep], sample_weight=(weight * balance)[keep])
    coef = solver.coef_[0] / std
    bias = float(solver.intercept_[0] - coef @ mean)
    hard = targets >= 0.5
    counted = item_weights > 0
    accuracy = float(((features @ coef + bias >= 0) == hard)[counted].mean())
    return coef.astype(np.float32), bias, accuracy


def fit_head(
    model: CrackNet,
    samples: Sequence[Sample],
    *,
    c: float = 1.0,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    weak_positives: int = 1,
    context: int = 0,
) -> HeadFit:
    """Set the head (``model.fc`` and the stride-16 term) to the logistic regression of the samples' soft targets
    on their pooled features; weak tiles by multiple-instance rounds, ``weak_positives`` tiles per image; with
    ``context`` (px, a multiple of 32) the clear and ambiguous tiles of larger images also in their surroundings (see
    the module docstring)."""
    started = time.perf_counter()
    loading = {"batch_size": batch_size, "workers": workers, "device": device, "progress": progress}
    features = pooled_features(model, samples, **loading)
    groups = [s.group for s in samples]
    targets = np.array([s.target for s in samples])
    weak = np.array([s.clarity is Clarity.WEAK for s in samples], dtype=bool)
    in_context = [s for s in samples if s.box is not None and s.clarity is not Clarity.WEAK] if context else []
    if in_context:
        features = np.concatenate([features, region_features(model, in_context, context, **loading)])
        targets = np.concatenate([targets, [s.target for s in in_context]])
        weak = np.concatenate([weak, np.zeros(len(in_context), dtype=bool)])
        groups += [s.group for s in in_context]
    fitted = time.perf_counter()
    if not weak.any():
        coef, bias, accuracy = logistic_head(features, targets, c)
        selected, rounds = np.zeros(0, dtype=np.int64), 0
    else:
        coef, bias, accuracy, selected, rounds = mil_logistic_head(features, targets, weak, groups, c, weak_positives)
    model.set_head(torch.from_numpy(coef), bias)
    return HeadFit(
        len(samples),
        features.shape[1],
        c,
        accuracy,
        fitted - started,
        time.perf_counter() - fitted,
        tuple(int(i) for i in selected),
        rounds,
        len(in_context),
    )


def mil_logistic_head(
    features: np.ndarray,
    targets: np.ndarray,
    weak: np.ndarray,
    groups: Sequence[str],
    c: float = 1.0,
    per_image: int = 1,
) -> tuple[np.ndarray, float, float, np.ndarray, int]:
    """``(weight, bias, train accuracy, selected weak positions, rounds)``: the multiple-instance logistic fit.

    Round 0 counts every weak tile with its image's target and ``1 / tiles`` of its image's weight; each round after
    keeps only the ``per_image`` highest-scoring weak tiles of each image (full weight) and refits, until the
    selection repeats or :data:`MIL_ROUNDS` is reached.
    """
    weak_positions = np.flatnonzero(weak)
    weak_groups = [groups[i] for i in weak_positions]
    sizes = {group: weak_groups.count(group) for group in set(weak_groups)}
    weights = np.ones(len(targets))
    weights[weak_positions] = [1.0 / sizes[group] for group in weak_groups]
    coef, bias, accuracy = logistic_head(features, targets, c, weights)
    selected = np.zeros(0, dtype=np.int64)
    rounds = 0
    for rounds in range(1, MIL_ROUNDS + 1):
        scores = features[weak_positions] @ coef + bias
        chosen = np.sort(weak_positions[top_per_group(scores, weak_groups, per_image)])
        if np.array_equal(chosen, selected):
            rounds -= 1
            break
        selected = chosen
        weights = (~weak).astype(np.float64)
        weights[selected] = 1.0
        coef, bias, accuracy = logistic_head(features, targets, c, weights)
    return coef, bias, accuracy, selected, rounds
