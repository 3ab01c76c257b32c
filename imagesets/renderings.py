"""Render MNIST digits the way people actually send them.

Each renderer takes a 28x28 MNIST digit (white on black) and returns the bytes of a
real image file: a photo of dark ink on paper, a browser-canvas PNG with transparency,
marker or pen strokes, a phone photo stored sideways with an EXIF orientation tag.
The digits come from the MNIST *test* set, so the model has never seen them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Renderer = Callable[[np.ndarray, np.random.Generator], bytes]


def strokes(digit: np.ndarray, height: int, thickness: float) -> np.ndarray:
    """The digit as smooth pen strokes `height` px tall: ink in [0, 1], 1 = full ink.

    `thickness` in (0, 1): lower thresholds of the upscaled digit give bolder strokes.
    """
    scale = height / 20  # MNIST digits are 20 px tall inside their 28 px field
    size = max(28, round(28 * scale))
    up = (
        np.asarray(
            Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
        )
        / 255.0
    )
    threshold = 1.0 - thickness
    return np.clip((up - threshold) / 0.12 + 0.5, 0, 1)


def place(
    ink: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator, margin: int = 0
) -> np.ndarray:
    """Put `ink` at a random position on an empty canvas (height, width), at least
    `margin` px from its edges where it fits."""
    height, width = canvas
    out = np.zeros(canvas, dtype=np.float32)
    top = margin + int(rng.integers(0, max(1, height - 2 * margin - ink.shape[0])))
    left = margin + int(rng.integers(0, max(1, width - 2 * margin - ink.shape[1])))
    piece = ink[: height - top, : width - left]
    out[top : top + piece.shape[0], left : left + piece.shape[1]] = piece
    return out


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def paper(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Dark ink on off-white paper lit from one side, with sensor noise."""
    height, width = ink.shape
    paper = rng.uniform(190, 245)
    ys, xs = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height) * rng.uniform(10, 40)
    ink_tone = rng.uniform(10, 80, size=3)
    rgb = np.empty((height, width, 3), dtype=np.float32)
    for channel in range(3):
        background = paper - ramp + rng.normal(0, 4, size=(height, width))
        rgb[..., channel] = background * (1 - ink) + ink_tone[channel] * ink
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")


def paper_jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A photo or scan: dark ink on paper, JPEG, any size, the digit anywhere in it."""
    width = int(rng.integers(160, 1400))
    height = int(width * rng.uniform(0.7, 1.4))
    digit_height = int(min(width, height) * rng.uniform(0.25, 0.7))
    ink = place(strokes(digit, digit_height, rng.uniform(0.35, 0.6)), (height, width), rng)
    image = paper(ink, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    return encode(image, "JPEG", quality=int(rng.integers(55, 92)))


def canvas_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A browser canvas export: black strokes on a fully transparent background."""
    side = int(rng.choice([200, 280, 400]))
    ink = place(strokes(digit, int(side * rng.uniform(0.4, 0.8)), 0.5), (side, side), rng)
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[..., 3] = np.rint(ink * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def marker_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A thick felt-tip marker on white."""
    side = int(rng.integers(200, 600))
    ink = strokes(digit, int(side * rng.uniform(0.4, 0.7)), 0.8)
    radius = max(1, int(ink.shape[0] * rng.uniform(0.01, 0.03)))
    thick = np.asarray(Image.fromarray(ink, mode="F").filter(ImageFilter.MaxFilter(2 * radius + 1)))
    gray = 255 * (1 - place(thick, (side, side), rng))
    return encode(Image.fromarray(gray.astype(np.uint8), mode="L"), "PNG")


def pen_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A thin ball-point pen line on a large white page."""
    side = int(rng.integers(400, 1000))
    ink = place(strokes(digit, int(side * rng.uniform(0.4, 0.7)), 0.22), (side, side), rng)
    gray = 255 - ink * rng.uniform(150, 230)
    return encode(Image.fromarray(gray.astype(np.uint8), mode="L"), "PNG")


def sideways_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A phone photo stored rotated, with the EXIF Orientation tag saying how to turn it."""
    upright = Image.open(io.BytesIO(paper_jpeg(digit, rng)))
    orientation = int(rng.choice(list(STORED_AS)))
    return stored_sideways(upright, orientation, quality=90)


# Orientation tag -> how the pixels were stored, so that applying the tag turns them upright.
STORED_AS = {
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
    3: Image.Transpose.ROTATE_180,
}


def stored_sideways(upright: Image.Image, orientation: int, quality: int) -> bytes:
    """A JPEG of `upright` stored turned, with the EXIF Orientation tag that turns it back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(upright.transpose(STORED_AS[orientation]), "JPEG", quality=quality, exif=exif)


# The names bench/images.py imports.
_paper, _place, _encode = paper, place, encode

KINDS: dict[str, Renderer] = {
    "paper photo (JPEG)": paper_jpeg,
    "canvas (PNG, transparent)": canvas_png,
    "thick marker (PNG)": marker_png,
    "thin pen (PNG)": pen_png,
    "sideways phone photo (JPEG, EXIF)": sideways_photo,
}


def render_all(digits: np.ndarray, seed: int = 7) -> list[tuple[str, int, bytes]]:
    """Every digit in every kind: (kind, index into `digits`, file bytes)."""
    rng = np.random.default_rng(seed)
    return [
        (kind, index, render(digit, rng))
        for kind, render in KINDS.items()
        for index, digit in enumerate(digits)
    ]
