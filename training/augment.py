"""Albumentations presets for crack patches.

Every preset ends at the model's square input size and leaves the image as uint8 BGR: the model normalises
inside its own graph (:class:`crackscope.training.backbones.Preprocess`), so evaluation-time preprocessing is one
resize, :func:`crackscope.inspect.images.fit_to_input`, which the runtime calls too.

Geometric augmentation is label-preserving for cracks (a flipped or rotated crack is still a crack); crops that
could cut the crack out of the patch are avoided, and dropout holes are small so a crack is never erased.

Example:
    >>> from crackscope.training.augment import build_transform
    >>> transform = build_transform("heavy", 224)
    >>> augmented = transform(image)                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

from crackscope.inspect.images import fit_to_input

PRESETS = ("none", "light", "heavy")

Transform = Callable[[np.ndarray], np.ndarray]


def eval_transform(size: int) -> Transform:
    """The evaluation transform: resize to the input size, nothing else (the rest is in the model)."""

    def transform(image: np.ndarray) -> np.ndarray:
        return fit_to_input(image, size)

    return transform


def _light(size: int) -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


def _heavy(size: int) -> list[A.BasicTransform]:
    hole = (max(2, size // 32), max(3, size // 16))
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(
            scale=(0.85, 1.15),
            translate_percent=(-0.06, 0.06),
            rotate=(-20, 20),
            shear=(-6, 6),
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.6,
        ),
        A.Perspective(scale=(0.02, 0.06), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
        A.OneOf(
            [
                A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25),
                A.RandomGamma(gamma_limit=(70, 140)),
                A.CLAHE(clip_limit=(1.0, 3.0)),
            ],
            p=0.8,
        ),
        A.ToGray(p=0.15),
        A.OneOf(
            [
                A.GaussNoise(std_range=(0.02, 0.08)),
                A.MotionBlur(blur_limit=(3, 7)),
                A.Defocus(radius=(1, 3), alias_blur=(0.1, 0.3)),
            ],
            p=0.5,
        ),
        A.ImageCompression(quality_range=(40, 95), p=0.4),
        A.RandomShadow(shadow_roi=(0.0, 0.0, 1.0, 1.0), num_shadows_limit=(1, 2), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=hole, hole_width_range=hole, p=0.3),
    ]


def build_transform(preset: str, size: int) -> Transform:
    """A callable ``uint8 BGR image -> uint8 BGR [size, size, 3]`` for the named preset.

    The image is first brought to the input size (augmenting at the final size is cheapest), then augmented.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if preset == "none":
        return eval_transform(size)
    steps = _light(size) if preset == "light" else _heavy(size)
    pipeline = A.Compose(steps)

    def transform(image: np.ndarray) -> np.ndarray:
        return pipeline(image=fit_to_input(image, size))["image"]

    return transform
