"""Which training items an epoch sees: plain shuffling, class-balanced draws, and hard-negative mining.

Rare defects are the normal case on a line (under 1% of patches cracked is common). Two tools, used alone or
together:

* **balanced sampling** draws each epoch's items with replacement so that cracks (and ambiguous items, which
  carry crack evidence) make up ``positive_share`` of the draws. Unlike ``pos_weight``, which scales the loss of
  the few positives the network sees, every batch then *shows* it cracks; the loss is left unweighted.
* **hard-negative mining** keeps, for each fine-tuning epoch, only the hardest share of the clear ok items: the
  ones the current model scores most crack-like. Most ok patches of a clean surface teach nothing after the
  first pass; the stains, joints and scratches that look like cracks do. The trainer rescores the ok items with
  the current model before each fine-tuning epoch and calls :meth:`EpochSampler.keep_negatives`.

Weak tiles (tiles of images labelled as a whole) are drawn only once chosen: the trainer scores them with the
current model and calls :meth:`EpochSampler.keep_weak` with each image's top tiles (:func:`top_per_group`).

The sampler runs in the main process (DataLoader workers only receive indices), shards the epoch across
DistributedDataParallel ranks itself, and is seeded by ``(seed, epoch)``, so runs repeat exactly.

Example:
    >>> sampler = EpochSampler([1, 0, 0, 0], balanced=True, positive_share=0.5, seed=0)
    >>> len(sampler)
    4
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def top_per_group(scores: np.ndarray, groups: Sequence[str], per_group: int) -> np.ndarray:
    """Positions of the ``per_group`` highest scores within each group (all of a smaller group), in position order.

    How the weak tiles of an image labelled as a whole are chosen as its crack tiles (multiple-instance learning).
    """
    if per_group < 1:
        raise ValueError(f"weak_positives must be at least 1, got {per_group}")
    members: dict[str, list[int]] = {}
    for position, group in enumerate(groups):
        members.setdefault(group, []).append(position)
    scores = np.asarray(scores)
    chosen = [
        positions[i]
        for positions in members.values()
        for i in np.argsort(-scores[positions], kind="stable")[:per_group]
    ]
    return np.sort(np.asarray(chosen, dtype=np.int64))


def hardest(scores: np.ndarray, share: float) -> np.ndarray:
    """Positions of the ``share`` highest scores (at least one when any), highest first; ties keep the order."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"hard_negatives must be in (0, 1], got {share}")
    count = max(1, round(share * len(scores))) if len(scores) else 0
    return np.argsort(-np.asarray(scores), kind="stable")[:count]


class EpochSampler(Sampler[int]):
    """Indices of one epoch's training items for this rank.

    Args:
        positives: per item, 1 when it counts as a crack for sampling (clear crack or ambiguous), else 0.
        balanced: draw with replacement so positives make up ``positive_share`` of the epoch; else shuffle.
        positive_share: share of positive draws when ``balanced``.
        negatives_kept: the share of negatives each epoch keeps once :meth:`keep_negatives` is called, so an
            epoch's length is known before training starts (the learning-rate schedule needs it).
        weak: per item, whether it is a weak tile, drawn only after :meth:`keep_weak` chose it.
        weak_per_epoch: how many weak tiles each :meth:`keep_weak` keeps (for the epoch's length).
        seed, rank, world_size: reproducibility and DistributedDataParallel sharding.
    """

    def __init__(
        self,
        positives: Sequence[int],
        *,
        balanced: bool = False,
        positive_share: float = 0.5,
        negatives_kept: float = 1.0,
        weak: Sequence[bool] | None = None,
        weak_per_epoch: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0.0 < positive_share < 1.0:
            raise ValueError(f"positive_share must be between 0 and 1, got {positive_share}")
        self.positive = np.asarray(positives, dtype=bool)
        self.weak = np.zeros(len(self.positive), dtype=bool) if weak is None else np.asarray(weak, dtype=bool)
        if balanced and (self.positive.all() or not self.positive.any()):
            raise ValueError("balanced sampling needs both crack and ok items in the training set")
        self.balanced = balanced
        self.positive_share = positive_share
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._negatives = np.flatnonzero(~self.positive & ~self.weak)
        self.weak_kept = np.zeros(0, dtype=np.int64)
        self.epoch_items = (
            int((self.positive & ~self.weak).sum())
            + (max(1, round(negatives_kept * len(self._negatives))) if len(self._negatives) else 0)
            + (weak_per_epoch if self.weak.any() else 0)
        )
        self.pool = self._compose()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def keep_negatives(self, negatives: np.ndarray) -> None:
        """From now on draw from all positives plus these negative item indices (and the weak tiles kept)."""
        self._negatives = np.asarray(negatives, dtype=np.int64)
        self.pool = self._compose()

    def keep_weak(self, items: np.ndarray) -> None:
        """From now on draw these weak tiles (and no other) besides the other items."""
        items = np.asarray(items, dtype=np.int64)
        if not self.weak[items].all():
            raise ValueError("keep_weak: an index given is not a weak tile")
        self.weak_kept = items
        self.pool = self._compose()

    def _compose(self) -> np.ndarray:
        positives = np.flatnonzero(self.positive & ~self.weak)
        return np.sort(np.concatenate([positives, self._negatives, self.weak_kept]).astype(np.int64))

    def __len__(self) -> int:
        return -(-self.epoch_items // self.world_size)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.balanced:
            is_positive = self.positive[self.pool]
            weights = np.where(
                is_positive, self.positive_share / is_positive.sum(), (1 - self.positive_share) / (~is_positive).sum()
            )
            order = rng.choice(self.pool, size=len(self) * self.world_size, replace=True, p=weights / weights.sum())
        else:
            order = rng.permutation(self.pool)
            order = np.resize(order, len(self) * self.world_size)  # pad by repeating so every rank gets as many
        return iter(order[self.rank :: self.world_size].tolist())
