"""Albumentations presets for crack patches.

Every preset ends at the model's square input size and leaves the image as uint8 BGR: the model normalises
inside its own graph (:class:`crackscope.training.backbones.Preprocess`), so evaluation-time preprocessing is one
resize, :func:`crackscope.inspect.images.fit_to_input`, which the runtime calls too.

Geometric augmentation is label-preserving for cracks (a flipped or rotated crack is still a crack); crops that
could cut the crack out of the patch are avoided, and dropout holes are small so a crack is never erased.

The presets, so that they can be compared on held-out domains:

- ``none``: resize only (the evaluation transform).
- ``light``: flips, quarter turns, mild brightness/contrast.
- ``heavy``: light + affine/perspective warps, tone, grey, noise/blur, JPEG, shadows, small dropout holes.
- ``colour``: light geometry + strong colour and texture variation: colour jitter, grey, gamma/CLAHE, histogram
  matching to reference images drawn from the training sources, blur/sharpen, noise/JPEG.
- ``scale``: light + zoom in (centre-keeping crops) or out (shrink and reflect-pad), 0.6x to 2x.
- ``domain``: heavy's warps and damage + colour + scale, each applied to a share of the images.

Every transform also takes an image and its crack mask together (``transform.pair(image, mask)``), for training the
heatmap against masks: geometric steps (resize, flips, turns, warps, zoom) move the mask with the image, with
nearest-neighbour sampling or :func:`resize_mask` so it stays 0/255; photometric steps (colour, blur, noise, JPEG,
shadows, dropout holes, histogram matching) leave it alone. The image comes out exactly as ``transform(image)``
would give it from the same random state.

Example:
    >>> from crackscope.training.augment import build_transform, read_references
    >>> transform = build_transform("heavy", 224)
    >>> augmented = transform(image)                  # doctest: +SKIP
    >>> augmented, moved_mask = transform.pair(image, mask)  # doctest: +SKIP
    >>> references = read_references(train_samples)  # doctest: +SKIP
    >>> transform = build_transform("domain", 224, references=references, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import albumentations as A
import cv2
import numpy as np

from crackscope.inspect.images import fit_to_input
from crackscope.labelled import Sample, read_patch

PRESETS = ("none", "light", "heavy", "colour", "scale", "domain")
REFERENCE_PRESETS = frozenset({"colour", "domain"})  # the presets that histogram-match to reference images
DEFAULT_REFERENCE_COUNT = 64
REFERENCES_KEY = "crackscope_references"  # where the pipeline finds the reference images on each call

# Zooming keeps the centre square of this side (a share of the patch side) inside the patch, and the patch centre
# inside the output's centre square. Mask-derived labels say "crack" when the crack crosses the centre square
# (MaskLabelling.center_fraction, 0.5), and class-folder crack patches have the crack running across the patch,
# so a crop that keeps the centre half can magnify the crack but never cut it out. Zooming in further (crops under
# half the side) could leave only plain surface of a folder patch whose crack runs off-centre.
CENTRE_KEPT = 0.5
ZOOM_IN_CROP = (CENTRE_KEPT, 1.0)  # crop side as a share of the patch side: up to 2x magnification
# Shrinking below 0.6 would thin hairline cracks (1-2 px) to sub-pixel lines that area interpolation fades out.
ZOOM_OUT_SHRINK = (0.6, 1.0)

Transform = Callable[[np.ndarray], np.ndarray]


class PairedTransform(Protocol):
    """A transform that also carries a crack mask through the same geometry (what :func:`build_transform` makes)."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def pair(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 BGR [size, size, 3], uint8 0/255 [size, size])`` from an image and its ``[H, W]`` mask."""
        ...


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation transform: resize to the input size, nothing else (the rest is in the model).

    A frozen dataclass rather than a closure, so that it pickles into DataLoader workers.
    """

    size: int

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return fit_bgr(image, self.size)

    def pair(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fit_bgr(image, self.size), fit_mask(mask, image.shape[:2], self.size)


def eval_transform(size: int) -> EvalTransform:
    """The evaluation transform for the input side ``size`` (see :class:`EvalTransform`)."""
    return EvalTransform(size)


def fit_bgr(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` as three-channel BGR at the square input size."""
    return fit_to_input(as_bgr(image), size)


