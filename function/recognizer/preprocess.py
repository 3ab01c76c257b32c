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
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MiB = 1024 * 1024
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

# Work limits read from the file's structure before decoding (docs/reliability.md). Each
# chunk, marker or scan costs Python or decoder work; a progressive JPEG's scans each
# sweep the whole image, so the cost is scans x pixels.
MAX_PNG_CHUNKS = 4_096  # encoders write IDAT in 8 KB or larger chunks: 10 MiB is 1,280
MAX_JPEG_MARKERS = 512  # a camera JPEG has about 20, a progressive one about 40
MAX_JPEG_SCANS = 64  # progressive encoders write 6 to 20; each one is a pass over the image
MAX_GIF_BLOCKS = 1_024  # extension blocks before the first frame: a real GIF has 1 to 5
MAX_JPEG_REFINEMENT_BIT = 13  # the largest successive-approximation bit position (T.81)
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")  # a marker, not stuffing or RSTn
_JPEG_STANDALONE = frozenset({0x01, 0xD8})  # TEM and SOI carry no length
# What Pillow holds per pixel in each mode: one byte, two (16-bit), else four (every
# multi-band mode is stored 32 bits a pixel, and I and F are 32-bit).
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_TWO_BYTE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Peak memory of decoding, over the decoded image itself, measured (docs/reliability.md):
# resizing an image with alpha makes a premultiplied copy; libwebp decodes into a buffer
# of its own (RGBA) that Pillow then copies.
_ALPHA_MODES = frozenset({"LA", "RGBA", "PA"})
_WEBP_FACTOR = 4.0
COST_MARGIN = 1.1  # the measured peaks were up to 8% over the decoded size
COST_FLOOR_BYTES = 4 * 1024 * 1024  # Pillow's and the decoders' own buffers, for any image


class ImageError(ValueError):
    """The upload cannot be turned into a digit."""


class NotAnImage(ImageError):
    """The bytes are not an image Pillow can decode, or the file is truncated."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed (checked from the header, before decoding)."""


class BlankImage(ImageError):
    """The image decodes but holds no ink: nothing to recognise."""


class ImageTooComplex(ImageError):
    """The file's structure would cost too much work: too many chunks, markers or scans,
    oversized strips or tiles, or more CPU time than the budget while decoding."""


class DecodeDeadline:
    """A budget of this thread's CPU time for one request's decoding and preprocessing.

    CPU time, not wall time: a busy machine does not make a cheap image fail. Checked each
    time a decoder asks for more of the file (every 64 KB) and between stages; a decoder
    that reads its whole input at once (WebP, libtiff) is bounded by the memory budget.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started = time.thread_time()

    def check(self) -> None:
        spent = time.thread_time() - self._started
        if spent > self.seconds:
            raise ImageTooComplex(
                f"decoding took more than {self.seconds:g} s of CPU time, the limit per "
                "request: send a smaller or simpler image"
            )


class _BudgetedFile(io.BytesIO):
    """The upload as a file that checks the deadline each time the decoder reads on."""

    def __init__(self, data: bytes, deadline: DecodeDeadline | None) -> None:
        super().__init__(data)
        self._deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        if self._deadline is not None:
            self._deadline.check()
        return super().read(size)


def to_mnist(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """The MNIST-style 28x28 uint8 input for an uploaded image file."""
    return from_image(decode(data, max_pixels))


def from_image(image: Image.Image) -> np.ndarray:
    """The MNIST-style input for a decoded image (split from decoding so each can be timed)."""
    return to_field(ink_map(image))


def to_field(ink: np.ndarray) -> np.ndarray:
    """The MNIST-style input for an ink map (kept apart: the verdict measures the ink too)."""
    return center_in_field(fit_in_box(crop_to_ink(ink)))


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


@dataclass
class Opened:
    """An image file opened and checked from its header, not decoded yet."""

    image: Image.Image
    header: Header
    decode_bytes: int  # what decoding it will take at its peak, from the header
    max_pixels: int


def read_header(data: bytes, max_pixels: int) -> Header:
    """The format and size from the header alone, so limits hold before any decoding."""
    opened = open_image(data, max_pixels)
    opened.image.close()
    return opened.header


def open_image(
    data: bytes,
    max_pixels: int,
    max_decode_bytes: int | None = None,
    deadline: DecodeDeadline | None = None,
) -> Opened:
    """Open `data` once: its structure, pixels and decoding cost checked, nothing decoded.

    Raises ImageTooComplex for a structure that would cost too much work, and
    ImageTooLarge for too many pixels or, with `max_decode_bytes`, too much memory.
    """
    _check_structure(data)
    with _decoder_errors(max_pixels):
        image = Image.open(_BudgetedFile(data, deadline), formats=FORMATS)
        _check_size(image, max_pixels)
        cost = decode_cost(image)
        if image.format in JPEG_FORMATS:
            # Decode at a reduced scale: much faster, and we need far fewer pixels.
            image.draft(image.mode, (WORKING_SIDE, WORKING_SIDE))
        if max_decode_bytes is not None and cost > max_decode_bytes:
            raise ImageTooLarge(
                f"the image is {image.width}x{image.height} pixels in mode {image.mode}: "
                f"decoding it takes about {cost / MiB:,.0f} MiB, over the limit of "
                f"{max_decode_bytes / MiB:,.0f} MiB per image; send a smaller image"
            )
        header = Header(image.format or "", image.width, image.height)
    return Opened(image, header, cost, max_pixels)


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the first frame, upright (EXIF orientation applied), at most ~WORKING_SIDE px."""
    return decode_opened(open_image(data, max_pixels))


