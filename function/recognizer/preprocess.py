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
DIM = 0.02  # lightness ratios are taken with this much added, so black is not infinitely dark
MIN_PAGE_SIDE = 64  # smaller pictures are drawings, not photos of a page: no shadow or line work
LINE_SPAN = 0.85  # a printed line has ink along at least this share of its length
LINE_VOTES = 0.4  # ridge pixels over length that make a line worth checking
LINE_TILT = 10.0  # degrees: printed lines are seen at most this far off horizontal or vertical
LINE_TILT_STEP = 0.25  # degrees between the slopes tried
LINE_GAP = 3  # rows: candidate lines closer than this are one
LINE_REACH = 12  # pixels: the widest a printed line can be across, either way
MAX_LINES = 64  # squared paper at the working size has about 40
MIN_LINE_INK = 0.05  # below this, a line is too faint to matter
SHADOW_SCALE = 4  # shadows' corners are found at this fraction of the working size
SHADOW_STEPS = 12  # 2 px each at that scale: a shadow's corner up to ~100 px long
SHADOW_DEPTH = 0.85  # paper this much darker than the closing says is in a shadow
SHADOW_PAPER = 0.8  # a pixel this bright against the shadowed paper level is paper
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
# Run-length BMP data (RLE8, RLE4): Pillow's decoder walks it in Python, about 4 MB a
# second; a 28x28 digit is under 2 KB of it, a 640x480 scan with much ink under 300 KB.
MAX_BMP_RLE_BYTES = 256 * 1024
BMP_RLE = frozenset({1, 2})  # BI_RLE8, BI_RLE4
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
            # Decode at a reduced scale: much faster, and we need far fewer pixels. A colour
            # JPEG is decoded to its luma alone, the same lightness convert("L") would give,
            # in half the time of decoding the colour (the ink is told by lightness alone).
            image.draft("L" if image.mode == "RGB" else image.mode, (WORKING_SIDE, WORKING_SIDE))
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
    elif data.startswith(b"BM"):
        _check_bmp_rle(data)