def fit_mask(mask: np.ndarray, image_shape: tuple[int, ...], size: int) -> np.ndarray:
    """A crack mask of an image of ``image_shape`` at the square input size, as :func:`fit_bgr` fits the image.

    Raises:
        ValueError: the mask is not ``[H, W]`` (or ``[H, W, 1]``) with the image's height and width.
    """
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.shape != tuple(image_shape[:2]):
        raise ValueError(f"a mask must be [H, W] like its image {list(image_shape[:2])}, got shape {list(mask.shape)}")
    return resize_mask(mask, size, size)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A crack mask resized to ``width`` x ``height``, uint8 0/255.

    Enlarging samples the nearest pixel. Shrinking averages (area interpolation, as :func:`fit_to_input` shrinks
    the image) and keeps any output pixel that a crack pixel reaches: nearest-neighbour would skip most pixels of
    a 1-2 px crack, whereas the image keeps it as a fainter line. The mask may so grow by a pixel; cell targets
    (:func:`crackscope.training.supervision.cell_targets`) ask only whether a cell holds any crack pixel anyway.
    """
    binary = np.where(mask > 0, np.uint8(255), np.uint8(0))
    rows, cols = binary.shape[:2]
    if (rows, cols) == (height, width):
        return binary
    if width < cols or height < rows:
        shrunk = cv2.resize(binary, (width, height), interpolation=cv2.INTER_AREA)
        return np.where(shrunk > 0, np.uint8(255), np.uint8(0))
    # NEAREST_EXACT samples pixel centres; plain NEAREST is shifted by half a source pixel against the image.
    return cv2.resize(binary, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A grey ``[H, W]`` or ``[H, W, 1]`` image as three equal channels; a BGR image unchanged.

    Raises:
        ValueError: the array is neither grey nor three-channel.
    """
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a BGR image [H, W, 3] or a grey one [H, W], got shape {list(image.shape)}")
    return image


# --- zooming about the centre (pure geometry, then the two albumentations transforms that use it) ---------------------


def centre_keeping_span(length: int, crop: float, keep: float, position: float) -> tuple[int, int]:
    """Start and extent of a crop of ``crop * length`` pixels that contains the central ``keep * length`` pixels.

    Args:
        length: side of the image along this axis.
        crop: crop side as a share of ``length``, in ``[keep, 1]``.
        keep: side of the central span that must stay inside the crop, as a share of ``length``.
        position: in ``[0, 1]``; where the crop sits among the starts that keep the central span.
    """
    extent = min(length, max(1, round(crop * length)))
    kept = min(extent, round(keep * length))
    kept_start = (length - kept) // 2
    low = max(0, kept_start + kept - extent)
    high = min(kept_start, length - extent)
    return low + round(position * (high - low)), extent


def zoom_in(
    image: np.ndarray, crop: float, keep: float, x_position: float, y_position: float, *, mask: bool = False
) -> np.ndarray:
    """Crop a square share ``crop`` of the image that contains its central share ``keep``, resized back up.

    ``mask=True`` treats ``image`` as a crack mask: the same crop, resized by :func:`resize_mask`.
    """
    height, width = image.shape[:2]
    top, crop_height = centre_keeping_span(height, crop, keep, y_position)
    left, crop_width = centre_keeping_span(width, crop, keep, x_position)
    window = image[top : top + crop_height, left : left + crop_width]
    if mask:
        return resize_mask(window, width, height)
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_LINEAR)


