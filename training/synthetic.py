"""Procedural crack images for demos and tests.

Everything here is built from numpy and OpenCV only (no torch), so the demo and the test suite run on a bare
runtime install. Every function takes a ``numpy.random.Generator`` or an integer seed and is fully deterministic
for a given seed.

The building blocks are:

* :func:`make_texture`: a crack-free surface (``"concrete"``, ``"metal"`` or ``"tile"``).
* :func:`draw_crack`: a binary mask of one branching random-walk crack.
* :func:`render_crack`: darkens an image along a mask, with a tunable contrast.
* :func:`make_frame` / :func:`make_patch`: a full inspection frame with its mask, or one labelled square patch.
* :func:`write_patch_dataset`, :func:`write_frame_dataset`, :func:`write_video`: write them to disk.

Example:
    >>> import numpy as np
    >>> from crackscope.training import synthetic
    >>> rng = np.random.default_rng(0)
    >>> image, mask = synthetic.make_frame(384, 544, rng, kind="concrete", n_cracks=2)
    >>> image.shape, image.dtype, mask.shape, sorted(np.unique(mask).tolist())
    ((384, 544, 3), dtype('uint8'), (384, 544), [0, 255])
    >>> patch = synthetic.make_patch(96, "crack", 7)
    >>> patch.shape
    (96, 96, 3)
"""

from __future__ import annotations

import math
import os
import pathlib

import cv2
import numpy as np

__all__ = [
    "LABELS",
    "TEXTURES",
    "RngLike",
    "draw_crack",
    "make_frame",
    "make_patch",
    "make_texture",
    "render_crack",
    "write_frame_dataset",
    "write_patch_dataset",
    "write_video",
]

TEXTURES: tuple[str, ...] = ("concrete", "metal", "tile")
"""Surface kinds understood by :func:`make_texture`."""

LABELS: tuple[str, ...] = ("crack", "ok", "ambiguous")
"""Patch labels understood by :func:`make_patch`."""

RngLike = np.random.Generator | int
"""A ``numpy.random.Generator`` or an integer seed."""


def _as_rng(rng: RngLike) -> np.random.Generator:
    """Returns ``rng`` itself if it is a Generator, else a new Generator seeded with it."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (bool, float)) or not isinstance(rng, (int, np.integer)):
        raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")
    return np.random.default_rng(int(rng))


def _check_size(height: int, width: int) -> None:
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")


def _check_kind(kind: str) -> None:
    if kind not in TEXTURES:
        raise ValueError(f"unknown texture kind {kind!r}; allowed kinds: {', '.join(TEXTURES)}")


# --------------------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------------------


def _smooth_noise(height: int, width: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-ish amplitude noise with features about ``cell`` pixels wide (float32 [H, W])."""
    gh = max(2, math.ceil(height / cell) + 1)
    gw = max(2, math.ceil(width / cell) + 1)
    low = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)


