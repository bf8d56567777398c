"""PyTorch view of samples: decoded, transformed uint8 patches batched as ``[N, H, W, 3]``.

Images stay uint8 BGR all the way into the model, which normalises inside its graph; this keeps host-side work
and memory small (a quarter of float32) and is the same contract the exported ONNX model has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from crackscope.labelled import Clarity, Sample, read_patch


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # uint8 [N, H, W, 3] BGR
    targets: torch.Tensor  # float32 [N], soft crack targets
    ambiguous: torch.Tensor  # bool [N]
    indices: torch.Tensor  # int64 [N], positions in the sample list


class PatchDataset(Dataset):
    """Samples -> (image, target, is_ambiguous, index) with a transform applied to each image."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[np.ndarray], np.ndarray]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, float, bool, int]:
        sample = self.samples[index]
        image = np.ascontiguousarray(self.transform(read_patch(sample)))
        return image, sample.target, sample.clarity is Clarity.AMBIGUOUS, index


def collate(items: list[tuple[np.ndarray, float, bool, int]]) -> Batch:
    images, targets, ambiguous, indices = zip(*items, strict=True)
    return Batch(
        images=torch.from_numpy(np.stack(images)),
        targets=torch.tensor(targets, dtype=torch.float32),
        ambiguous=torch.tensor(ambiguous, dtype=torch.bool),
        indices=torch.tensor(indices, dtype=torch.int64),
    )