def zoom_out(
    image: np.ndarray, shrink: float, x_position: float, y_position: float, *, mask: bool = False
) -> np.ndarray:
    """Shrink the image by ``shrink`` and reflect-pad it back to its size; the positions place it in the frame.

    Reflection (not a constant colour) keeps the surface texture up to the border, so the model cannot learn
    "flat border = augmented". Any crack is kept whole, and mirrored copies of it stay crack-like (and so are
    marked in the mask too). ``mask=True`` treats ``image`` as a crack mask, shrunk by :func:`resize_mask`.
    """
    height, width = image.shape[:2]
    small_height, small_width = max(1, round(shrink * height)), max(1, round(shrink * width))
    if mask:
        small = resize_mask(image, small_width, small_height)
    else:
        small = cv2.resize(image, (small_width, small_height), interpolation=cv2.INTER_AREA)
    top = round(y_position * (height - small_height))
    left = round(x_position * (width - small_width))
    bottom, right = height - small_height - top, width - small_width - left
    return cv2.copyMakeBorder(small, top, bottom, left, right, cv2.BORDER_REFLECT_101)


class CentreZoomIn(A.DualTransform):
    """Zoom in by a random crop that always contains the central ``keep`` share of the patch (see ``zoom_in``)."""

    def __init__(self, crop_range: tuple[float, float] = ZOOM_IN_CROP, keep: float = CENTRE_KEPT, p: float = 0.5):
        if not 0 < keep <= crop_range[0] <= crop_range[1] <= 1:
            raise ValueError(f"CentreZoomIn needs 0 < keep <= crop_range <= 1; got {keep} and {crop_range}")
        super().__init__(p=p)
        self.crop_range = crop_range
        self.keep = keep

    def get_params(self) -> dict[str, float]:
        rng = self.py_random
        return {"crop": rng.uniform(*self.crop_range), "x_position": rng.random(), "y_position": rng.random()}

    def apply(self, img: np.ndarray, crop: float, x_position: float, y_position: float, **params) -> np.ndarray:
        return zoom_in(img, crop, self.keep, x_position, y_position)

    def apply_to_mask(
        self, mask: np.ndarray, crop: float, x_position: float, y_position: float, **params
    ) -> np.ndarray:
        return zoom_in(mask, crop, self.keep, x_position, y_position, mask=True)


class ShrinkAndReflect(A.DualTransform):
    """Zoom out: shrink by a random factor and reflect-pad back to size at a random place (see ``zoom_out``)."""

    def __init__(self, shrink_range: tuple[float, float] = ZOOM_OUT_SHRINK, p: float = 0.5):
        # Shrinking to at least half keeps each reflected border narrower than the image it reflects.
        if not 0.5 <= shrink_range[0] <= shrink_range[1] <= 1:
            raise ValueError(f"ShrinkAndReflect needs 0.5 <= shrink_range <= 1, got {shrink_range}")
        super().__init__(p=p)
        self.shrink_range = shrink_range

    def get_params(self) -> dict[str, float]:
        rng = self.py_random
        return {"shrink": rng.uniform(*self.shrink_range), "x_position": rng.random(), "y_position": rng.random()}

    def apply(self, img: np.ndarray, shrink: float, x_position: float, y_position: float, **params) -> np.ndarray:
        return zoom_out(img, shrink, x_position, y_position)

    def apply_to_mask(
        self, mask: np.ndarray, shrink: float, x_position: float, y_position: float, **params
    ) -> np.ndarray:
        return zoom_out(mask, shrink, x_position, y_position, mask=True)


# --- presets ---------------------------------------------------------------------------------------------------------
# Images are BGR, while albumentations assumes RGB: hue shifts turn the other way and ToGray weighs blue as red.
# Both are symmetric random variations, so for augmentation this makes no difference.


def _flips() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


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


def _zoom(p: float) -> A.BaseCompose:
    # Zoom in and out equally often, so the average crack width seen in training stays that of the data.
    return A.OneOf([CentreZoomIn(p=1.0), ShrinkAndReflect(p=1.0)], p=p)


