"""Image files in and out, with errors that name the file.

Everything that reads a picture from disk goes through :func:`read_image`, so an unreadable file is always
reported the same way (and the runtime, which must not import PyTorch, can share it with training).

Example:
    >>> from crackscope.inspect.images import read_image, fit_to_input
    >>> image = read_image("part.jpg")          # doctest: +SKIP
    >>> tile = fit_to_input(image, 224)          # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: Path) -> bool:
    """True for a file whose extension OpenCV can decode (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike, *, grayscale: bool = False) -> np.ndarray:
    """Decode an image file as uint8 BGR ``[H, W, 3]`` (or ``[H, W]`` with ``grayscale``).

    Grey images are expanded to three channels so every model input has the same layout.
    ``cv2.imdecode`` over the raw bytes is used instead of ``cv2.imread`` so that non-ASCII paths work
    and so that a missing file and a corrupt file give different reasons.

    Raises:
        ImageReadError: the file is missing, empty, or not a decodable image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"cannot read file ({error.strerror or error})") from error
    if data.size == 0:
        raise ImageReadError(path, "file is empty")
    flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    return image


def fit_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to the model's square input size.

    This is the only geometric step of evaluation-time preprocessing; colour conversion and normalisation
    live inside the model. Area interpolation is used when shrinking (it averages instead of skipping
    pixels, so thin cracks survive), linear when enlarging.
    """
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    shrinking = height * width > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)
