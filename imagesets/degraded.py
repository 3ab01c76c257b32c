"""MNIST digits as blurred and low-resolution scans: the evaluation's "degraded" group (issue 29).

What a scanner at low resolution or a small crop gives: the digit on paper is reduced to 8-16
px tall and enlarged again with one of several filters, blurred (Gaussian or motion), stored
as a low-quality JPEG, and its ink is often faint. Each kind is a function
`(digit, rng) -> bytes` taking a 28x28 MNIST digit (white on black) and returning a real PNG
or JPEG of dark ink on light paper. For evaluation only: no version trained on these, and a
training recipe must use augmentations of its own, not these functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from imagesets.renderings import encode, paper, place

Renderer = Callable[[np.ndarray, np.random.Generator], bytes]
UP_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def low_resolution(digit: np.ndarray, rng: np.random.Generator, up: Image.Resampling) -> np.ndarray:
    """Ink in [0, 1]: the digit's 28 px field reduced to 8-16 px (box filter, as a scanner
    averages), then enlarged to 84-224 px with `up`."""
    small = int(rng.integers(8, 17))
    large = int(rng.integers(84, 225))
    image = Image.fromarray(digit).resize((small, small), Image.Resampling.BOX)
    return np.asarray(image.resize((large, large), up), dtype=np.float32) / 255.0


def motion_blurred(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A straight motion blur 3-8% of the picture long at a random angle (the hand or the
    page moved): the mean of the ink shifted along the line."""
    length = max(3, round(ink.shape[0] * rng.uniform(0.03, 0.08)))
    angle = rng.uniform(0, np.pi)
    out = np.zeros_like(ink)
    for step in np.linspace(-length / 2, length / 2, length):
        dy, dx = round(step * np.sin(angle)), round(step * np.cos(angle))
        out += np.roll(ink, (dy, dx), axis=(0, 1))
    return out / length


def on_paper(ink: np.ndarray, rng: np.random.Generator, faint: bool) -> Image.Image:
    """The ink on a light page with a margin, its strength 35-70% when `faint` (a pencil, a
    light scan), and grey rather than colour half the time, as scanners store."""
    side = round(ink.shape[0] * rng.uniform(1.3, 2.2))
    strength = rng.uniform(0.35, 0.7) if faint else rng.uniform(0.85, 1.0)
    image = paper(place(ink * strength, (side, side), rng), rng)
    return image.convert("L") if rng.random() < 0.5 else image


def _scan(up: Image.Resampling) -> Renderer:
    def render(digit: np.ndarray, rng: np.random.Generator) -> bytes:
        image = on_paper(low_resolution(digit, rng, up), rng, faint=rng.random() < 0.3)
        return encode(image, "PNG")

    render.__doc__ = "A low-resolution scan enlarged again, stored losslessly."
    return render


def gaussian_blur(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A sharp digit out of focus: blurred by 2-5% of its size (Gaussian), often faint."""
    side = int(rng.integers(84, 225))
    image = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    ink = blurred(image, side * rng.uniform(0.02, 0.05))
    return encode(on_paper(ink, rng, faint=rng.random() < 0.5), "PNG")


def blurred(image: Image.Image, radius: float) -> np.ndarray:
    """Ink in [0, 1] of a grey image blurred with a Gaussian of `radius` px."""
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def motion_blur(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A low-resolution digit, enlarged, smeared by motion, stored as a JPEG."""
    ink = motion_blurred(low_resolution(digit, rng, Image.Resampling.BILINEAR), rng)
    return encode(on_paper(ink, rng, faint=rng.random() < 0.3), "JPEG", quality=75)


def low_quality_jpeg(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A low-resolution scan enlarged with any filter and stored as a JPEG of quality 8-25."""
    up = list(UP_FILTERS.values())[int(rng.integers(len(UP_FILTERS)))]
    image = on_paper(low_resolution(digit, rng, up), rng, faint=rng.random() < 0.3)
    return encode(image, "JPEG", quality=int(rng.integers(8, 26)))


def everything(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """All at once: 8-12 px, enlarged bicubically, blurred, faint, JPEG of quality 20-40."""
    small = int(rng.integers(8, 13))
    large = int(rng.integers(84, 225))
    image = Image.fromarray(digit).resize((small, small), Image.Resampling.BOX)
    ink = blurred(
        image.resize((large, large), Image.Resampling.BICUBIC), large * rng.uniform(0.01, 0.03)
    )
    image = on_paper(ink, rng, faint=True)
    return encode(image, "JPEG", quality=int(rng.integers(20, 41)))


KINDS: dict[str, Renderer] = {
    **{f"8-16 px, enlarged ({name})": _scan(up) for name, up in UP_FILTERS.items()},
    "Gaussian blur": gaussian_blur,
    "motion blur (JPEG)": motion_blur,
    "low-quality JPEG": low_quality_jpeg,
    "8-12 px, blurred, faint, JPEG": everything,
}


def render_degraded(
    digits: np.ndarray, labels: np.ndarray, seed: int, per_kind: int
) -> list[tuple[str, int, bytes]]:
    """`per_kind` digits in every kind, each kind its own digits: (kind, label, file bytes)."""
    out = []
    for index, (kind, render) in enumerate(KINDS.items()):
        rng = np.random.default_rng([seed, index])
        chosen = slice(index * per_kind, (index + 1) * per_kind)
        out += [(kind, int(label), render(digit, rng)) for digit, label in
                zip(digits[chosen], labels[chosen], strict=True)]  # fmt: skip
    return out
