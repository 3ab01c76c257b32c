"""Turn an uploaded picture into what MNIST looks like: 28x28 uint8, white ink on black.

MNIST digits were size-normalised to fit a 20x20 box (keeping the aspect ratio) and
centred by their centre of mass in a 28x28 field. Real uploads are nothing like that:
dark ink on light paper, photos with uneven light and noise, canvas drawings with a
transparent background, any size and position. Each step below undoes one of those
differences; on an image that already is MNIST-like the whole pipeline is the identity.

Everything here is a pure function of its input. Errors are `ImageError` subclasses
that the HTTP layer maps to responses.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FIELD = 28  # the MNIST canvas
BOX = 20  # the digit is scaled to fit this box
WORKING_SIDE = 320  # large photos are reduced to about this before any pixel work
INTERMEDIATE_SIDE = 4 * BOX  # stroke-width normalisation happens at this size
TARGET_STROKE = 0.11  # MNIST strokes are about 2.2 px wide in the 20 px box
FULL_INK = 0.9  # ink at least this strong is not contrast-stretched
OTSU_SHARE = 0.5  # in noisy images, ink is what stands above this share of Otsu's threshold
# The formats we read. Pillow knows dozens more; each is decoder code an upload could
# reach, and EPS would be handed to Ghostscript.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
JPEG_FORMATS = {"JPEG", "MPO"}  # many phones' JPEGs carry a second picture and open as MPO


class ImageError(ValueError):
    """The upload cannot be turned into a digit."""


class NotAnImage(ImageError):
    """The bytes are not an image Pillow can decode, or the file is truncated."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (checked from the header, before decoding)."""


class BlankImage(ImageError):
    """The image decodes but holds no ink: nothing to recognise."""


