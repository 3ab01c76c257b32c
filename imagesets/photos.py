"""Phone photos of MNIST test digits written on paper, as the JPEG bytes a phone sends.

A photo is a page (paper, maybe ruled or squared, with the digit in pen, pencil or blue
ballpoint) seen through a camera: turned and keystoned, lit unevenly (a gradient, dark
corners, the phone's own shadow), blurred, noisy, JPEG-compressed, 640-1600 px wide and
sometimes stored sideways with an EXIF Orientation tag. Each kind stresses one of those
with random parameters over a mild base of all the others. The paper fills the whole
frame (no table edge) and the digit stays clear of the frame's edge.

The digits come from the MNIST test set, so the model has never seen them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from imagesets.renderings import STORED_AS, encode, place, stored_sideways, strokes

STROKE_SHARE = 0.12  # an MNIST stroke is about this share of the digit's height
EXIF_SHARE = 0.25  # photos stored sideways with an Orientation tag, in every kind
EDGE_SHARE = 0.04  # the digit keeps at least this share of the frame's shorter side clear


@dataclass(frozen=True)
class Look:
    """What one kind of photo draws its parameters from: (low, high) ranges, uniform."""

    share: tuple[float, float] = (0.3, 0.65)  # digit height over frame height
    thickness: tuple[float, float] = (0.35, 0.6)  # `strokes` boldness
    ink: str = "pen"  # pen, pencil or blue (ballpoint)
    rules: str = "plain"  # plain, ruled or squared
    exposure: tuple[float, float] = (0.8, 1.0)
    gradient: tuple[float, float] = (0.0, 0.2)  # light falling off across the frame
    vignette: tuple[float, float] = (0.0, 0.15)  # darkening at the corners
    shadow: tuple[float, float] = (0.0, 0.0)  # light lost in a hard shadow (0: none)
    defocus: tuple[float, float] = (0.0, 0.08)  # Gaussian sigma, in stroke widths
    motion: tuple[float, float] = (0.0, 0.0)  # blur length, in stroke widths
    rotation: float = 3.0  # degrees either way
    keystone: float = 0.02  # the far edge's shrinkage, either axis
    noise: tuple[float, float] = (1.0, 3.5)  # sensor noise sigma on 0-255
    quality: tuple[int, int] = (70, 93)


KINDS: dict[str, Look] = {
    "shadow and vignetting": Look(shadow=(0.3, 0.65), vignette=(0.2, 0.5)),
    "low contrast (pencil, dim light)": Look(
        ink="pencil", exposure=(0.3, 0.6), noise=(2.0, 6.0), thickness=(0.3, 0.5)
    ),
    "defocus blur": Look(defocus=(0.25, 0.5)),
    "motion blur": Look(motion=(0.5, 1.5)),
    "rotated and keystoned": Look(rotation=15.0, keystone=0.12),
    "ruled paper": Look(rules="ruled"),
    "squared paper": Look(rules="squared"),
    "blue ballpoint": Look(ink="blue", thickness=(0.3, 0.5)),
    "blue ballpoint on ruled paper": Look(ink="blue", rules="ruled", thickness=(0.3, 0.5)),
    "small in the frame": Look(share=(0.1, 0.3)),
    "noise and JPEG compression": Look(noise=(8.0, 16.0), quality=(30, 60)),
}


@dataclass
class Shot:
    """A photo before encoding: the upright RGB image and where the digit's ink is in it."""

    image: Image.Image
    ink: np.ndarray = field(repr=False)  # float32, frame-sized, 1 = full ink


def render_photos(
    digits: np.ndarray, labels: np.ndarray, seed: int = 11, per_kind: int = 100
) -> list[tuple[str, int, bytes]]:
    """`per_kind` photos of every kind: (kind, label, JPEG bytes), the same digits in each
    kind (the first `per_kind`, repeated if there are fewer)."""
    rng = np.random.default_rng(seed)
    return [
        (kind, int(labels[i % len(digits)]), photo(digits[i % len(digits)], look, rng))
        for kind, look in KINDS.items()
        for i in range(per_kind)
    ]


