"""Image files in and out, with errors that name the file.

Everything that reads a picture from disk goes through :func:`read_image` (training) or :func:`load_frame`
(inspection), so an unreadable file is always reported the same way (and the runtime, which must not import PyTorch,
can share it with training).

:func:`load_frame` never lets an input stop a run: whatever it cannot use is an :class:`ImageReadError` with the
reason, and pixel types the pipeline does not take are converted to 8 or 16 bits by a fixed rule:

* ``uint8`` and ``uint16`` are kept as stored (the pipeline scales 16 bits by 1/257);
* ``int8`` and ``int16``: negative values are clipped to 0, the rest read as ``uint8`` / ``uint16`` (a signed TIFF
  almost always holds non-negative sensor counts);
* floating point with every value in [0, 1]: times 255 (the usual convention for float images);
* any other floating-point range, and 32/64-bit integers: stretched per image from its minimum to its maximum
  (a flat image becomes black), since no scale is implied; scores of such files are comparable only to each other;
* NaN or infinite pixels, booleans and more than 4 channels: an ERROR with the reason.

Example:
    >>> from crackscope.inspect.images import read_image, fit_to_input
    >>> image = read_image("part.jpg")          # doctest: +SKIP
    >>> tile = fit_to_input(image, 224)          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from crackscope.inspect.headers import read_header

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: a 16-bit 4-channel frame of that size is already 800 MB decoded


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason.

    ``incomplete`` is True when the file looks cut short (empty, no end marker, data past its end): a writer may
    still be at work, so a hot folder tries it again before it records the ERROR.
    """

    def __init__(self, path: str | os.PathLike, reason: str, *, incomplete: bool = False) -> None:
        self.path = Path(path)
        self.reason = reason
        self.incomplete = incomplete
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
        raise ImageReadError(path, "file is empty", incomplete=True)
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

    image: np.ndarray  # uint8 or uint16, [H, W] or [H, W, C] (other pixel types converted, see the module docstring)
    sha256: str
    size_bytes: int


def file_digest(data: np.ndarray | bytes) -> str:
    return hashlib.sha256(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data).hexdigest()


def load_frame(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedFrame:
    """Read an inspection input exactly as stored (8/16-bit, grey/colour/alpha), refusing what would mislead.

    Besides missing, empty and undecodable files, this refuses:

    * a truncated file (JPEG without its end-of-image marker, PNG without ``IEND``, TIFF, WebP or BMP whose data runs
      past the end of the file): OpenCV decodes a cut JPEG or PNG with the rest grey and only a warning on stderr, and
      half a grey image would hide any crack in the missing half. Bytes *after* a JPEG's or PNG's end are ignored;
    * an image over ``max_pixels``, judged from the header before decoding (every format OpenCV reads, see
      :mod:`.headers`), so one huge file cannot exhaust the memory of a line PC; a file with no header this
      build can decode is refused before OpenCV is asked;
    * pixels that cannot be converted to 8 or 16 bits by the rule in the module docstring.

    Raises:
        ImageReadError: naming the file and the reason (``incomplete`` set when the file looks cut short).
    """
    path = Path(path)
    data = _file_bytes(path)
    raw = data.tobytes()
    header = read_header(raw)
    if header is None:
        raise ImageReadError(path, "not a decodable image (not a format OpenCV reads)")
    if header.incomplete:
        raise ImageReadError(
            path, f"truncated {header.format} ({header.incomplete}): the file is incomplete", incomplete=True
        )
    if header.size is None:
        raise ImageReadError(path, f"corrupt {header.format} header: it gives no image size")
    _check_pixels(path, *header.size, max_pixels)
    if header.trailing and raw[-header.trailing :].strip(b"\x00\r\n "):
        log.info("%s: %d byte(s) after the end of the %s image, ignored", path, header.trailing, header.format)
    image = _decode(path, data)
    _check_pixels(path, image.shape[1], image.shape[0], max_pixels)
    return LoadedFrame(_inspectable(path, image), file_digest(raw), len(raw))


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(path, f"image is {width}x{height} px, over the limit of {max_pixels:,} pixels")


def _decode(path: Path, data: np.ndarray) -> np.ndarray:
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # a decoder's own assertion (OpenCV's size cap, a broken codec stream)
        reason = str(error).strip().splitlines()[-1]
        raise ImageReadError(path, f"not a decodable image ({reason})") from error
    except MemoryError as error:
        raise ImageReadError(path, "not enough memory to decode the image") from error
    if image is None:
        raise ImageReadError(path, "not a decodable image (corrupt or unsupported format)")
    return image


def _inspectable(path: Path, image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 or uint16 by the rule in the module docstring, or an :class:`ImageReadError`."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim not in (2, 3) or not 1 <= channels <= 4:
        raise ImageReadError(path, f"image has {channels} channels; grey, colour and with alpha (1 to 4) are read")
    kind = image.dtype.kind
    if image.dtype in (np.uint8, np.uint16):
        return image
    if kind == "i" and image.dtype.itemsize <= 2:
        unsigned = np.uint8 if image.dtype.itemsize == 1 else np.uint16
        return np.clip(image, 0, None).astype(unsigned)
    if kind not in "iuf":
        raise ImageReadError(path, f"{image.dtype} pixels cannot be inspected")
    if kind == "f" and not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise ImageReadError(path, f"{bad:,} {image.dtype} pixel(s) are NaN or infinite")
    low, high = float(image.min()), float(image.max())
    if kind == "f" and low >= 0.0 and high <= 1.0:
        log.info("%s: %s pixels in [0, 1], scaled by 255", path, image.dtype)
        return (image * 255.0 + 0.5).astype(np.uint8)
    log.info("%s: %s pixels from %g to %g, stretched to 0..255", path, image.dtype, low, high)
    if high == low:
        return np.zeros(image.shape, np.uint8)
    scaled = (image.astype(np.float64) - low) * (255.0 / (high - low)) + 0.5
    return scaled.astype(np.uint8)


def header_size(raw: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header without decoding (see :mod:`.headers`), or None."""
    header = read_header(raw)
    return header.size if header is not None else None