def _check_bmp_rle(data: bytes) -> None:
    """Pillow decodes RLE-compressed BMPs in Python, a run at a time: 4.5 MB of one-pixel
    runs took a second of CPU. The runs are bounded by the compressed data's size."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return  # truncated, or an OS/2 header (no compression field): the decoder reports it
    compression = int.from_bytes(data[30:34], "little")
    offset = int.from_bytes(data[10:14], "little")
    if compression in BMP_RLE and len(data) - offset > MAX_BMP_RLE_BYTES:
        raise ImageTooComplex(
            f"the BMP's run-length data is over {MAX_BMP_RLE_BYTES:,} bytes: decoding it costs "
            "a step per run; save it uncompressed or as PNG"
        )


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
    """Ink intensity in [0, 1] (1 = full ink) with paper, lighting, printed lines and
    noise removed."""
    gray = grayscale(image)
    if _light_background(gray):
        closed = _closing(gray)
        # Ink is the share of the paper's light it takes away: the same under a shadow.
        residual = 1.0 - gray / np.maximum(_in_shadows(gray, closed), DIM)
        # Every other pixel each way is plenty to measure grain on, and four times faster.
        floor = _noise_floor(1.0 - gray[::2, ::2] / np.maximum(closed[::2, ::2], DIM))
        if floor == 0 and closed.max() > closed.min():
            # No grain, but uneven light: a photo all the same, not a clean drawing, and
            # its 8-bit steps and compression ripples are not ink.
            floor = 1 / 255
    else:
        residual = gray - _background(gray)
        floor = _noise_floor(residual)
    ink = _without_lines(np.clip(residual, 0.0, None), floor)
    if floor > 0:  # a noisy photo or scan; a clean image is left exactly as it is
        # Shading and compression halos stay below half the ink/paper (Otsu) threshold.
        floor = max(floor, OTSU_SHARE * _otsu_threshold(ink))
        ink = _without_specks(np.where(ink > floor, ink, 0.0))
    if not ink.any():
        raise BlankImage("no digit found: the image is blank")
    # Faint ink (pencil, a dim photo) is stretched to full strength; ink that is already
    # strong, as in MNIST, is left as it is.
    level = _percentile(ink[ink > 0], 99.5)
    return np.clip(ink / (level if level < FULL_INK else 1.0), 0.0, 1.0).astype(np.float32)


def _light_background(gray: np.ndarray) -> bool:
    """Dark ink on light paper (else light ink on a dark ground, as in MNIST)?

    A light border says so, the border being where the digit rarely is. A dim photo's
    paper is dark too; there the ink tells: the darkest pixels lie further below the
    border's level, in ratio, than the brightest lie above it.
    """
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    level = _median(border)
    if level > 0.5:
        return True
    if level == 0:  # a black border, as MNIST's: no ratio below it to weigh
        return False
    flat = gray.ravel()
    rare = flat.size // 2000  # ink is rare: a small digit is a tenth of a percent of a photo
    darkest, brightest = np.partition(flat, (rare, flat.size - 1 - rare))[
        [rare, flat.size - 1 - rare]
    ]
    return bool((level + DIM) ** 2 > (darkest + DIM) * (brightest + DIM))


def _closing(gray: np.ndarray) -> np.ndarray:
    """The paper's brightness under every pixel, first estimate: a closing (a maximum,
    then a minimum, over a square wider than any stroke).

    Strokes narrower than the square vanish, and light that changes smoothly (a gradient,
    dark corners) or in a step wider than the square (a shadow's hard edge) is kept
    exactly. Beyond the picture the light goes on falling as it did towards its edge (an
    odd reflection, never brighter than the edge: a stroke or line near the edge would
    reflect as a bright one), so corners darkened by vignetting are followed, not filled.
    """
    side = max(12, max(gray.shape) // 6)
    height, width = gray.shape
    padded = np.minimum(
        np.pad(gray, side, mode="reflect", reflect_type="odd"), np.pad(gray, side, mode="edge")
    )
    closed = _sliding(_sliding(padded, side, np.maximum, False), side, np.minimum, False)
    start = side - 2 * (side // 2)  # where the picture begins in what is left of the padding
    return closed[start : start + height, start : start + width]


def _in_shadows(gray: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """The paper's brightness, with the corners of shadows put back.

    A shadow's corner narrower than the closing's square vanishes in it too, and would
    read as ink. So the dark is let flow back from where the closing kept it into what it
    connects to (a reconstruction by erosion: the closing eroded step by step, never below
    the picture), at a quarter of the size for speed. A pixel where that is clearly darker
    than the closing (a real shadow, not grain) and that itself looks like paper at that
    level (a stroke is far darker) is paper in shadow: its own brightness is the paper's.
    Thin dark lines (printed rules, thin strokes) are closed first, so a shadow's dark
    cannot flow along them out into the lit paper.
    """
    if min(gray.shape) < MIN_PAGE_SIDE:
        return closed
    height, width = gray.shape
    small = (max(1, width // SHADOW_SCALE), max(1, height // SHADOW_SCALE))
    floor = np.asarray(Image.fromarray(gray, mode="F").resize(small, Image.Resampling.BOX))
    # Paper beyond the picture's edge closes a line that runs along it as well.
    beyond = np.pad(floor, 2, mode="constant", constant_values=floor.max())
    floor = _sliding(_sliding(beyond, 3, np.maximum, False), 3, np.minimum, False)
    ceiling = np.asarray(Image.fromarray(closed, mode="F").resize(small, Image.Resampling.BOX))
    # The marker, with a border that never wins a minimum, erodes in place.
    held = np.full((floor.shape[0] + 4, floor.shape[1] + 4), np.inf, dtype=np.float32)
    marker = held[2:-2, 2:-2]
    marker[...] = np.maximum(ceiling, floor)
    for _ in range(SHADOW_STEPS):
        eroded = np.maximum(floor, _sliding(held, 5, np.minimum, False))
        if np.array_equal(eroded, marker):
            break
        marker[...] = eroded
    if not (marker < SHADOW_DEPTH * ceiling).any():
        return closed
    # Two blocks further, so the full-size shadow's own edge is not left out of it.
    marker = _sliding(marker, 5, np.minimum)
    back = Image.fromarray(marker, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    flowed = np.asarray(back)
    shadowed = (flowed < SHADOW_DEPTH * closed) & (gray >= SHADOW_PAPER * flowed)
    return np.where(shadowed, gray, closed)


def _sliding(values: np.ndarray, side: int, pick: np.ufunc, padded: bool = True) -> np.ndarray:
    """`pick` (np.maximum or np.minimum) over the side x side square centred on each pixel
    (the edge repeated beyond it); with `padded` false, only where the square fits, so
    the result is side - 1 smaller each way.

    Each axis by doubling: the extreme over 2k pixels is that of two overlapping k's,
    so a window of 53 takes 7 array operations, not 52.
    """
    for axis in (1, 0):
        out = values
        if padded:
            padding = [(0, 0), (0, 0)]
            padding[axis] = (side // 2, side - 1 - side // 2)
            out = np.pad(values, padding, mode="edge")
        span = 1
        while 2 * span <= side:
            out = pick(_cut(out, axis, 0, -span), _cut(out, axis, span, None))
            span *= 2
        if side > span:
            rest = side - span
            out = pick(_cut(out, axis, 0, -rest), _cut(out, axis, rest, None))
        values = out
    return values


def _cut(values: np.ndarray, axis: int, start: int, stop: int | None) -> np.ndarray:
    return values[:, start:stop] if axis == 1 else values[start:stop]


def _background(ink: np.ndarray) -> np.ndarray:
    """A smooth estimate of the background level of a dark picture (light ink on black, as
    in MNIST): the minimum over coarse blocks, interpolated."""
    height, width = ink.shape
    block = max(12, max(height, width) // 6)
    rows, cols = -(-height // block), -(-width // block)
    padded = np.pad(ink, ((0, rows * block - height), (0, cols * block - width)), mode="edge")
    minima = padded.reshape(rows, block, cols, block).min(axis=(1, 3))
    grid = Image.fromarray(minima.astype(np.float32), mode="F")
    return np.asarray(grid.resize((width, height), Image.Resampling.BILINEAR))


def _without_lines(ink: np.ndarray, floor: float) -> np.ndarray:
    """Ink with the ruled or squared paper's printed lines taken out.

    A printed line crosses the whole page: thin, straight, near the horizontal or the
    vertical. Ink that does so is found by a Hough transform of ridge pixels (each
    column's local maxima), confirmed by ink along LINE_SPAN of its length, and painted
    out (`_bridge`) so that strokes crossing it stay whole. Digits are never found: none
    crosses the whole picture, or it would touch the picture's edge.
    """
    if min(ink.shape) < MIN_PAGE_SIDE:
        return ink
    level = max(floor, MIN_LINE_INK)
    for view in (ink, ink.T):  # horizontal lines, then vertical ones (in the transpose)
        present = view > level
        if present.any(axis=0).mean() < LINE_SPAN:  # no ink crosses every column
            continue
        for slope, middle in _lines(view, present, level):
            _bridge(view, slope, middle, floor)
    return ink


def _lines(view: np.ndarray, present: np.ndarray, level: float) -> list[tuple[float, float]]:
    """Near-horizontal lines of ink crossing `view`: (slope, row at the middle column)."""
    height, width = view.shape
    beyond = np.zeros((1, width), dtype=view.dtype)  # a line may run along the very edge
    padded = np.concatenate([beyond, view, beyond])
    ridge = present & (view >= padded[:-2]) & (view > padded[2:])
    ys, xs = np.nonzero(ridge)
    if ys.size == 0:
        return []
    slopes = np.tan(np.radians(np.arange(-LINE_TILT, LINE_TILT + 1e-9, LINE_TILT_STEP)))
    reach = int(np.ceil(slopes[-1] * width / 2)) + 2
    bins = height + 2 * reach
    centred = xs - width / 2
    rows = np.rint(ys - slopes[:, None] * centred).astype(np.int64) + reach
    votes = np.bincount(
        (rows + bins * np.arange(slopes.size)[:, None]).ravel(), minlength=slopes.size * bins
    ).reshape(slopes.size, bins)
    votes[:, 1:-1] += votes[:, :-2] + votes[:, 2:]  # a line's ridge wanders a pixel either way
    middles = np.arange(bins) - reach
    # How many columns each candidate line spends inside the picture.
    with np.errstate(divide="ignore", invalid="ignore"):
        enter = width / 2 - middles / slopes[:, None]
        leave = width / 2 + (height - 1 - middles) / slopes[:, None]
    inside = np.nan_to_num(np.abs(np.clip(leave, 0, width) - np.clip(enter, 0, width)))
    score = np.where(inside >= width / 8, votes / np.maximum(inside, 1), 0.0)
    found = []
    for _ in range(MAX_LINES):
        k, b = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[k, b] < LINE_VOTES:
            break
        score[:, max(0, b - LINE_GAP) : b + LINE_GAP + 1] = 0
        line = _fitted(view, level, float(slopes[k]), float(middles[b]))
        if _coverage(present, *line) >= LINE_SPAN:
            found.append(line)
    return found


def _fitted(view: np.ndarray, level: float, slope: float, middle: float) -> tuple[float, float]:
    """The line through the middle of the ink along a candidate, by least squares: the
    Hough grid is a quarter of a degree and a pixel coarse, a printed line a pixel or two
    wide. Each column's middle is the centroid of its ink above `level` a few pixels
    either way; columns a stroke crosses stray from the line and are left out of the
    second fit."""
    height, width = view.shape
    columns, rows = _track(view.shape, slope, middle)
    across = np.clip(rows[None, :] + np.arange(-3, 4)[:, None], 0, height - 1)
    weights = np.clip(view[across, columns] - level, 0.0, None)
    mass = weights.sum(axis=0)
    held = mass > 0
    if np.count_nonzero(held) < 8:
        return slope, middle
    centred = columns[held] - width / 2
    centres = (weights * across).sum(axis=0)[held] / mass[held]
    for _ in range(2):
        slope, middle = (float(v) for v in np.polyfit(centred, centres, 1))
        near = np.abs(centres - middle - slope * centred) <= 1.0
        if np.count_nonzero(near) < 8:
            break
        centred, centres = centred[near], centres[near]
    return slope, middle


def _coverage(present: np.ndarray, slope: float, middle: float) -> float:
    """The share of its columns in which a candidate line has ink, a pixel either way."""
    columns, rows = _track(present.shape, slope, middle)
    if columns.size == 0:
        return 0.0
    last = present.shape[0] - 1
    hit = present[rows, columns]
    hit |= present[np.maximum(rows - 1, 0), columns] | present[np.minimum(rows + 1, last), columns]
    return float(hit.mean())


def _track(
    shape: tuple[int, int], slope: float, middle: float, beyond: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The columns where a line runs inside the picture (or up to `beyond` rows outside
    it), and its row in each."""
    height, width = shape
    columns = np.arange(width)
    rows = np.rint(middle + slope * (columns - width / 2)).astype(np.int64)
    inside = (rows >= -beyond) & (rows < height + beyond)
    return columns[inside], rows[inside]


def _bridge(view: np.ndarray, slope: float, middle: float, floor: float) -> None:
    """Paint a line out in place: across it, each pixel takes the ink interpolated between
    the two sides just beyond it (the lesser of the two pixels there, in case the line
    wanders a pixel further), where no more than that, so a stroke that crosses it stays
    whole. How far it reaches across is read from its typical profile: the median over the
    columns where it is inside the picture, which strokes crossing it do not move. It is
    painted out where only its edge is inside too."""
    height, _ = view.shape
    columns, rows = _track(view.shape, slope, middle, beyond=LINE_REACH)
    offsets = np.arange(-LINE_REACH, LINE_REACH + 1)
    inside = (rows >= 0) & (rows < height)
    if not inside.any():
        return
    across = np.clip(rows[inside][None, :] + offsets[:, None], 0, height - 1)
    typical = np.median(view[across, columns[inside]], axis=1)
    centre = LINE_REACH + int(np.argmax(typical[LINE_REACH - 2 : LINE_REACH + 3])) - 2
    if typical[centre] <= floor:
        return
    low = high = centre
    while low > 0 and typical[low - 1] > floor:
        low -= 1
    while high < 2 * LINE_REACH and typical[high + 1] > floor:
        high += 1
    low, high = max(0, low - 1), min(2 * LINE_REACH, high + 1)  # its edges wander a little
    before, after = rows + offsets[low] - 1, rows + offsets[high] + 1
    first, last = (
        np.minimum(_beside(view, edge, columns), _beside(view, edge + outwards, columns))
        for edge, outwards in ((before, -1), (after, 1))
    )
    first = np.where(before < 0, last, first)  # out of the picture, one side stands for both
    last = np.where(after >= height, first, last)
    for step, offset in enumerate(offsets[low : high + 1], start=1):
        band = rows + offset
        inside = (band >= 0) & (band < height)
        share = step / (high - low + 2)
        between = (1 - share) * first[inside] + share * last[inside]
        band, at = band[inside], columns[inside]
        view[band, at] = np.minimum(view[band, at], between)


def _beside(view: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The ink at `rows` (clipped to the picture) of `columns`."""
    return view[np.clip(rows, 0, view.shape[0] - 1), columns]


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


def _percentile(values: np.ndarray, q: float) -> float:
    """np.percentile's exact result (linear interpolation), by partition: a quarter the time."""
    flat = values.ravel()
    at = q / 100 * (flat.size - 1)
    low = int(at)
    high = min(low + 1, flat.size - 1)
    below, above = np.partition(flat, (low, high))[[low, high]]
    share = at - low
    # Interpolated from the nearer end, as numpy does, so the two agree to the last bit.
    if share >= 0.5:
        return float(above - (above - below) * (1 - share))
    return float(below + (above - below) * share)


def _otsu_threshold(values: np.ndarray) -> float:
    """The level that best splits `values` (in [0, 1]) into two classes: paper and ink."""
    # np.histogram's 256 bins over [0, 1], counted directly: several times faster.
    counts = np.bincount(np.minimum((values.ravel() * 256).astype(np.int64), 255), minlength=256)
    weights = counts / max(1, counts.sum())
    centres = (np.arange(256) + 0.5) / 256
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