def photo(digit: np.ndarray, look: Look, rng: np.random.Generator) -> bytes:
    """One phone photo of `digit` (28x28, white on black) as JPEG bytes."""
    shot = shoot(digit, look, rng)
    quality = int(rng.integers(*look.quality))
    if rng.random() < EXIF_SHARE:
        return stored_sideways(shot.image, int(rng.choice(list(STORED_AS))), quality)
    return encode(shot.image, "JPEG", quality=quality)


def shoot(digit: np.ndarray, look: Look, rng: np.random.Generator) -> Shot:
    """The page, photographed: geometry, light, blur and noise, before compression."""
    height, width = _frame(rng)
    # As tall as the look says, but no wider than fits a portrait frame.
    digit_height = int(min(height * rng.uniform(*look.share), 0.6 * width))
    stroke = STROKE_SHARE * digit_height
    ink, to_page = _written(digit, (height, width), digit_height, look, rng)
    reflectance = _page(ink, to_page, (height, width), stroke, look, rng)
    light = _light((height, width), look, rng)
    cast = rng.uniform(0.95, 1.05, size=3).astype(np.float32)  # white balance
    radiance = reflectance * light[..., None] * (255 * cast)
    image = Image.fromarray(np.clip(radiance, 0, 255).astype(np.uint8), mode="RGB")
    image = _blurred(image, stroke, look, rng)
    return Shot(_noisy(image, look, rng), ink)


def _frame(rng: np.random.Generator) -> tuple[int, int]:
    """A phone photo's size after the app or the user reduced it: 4:3, either way up."""
    width = int(rng.integers(640, 1601))
    height = width * 3 // 4 if rng.random() < 0.6 else width * 4 // 3
    return height, width