def decode_opened(opened: Opened) -> Image.Image:
    """Decode an opened file: the first frame, reduced to at most ~WORKING_SIDE px, then
    turned upright (EXIF orientation), so no full-size copy is ever made of it."""
    image = opened.image
    with _decoder_errors(opened.max_pixels):
        image.load()
        if image.width < 1 or image.height < 1:
            raise NotAnImage("the image has no pixels")
        if image.mode == "LAB":  # a TIFF can be CIELAB; its first channel is lightness
            image = image.getchannel("L")
        exif = image.getexif()
        if max(image.size) > WORKING_SIDE:
            scale = WORKING_SIDE / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            reduced = image.resize(size, Image.Resampling.BOX)
            reduced.info.update(image.info)
            reduced.getexif().update(exif)  # the orientation is applied below, on the small copy
            image.close()
            image = reduced
        image = ImageOps.exif_transpose(image)
    return image


def decode_cost(image: Image.Image) -> int:
    """Peak bytes of decoding this opened image, from its header: mode-aware, not pixels.
    Called before draft(), on the frame's full size.

    The decoded image (a JPEG at the reduced scale draft() picks), a premultiplied copy for
    images with alpha, libwebp's own buffer, a progressive JPEG's coefficients (two
    bytes each, at full scale, whatever the draft) and a TIFF's largest strip or tile.
    """
    width, height = image.size
    if image.mode in _ONE_BYTE_MODES:
        per_pixel = 1
    elif image.mode in _TWO_BYTE_MODES:
        per_pixel = 2
    else:
        per_pixel = 4
    if image.format in JPEG_FORMATS:  # draft() decodes at 1/2, 1/4 or 1/8 scale
        scale = min(width // WORKING_SIDE, height // WORKING_SIDE)
        scale = next((s for s in (8, 4, 2) if scale >= s), 1)
        decoded = -(-width // scale) * -(-height // scale) * per_pixel
    else:
        decoded = width * height * per_pixel
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        decoded *= 2
    if image.format == "WEBP":
        decoded = int(width * height * 4 * _WEBP_FACTOR)
    extra = 0
    if image.format in JPEG_FORMATS:
        extra = _jpeg_coefficient_bytes(image)
    elif image.format == "TIFF":
        extra = _tiff_buffer_bytes(image)
    return int((decoded + extra) * COST_MARGIN) + COST_FLOOR_BYTES


def _jpeg_coefficient_bytes(image: Image.Image) -> int:
    """A progressive JPEG keeps every DCT coefficient of the whole image until the last
    scan: 2 bytes each, 64 per 8x8 block of every component (sampled as the frame says)."""
    if not (image.info.get("progressive") or image.info.get("progression")):
        return 0
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    width, height = image.size
    total = 0
    for _, h, v, _ in layers:
        blocks_x = -(-width * h // (8 * h_max))
        blocks_y = -(-height * v // (8 * v_max))
        total += blocks_x * blocks_y * 64 * 2
    return total


def _tiff_buffer_bytes(image: Image.Image) -> int:
    """The strip or tile libtiff reads at once, from the TIFF tags (a tile may claim to be
    far larger than the image: its buffer is allocated all the same)."""
    tags = getattr(image, "tag_v2", {})
    samples = _tag_int(tags, 277, 1)
    bits_per_sample = _tag_int(tags, 258, 8)
    bytes_per_pixel = max(1, -(-samples * bits_per_sample // 8))
    if 322 in tags and 323 in tags:  # TileWidth, TileLength
        return _tag_int(tags, 322, 0) * _tag_int(tags, 323, 0) * bytes_per_pixel
    rows = min(_tag_int(tags, 278, image.height), image.height)  # RowsPerStrip
    return image.width * max(rows, 1) * bytes_per_pixel


def _tag_int(tags: object, tag: int, default: int) -> int:
    """A TIFF tag as one whole number (the largest, for a per-sample tuple); a malformed
    tag counts as `default`, and the decoder reports what is wrong with the file."""
    value = tags.get(tag, default)  # type: ignore[attr-defined]
    if isinstance(value, tuple):
        value = max(value, default=default)
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return default


def _check_structure(data: bytes) -> None:
    """Refuse files whose structure alone would cost too much work, before Pillow parses
    them (it walks PNG chunks and JPEG markers in Python, one at a time)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _check_png_chunks(data)
    elif data.startswith(b"\xff\xd8"):
        _check_jpeg_markers(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif_blocks(data)


def _check_gif_blocks(data: bytes) -> None:
    """Count the extension sub-blocks before the first image: Pillow reads them one at a
    time in Python (the first frame's pixels are decoded in C)."""
    if len(data) < 13:
        return  # truncated: the decoder reports it
    position = 13
    if data[10] & 0x80:  # a global colour table
        position += 3 << ((data[10] & 0x07) + 1)
    blocks = 0
    while position < len(data) and data[position] == 0x21:  # an extension
        position += 2
        while position < len(data) and (size := data[position]) != 0:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise ImageTooComplex(
                    f"the GIF has more than {MAX_GIF_BLOCKS:,} blocks before its first "
                    "frame: save it again"
                )
            position += 1 + size
        position += 1


def _check_png_chunks(data: bytes) -> None:
    position, chunks = 8, 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageTooComplex(
                f"the PNG has more than {MAX_PNG_CHUNKS:,} chunks; the limit keeps parsing "
                "cheap: save it again with any image editor"
            )
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == b"IEND":
            return
        position += 12 + length


def _check_jpeg_markers(data: bytes) -> None:
    """Walk the markers of the first picture: segments by their length, entropy-coded
    data by searching for the next marker (a 0xFF in it is always stuffed or an RSTn)."""
    position, markers, scans = 2, 0, 0
    while (found := _JPEG_MARKER.search(data, position)) is not None:
        code = data[found.start() + 1]
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise ImageTooComplex(
                f"the JPEG has more than {MAX_JPEG_MARKERS} markers: save it again"
            )
        if code == 0xD9:  # EOI: what follows (an MPO's second picture) is never decoded
            return
        if code in _JPEG_STANDALONE:
            position = found.end()
            continue
        length = int.from_bytes(data[found.end() : found.end() + 2], "big")
        if code == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageTooComplex(
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans; each one is a pass over "
                    "the whole image: save it again (baseline or standard progressive)"
                )
            _check_scan_header(data[found.end() + 2 : found.end() + length])
        position = found.end() + max(length, 2)


def _check_scan_header(header: bytes) -> None:
    """Successive approximation stops at bit 13 (T.81 G.1.1.1.1): refinement past it is
    not progressive JPEG, only work."""
    if len(header) < 4:
        return  # truncated: the decoder reports it
    approximation = header[-1]
    high, low = approximation >> 4, approximation & 0x0F
    if high > MAX_JPEG_REFINEMENT_BIT or low > MAX_JPEG_REFINEMENT_BIT:
        raise ImageTooComplex(
            f"a JPEG scan refines bit {max(high, low)}; no bit past "
            f"{MAX_JPEG_REFINEMENT_BIT} exists"
        )


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
