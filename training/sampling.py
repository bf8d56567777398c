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
        seed, rank, world_size: reproducibility and DistributedDataParallel sharding.
    """

    def __init__(
        self,
        positives: Sequence[int],
        *,
        balanced: bool = False,
        positive_share: float = 0.5,
        negatives_kept: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0.0 < positive_share < 1.0:
            raise ValueError(f"positive_share must be between 0 and 1, got {positive_share}")
        self.positive = np.asarray(positives, dtype=bool)
        if balanced and (self.positive.all() or not self.positive.any()):
            raise ValueError("balanced sampling needs both crack and ok items in the training set")
        self.balanced = balanced
        self.positive_share = positive_share
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        negatives = np.flatnonzero(~self.positive)
        self.epoch_items = int(self.positive.sum()) + (
            max(1, round(negatives_kept * len(negatives))) if len(negatives) else 0
        )
        self.pool = np.arange(len(self.positive))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def keep_negatives(self, negatives: np.ndarray) -> None:
        """From now on draw from all positives plus these negative item indices."""
        self.pool = np.sort(np.concatenate([np.flatnonzero(self.positive), np.asarray(negatives, dtype=np.int64)]))

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
