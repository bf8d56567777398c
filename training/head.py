"""Stage 1 in seconds: fit the new head by logistic regression on frozen, pooled backbone features.

With the feature extractor frozen, the classifier is ``logit = w . mean_hw(A) + b``: a linear model of the pooled
features, so the best head for the training set is a (regularised) logistic regression, which L-BFGS solves
exactly from one pass of features. That replaces an epoch or two of SGD on a random head (which, on a few hundred
images, takes dozens of steps just to find the right sign), and fine-tuning then starts from a head that already
separates the classes. Soft targets (ambiguous items, split votes) enter as two weighted copies of the item, one
per label; classes are balanced with weights, as ``pos_weight`` does for the SGD loss.

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

from crackscope.labelled import Sample
from crackscope.training.augment import eval_transform
from crackscope.training.backbones import CrackNet
from crackscope.training.dataset import PatchDataset, collate


@dataclass(frozen=True)
class HeadFit:
    """What the logistic fit found, for the run's log."""

    items: int
    features: int
    c: float
    train_accuracy: float
    feature_seconds: float
    fit_seconds: float

    def describe(self) -> str:
        return (
            f"logistic head on {self.items} items x {self.features} features, C={self.c:g}: train accuracy "
            f"{self.train_accuracy:.3f} ({self.feature_seconds:.1f}s features, {self.fit_seconds:.1f}s fit)"
        )


@torch.inference_mode()
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
    model.eval()
    loader = DataLoader(
        PatchDataset(samples, eval_transform(model.spec.input_size)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
    )
    out = []
    for batch in tqdm(loader, desc="head: features", leave=False, disable=not progress):
        maps = model.feature_maps(batch.images.to(device, non_blocking=True))
        out.append(model.pooled(maps).float().cpu().numpy())
    channels = model.spec.channels + (0 if model.fine is None else model.fine.in_features)
    return np.concatenate(out) if out else np.zeros((0, channels), dtype=np.float32)


def logistic_head(features: np.ndarray, targets: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float, float]:
    """``(weight [C], bias, train accuracy)`` of a class-balanced logistic regression on raw features.

    Features are standardised for the solver (so one ``C`` suits any backbone) and the standardisation is folded
    back into the weights, so the result applies to the raw pooled features the head sees.
    """
    from sklearn.linear_model import LogisticRegression

    targets = np.clip(np.asarray(targets, dtype=np.float64), 0.0, 1.0)
    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    scaled = (features - mean) / std
    # A soft target t is the item once as crack with weight t and once as ok with weight 1 - t.
    x = np.concatenate([scaled, scaled])
    y = np.concatenate([np.ones(len(targets)), np.zeros(len(targets))])
    weight = np.concatenate([targets, 1.0 - targets])
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
    accuracy = float(((features @ coef + bias >= 0) == hard).mean())
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
) -> HeadFit:
    """Set the head (``model.fc`` and the stride-16 term) to the logistic regression of the samples' soft targets
    on their pooled features."""
    started = time.perf_counter()
    features = pooled_features(model, samples, batch_size=batch_size, workers=workers, device=device, progress=progress)
    fitted = time.perf_counter()
    coef, bias, accuracy = logistic_head(features, np.array([s.target for s in samples]), c)
    model.set_head(torch.from_numpy(coef), bias)
    return HeadFit(len(samples), features.shape[1], c, accuracy, fitted - started, time.perf_counter() - fitted)
