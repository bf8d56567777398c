"""Image files in and out, with errors that name the file.

Everything that reads a picture from disk goes through :func:`read_image`, so an unreadable file is always
reported the same way (and the runtime, which must not import PyTorch, can share it with training).

Example:
    >>> from crackscope.inspect.images import read_image, fit_to_input
    >>> image = read_image("part.jpg")          # doctest: +SKIP
    >>> tile = fit_to_input(image, 224)          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: a 16-bit 4-channel frame of that size is already 800 MB decoded


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
    data = _file_bytes(path)
    flags = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    return image


def _file_bytes(path: Path) -> np.ndarray:
    """A file's bytes as uint8, or an :class:`ImageReadError` saying why there are none."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"cannot read file ({error.strerror or error})") from error
    if data.size == 0:
        raise ImageReadError(path, "file is empty")
    return data


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


@dataclass(frozen=True)
class LoadedFrame:
    """A decoded input file with the hash of its bytes (the resume key of batch runs)."""

    image: np.ndarray  # uint8 or uint16, [H, W] or [H, W, C] as stored (the pipeline converts)
    sha256: str
    size_bytes: int


def file_digest(data: np.ndarray | bytes) -> str:
    return hashlib.sha256(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data).hexdigest()


def load_frame(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedFrame:
    """Read an inspection input exactly as stored (8/16-bit, grey/colour/alpha), refusing what would mislead.

    Besides missing, empty and undecodable files, this refuses:

    * a truncated JPEG or PNG: OpenCV decodes what is there and fills the rest with grey, with only a warning on
      stderr; inspecting half a grey image would hide any crack in the missing half. A JPEG must end with its
      end-of-image marker and a PNG with its ``IEND`` chunk;
    * an image over ``max_pixels``, judged from the header before decoding where the format allows (JPEG, PNG),
      so one huge file cannot exhaust the memory of a line PC.

    Raises:
        ImageReadError: naming the file and the reason.
    """
    path = Path(path)
    data = _file_bytes(path)
    raw = data.tobytes()
    _check_complete(path, raw)
    size = header_size(raw)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageReadError(path, f"image is {size[0]}x{size[1]} px, over the limit of {max_pixels:,} pixels")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageReadError(
            path, f"image is {image.shape[1]}x{image.shape[0]} px, over the limit of {max_pixels:,} pixels"
        )
    return LoadedFrame(image, file_digest(raw), len(raw))


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_complete(path: Path, raw: bytes) -> None:
    if raw.startswith(_JPEG_START):
        # Some writers pad after the marker (zeros, a newline); a cut file has no marker in its tail at all.
        if _JPEG_END not in raw[-64:].rstrip(b"\x00\r\n "):
            raise ImageReadError(path, "truncated JPEG (no end-of-image marker): the file is incomplete")
    elif raw.startswith(_PNG_SIGNATURE) and b"IEND" not in raw[-16:]:
        raise ImageReadError(path, "truncated PNG (no IEND chunk): the file is incomplete")


def header_size(raw: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG or JPEG header without decoding, or None for other formats."""
    if raw.startswith(_PNG_SIGNATURE) and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return width, height
    if not raw.startswith(_JPEG_START):
        return None
    offset = 2
    while offset + 9 < len(raw):
        if raw[offset] != 0xFF:
            return None
        marker = raw[offset + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            offset += 2
            continue
        length = struct.unpack(">H", raw[offset + 2 : offset + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame: the image size
            height, width = struct.unpack(">HH", raw[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    return None