def to_mnist(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """The MNIST-style 28x28 uint8 input for an uploaded image file."""
    return from_image(decode(data, max_pixels))


def from_image(image: Image.Image) -> np.ndarray:
    """The MNIST-style input for a decoded image (split from decoding so each can be timed)."""
    return center_in_field(fit_in_box(crop_to_ink(ink_map(image))))


@dataclass(frozen=True)
class Header:
    """What an image file says about itself before a pixel is decoded."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def mime_type(self) -> str:
        """The type we store and serve: the decoded format's, not what the client claimed."""
        return Image.MIME.get(self.format, "application/octet-stream")


def read_header(data: bytes, max_pixels: int) -> Header:
    """The format and size from the header alone, so limits hold before any decoding."""
    with _decoder_errors(max_pixels), Image.open(io.BytesIO(data), formats=FORMATS) as image:
        _check_size(image, max_pixels)
        return Header(image.format or "", image.width, image.height)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame, upright (EXIF orientation applied), at most ~WORKING_SIDE px."""
    with _decoder_errors(max_pixels):
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        _check_size(image, max_pixels)
        if image.format in JPEG_FORMATS:
            # Decode at a reduced scale: much faster, and we need far fewer pixels.
            image.draft(image.mode, (WORKING_SIDE, WORKING_SIDE))
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode == "LAB":  # a TIFF can be CIELAB; its first channel is lightness
            image = image.getchannel("L")
    if image.width < 1 or image.height < 1:
        raise NotAnImage("the image has no pixels")
    if max(image.size) > WORKING_SIDE:
        scale = WORKING_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    return image


def _check_size(image: Image.Image, max_pixels: int) -> None:
    if image.width * image.height > max_pixels:
        raise ImageTooLarge(
            f"the image is {image.width}x{image.height} pixels; the limit is {max_pixels:,} pixels"
        )


@contextmanager
def _decoder_errors(max_pixels: int) -> Iterator[None]:
    """Pillow's many failure modes, as the two that mean something to a client."""
    try:
        yield
    except Image.DecompressionBombError:
        # Pillow's own limit (twice Image.MAX_IMAGE_PIXELS), checked while it reads the
        # header; ours is normally lower and checked right after.
        raise ImageTooLarge(
            f"the image claims more pixels than can be decoded safely; "
            f"the limit is {max_pixels:,} pixels"
        ) from None
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise NotAnImage(
            "the upload is not an image in a format we read (PNG, JPEG, GIF, BMP, TIFF, WebP)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise NotAnImage(f"the image could not be decoded: {error}") from None


def grayscale(image: Image.Image) -> np.ndarray:
    """Lightness in [0, 1] as float32; transparency is composited on white, like paper."""
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        values = np.asarray(image, dtype=np.float32)
        defined = np.isfinite(values)
        if not defined.all():  # a float image may hold NaN or infinities: read them as paper
            paper = float(np.median(values[defined])) if defined.any() else 0.0
            values = np.where(defined, values, paper)
        top = 65535.0 if values.max() > 255 else 255.0
        return np.clip(values / top, 0, 1)
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def ink_map(image: Image.Image) -> np.ndarray:
    """Ink intensity in [0, 1] (1 = full ink) with paper, lighting and noise removed."""
    gray = grayscale(image)
    ink = 1.0 - gray if _light_background(gray) else gray
    residual = ink - _background(ink)
    floor = _noise_floor(residual)
    ink = np.clip(residual, 0.0, None)
    if floor > 0:  # a noisy photo or scan; a clean image is left exactly as it is
        # Shading and compression halos stay below half the ink/paper (Otsu) threshold.
        floor = max(floor, OTSU_SHARE * _otsu_threshold(ink))
        ink = _without_specks(np.where(ink > floor, ink, 0.0))
    if not ink.any():
        raise BlankImage("no digit found: the image is blank")
    # Faint ink (pencil, a dim photo) is stretched to full strength; ink that is already
    # strong, as in MNIST, is left as it is.
    level = float(np.percentile(ink[ink > 0], 99.5))
    return np.clip(ink / (level if level < FULL_INK else 1.0), 0.0, 1.0).astype(np.float32)


def _light_background(gray: np.ndarray) -> bool:
    """Judge the background by the image's border, where the digit rarely is."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return _median(border) > 0.5


def _background(ink: np.ndarray) -> np.ndarray:
    """A smooth estimate of the paper level: the minimum over coarse blocks, interpolated.

    Blocks are much wider than a stroke, so their minimum is paper, and uneven light
    (a shadow across a photo) is followed rather than mistaken for ink.
    """
    height, width = ink.shape
    block = max(12, max(height, width) // 6)
    rows, cols = -(-height // block), -(-width // block)
    padded = np.pad(ink, ((0, rows * block - height), (0, cols * block - width)), mode="edge")
    minima = padded.reshape(rows, block, cols, block).min(axis=(1, 3))
    grid = Image.fromarray(minima.astype(np.float32), mode="F")
    return np.asarray(grid.resize((width, height), Image.Resampling.BILINEAR))


def _noise_floor(residual: np.ndarray) -> float:
    """A threshold just above the paper's noise; zero for a clean image.

    Measured on the signed residual (ink minus paper level), where paper pixels
    scatter around zero and most pixels are paper: the median and its absolute
    deviation are the noise's centre and spread, undisturbed by the strokes.
    """
    median = _median(residual)
    spread = _median(np.abs(residual - median))
    return min(0.5, max(0.0, median + 6 * spread))


def _median(values: np.ndarray) -> float:
    """np.median's exact result, without the generic machinery that dominates on small arrays."""
    flat = values.ravel()
    middle = flat.size // 2
    if flat.size % 2:
        return float(np.partition(flat, middle)[middle])
    low, high = np.partition(flat, (middle - 1, middle))[middle - 1 : middle + 1]
    return float((low + high) / 2)


def _otsu_threshold(values: np.ndarray) -> float:
    """The level that best splits `values` (in [0, 1]) into two classes: paper and ink."""
    counts, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    weights = counts / max(1, counts.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(weights)
    mean_below = np.cumsum(weights * centres)
    total_mean = mean_below[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * below - mean_below) ** 2 / (below * (1 - below))
    # Levels with every value on one side split nothing (0/0); all of them do when the
    # values fill a single bin, and then the lowest level is as good as any.
    return float(centres[int(np.argmax(np.nan_to_num(between, nan=0.0)))])


def _without_specks(ink: np.ndarray) -> np.ndarray:
    """Drop lone specks: inked pixels with fewer than two inked neighbours (strokes never are)."""
    inked = ink > 0
    padded = np.pad(inked, 1).astype(np.uint8)
    height, width = inked.shape
    neighbours = sum(
        padded[dy : dy + height, dx : dx + width]
        for dy in range(3)
        for dx in range(3)
        if (dy, dx) != (1, 1)
    )
    return np.where(neighbours >= 2, ink, 0.0)


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The smallest rectangle that holds all the ink."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_in_box(digit: np.ndarray) -> np.ndarray:
    """Scale so the longer side is BOX pixels, keeping the aspect ratio and MNIST's stroke width."""
    height, width = digit.shape
    if max(height, width) == BOX:
        return digit
    if max(height, width) > INTERMEDIATE_SIDE:
        digit = _resize(digit, INTERMEDIATE_SIDE / max(height, width))
    if max(digit.shape) > 2 * BOX:
        digit = _normalise_stroke(digit)
    return np.clip(_resize(digit, BOX / max(digit.shape)), 0.0, 1.0)


def _resize(values: np.ndarray, scale: float) -> np.ndarray:
    height, width = values.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Area averaging when shrinking (MNIST's anti-aliasing), smooth interpolation when growing.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(values, mode="F").resize(size, method))


def _normalise_stroke(digit: np.ndarray) -> np.ndarray:
    """Thicken hairlines and thin out marker strokes towards MNIST's relative stroke width.

    The width is estimated as ink area over half the outline length, which holds for
    long strokes of constant width.
    """
    solid = digit > 0.5
    area = int(solid.sum())
    if area == 0:
        return digit
    interior = solid.copy()
    interior[1:-1, 1:-1] &= solid[:-2, 1:-1] & solid[2:, 1:-1] & solid[1:-1, :-2] & solid[1:-1, 2:]
    outline = max(1, area - int(interior[1:-1, 1:-1].sum()))
    width = 2 * area / outline
    target = TARGET_STROKE * max(digit.shape)
    if width < 0.6 * target:
        return _morph(digit, round((target - width) / 2), np.maximum)
    if width > 1.8 * target:
        return _morph(digit, round((width - target) / 4), np.minimum)
    return digit


def _morph(values: np.ndarray, radius: int, pick: np.ufunc) -> np.ndarray:
    """Grey-level dilation (np.maximum) or erosion (np.minimum) with a square of `radius`."""
    if radius < 1:
        return values
    padded = np.pad(values, radius, mode="constant")
    height, width = values.shape
    out = values.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            pick(out, padded[dy : dy + height, dx : dx + width], out=out)
    return out


def center_in_field(digit: np.ndarray) -> np.ndarray:
    """Place the digit in the 28x28 field with its centre of mass at the centre (14, 14)."""
    height, width = digit.shape
    mass = float(digit.sum())
    ys, xs = np.indices(digit.shape)
    cy = float((ys * digit).sum()) / mass
    cx = float((xs * digit).sum()) / mass
    top, left = round(FIELD / 2 - cy), round(FIELD / 2 - cx)
    # Keep the whole digit in the field even when its mass is far off-centre.
    top = min(max(top, 0), FIELD - height)
    left = min(max(left, 0), FIELD - width)
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return np.rint(field * 255).astype(np.uint8)
