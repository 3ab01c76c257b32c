"""Uploads that are not one digit, as real image files: for outlier exposure and its test.

A model trained only on MNIST names a digit, confidently, for anything it is sent. v3
is also trained to spread its probability over the ten classes for what is not a digit
(outlier exposure), and is judged on a held-out split of the same kinds. Each kind is a
function `(rng, source) -> bytes` that returns a real PNG or JPEG: black strokes on a
transparent canvas, grey ink on a white page, or dark ink on photographed paper
(the same media as `renderings`).

Kinds (`KINDS`): scribble, letter, word, dots, several digits, shape, empty paper,
ruled paper, cut-off digit. "empty paper" usually preprocesses to `BlankImage` (the
service answers 422 "no digit found"), and a tiny dot on a noisy photo sometimes does:
`MAY_BE_BLANK` names those kinds.

Left out on purpose, because in handwriting they are a digit (a model taught to doubt
them would doubt real digits):
- letters O o D Q (0); C c (an open 0, or a 6 without its loop); I l i j J (1); Z z
  (2); S s (5); b G (6); T (7: a T with its bar sloping down is a 7); B (8); g q (9);
  y (an open-topped 4 is written like a y).
  Kept: A (apex at the top, two legs apart; the closed 4 has a vertical stem on its
  right running down past the bar) and a (DejaVu's a is two-storey; a one-storey a is
  close to a 9 and is not drawn). Words may use any letter: a word is not one digit.
- shapes: a circle or ellipse (0), a vertical or slanted bar (1), a tall rectangle (a
  boxy 0), an up or down arrow (a flagged 1), a tick (a 1 or 7). Rectangles are wider
  than tall, arrows point sideways, and the smiley's circle has a face in it.
- symbols: not drawn at all (! and | are 1s, & is 8, $ is 5, ? is a 2 or 7).
- a cut-off digit loses 40-65% of its height or width to the picture's edge, and is
  never a 1 (a cut 1 is a 1). What is left is often still a digit's shape once the
  service has scaled and centred it (the top of a 7 is a 7, the side of a 4 a 1, the
  bottom of a 6 an open 0): a measure of how sure a model is of those, and no
  training material (training/train.py leaves it out of outlier exposure).

Splits: "train" and "eval" draw from different random streams and from different
sources, so that an evaluation on "eval" is honest: train letters and words are set in
DejaVu Sans, eval ones in DejaVu Serif and DejaVu Sans Mono; several-digit and cut-off
uploads use MNIST training digits for "train" and MNIST test digits for "eval"; eval
shapes include four never drawn for "train" (heart, arrow, hexagon, smiley). Scribbles,
dots and paper differ only by their random stream.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from imagesets.renderings import encode, paper, place, strokes
from training.data import Mnist, load_mnist

Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")

EXCLUDED_LETTERS = frozenset("OoDQ" + "Cc" + "IlijJ" + "Zz" + "Ss" + "bG" + "T" + "B" + "gq" + "y")
LETTERS = "".join(c for c in string.ascii_letters if c not in EXCLUDED_LETTERS)
TRAIN_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique")
EVAL_FONTS = (
    *("DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic"),
    *("DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique"),
)
TRAIN_SHAPES = ("square", "rectangle", "triangle", "diamond", "pentagon", "star", "plus", "cross")
EVAL_SHAPES = (*TRAIN_SHAPES, "heart", "arrow", "hexagon", "smiley")
MAY_BE_BLANK = frozenset({"empty paper", "dots"})

PATCH = 256  # objects are drawn at this size (twice over, for anti-aliasing), then scaled


@dataclass(frozen=True)
class Source:
    """What one split draws from: MNIST digits (28x28, white on black), fonts, shapes."""

    digits: np.ndarray
    labels: np.ndarray
    fonts: tuple[Path, ...]
    shapes: tuple[str, ...]


Generator = Callable[[np.random.Generator, Source], bytes]


def source(split: Split, mnist: Mnist | None = None) -> Source:
    """The digits, fonts and shapes of `split` ("train" or "eval")."""
    if split not in SPLITS:
        raise ValueError(f"split is {split!r}, not one of {SPLITS}")
    data = mnist or load_mnist()
    train = split == "train"
    return Source(
        digits=data.x_train if train else data.x_test,
        labels=data.y_train if train else data.y_test,
        fonts=tuple(font_path(name) for name in (TRAIN_FONTS if train else EVAL_FONTS)),
        shapes=TRAIN_SHAPES if train else EVAL_SHAPES,
    )


def font_path(name: str) -> Path:
    """One of matplotlib's bundled DejaVu fonts (so no system font is needed)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"


