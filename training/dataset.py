"""PyTorch view of samples: decoded, transformed uint8 patches batched as ``[N, H, W, 3]``.

Images stay uint8 BGR all the way into the model, which normalises inside its graph; this keeps host-side work
and memory small (a quarter of float32) and is the same contract the exported ONNX model has.

With ``masks=True``, samples of a mask dataset (:attr:`crackscope.labelled.Sample.mask`) bring their crack mask
along, moved by the same augmentation as the image (the transform's ``pair``), for training the heatmap against it
(:mod:`crackscope.training.supervision`); the other samples get an empty mask and ``has_mask`` False. Masks are off
by default, so loaders that need only the images (validation, evaluation, head fitting, a run that does not train
on masks) decode no mask files and batch no mask pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from crackscope.labelled import Clarity, Sample, read_mask_patch, read_patch

Item = tuple[np.ndarray, float, bool, int, np.ndarray | None]  # image, target, ambiguous, index, mask or None


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # uint8 [N, H, W, 3] BGR
    targets: torch.Tensor  # float32 [N], soft crack targets
    ambiguous: torch.Tensor  # bool [N]
    indices: torch.Tensor  # int64 [N], positions in the sample list
    # float32 [N, H, W] in {0, 1}: crack pixels at the input size; zeros where has_mask is False. When no item has a
    # mask it is a broadcast view of zeros (read-only, no memory to fill or copy between processes).
    masks: torch.Tensor
    has_mask: torch.Tensor  # bool [N], whether the item came with a crack mask

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (DataLoader's ``pin_memory=True`` calls this), so copies to a GPU can
        overlap with compute; the zero-mask view of a mask-free batch is left as it is."""
        masks = self.masks.pin_memory() if bool(self.has_mask.any()) else self.masks
        return Batch(
            self.images.pin_memory(),
            self.targets.pin_memory(),
            self.ambiguous.pin_memory(),
            self.indices.pin_memory(),
            masks,
            self.has_mask.pin_memory(),
        )


class PatchDataset(Dataset):
    """Samples -> (image, target, is_ambiguous, index, mask) with a transform applied to each image.

    Args:
        samples: the items; those with a ``mask`` file also yield their mask, uint8 0/255 at the input size.
        transform: the image transform; it must have ``pair(image, mask)`` (every transform of
            :mod:`crackscope.training.augment` has) when a sample has a mask and ``masks`` is on.
        masks: read the samples' masks; on for a training loader whose loss uses them.
    """

    def __init__(
        self, samples: Sequence[Sample], transform: Callable[[np.ndarray], np.ndarray], *, masks: bool = False
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.masks = masks
        if masks and any(s.mask is not None for s in self.samples) and not hasattr(transform, "pair"):
            raise TypeError(
                f"{type(transform).__name__} cannot move masks with the image (it has no pair(image, mask)); "
                "use a transform from crackscope.training.augment, or leave masks off"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Item:
        sample = self.samples[index]
        image = read_patch(sample)
        mask = read_mask_patch(sample) if self.masks else None
        if mask is None:
            image = self.transform(image)
        else:
            image, mask = self.transform.pair(image, mask)
            mask = np.ascontiguousarray(mask)
        return np.ascontiguousarray(image), sample.target, sample.clarity is Clarity.AMBIGUOUS, index, mask


def collate(items: list[Item]) -> Batch:
    images, targets, ambiguous, indices, masks = zip(*items, strict=True)
    stacked = torch.from_numpy(np.stack(images))
    has_mask = torch.tensor([mask is not None for mask in masks], dtype=torch.bool)
    if has_mask.any():
        mask_batch = torch.zeros(stacked.shape[:3], dtype=torch.float32)
        for row, mask in enumerate(masks):
            if mask is not None:
                mask_batch[row] = torch.from_numpy(mask > 0)
    else:
        mask_batch = torch.zeros(1, 1, 1).expand(*stacked.shape[:3])
    return Batch(
        images=stacked,
        targets=torch.tensor(targets, dtype=torch.float32),
        ambiguous=torch.tensor(ambiguous, dtype=torch.bool),
        indices=torch.tensor(indices, dtype=torch.int64),
        masks=mask_batch,
        has_mask=has_mask,
    )