def _multiscale_noise(
    height: int, width: int, cells: tuple[float, ...], weights: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    out = np.zeros((height, width), np.float32)
    for cell, weight in zip(cells, weights, strict=True):
        out += weight * _smooth_noise(height, width, cell, rng)
    return out


def _linear_gradient(height: int, width: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A planar ramp in a random direction, spanning about ``[-strength, strength]`` (float32 [H, W])."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    return (2.0 * strength) * (math.cos(angle) * xs + math.sin(angle) * ys)


def _texture_concrete(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(105.0, 175.0)
    contrast = rng.uniform(0.6, 1.4)
    scale = max(height, width)
    lum = base + contrast * _multiscale_noise(
        height, width, (scale / 2.0, scale / 8.0, 12.0, 3.0), (7.0, 6.0, 5.0, 3.0), rng
    )
    lum += _linear_gradient(height, width, rng.uniform(0.0, 12.0), rng)
    lum += contrast * rng.normal(0.0, 6.0, (height, width)).astype(np.float32)
    # Aggregate: sparse light and dark specks a pixel or two wide.
    specks = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 0.8)
    lum += np.where(specks > 0.75, 18.0, 0.0).astype(np.float32) * contrast
    lum -= np.where(specks < -0.8, 16.0, 0.0).astype(np.float32) * contrast
    # Pores: a few small, round, dark holes.
    pores = np.zeros((height, width), np.float32)
    n_pores = int(rng.poisson(height * width / 2500.0))
    if n_pores:
        xs = rng.integers(0, width, n_pores)
        ys = rng.integers(0, height, n_pores)
        radii = rng.uniform(0.7, 2.8, n_pores)
        depths = rng.uniform(0.3, 0.7, n_pores)
        for x, y, r, d in zip(xs.tolist(), ys.tolist(), radii.tolist(), depths.tolist(), strict=True):
            cv2.circle(pores, (x, y), max(1, round(r)), d, -1, lineType=cv2.LINE_AA)
        pores = cv2.GaussianBlur(pores, (0, 0), 0.7)
    lum *= 1.0 - np.clip(pores, 0.0, 0.8)
    tint = np.array([rng.uniform(-6, 2), rng.uniform(-3, 3), rng.uniform(-2, 6)], np.float32)  # BGR, slightly warm
    return np.clip(lum[:, :, None] + tint, 0, 255).astype(np.uint8)


def _texture_metal(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(120.0, 190.0)
    contrast = rng.uniform(0.6, 1.4)
    vertical = bool(rng.random() < 0.5)
    h, w = (width, height) if vertical else (height, width)
    # Brushed streaks: noise blurred hard along one axis, at two streak lengths.
    fine = rng.standard_normal((h, w)).astype(np.float32)
    long_len = max(3, (w // 3) | 1)
    short_len = max(3, (w // 12) | 1)
    streaks = 2.2 * cv2.blur(fine, (long_len, 1)) * math.sqrt(long_len) / 4.0
    streaks += 1.0 * cv2.blur(fine, (short_len, 1)) * math.sqrt(short_len) / 4.0
    if vertical:
        streaks = np.ascontiguousarray(streaks.T)
    lum = base + contrast * 6.0 * streaks
    lum += contrast * _smooth_noise(height, width, max(height, width) / 3.0, rng) * 6.0
    lum += _linear_gradient(height, width, rng.uniform(10.0, 30.0), rng)
    lum += rng.normal(0.0, 2.0, (height, width)).astype(np.float32)
    # Slight tint: bluish steel, neutral, or warm brass-ish.
    tint_kind = int(rng.integers(0, 3))
    tint = [(8.0, 2.0, -6.0), (0.0, 0.0, 0.0), (-12.0, 0.0, 8.0)][tint_kind]
    tint_arr = np.array(tint, np.float32) * rng.uniform(0.5, 1.2)
    return np.clip(lum[:, :, None] + tint_arr, 0, 255).astype(np.uint8)


def _texture_tile(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    # Glazed, fairly light, any hue.
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(150, 240)]]], np.float32)
    colour = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).reshape(3).astype(np.float32)
    shade = 1.0 + _linear_gradient(height, width, rng.uniform(0.02, 0.08), rng)
    shade += 0.015 * _smooth_noise(height, width, max(height, width) / 3.0, rng)
    img = colour[None, None, :] * shade[:, :, None]
    img += rng.normal(0.0, rng.uniform(1.0, 2.5), (height, width, 1)).astype(np.float32)
    if rng.random() < 0.5:
        grout = np.zeros((height, width), np.float32)
        tile_px = rng.uniform(0.6, 1.3) * max(height, width)
        thickness = int(rng.integers(1, 4))
        for axis in (0, 1):
            extent = width if axis == 0 else height
            offset = rng.uniform(0.0, tile_px)
            pos = offset
            while pos < extent:
                p = round(pos)
                if axis == 0:
                    cv2.line(grout, (p, 0), (p, height - 1), 1.0, thickness)
                else:
                    cv2.line(grout, (0, p), (width - 1, p), 1.0, thickness)
                pos += tile_px
        grout = cv2.GaussianBlur(grout, (0, 0), 0.8)
        grout_colour = np.full(3, rng.uniform(110, 200), np.float32)
        alpha = (grout * rng.uniform(0.25, 0.6))[:, :, None]
        img = img * (1.0 - alpha) + grout_colour * alpha
    return np.clip(img, 0, 255).astype(np.uint8)


_TEXTURE_FUNCS = {"concrete": _texture_concrete, "metal": _texture_metal, "tile": _texture_tile}


def make_texture(kind: str, height: int, width: int, rng: RngLike) -> np.ndarray:
    """Makes a crack-free surface texture.

    Args:
        kind: One of :data:`TEXTURES`: ``"concrete"`` (grey multi-scale blotches, aggregate specks and pores),
            ``"metal"`` (brushed streaks with a slight tint and a gradient) or ``"tile"`` (flat glazed colour with a
            subtle gradient, low noise and sometimes faint grout lines).
        height: Image height in pixels.
        width: Image width in pixels.
        rng: Generator or integer seed; base colour, brightness and contrast vary with it.

    Returns:
        A uint8 BGR image of shape ``[height, width, 3]``.

    Raises:
        ValueError: If ``kind`` is unknown or the size is not positive.
    """
    _check_kind(kind)
    _check_size(height, width)
    return _TEXTURE_FUNCS[kind](int(height), int(width), _as_rng(rng))


# --------------------------------------------------------------------------------------------------------------
# Crack masks
# --------------------------------------------------------------------------------------------------------------


def _smooth_profile(n: int, rng: np.random.Generator, knots: int = 6) -> np.ndarray:
    """``n`` values in [0, 1] that vary smoothly (linear interpolation between random knots)."""
    knots = max(2, min(knots, n))
    kx = np.linspace(0.0, 1.0, knots)
    ky = rng.uniform(0.0, 1.0, knots)
    return np.interp(np.linspace(0.0, 1.0, n), kx, ky)


def _walk(
    mask: np.ndarray,
    start: tuple[float, float],
    angle: float,
    length: float,
    max_width: float,
    rng: np.random.Generator,
    *,
    min_width: float = 1.0,
    jitter: float = 0.35,
    taper: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one random-walk stroke into ``mask`` (in place).

    Returns:
        Points ``[N+1, 2]`` (x, y), headings ``[N]`` and widths ``[N]`` of the segments drawn.
    """
    height, width = mask.shape
    step = float(np.clip(max(height, width) / 90.0, 1.5, 6.0))
    n = max(2, math.ceil(length / step))
    min_width = min(min_width, max_width)
    widths = min_width + (max_width - min_width) * _smooth_profile(n, rng, knots=int(rng.integers(3, 8)))
    if taper:  # thin out towards the tip
        tip = np.clip(np.linspace(1.6, 0.0, n), 0.0, 1.0)
        widths = min_width + (widths - min_width) * tip
    noise = rng.normal(0.0, jitter, n)
    kinks = rng.random(n) < 0.06  # occasional sharp kinks make it look jagged rather than wavy
    noise[kinks] += rng.normal(0.0, 0.8, int(kinks.sum()))
    points = np.empty((n + 1, 2), np.float64)
    headings = np.empty(n, np.float64)
    points[0] = start
    heading = angle
    drift = rng.normal(0.0, 0.01)
    for i in range(n):
        # Mean-reverting heading: persistent overall direction plus jitter.
        heading = heading + noise[i] + 0.25 * (angle - heading)
        angle += drift
        headings[i] = heading
        points[i + 1, 0] = points[i, 0] + step * math.cos(heading)
        points[i + 1, 1] = points[i, 1] + step * math.sin(heading)
    # Stop where the stroke leaves the image: the rest would be invisible.
    pad = max(2.0 * step, 0.1 * min(height, width))
    outside = (
        (points[1:, 0] < -pad)
        | (points[1:, 0] > width - 1 + pad)
        | (points[1:, 1] < -pad)
        | (points[1:, 1] > height - 1 + pad)
    )
    if outside.any():
        n = max(1, int(np.argmax(outside)) + 1)
        points, headings, widths = points[: n + 1], headings[:n], widths[:n]
    ipts = np.rint(points).astype(np.int32)
    for i in range(n):
        thickness = max(1, round(widths[i]))
        p0 = (int(ipts[i, 0]), int(ipts[i, 1]))
        p1 = (int(ipts[i + 1, 0]), int(ipts[i + 1, 1]))
        cv2.line(mask, p0, p1, 255, thickness, lineType=cv2.LINE_8)
        if thickness >= 3:  # round joints so thick segments do not leave notches
            cv2.circle(mask, p1, thickness // 2, 255, -1, lineType=cv2.LINE_8)
    return points, headings, widths


def _edge_start(height: int, width: int, rng: np.random.Generator) -> tuple[float, float]:
    """A start point on (or just inside) a random image edge."""
    side = int(rng.integers(0, 4))
    margin = rng.uniform(0.0, 0.05) * min(height, width)
    if side == 0:  # top
        return rng.uniform(0, width - 1), margin
    if side == 1:  # bottom
        return rng.uniform(0, width - 1), height - 1 - margin
    if side == 2:  # left
        return margin, rng.uniform(0, height - 1)
    return width - 1 - margin, rng.uniform(0, height - 1)


def _crack_into(
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_width: float,
    branches: int | None,
    length: float | None,
    start: tuple[float, float] | None = None,
    angle: float | None = None,
    min_width: float = 1.0,
    both_ways: bool = False,
) -> None:
    """Draws a branching crack into ``mask`` in place (shared by :func:`draw_crack` and :func:`make_patch`)."""
    height, width = mask.shape
    diag = math.hypot(height, width)
    if length is None:
        length = rng.uniform(0.45, 1.0) * diag
    if start is None:
        if rng.random() < 0.65:
            start = _edge_start(height, width, rng)
        else:
            start = (rng.uniform(0.1, 0.9) * (width - 1), rng.uniform(0.1, 0.9) * (height - 1))
        if angle is None:  # head roughly towards a point in the middle of the image so the crack stays in view
            target = (rng.uniform(0.2, 0.8) * (width - 1), rng.uniform(0.2, 0.8) * (height - 1))
            if math.hypot(target[0] - start[0], target[1] - start[1]) > 1.0:
                angle = math.atan2(target[1] - start[1], target[0] - start[0])
    if angle is None:
        angle = rng.uniform(0.0, 2.0 * math.pi)
    strokes = []
    if both_ways:
        share = rng.uniform(0.35, 0.65)
        strokes.append(_walk(mask, start, angle, length * share, max_width, rng, min_width=min_width))
        strokes.append(_walk(mask, start, angle + math.pi, length * (1 - share), max_width, rng, min_width=min_width))
    else:
        strokes.append(_walk(mask, start, angle, length, max_width, rng, min_width=min_width))
    if branches is None:
        branches = int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))
    for _ in range(max(0, int(branches))):
        points, headings, widths = strokes[int(rng.integers(0, len(strokes)))]
        n = len(headings)
        i = int(rng.integers(int(0.15 * n), max(int(0.15 * n) + 1, int(0.85 * n))))
        side = 1.0 if rng.random() < 0.5 else -1.0
        b_angle = headings[i] + side * rng.uniform(0.35, 1.1)
        b_len = length * rng.uniform(0.15, 0.45)
        b_width = max(1.0, 0.65 * float(widths[i]))
        b_points, b_headings, b_widths = _walk(
            mask, (points[i, 0], points[i, 1]), b_angle, b_len, b_width, rng, jitter=0.4
        )
        if rng.random() < 0.25 and len(b_headings) > 4:  # occasional second-order twig
            j = int(rng.integers(1, len(b_headings) - 1))
            _walk(
                mask,
                (b_points[j, 0], b_points[j, 1]),
                b_headings[j] + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.0),
                b_len * rng.uniform(0.2, 0.5),
                max(1.0, 0.6 * float(b_widths[j])),
                rng,
                jitter=0.45,
            )


def draw_crack(
    height: int,
    width: int,
    rng: RngLike,
    *,
    max_width: float = 3.0,
    branches: int | None = None,
    length: float | None = None,
) -> np.ndarray:
    """Draws the binary mask of one branching random-walk crack.

    The crack starts at a random point (often on an image edge), walks with a persistent heading plus jitter and
    occasional kinks, varies its width smoothly between 1 px and ``max_width`` (thinning towards the tip), and spawns
    thinner, shorter branches.

    Args:
        height: Mask height in pixels.
        width: Mask width in pixels.
        rng: Generator or integer seed.
        max_width: Largest stroke width in pixels (at least 1).
        branches: Number of side branches; ``None`` draws 0-3 at random.
        length: Length of the main stroke in pixels; ``None`` draws 45-100 % of the image diagonal.

    Returns:
        A uint8 mask of shape ``[height, width]`` with values in {0, 255}.

    Raises:
        ValueError: If the size is not positive or ``max_width`` is below 1.
    """
    _check_size(height, width)
    if max_width < 1.0:
        raise ValueError(f"max_width must be >= 1, got {max_width}")
    gen = _as_rng(rng)
    min_pixels = 0.1 * min(int(height), int(width)) if length is None else 0.1 * min(float(length), min(height, width))
    for _ in range(4):  # rarely a walk leaves the image almost at once; draw another one then
        mask = np.zeros((int(height), int(width)), np.uint8)
        _crack_into(mask, gen, max_width=float(max_width), branches=branches, length=length)
        if cv2.countNonZero(mask) >= min_pixels:
            break
    return mask


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def render_crack(image: np.ndarray, mask: np.ndarray, rng: RngLike, *, contrast: float = 1.0) -> np.ndarray:
    """Darkens ``image`` along ``mask`` so the masked pixels look like a crack.

    The crack interior is blended towards a dark, slightly noisy colour; the mask is blurred a little for a soft edge
    and a faint shadow halo is added around it.

    Args:
        image: uint8 BGR ``[H, W, 3]`` (or greyscale ``[H, W]``) image; not modified.
        mask: ``[H, W]`` mask, non-zero on the crack.
        rng: Generator or integer seed.
        contrast: Visibility in [0, 1]: 1.0 is a clearly visible crack, 0.15 a faint one, 0 leaves the image as is.

    Returns:
        A new uint8 image with the same shape as ``image``.

    Raises:
        ValueError: If the shapes do not match or ``contrast`` is outside [0, 1].
    """
    if not 0.0 <= contrast <= 1.0:
        raise ValueError(f"contrast must be in [0, 1], got {contrast}")
    if mask.shape[:2] != image.shape[:2] or mask.ndim != 2:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    gen = _as_rng(rng)
    img = image.astype(np.float32)
    if contrast == 0.0 or not mask.any():
        return image.copy()
    height, width = mask.shape
    m = (mask > 0).astype(np.float32)
    soft = cv2.GaussianBlur(m, (0, 0), gen.uniform(0.5, 0.9))
    soft = np.maximum(soft, m * 0.85)  # keep the interior solid even on 1 px hairlines
    halo = cv2.GaussianBlur(m, (0, 0), gen.uniform(1.8, 3.0))
    depth = gen.uniform(0.75, 0.92)
    # Depth varies slowly along the crack and has pixel noise inside it.
    along = 1.0 + 0.12 * _smooth_noise(height, width, max(8.0, max(height, width) / 10.0), gen)
    grain = 1.0 + gen.normal(0.0, 0.08, (height, width)).astype(np.float32)
    alpha = contrast * np.clip((depth * soft + 0.18 * halo) * along * grain, 0.0, 1.0)
    dark_level = gen.uniform(12.0, 35.0)
    dark = dark_level + gen.normal(0.0, 6.0, (height, width)).astype(np.float32)
    if img.ndim == 3:
        alpha = alpha[:, :, None]
        dark = dark[:, :, None]
    out = img * (1.0 - alpha) + dark * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Frames and patches
# --------------------------------------------------------------------------------------------------------------


def make_frame(
    height: int,
    width: int,
    rng: RngLike,
    *,
    kind: str | None = None,
    n_cracks: int | None = None,
    max_width: float = 3.0,
    contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Makes a large inspection frame with zero or more cracks and its ground-truth mask.

    Args:
        height: Frame height in pixels (e.g. 384).
        width: Frame width in pixels (e.g. 544).
        rng: Generator or integer seed.
        kind: Texture kind from :data:`TEXTURES`; ``None`` picks one at random.
        n_cracks: Number of cracks (0 gives a clean frame); ``None`` draws 1-3.
        max_width: Largest crack width in pixels.
        contrast: Crack visibility in [0, 1] (see :func:`render_crack`).

    Returns:
        ``(image, mask)``: uint8 BGR ``[H, W, 3]`` and the union mask, uint8 ``[H, W]`` in {0, 255}.

    Raises:
        ValueError: If ``kind`` is unknown or ``n_cracks`` is negative.
    """
    gen = _as_rng(rng)
    if kind is None:
        kind = TEXTURES[int(gen.integers(0, len(TEXTURES)))]
    _check_kind(kind)
    if n_cracks is None:
        n_cracks = int(gen.integers(1, 4))
    if n_cracks < 0:
        raise ValueError(f"n_cracks must be >= 0, got {n_cracks}")
    image = make_texture(kind, height, width, gen)
    mask = np.zeros((int(height), int(width)), np.uint8)
    for _ in range(n_cracks):
        mask |= draw_crack(height, width, gen, max_width=max_width)
    if n_cracks:
        image = render_crack(image, mask, gen, contrast=contrast)
    return image, mask


def _add_distractors(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Adds crack-like things that are not cracks: pores/spots, a faint straight grout line, a stain."""
    height, width = image.shape[:2]
    img = image.astype(np.float32)
    if rng.random() < 0.6:  # a few dark, round pores / spots
        spots = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(1, 6))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            radius = max(1, round(rng.uniform(1.0, 3.5) * max(height, width) / 96.0))
            cv2.circle(spots, centre, radius, rng.uniform(0.3, 0.6), -1, lineType=cv2.LINE_AA)
        spots = cv2.GaussianBlur(spots, (0, 0), 0.8)
        img *= 1.0 - spots[:, :, None]
    if kind == "tile" and rng.random() < 0.6:  # a straight, faint grout line
        line = np.zeros((height, width), np.float32)
        pos = int(rng.integers(int(0.15 * width), int(0.85 * width) + 1))
        if rng.random() < 0.5:
            cv2.line(line, (pos, 0), (pos, height - 1), 1.0, int(rng.integers(1, 3)))
        else:
            pos = min(pos, height - 1)
            cv2.line(line, (0, pos), (width - 1, pos), 1.0, int(rng.integers(1, 3)))
        line = cv2.GaussianBlur(line, (0, 0), 0.8)
        alpha = (line * rng.uniform(0.1, 0.3))[:, :, None]
        img = img * (1.0 - alpha) + 90.0 * alpha
    if rng.random() < 0.35:  # a large, soft stain (darker or lighter)
        stain = _smooth_noise(height, width, max(height, width) / 3.0, rng)
        stain = np.clip(stain - 0.3, 0.0, None)
        stain = stain / max(float(stain.max()), 1e-6) * rng.uniform(0.08, 0.2)
        sign = -1.0 if rng.random() < 0.75 else 0.6
        img *= 1.0 + sign * stain[:, :, None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _corner_crack(size: int, rng: np.random.Generator) -> np.ndarray:
    """A crack that only clips a corner of the patch (drawn for the top-left corner, then rotated)."""
    mask = np.zeros((size, size), np.uint8)
    reach = rng.uniform(0.15, 0.35) * size
    start = (rng.uniform(0.3, 1.0) * reach, 0.0)  # on the top edge
    target = (0.0, rng.uniform(0.3, 1.0) * reach)  # towards the left edge
    angle = math.atan2(target[1] - start[1], target[0] - start[0])
    length = math.hypot(target[0] - start[0], target[1] - start[1]) * 1.6
    _walk(mask, start, angle, length, rng.uniform(1.0, 3.0), rng, jitter=0.2, taper=False)
    yy, xx = np.mgrid[0:size, 0:size]
    mask[(xx + yy) > 1.2 * reach + 2] = 0  # never reach the centre region
    if not mask.any():
        cv2.line(mask, (round(start[0]), 0), (0, round(target[1])), 255, 1, lineType=cv2.LINE_8)
    return np.ascontiguousarray(np.rot90(mask, int(rng.integers(0, 4))))


def _patch_with_mask(
    size: int, label: str, rng: np.random.Generator, kind: str | None
) -> tuple[np.ndarray, np.ndarray]:
    if label not in LABELS:
        raise ValueError(f"unknown patch label {label!r}; allowed labels: {', '.join(LABELS)}")
    if int(size) < 8:
        raise ValueError(f"patch size must be >= 8, got {size}")
    size = int(size)
    if kind is None:
        kind = TEXTURES[int(rng.integers(0, len(TEXTURES)))]
    _check_kind(kind)
    image = make_texture(kind, size, size, rng)
    mask = np.zeros((size, size), np.uint8)
    if label == "ok":
        return _add_distractors(image, kind, rng), mask
    centre_jitter = size / 8.0
    centre = (
        (size - 1) / 2.0 + rng.uniform(-centre_jitter, centre_jitter),
        (size - 1) / 2.0 + rng.uniform(-centre_jitter, centre_jitter),
    )
    scale = size / 96.0
    if label == "crack":
        max_width = rng.uniform(2.0, 4.0) * max(1.0, scale)
        _crack_into(
            mask,
            rng,
            max_width=max_width,
            branches=int(rng.choice(3, p=[0.5, 0.35, 0.15])),
            length=rng.uniform(0.9, 1.5) * size,
            start=centre,
            min_width=1.5,
            both_ways=True,
        )
        contrast = rng.uniform(0.6, 1.0)
    else:  # ambiguous
        mode = int(rng.integers(0, 3))
        if mode == 0:  # very faint
            _crack_into(
                mask,
                rng,
                max_width=rng.uniform(1.5, 3.0),
                branches=int(rng.integers(0, 2)),
                length=rng.uniform(0.8, 1.4) * size,
                start=centre,
                both_ways=True,
            )
            contrast = rng.uniform(0.1, 0.25)
        elif mode == 1:  # hairline
            _crack_into(
                mask,
                rng,
                max_width=1.0,
                branches=int(rng.integers(0, 2)),
                length=rng.uniform(0.8, 1.4) * size,
                start=centre,
                both_ways=True,
            )
            contrast = rng.uniform(0.3, 0.6)
        else:  # clips a corner only
            mask = _corner_crack(size, rng)
            contrast = rng.uniform(0.5, 1.0)
    return render_crack(image, mask, rng, contrast=contrast), mask


def make_patch(size: int, label: str, rng: RngLike, *, kind: str | None = None) -> np.ndarray:
    """Makes one square, labelled BGR patch for classifier training.

    Args:
        size: Side length in pixels (at least 8).
        label: ``"crack"``: a clearly visible crack (contrast 0.6-1.0, width >= 1.5 px) crossing the centre region;
            ``"ok"``: texture only, possibly with crack-like distractors that are not cracks (dark pores/spots, a
            straight faint grout line on tile, stains); ``"ambiguous"``: a very faint (contrast 0.1-0.25) or
            hairline (1 px) crack, or one that only clips a corner of the patch.
        rng: Generator or integer seed.
        kind: Texture kind from :data:`TEXTURES`; ``None`` picks one at random.

    Returns:
        A uint8 BGR image of shape ``[size, size, 3]``.

    Raises:
        ValueError: If ``label`` or ``kind`` is unknown, or ``size`` is below 8.
    """
    image, _ = _patch_with_mask(size, label, _as_rng(rng), kind)
    return image


# --------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------


def _imwrite(path: pathlib.Path, image: np.ndarray, params: list[int] | None = None) -> None:
    ok = cv2.imwrite(str(path), image, params or [])
    if not ok:
        raise OSError(f"could not write image {path}")


def write_patch_dataset(
    root: str | os.PathLike[str],
    *,
    n_crack: int,
    n_ok: int,
    n_ambiguous: int = 0,
    size: int = 96,
    seed: int = 0,
    corrupt: int = 0,
) -> pathlib.Path:
    """Writes a folder-per-class patch dataset.

    Layout: ``root/crack/crack_00000.png``, ``root/ok/ok_00000.png`` and, only when ``n_ambiguous > 0``,
    ``root/ambiguous/ambiguous_00000.png``. Each patch is seeded from ``(seed, class, index)``, so changing one
    count does not change the other classes' images. ``corrupt`` extra files ``root/crack/corrupt_00.jpg`` hold
    garbage bytes that no image decoder accepts (for robustness tests).

    Args:
        root: Output folder (created if needed).
        n_crack: Number of crack patches.
        n_ok: Number of ok patches.
        n_ambiguous: Number of ambiguous patches.
        size: Patch side length in pixels.
        seed: Base seed.
        corrupt: Number of undecodable files to add under ``root/crack``.

    Returns:
        ``root`` as a ``pathlib.Path``.
    """
    root_path = pathlib.Path(root)
    counts = {"crack": n_crack, "ok": n_ok, "ambiguous": n_ambiguous}
    for label_index, label in enumerate(LABELS):
        count = int(counts[label])
        if count < 0:
            raise ValueError(f"n_{label} must be >= 0, got {count}")
        if label == "ambiguous" and count == 0:
            continue
        folder = root_path / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            patch = make_patch(size, label, np.random.default_rng([int(seed), label_index, i]))
            _imwrite(folder / f"{label}_{i:05d}.png", patch)
    if corrupt:
        folder = root_path / "crack"
        folder.mkdir(parents=True, exist_ok=True)
        gen = np.random.default_rng([int(seed), 99])
        for i in range(int(corrupt)):
            junk = b"crackscope corrupt file\x00" + gen.integers(0, 256, 512 + 37 * i, dtype=np.uint8).tobytes()
            (folder / f"corrupt_{i:02d}.jpg").write_bytes(junk)
    root_path.mkdir(parents=True, exist_ok=True)
    return root_path


def write_frame_dataset(
    root: str | os.PathLike[str],
    *,
    n: int,
    height: int = 384,
    width: int = 544,
    seed: int = 0,
    crack_fraction: float = 0.8,
) -> pathlib.Path:
    """Writes full frames with segmentation masks.

    Layout: ``root/images/frame_00000.jpg`` (JPEG quality 95) and ``root/masks/frame_00000.png`` (same stem,
    single channel, 0/255). ``round(n * crack_fraction)`` frames (chosen at random) have 1-3 cracks of random width
    and contrast; the others have empty masks.

    Args:
        root: Output folder (created if needed).
        n: Number of frames.
        height: Frame height in pixels.
        width: Frame width in pixels.
        seed: Base seed.
        crack_fraction: Share of frames in [0, 1] that contain cracks.

    Returns:
        ``root`` as a ``pathlib.Path``.
    """
    if not 0.0 <= crack_fraction <= 1.0:
        raise ValueError(f"crack_fraction must be in [0, 1], got {crack_fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    root_path = pathlib.Path(root)
    images_dir = root_path / "images"
    masks_dir = root_path / "masks"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    n_with = round(n * crack_fraction)
    has_crack = np.zeros(n, bool)
    has_crack[np.random.default_rng([int(seed), 0]).permutation(n)[:n_with]] = True
    for i in range(n):
        gen = np.random.default_rng([int(seed), 1, i])
        n_cracks = int(gen.integers(1, 4)) if has_crack[i] else 0
        image, mask = make_frame(
            height,
            width,
            gen,
            n_cracks=n_cracks,
            max_width=gen.uniform(1.5, 4.5),
            contrast=gen.uniform(0.45, 1.0),
        )
        stem = f"frame_{i:05d}"
        _imwrite(images_dir / f"{stem}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _imwrite(masks_dir / f"{stem}.png", mask)
    return root_path


def write_video(path: str | os.PathLike[str], frames: list[np.ndarray], fps: float = 10.0) -> pathlib.Path:
    """Writes frames to an MJPG ``.avi`` file with ``cv2.VideoWriter``.

    Args:
        path: Output file (parent folders are created).
        frames: Non-empty list of same-size uint8 images, BGR ``[H, W, 3]`` or greyscale ``[H, W]``.
        fps: Frames per second stored in the container.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: If ``frames`` is empty or the frames differ in size.
        RuntimeError: If the video writer cannot be opened for ``path``.
    """
    out = pathlib.Path(path)
    if not frames:
        raise ValueError("frames must not be empty")
    height, width = frames[0].shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (int(width), int(height)))
    if not writer.isOpened():
        raise RuntimeError(f"could not open a video writer for {out}")
    try:
        for index, frame in enumerate(frames):
            if frame.shape[:2] != (height, width):
                raise ValueError(f"frame {index} has size {frame.shape[:2]}, expected {(height, width)}")
            bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame
            writer.write(np.ascontiguousarray(bgr, dtype=np.uint8))
    finally:
        writer.release()
    return out