# Media: how an object (ink in [0, 1], cropped to itself) becomes an upload.

Placer = Callable[[np.ndarray, tuple[int, int], np.random.Generator], np.ndarray]


def _as_upload(
    ink: np.ndarray,
    rng: np.random.Generator,
    share: tuple[float, float] = (0.3, 0.8),
    put: Placer = place,
) -> bytes:
    """`ink` on a transparent canvas, a white page or photographed paper, chosen at random.

    `share`: the object's longer side as a share of the picture's shorter side; `put`:
    where on the picture it goes (anywhere inside it, unless told otherwise).
    """
    medium = rng.choice(["canvas", "page", "photo"], p=[0.3, 0.3, 0.4])
    if medium == "photo":
        width = int(rng.integers(160, 900))  # the service reduces larger ones first
        shape = (int(width * rng.uniform(0.7, 1.4)), width)
    else:
        side = int(
            rng.choice([200, 280, 400, 560]) if medium == "canvas" else rng.integers(200, 800)
        )
        shape = (side, side)
    on_canvas = put(_scaled(ink, min(shape) * rng.uniform(*share)), shape, rng)
    if medium == "canvas":
        rgba = np.zeros((*shape, 4), dtype=np.uint8)
        rgba[..., 3] = np.rint(on_canvas * 255).astype(np.uint8)
        return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")
    if medium == "page":
        gray = 255 - on_canvas * rng.uniform(150, 255)
        return encode(Image.fromarray(gray.astype(np.uint8), mode="L"), "PNG")
    photo = paper(on_canvas, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    return encode(photo, "JPEG", quality=int(rng.integers(55, 92)))


def _scaled(ink: np.ndarray, longer_side: float) -> np.ndarray:
    """`ink` resized so that its longer side is `longer_side` pixels (at least 1)."""
    scale = longer_side / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(
        size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX
    )
    return np.clip(np.asarray(resized), 0, 1)


def _cropped(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.max(axis=1) > 0.05)
    cols = np.flatnonzero(ink.max(axis=0) > 0.05)
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


# Drawing: objects are painted white on black in a supersampled patch.


def _painted(paint: Callable[[ImageDraw.ImageDraw], None], size: tuple[int, int]) -> np.ndarray:
    """Ink in [0, 1] of what `paint` draws on a (width, height) patch in patch coordinates."""
    width, height = size
    big = Image.new("L", (2 * width, 2 * height), 0)
    paint(_Doubled(ImageDraw.Draw(big)))
    small = big.resize(size, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


class _Doubled:
    """An ImageDraw that takes patch coordinates and draws on the 2x supersampled image."""

    def __init__(self, draw: ImageDraw.ImageDraw) -> None:
        self._draw = draw

    def pen(self, points: np.ndarray, width: float) -> None:
        """A pen stroke through `points` with round ends and joints."""
        doubled = [(2 * float(x), 2 * float(y)) for x, y in points]
        self._draw.line(doubled, fill=255, width=max(1, round(2 * width)), joint="curve")
        for x, y in (doubled[0], doubled[-1]):
            self._draw.ellipse((x - width, y - width, x + width, y + width), fill=255)

    def fill(self, points: np.ndarray) -> None:
        self._draw.polygon([(2 * float(x), 2 * float(y)) for x, y in points], fill=255)

    def text(self, xy: tuple[float, float], text: str, font_file: Path, size: int) -> None:
        font = ImageFont.truetype(str(font_file), 2 * size)
        self._draw.text((2 * xy[0], 2 * xy[1]), text, fill=255, font=font, anchor="mm")


def _spline(points: np.ndarray, per_segment: int = 16) -> np.ndarray:
    """A smooth Catmull-Rom curve through `points` (n x 2), as a dense polyline."""
    padded = np.vstack([points[0], points, points[-1]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    pieces = []
    for i in range(len(points) - 1):
        p0, p1, p2, p3 = padded[i : i + 4]
        pieces.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    return np.vstack([*pieces, points[-1:]])


def _handwritten(ink: np.ndarray, rng: np.random.Generator, warp: float = 0.035) -> np.ndarray:
    """Slant, turn and bend `ink` the way a hand does: shear, rotation, an elastic mesh warp.

    `warp` is the spread of the mesh's corners as a share of PATCH (about a letter's size),
    so that a word is bent letter by letter rather than as a whole.
    """
    height, width = ink.shape
    image = Image.fromarray(np.rint(ink * 255).astype(np.uint8), mode="L")
    shear = rng.uniform(-0.3, 0.3)
    image = image.transform(
        image.size,
        Image.Transform.AFFINE,
        (1, shear, -shear * height / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    image = image.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, expand=True)
    width, height = image.size
    xs = np.linspace(0, width, max(2, round(width / 64)) + 1)
    ys = np.linspace(0, height, max(2, round(height / 64)) + 1)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1)  # (rows, cols, 2) of x, y
    moved = grid + rng.normal(0, warp * PATCH, grid.shape)
    mesh = [
        (
            (int(xs[col]), int(ys[row]), int(xs[col + 1]), int(ys[row + 1])),
            tuple(
                float(v)
                for corner in (
                    moved[row, col],
                    moved[row + 1, col],
                    moved[row + 1, col + 1],
                    moved[row, col + 1],
                )
                for v in corner
            ),
        )
        for row in range(len(ys) - 1)
        for col in range(len(xs) - 1)
    ]
    image = image.transform(
        image.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(image, dtype=np.float32) / 255.0


def _weight(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bolder or lighter strokes: a grey-level dilation or erosion of 1 to 4 pixels."""
    radius = int(rng.integers(-1, 5))
    if radius == 0:
        return ink
    image = Image.fromarray(ink, mode="F")
    pick = ImageFilter.MaxFilter if radius > 0 else ImageFilter.MinFilter
    return np.asarray(image.filter(pick(2 * abs(radius) + 1)))


# The kinds.


def scribble(rng: np.random.Generator, source: Source) -> bytes:
    """One or two pen strokes that wander through 6 to 10 random points each."""
    strokes_ = [
        rng.uniform(0.08, 0.92, (int(rng.integers(6, 11)), 2)) * PATCH
        for _ in range(int(rng.integers(1, 3)))
    ]
    width = rng.uniform(3, 9)

    def paint(draw: _Doubled) -> None:
        for points in strokes_:
            draw.pen(_spline(points), width)

    return _as_upload(_cropped(_painted(paint, (PATCH, PATCH))), rng)


def letter(rng: np.random.Generator, source: Source) -> bytes:
    """One letter (not one that is also a digit) in one of the split's fonts, as if handwritten."""
    char = LETTERS[int(rng.integers(len(LETTERS)))]
    return _as_upload(_set_in_type(char, rng, source), rng)


def word(rng: np.random.Generator, source: Source) -> bytes:
    """Two to six random letters in a row: any letter, since a word is not one digit."""
    text = "".join(rng.choice(list(string.ascii_letters), int(rng.integers(2, 7))))
    return _as_upload(_set_in_type(text, rng, source), rng, share=(0.4, 0.9))


def _set_in_type(text: str, rng: np.random.Generator, source: Source) -> np.ndarray:
    font = source.fonts[int(rng.integers(len(source.fonts)))]
    size = (PATCH * len(text) * 3 // 4 + PATCH // 2, PATCH)
    ink = _painted(lambda draw: draw.text((size[0] / 2, size[1] / 2), text, font, 150), size)
    return _cropped(_weight(_handwritten(ink, rng), rng))


def dots(rng: np.random.Generator, source: Source) -> bytes:
    """A tiny dot, a large blob, or a few dots and blobs scattered."""
    variant = rng.choice(["tiny dot", "blob", "scattered"])
    count = 1 if variant != "scattered" else int(rng.integers(2, 7))
    shapes = []
    for _ in range(count):
        centre = rng.uniform(0.2, 0.8, 2) * PATCH if count > 1 else np.array([PATCH / 2] * 2)
        radius = rng.uniform(0.1, 0.3) * PATCH if count == 1 else rng.uniform(0.02, 0.1) * PATCH
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(8, 14))))
        radii = radius * rng.uniform(0.6, 1.3, len(angles))
        shapes.append(centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None])

    def paint(draw: _Doubled) -> None:
        for outline in shapes:
            draw.fill(_spline(np.vstack([outline, outline[:1]]), 6))

    ink = _cropped(_painted(paint, (PATCH, PATCH)))
    share = (0.005, 0.03) if variant == "tiny dot" else (0.1, 0.6)
    return _as_upload(ink, rng, share=share)


def several_digits(rng: np.random.Generator, source: Source) -> bytes:
    """Two or three MNIST digits side by side, touching or overlapping, now and then stacked."""
    chosen = source.digits[rng.integers(len(source.digits), size=int(rng.integers(2, 4)))]
    thickness = rng.uniform(0.35, 0.6)
    pieces = [_cropped(strokes(d, 120, thickness)) for d in chosen]
    stacked = rng.random() < 0.15
    if stacked:
        pieces = [p.T for p in pieces]
    length = sum(p.shape[1] for p in pieces) + 200
    row = np.zeros((max(p.shape[0] for p in pieces) + 30, length), dtype=np.float32)
    left = 0
    for piece in pieces:
        top = int(rng.integers(0, row.shape[0] - piece.shape[0] + 1))
        area = row[top : top + piece.shape[0], left : left + piece.shape[1]]
        np.maximum(area, piece, out=area)
        left += piece.shape[1] + int(rng.uniform(-0.35, 0.3) * piece.shape[1])
        left = max(left, 0)
    ink = _cropped(row)
    return _as_upload(ink.T if stacked else ink, rng, share=(0.4, 0.9))


def shape(rng: np.random.Generator, source: Source) -> bytes:
    """A geometric figure (square, star, cross, ...) drawn by hand; a quarter are filled."""
    name = source.shapes[int(rng.integers(len(source.shapes)))]
    outlines, closed = _figure(name, rng)
    # Corners wander a little; curves (heart, smiley) are bent by the warp alone.
    outlines = [o + rng.normal(0, 0.015, o.shape) if len(o) <= 12 else o for o in outlines]
    filled = closed and rng.random() < 0.25
    width = rng.uniform(4, 12)

    def paint(draw: _Doubled) -> None:
        for outline in outlines:
            points = (outline * 0.7 + 0.5) * PATCH
            if filled:
                draw.fill(points)
            draw.pen(np.vstack([points, points[:1]]) if closed else points, width)

    ink = _handwritten(_painted(paint, (PATCH, PATCH)), rng, warp=0.02)
    return _as_upload(_cropped(ink), rng)


def _figure(name: str, rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """The figure's outlines in [-0.5, 0.5] (y down) and whether they are closed polygons."""

    def polygon(corners: int, start: float = -np.pi / 2) -> np.ndarray:
        angles = start + 2 * np.pi * np.arange(corners) / corners
        return 0.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if name == "square":
        return [np.array([[-0.45, -0.45], [0.45, -0.45], [0.45, 0.45], [-0.45, 0.45]])], True
    if name == "rectangle":  # wider than tall: a tall one is a boxy 0
        h = rng.uniform(0.15, 0.32)
        return [np.array([[-0.5, -h], [0.5, -h], [0.5, h], [-0.5, h]])], True
    if name == "triangle":
        return [polygon(3) * [1, 1.1] + [0, 0.08]], True
    if name == "diamond":
        return [polygon(4) * [rng.uniform(0.7, 1), 1]], True
    if name == "pentagon":
        return [polygon(5)], True
    if name == "hexagon":
        return [polygon(6, 0)], True
    if name == "star":
        points = int(rng.choice([5, 6]))
        outer = polygon(2 * points)
        outer[1::2] *= rng.uniform(0.35, 0.5)
        return [outer], True
    if name == "plus":
        return [np.array([[-0.5, 0], [0.5, 0]]), np.array([[0, -0.5], [0, 0.5]])], False
    if name == "cross":
        return [
            np.array([[-0.45, -0.45], [0.45, 0.45]]),
            np.array([[0.45, -0.45], [-0.45, 0.45]]),
        ], False
    if name == "arrow":  # sideways: an up arrow is a flagged 1
        head = rng.uniform(0.15, 0.3)
        lines = [
            np.array([[-0.5, 0], [0.5, 0]]),
            np.array([[0.5 - head, -head], [0.5, 0], [0.5 - head, head]]),
        ]
        return ([line * [-1, 1] for line in lines] if rng.random() < 0.5 else lines), False
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [np.stack([x, -y], axis=1) / 34], True
    if name == "smiley":
        face = polygon(32)
        eyes = [np.array([[x, -0.15], [x, -0.1]]) for x in (-0.17, 0.17)]
        t = np.linspace(0.15 * np.pi, 0.85 * np.pi, 12)
        mouth = 0.28 * np.stack([np.cos(t), np.sin(t)], axis=1) + [0, 0.02]
        return [np.vstack([face, face[:1]]), *eyes, mouth], False
    raise ValueError(f"no figure {name!r}")


def empty_paper(rng: np.random.Generator, source: Source) -> bytes:
    """Nothing written: an empty canvas or page, or a photo of blank, unevenly lit paper."""
    nothing = np.zeros((1, 1), dtype=np.float32)
    return _as_upload(nothing, rng, share=(0.01, 0.02))


def ruled_paper(rng: np.random.Generator, source: Source) -> bytes:
    """Ruled or squared paper, photographed or scanned, with nothing or a tiny mark on it."""
    width = int(rng.integers(240, 900))
    shape = (int(width * rng.uniform(0.7, 1.4)), width)
    mark = np.zeros(shape, dtype=np.float32)
    if rng.random() < 0.4:  # almost nothing written: a speck or a short dash
        dash = np.ones((2, int(rng.integers(1, 5))), np.float32)
        mark = place(_scaled(dash, min(shape) * rng.uniform(0.01, 0.04)), shape, rng)
    photographed = rng.random() < 0.7
    if photographed:
        page = np.asarray(paper(mark, rng), dtype=np.float32)
    else:  # scanned
        page = np.repeat(250 * (1 - mark[..., None]), 3, axis=2).astype(np.float32)
    spacing = min(shape) * rng.uniform(0.03, 0.08)
    thickness = max(1, round(spacing * rng.uniform(0.03, 0.08)))
    offset = rng.uniform(0, spacing)
    lines = np.zeros(shape, dtype=np.float32)
    for y in np.arange(offset, shape[0], spacing).astype(int):
        lines[y : y + thickness] = 1
    if rng.random() < 0.4:  # squared paper
        for x in np.arange(offset, shape[1], spacing).astype(int):
            lines[:, x : x + thickness] = 1
    colour = rng.choice([[150, 180, 230], [170, 170, 170], [130, 200, 200]]) + rng.normal(0, 10, 3)
    colour = colour.astype(np.float32)
    blend = lines[..., None] * np.float32(rng.uniform(0.4, 0.9))
    rgb = page * (1 - blend) + colour * blend
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))
    if photographed:
        return encode(image, "JPEG", quality=int(rng.integers(55, 92)))
    return encode(image, "PNG")


def cut_off_digit(rng: np.random.Generator, source: Source) -> bytes:
    """An MNIST digit that runs off the picture: 40-65% of it is outside the frame.

    Never a 1: what is left of a 1 is still a 1.
    """
    candidates = np.flatnonzero(source.labels != 1)
    digit = source.digits[candidates[int(rng.integers(len(candidates)))]]
    ink = _cropped(strokes(digit, 120, rng.uniform(0.35, 0.6)))
    outside = rng.uniform(0.4, 0.65)
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom

    def across_edge(
        piece: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator
    ) -> np.ndarray:
        turned = np.rot90(piece, side)  # the edge to cut is now the left one
        frame = (canvas[1], canvas[0]) if side % 2 else canvas
        cut = int(turned.shape[1] * outside)
        kept = place(turned[:, cut:], (frame[0], turned.shape[1] - cut), rng)
        out = np.zeros(frame, dtype=np.float32)
        out[:, : kept.shape[1]] = kept[:, : frame[1]]
        return np.rot90(out, -side)

    return _as_upload(ink, rng, share=(0.4, 0.9), put=across_edge)


KINDS: dict[str, Generator] = {
    "scribble": scribble,
    "letter": letter,
    "word": word,
    "dots": dots,
    "several digits": several_digits,
    "shape": shape,
    "empty paper": empty_paper,
    "ruled paper": ruled_paper,
    "cut-off digit": cut_off_digit,
}
_SPLIT_STREAM = {"train": 1, "eval": 2}


# Held-out kinds (issue 29): never in "train", so no rejector trained on them, and never to be
# added to training. A rejection rate on them says how far the rejector generalises, which a
# rate on KINDS' eval split (its own kinds, other seeds) cannot.


def spiral(rng: np.random.Generator, source: Source) -> bytes:
    """An Archimedean spiral of 1.5 to 4 turns in one pen stroke, either way round."""
    turns = rng.uniform(1.5, 4)
    t = np.linspace(0, 2 * np.pi * turns, int(120 * turns))
    radius = t / t[-1] * PATCH * rng.uniform(0.35, 0.45)
    way = rng.choice([-1, 1])
    start = rng.uniform(0, 2 * np.pi)
    points = np.column_stack([np.cos(start + way * t), np.sin(start + way * t)]) * radius[:, None]
    points[:, 1] *= rng.uniform(0.75, 1.25)  # a little squashed or stretched

    def paint(draw: _Doubled) -> None:
        draw.pen(points + PATCH / 2, rng.uniform(3, 9))

    ink = _handwritten(_painted(paint, (PATCH, PATCH)), rng, warp=0.02)
    return _as_upload(_cropped(ink), rng)


def pen_star(rng: np.random.Generator, source: Source) -> bytes:
    """A five-pointed star drawn as one closed pen stroke (a pentagram), not a filled shape."""
    corners = np.arange(6) * 4 * np.pi / 5 + rng.uniform(-0.3, 0.3) - np.pi / 2
    radius = PATCH * rng.uniform(0.35, 0.45) * rng.uniform(0.85, 1.15, 6)
    points = np.column_stack([np.cos(corners), np.sin(corners)]) * radius[:, None]
    points[-1] = points[0] + rng.normal(0, PATCH * 0.02, 2)  # the pen comes back near its start

    def paint(draw: _Doubled) -> None:
        draw.pen(points + PATCH / 2, rng.uniform(3, 9))

    ink = _handwritten(_painted(paint, (PATCH, PATCH)), rng, warp=0.02)
    return _as_upload(_cropped(ink), rng)


HELD_OUT_KINDS: dict[str, Generator] = {"spiral": spiral, "pen star": pen_star}


def make_held_out(per_kind: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`per_kind` uploads of every held-out kind: (kind, file bytes), the same every time."""
    uploads = []
    for index, (kind, generate) in enumerate(HELD_OUT_KINDS.items()):
        rng = np.random.default_rng([seed, 3, index])  # a stream neither split uses
        uploads.extend((kind, generate(rng, _NO_SOURCE)) for _ in range(per_kind))
    return uploads


_NO_SOURCE = Source(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), (), ())


def make_set(
    per_kind: int | Mapping[str, int],
    seed: int = 0,
    split: Split = "train",
    mnist: Mnist | None = None,
) -> list[tuple[str, bytes]]:
    """`per_kind` uploads of every kind (or a count per named kind): (kind, file bytes).

    Each kind has its own random stream, from (seed, split, kind), so a set is the same
    every time, and asking for more of one kind does not change the others.
    """
    counts = per_kind if isinstance(per_kind, Mapping) else dict.fromkeys(KINDS, per_kind)
    unknown = set(counts) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; the kinds are {list(KINDS)}")
    drawn_from = source(split, mnist)
    uploads = []
    for kind, count in counts.items():
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split], list(KINDS).index(kind)])
        uploads.extend((kind, KINDS[kind](rng, drawn_from)) for _ in range(count))
    return uploads