def _surface(with_references: bool, p: float) -> list[A.BasicTransform]:
    """Colour and texture variation; ``p`` scales how often each step runs (1 for ``colour``, less in ``domain``).

    Histogram matching goes first because it replaces the image's tone wholesale with a reference's; jitter,
    gamma/CLAHE and grey then vary the matched image further instead of being overwritten by it.
    """
    matching = [A.HistogramMatching(blend_ratio=(0.5, 1.0), metadata_key=REFERENCES_KEY, p=0.5 * p)]
    return [
        *(matching if with_references else []),
        A.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.4, 1.6), hue=(-0.06, 0.06), p=0.8 * p),
        A.OneOf([A.RandomGamma(gamma_limit=(60, 160)), A.CLAHE(clip_limit=(1.0, 4.0))], p=0.4 * p),
        A.ToGray(p=0.2 * p),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Sharpen(alpha=(0.1, 0.4), lightness=(0.8, 1.2))], p=0.3 * p),
        # Speckle rather than additive Gaussian noise: A.GaussNoise costs ~2 ms per 224 px image, 4x as much.
        A.OneOf(
            [
                A.MultiplicativeNoise(multiplier=(0.85, 1.15), elementwise=True),
                A.ImageCompression(quality_range=(40, 95)),
            ],
            p=0.4 * p,
        ),
    ]


def _colour(size: int, with_references: bool) -> list[A.BasicTransform]:
    return [*_flips(), *_surface(with_references, p=1.0)]


def _scale(size: int) -> list[A.BasicTransform]:
    return [*_light(size), _zoom(p=0.7)]


