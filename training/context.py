"""Context for dense mode: tiles seen inside the surface around them, scored as the dense graph scores them.

Dense whole-frame mode (``crackscope inspect --mode dense``) runs the network once over a frame and scores each tile
as the head's bias plus the CAM cells under it (:mod:`crackscope.inspect.dense`). A tile then sees its neighbours'
pixels where tiled inference, which training has always imitated, sees the network's zero padding; the logits differ
by that context, and on the benchmark models the tile decisions agreed on only 87-90% (README, "Frame throughput").

Context training shows the network both views. Beside each training batch of tiles it draws a smaller batch of
*context crops*: the tile's box grown by ``margin`` pixels on every side (a multiple of the backbone's 32 px stride,
so the tile's cells are whole cells of the crop, as in a dense pass), cut from the source image at its own
resolution, mirrored where the crop leaves the image (the runtime reflect-pads frames too). A *region* mask marks
the tile inside the crop; the augmentation moves crop and region together (flips, rotations, zoom), and the
network's logit for the crop is the dense graph's: the bias plus the CAM cells under the region, each cell divided
by the tile's number of cells (:meth:`crackscope.training.backbones.CrackNet.forward` with ``region``). That logit is
trained against the tile's label with the tile loss, so the network learns to decide a tile alike with and without
its surroundings.

Only tiles cut from larger images have a surrounding (mask layouts and ``mode: tiles``); items that are whole files
(class folders of patches) have none and train as before.

Example:
    >>> from crackscope.training.context import context_box
    >>> context_box((224, 0, 224, 224), 32)
    (192, -32, 288, 288)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from crackscope.inspect.images import read_image
from crackscope.labelled import Sample
from crackscope.training.augment import PairedTransform

STRIDE = 32  # the backbone's stride: a margin of whole stride cells keeps the tile's cells whole in the crop


def context_box(box: tuple[int, int, int, int], margin: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the tile ``box`` grown by ``margin`` px on each side (it may leave the image)."""
    x, y, w, h = box
    return x - margin, y - margin, w + 2 * margin, h + 2 * margin


def cut_with_reflection(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of ``box`` in ``image``, mirrored (OpenCV's ``BORDER_REFLECT_101``) where it leaves the image."""
    x, y, w, h = box
    height, width = image.shape[:2]
    top, left = max(0, -y), max(0, -x)
    bottom, right = max(0, y + h - height), max(0, x + w - width)
    inside = image[max(0, y) : min(height, y + h), max(0, x) : min(width, x + w)]
    if top or left or bottom or right:
        # Reflection needs more pixels than the border it fills; a tiny image is repeated instead.
        mode = cv2.BORDER_REFLECT_101 if min(inside.shape[:2]) > max(top, left, bottom, right) else cv2.BORDER_WRAP
        inside = cv2.copyMakeBorder(inside, top, bottom, left, right, mode)
    return np.ascontiguousarray(inside)


@dataclass(frozen=True)
class ContextBatch:
    images: torch.Tensor  # uint8 [N, S + 2m, S + 2m, 3] BGR context crops
    regions: torch.Tensor  # float32 [N, S + 2m, S + 2m] in {0, 1}: the tile inside each crop (after augmentation)
    targets: torch.Tensor  # float32 [N]


class ContextDataset(Dataset):
    """Samples with a box -> (context crop, region mask, target), crop and region moved by one augmentation.

    Args:
        samples: tiles of larger images (every one must have a ``box`` of the tile side ``size``).
        transform: a :class:`~crackscope.training.augment.PairedTransform` built for the crop side ``size + 2 *
            margin``.
        size: the tile side (the model's input size).
        margin: context pixels on each side, a positive multiple of 32.
    """

    def __init__(self, samples: Sequence[Sample], transform: PairedTransform, size: int, margin: int) -> None:
        if margin <= 0 or margin % STRIDE:
            raise ValueError(f"context: expected a positive multiple of {STRIDE} px, got {margin}")
        if any(s.box is None for s in samples):
            raise ValueError("context crops need tiles cut from larger images (samples with a box)")
        self.samples = list(samples)
        self.transform = transform
        self.size = size
        self.margin = margin

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        sample = self.samples[index]
        x, y = sample.box[:2]
        # Tiles at an image's edge are smaller than the tile side when the image is; the crop is always the tile
        # side plus the margins, as a dense pass over a padded frame sees it.
        crop = cut_with_reflection(read_image(sample.path), context_box((x, y, self.size, self.size), self.margin))
        region = np.zeros(crop.shape[:2], np.uint8)
        region[self.margin : self.margin + self.size, self.margin : self.margin + self.size] = 255
        image, region = self.transform.pair(crop, region)
        return np.ascontiguousarray(image), np.ascontiguousarray(region), sample.target


def collate_context(items: list[tuple[np.ndarray, np.ndarray, float]]) -> ContextBatch:
    images, regions, targets = zip(*items, strict=True)
    return ContextBatch(
        images=torch.from_numpy(np.stack(images)),
        regions=torch.from_numpy(np.stack(regions) > 0).float(),
        targets=torch.tensor(targets, dtype=torch.float32),
    )