def _written(
    digit: np.ndarray,
    frame: tuple[int, int],
    digit_height: int,
    look: Look,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The digit's ink in the frame, and the homography from frame to page coordinates.

    Placed on the page, then seen turned and keystoned; drawn again (new place, milder
    view) until the ink keeps clear of the frame's edge.
    """
    height, width = frame
    margin = int(EDGE_SHARE * min(frame))
    written = strokes(digit, digit_height, rng.uniform(*look.thickness))
    if look.ink == "pencil":  # graphite leaves grainy, uneven strokes
        written *= rng.uniform(0.55, 1.0, size=written.shape).astype(np.float32)
    strength = 1.0
    for _ in range(50):
        on_page = place(written, frame, rng, margin)
        to_page = _view(frame, look, rng, strength)
        coefficients = tuple((to_page / to_page[2, 2]).ravel()[:8])
        seen = Image.fromarray(on_page, mode="F").transform(
            (width, height), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BILINEAR
        )
        ink = np.asarray(seen, dtype=np.float32)
        if not _touches(ink, margin):
            return ink, to_page
        strength *= 0.9
    raise ValueError("the digit does not fit in the frame")


def _touches(ink: np.ndarray, margin: int) -> bool:
    inner = np.zeros(ink.shape, dtype=bool)
    inner[margin:-margin, margin:-margin] = True
    return bool((ink[~inner] > 0.01).any())


def _view(
    frame: tuple[int, int], look: Look, rng: np.random.Generator, strength: float
) -> np.ndarray:
    """Frame -> page homography: the page turned about the frame's centre and tilted away
    from the camera (keystone), by up to `strength` times the look's limits."""
    height, width = frame
    angle = np.radians(rng.uniform(-1, 1) * look.rotation * strength)
    tilt_x, tilt_y = rng.uniform(-1, 1, size=2) * look.keystone * strength
    centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
    turn = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    tilt = np.array([[1, 0, 0], [0, 1, 0], [2 * tilt_x / width, 2 * tilt_y / height, 1]])
    page_to_frame = np.linalg.inv(centre) @ tilt @ turn @ centre
    return np.linalg.inv(page_to_frame)


def _page(
    ink: np.ndarray,
    to_page: np.ndarray,
    frame: tuple[int, int],
    stroke: float,
    look: Look,
    rng: np.random.Generator,
) -> np.ndarray:
    """Reflectance (H, W, 3) in [0, 1]: paper, its printed lines, the ink over them."""
    paper = rng.uniform(0.82, 0.97) * rng.uniform(0.97, 1.03, size=3)  # off-white, tinted
    reflectance = np.broadcast_to(paper.astype(np.float32), (*frame, 3)).copy()
    for cover, colour in _rules(to_page, frame, stroke, look.rules, rng):
        reflectance *= 1 - cover[..., None] * (1 - colour).astype(np.float32)
    colour = _ink_colour(look.ink, rng)
    reflectance *= 1 - ink[..., None] * (1 - colour).astype(np.float32)
    return reflectance


def _ink_colour(ink: str, rng: np.random.Generator) -> np.ndarray:
    """The ink's reflectance per channel (R, G, B)."""
    if ink == "blue":  # from dark ballpoint to a light, faded or gel blue
        red = rng.uniform(0.08, 0.5)
        return np.array([red, red + rng.uniform(0.05, 0.15), rng.uniform(0.6, 0.9)])
    if ink == "pencil":
        return np.full(3, rng.uniform(0.4, 0.65)) * rng.uniform(0.97, 1.03, size=3)
    return np.full(3, rng.uniform(0.05, 0.25)) * rng.uniform(0.9, 1.1, size=3)


def _rules(
    to_page: np.ndarray, frame: tuple[int, int], stroke: float, rules: str, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The page's printed lines as (coverage in [0, 1], colour) layers, drawn straight in
    page coordinates so they cross the whole frame as the camera sees them."""
    if rules == "plain":
        return []
    height, width = frame
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v, w = (to_page[row, 0] * xs + to_page[row, 1] * ys + to_page[row, 2] for row in range(3))
    page_x, page_y = u / w, v / w
    digit_height = stroke / STROKE_SHARE
    if rules == "ruled":
        spacing = digit_height * rng.uniform(0.4, 0.9)
        thickness = max(1.2, stroke * rng.uniform(0.2, 0.45))
        blue = np.array([rng.uniform(0.5, 0.75), rng.uniform(0.7, 0.85), rng.uniform(0.85, 0.97)])
        layers = [(_lines(page_y, spacing, thickness, rng) * rng.uniform(0.6, 1.0), blue)]
        if rng.random() < 0.5:  # the red margin line, somewhere across the frame
            at = rng.uniform(0.05, 0.95) * width
            red = np.array([0.9, rng.uniform(0.4, 0.6), rng.uniform(0.45, 0.65)])
            layers.append((_line(np.abs(page_x - at), thickness * 1.3), red))
        return layers
    spacing = digit_height * rng.uniform(0.2, 0.45)
    thickness = max(1.0, stroke * rng.uniform(0.15, 0.3))
    tone = rng.uniform(0.5, 0.75)
    colour = (
        np.array([tone, tone + 0.1, min(0.97, tone + 0.25)])
        if rng.random() < 0.5
        else np.full(3, tone)
    )
    strength = rng.uniform(0.5, 0.9)
    across = _lines(page_y, spacing, thickness, rng)
    down = _lines(page_x, spacing, thickness, rng)
    return [(np.maximum(across, down) * strength, colour)]


def _lines(
    position: np.ndarray, spacing: float, thickness: float, rng: np.random.Generator
) -> np.ndarray:
    """Coverage of lines `thickness` wide every `spacing` along `position`, from a random
    first one."""
    offset = rng.uniform(0, spacing)
    return _line(np.abs((position - offset + spacing / 2) % spacing - spacing / 2), thickness)


def _line(distance: np.ndarray, thickness: float) -> np.ndarray:
    """Coverage of an anti-aliased line `thickness` wide, `distance` px from its middle."""
    return np.clip(thickness / 2 + 0.5 - distance, 0, 1).astype(np.float32)


def _light(frame: tuple[int, int], look: Look, rng: np.random.Generator) -> np.ndarray:
    """Illumination over the frame: exposure, a gradient, dark corners, a hard shadow."""
    height, width = frame
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = xs / width - 0.5, ys / height - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(*look.exposure) * (
        1 - rng.uniform(*look.gradient) * (np.cos(angle) * xs + np.sin(angle) * ys + 0.5)
    )
    light *= 1 - rng.uniform(*look.vignette) * (xs**2 + ys**2) / 0.5
    depth = rng.uniform(*look.shadow)
    if depth > 0:
        light *= 1 - depth * _shadow(frame, rng)
    return light.astype(np.float32)


def _shadow(frame: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Where a hard shadow falls, in [0, 1]: a straight edge across the page, or the
    phone's own shadow reaching in from one side; the penumbra is a few pixels wide."""
    height, width = frame
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    softness = rng.uniform(1.5, 12)

    def inside(angle: float, through: tuple[float, float]) -> np.ndarray:
        across = (xs - through[0]) * np.cos(angle) + (ys - through[1]) * np.sin(angle)
        return np.clip(0.5 + across / softness, 0, 1)

    angle = rng.uniform(0, 2 * np.pi)
    centre = (width * rng.uniform(0.25, 0.75), height * rng.uniform(0.25, 0.75))
    cover = inside(angle, centre)
    if rng.random() < 0.5:  # a band from one edge: the phone held over the page
        half = min(frame) * rng.uniform(0.15, 0.3)
        side = angle + np.pi / 2
        edge_a = (centre[0] + half * np.cos(side), centre[1] + half * np.sin(side))
        edge_b = (centre[0] - half * np.cos(side), centre[1] - half * np.sin(side))
        cover = cover * inside(side + np.pi, edge_a) * inside(side, edge_b)
    return cover


def _blurred(
    image: Image.Image, stroke: float, look: Look, rng: np.random.Generator
) -> Image.Image:
    """Defocus (a Gaussian) and camera shake (a straight smear), sized by the stroke."""
    sigma = stroke * rng.uniform(*look.defocus)
    if sigma > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(sigma))
    length = stroke * rng.uniform(*look.motion)
    if length < 1.5:
        return image
    angle = rng.uniform(0, np.pi)
    pixels = np.asarray(image, dtype=np.float32)
    steps = int(np.ceil(length))
    pad = steps + 1
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    height, width = pixels.shape[:2]
    smeared = np.zeros_like(pixels)
    for t in np.linspace(-length / 2, length / 2, steps + 1):
        dy, dx = round(t * np.sin(angle)), round(t * np.cos(angle))
        smeared += padded[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
    return Image.fromarray((smeared / (steps + 1)).astype(np.uint8), mode="RGB")


def _noisy(image: Image.Image, look: Look, rng: np.random.Generator) -> Image.Image:
    """Sensor noise, stronger in the dark, part of it blotchy as phones' denoising leaves it."""
    pixels = np.asarray(image, dtype=np.float32)
    height, width = pixels.shape[:2]
    sigma = np.float32(rng.uniform(*look.noise)) * np.sqrt(0.3 + pixels / 255)
    fine = rng.standard_normal(pixels.shape, dtype=np.float32)
    coarse = rng.standard_normal((height // 4 + 1, width // 4 + 1, 3), dtype=np.float32)
    coarse = np.stack(
        [
            np.asarray(
                Image.fromarray(coarse[..., c], mode="F").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
            )
            for c in range(3)
        ],
        axis=-1,
    )
    noisy = pixels + sigma * (0.7 * fine + 0.7 * coarse)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), mode="RGB")