def _domain(size: int, with_references: bool) -> list[A.BasicTransform]:
    hole = (max(2, size // 32), max(3, size // 16))
    return [
        *_flips(),
        _zoom(p=0.5),
        # No scale or shift here: the zoom does that, and keeps the centre where it is.
        A.Affine(rotate=(-20, 20), shear=(-6, 6), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
        A.Perspective(scale=(0.02, 0.06), border_mode=cv2.BORDER_REFLECT_101, p=0.2),
        *_surface(with_references, p=0.75),
        A.RandomShadow(shadow_roi=(0.0, 0.0, 1.0, 1.0), num_shadows_limit=(1, 2), p=0.15),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=hole, hole_width_range=hole, p=0.2),
    ]


def _steps(preset: str, size: int, with_references: bool) -> list[A.BasicTransform]:
    if preset == "light":
        return _light(size)
    if preset == "heavy":
        return _heavy(size)
    if preset == "colour":
        return _colour(size, with_references)
    if preset == "scale":
        return _scale(size)
    return _domain(size, with_references)


# --- the transform ---------------------------------------------------------------------------------------------------


class Augmentation:
    """``uint8 BGR image -> uint8 BGR [size, size, 3]`` through one albumentations pipeline; picklable.

    The image is first brought to the input size (augmenting at the final size is cheapest), then augmented.
    :meth:`pair` does the same to an image and its crack mask at once.

    Seeding works around two traits of albumentations 2.0: ``Compose(seed=s)`` gives every step its own generator
    seeded with the same ``s`` (so a horizontal and a vertical flip would always fire together), and it ignores
    the global seeds. So the pipeline's steps share one pair of generators seeded here, and on its first call in a
    new process (a DataLoader worker, forked with a copy of those generators) the pipeline is re-seeded from
    Python's ``random`` module, which torch seeds differently in every worker; otherwise all workers would
    replay the same augmentations.
    """

    def __init__(self, pipeline: A.Compose, size: int, references: Sequence[np.ndarray], seed: int | None) -> None:
        self.pipeline = pipeline
        self.size = size
        self.references = list(references)
        self.seed = seed
        self._seed_pipeline(None if seed is None else [seed])

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._run({"image": fit_bgr(image, self.size)})["image"]

    def pair(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The augmented image and its mask moved alike: uint8 BGR ``[size, size, 3]``, uint8 0/255 ``[size, size]``.

        The random draws do not depend on whether a mask comes along, so the image is the one ``self(image)``
        would have given. Masks go through the geometric steps with nearest-neighbour sampling (albumentations'
        default for masks; :func:`resize_mask` in the zoom steps), so they stay 0/255.
        """
        fitted = self._run({"image": fit_bgr(image, self.size), "mask": fit_mask(mask, image.shape[:2], self.size)})
        return fitted["image"], fitted["mask"]

    def _run(self, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if os.getpid() != self._pid:
            self._seed_pipeline([random.getrandbits(64)] if self.seed is None else [self.seed, random.getrandbits(64)])
        if self.references:
            data = {**data, REFERENCES_KEY: self.references}
        return self.pipeline(**data)

    def _seed_pipeline(self, entropy: list[int] | None) -> None:
        numpy_seed, python_seed = np.random.SeedSequence(entropy).spawn(2)
        python_random = random.Random(int(python_seed.generate_state(1, np.uint64)[0]))
        self.pipeline.set_random_state(np.random.default_rng(numpy_seed), python_random)
        self._pid = os.getpid()


def build_transform(
    preset: str, size: int, references: Sequence[np.ndarray] = (), seed: int | None = None
) -> PairedTransform:
    """A callable ``uint8 BGR image -> uint8 BGR [size, size, 3]`` for the named preset, with a mask-carrying ``pair``.

    Args:
        preset: one of :data:`PRESETS`.
        size: the model's input side.
        references: uint8 BGR images (any size, grey allowed) that ``colour`` and ``domain`` histogram-match to,
            typically :func:`read_references` of the training items. Other presets ignore them; without them,
            those two presets skip histogram matching.
        seed: makes the augmentation stream reproducible; ``None`` draws one.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if seed is not None and seed < 0:
        raise ValueError(f"augmentation seed must be a non-negative integer, got {seed}")
    if preset == "none":
        return eval_transform(size)
    fitted = _fit_references(references, size) if preset in REFERENCE_PRESETS else []
    pipeline = A.Compose(_steps(preset, size, with_references=bool(fitted)))
    return Augmentation(pipeline, size, fitted, seed)


def _fit_references(references: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    # Matching resizes a reference to the image on every call; resizing once here saves that.
    fitted = []
    for index, reference in enumerate(references):
        if not isinstance(reference, np.ndarray) or reference.dtype != np.uint8:
            kind = reference.dtype if isinstance(reference, np.ndarray) else type(reference).__name__
            raise ValueError(f"reference image {index} is {kind}; expected a uint8 BGR array")
        fitted.append(fit_bgr(reference, size))
    return fitted


# --- reference images for histogram matching -------------------------------------------------------------------------


def pick_references(samples: Sequence[Sample], count: int = DEFAULT_REFERENCE_COUNT, seed: int = 0) -> list[Sample]:
    """A seeded sample of up to ``count`` items, spread evenly over their sources when samples carry ``source``.

    Taking sources in turn gives a small source as many references as a large one, so matching pulls images
    towards every surface in the training set rather than mostly towards the biggest one.
    """
    if count < 1:
        raise ValueError(f"reference count must be at least 1, got {count}")
    rng = random.Random(seed)
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_source[str(getattr(sample, "source", ""))].append(sample)
    queues = [rng.sample(group, len(group)) for _, group in sorted(by_source.items())]
    picked: list[Sample] = []
    while len(picked) < count and any(queues):
        picked.extend(queue.pop() for queue in queues if queue)
    return picked[:count]


def read_references(samples: Sequence[Sample], count: int = DEFAULT_REFERENCE_COUNT, seed: int = 0) -> list[np.ndarray]:
    """The pixels of :func:`pick_references` (uint8 BGR), ready for ``build_transform(references=...)``."""
    return [read_patch(sample) for sample in pick_references(samples, count, seed)]
