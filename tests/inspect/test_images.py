"""Reading inspection inputs: whatever is refused is refused with the file and the reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from crackscope.inspect.images import ImageReadError, header_size, load_frame


def _encoded(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_header_size_matches_the_decoded_image(ext):
    image = np.zeros((123, 321, 3), np.uint8)
    assert header_size(_encoded(ext, image)) == (321, 123)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty"),
        ("text.png", b"this is not a picture", "not a decodable image"),
        ("half.jpg", None, "truncated JPEG"),
        ("half.png", None, "truncated PNG"),
    ],
)
def test_unusable_files_are_refused_with_the_reason(tmp_path, name, content, reason):
    if content is None:  # the first half of a real image, as a copy interrupted mid-file leaves it
        image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
        full = _encoded(name[-4:], image)
        content = full[: len(full) // 2]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as caught:
        load_frame(path)
    assert str(path) in str(caught.value)


def test_a_truncated_jpeg_decodes_in_opencv_so_only_the_marker_check_catches_it(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    full = _encoded(".jpg", image)
    path = tmp_path / "half.jpg"
    path.write_bytes(full[: len(full) // 2])
    assert cv2.imread(str(path)) is not None  # OpenCV alone would inspect half a grey image
    with pytest.raises(ImageReadError, match="truncated"):
        load_frame(path)


def test_images_over_the_pixel_cap_are_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_encoded(".png", np.zeros((100, 200), np.uint8)))
    with pytest.raises(ImageReadError, match="200x100 px, over the limit of 10,000"):
        load_frame(path, max_pixels=10_000)
    assert load_frame(path, max_pixels=20_000).image.shape == (100, 200)


def test_sixteen_bit_and_alpha_images_are_read_as_stored(tmp_path):
    path16, path4 = tmp_path / "deep.png", tmp_path / "alpha.png"
    path16.write_bytes(_encoded(".png", np.full((8, 9), 40000, np.uint16)))
    path4.write_bytes(_encoded(".png", np.zeros((8, 9, 4), np.uint8)))
    assert load_frame(path16).image.dtype == np.uint16
    assert load_frame(path4).image.shape == (8, 9, 4)


def test_the_hash_is_of_the_file_bytes(tmp_path):
    import hashlib

    path = tmp_path / "a.png"
    path.write_bytes(_encoded(".png", np.zeros((8, 9), np.uint8)))
    assert load_frame(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
