"""Preprocessing turns real image files into MNIST-style 28x28 inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagesets import renderings
from recognizer import preprocess
from recognizer.preprocess import (
    BlankImage,
    Header,
    ImageTooLarge,
    NotAnImage,
    read_header,
    to_mnist,
)


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 images: 1.0 is identical up to brightness."""
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def center_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(pixels.shape)
    mass = pixels.sum()
    return (ys * pixels).sum() / mass, (xs * pixels).sum() / mass


def test_an_mnist_digit_saved_as_png_comes_back_unchanged(mnist):
    for digit in mnist.x_test[:200]:
        assert np.array_equal(to_mnist(encode(Image.fromarray(digit))), digit)


def test_output_is_mnist_shaped_fit_in_20_pixels_and_centred_by_mass(mnist):
    rng = np.random.default_rng(0)
    pixels = to_mnist(renderings.paper_jpeg(mnist.x_test[0], rng))
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert max(ink_box(pixels)) == 20
    cy, cx = center_of_mass(pixels.astype(float))
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_dark_ink_on_light_paper_is_inverted_to_white_on_black(mnist):
    digit = mnist.x_test[1]
    paper = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BICUBIC)
    pixels = to_mnist(encode(paper, "JPEG", quality=85))
    assert pixels[0, 0] == 0 and pixels.max() >= 240
    assert similarity(pixels, digit) > 0.85


def test_transparent_canvas_drawing_reads_as_ink_on_white_paper(mnist):
    digit = mnist.x_test[2]
    ink = renderings.strokes(digit, 200, 0.5)
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)  # black, with the ink in the alpha channel
    rgba[..., 3] = np.rint(ink * 255).astype(np.uint8)
    on_white = Image.fromarray(np.rint(255 * (1 - ink)).astype(np.uint8))
    from_canvas = to_mnist(encode(Image.fromarray(rgba, mode="RGBA")))
    assert np.abs(from_canvas.astype(int) - to_mnist(encode(on_white)).astype(int)).max() <= 2
    assert similarity(from_canvas, digit) > 0.85


def test_exif_orientation_is_applied_before_anything_else(mnist):
    upright = Image.fromarray(255 - mnist.x_test[3]).resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    assert np.array_equal(to_mnist(sideways), to_mnist(encode(upright)))


def test_position_and_size_in_the_picture_do_not_matter(mnist):
    ink = renderings.strokes(mnist.x_test[4], 120, 0.5)
    results = []
    for top, left, side in [(0, 0, 200), (300, 500, 900), (40, 10, 260)]:
        page = np.full((side, side), 255, dtype=np.uint8)
        page[top : top + ink.shape[0], left : left + ink.shape[1]] = np.rint(255 * (1 - ink))
        results.append(to_mnist(encode(Image.fromarray(page))))
    for other in results[1:]:
        assert similarity(results[0], other) > 0.97


def test_a_tall_digit_keeps_its_aspect_ratio():
    page = np.full((400, 400), 255, dtype=np.uint8)
    page[50:350, 190:215] = 0  # a stroke like a "1", 300 px tall and 25 px wide
    height, width = ink_box(to_mnist(encode(Image.fromarray(page))))
    assert height == 20 and width <= 4


def test_paper_noise_and_uneven_light_are_removed(mnist):
    rng = np.random.default_rng(1)
    ink = renderings.strokes(mnist.x_test[7], 200, 0.5)
    height, width = 400, 400
    page = np.zeros((height, width), dtype=np.float32)
    page[100 : 100 + ink.shape[0], 100 : 100 + ink.shape[1]] = ink
    light = 240 - 60 * np.linspace(0, 1, width)[None, :]  # a shadow across the page
    photo = light * (1 - page) + 30 * page + rng.normal(0, 6, size=page.shape)
    pixels = to_mnist(encode(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), "JPEG"))
    assert similarity(pixels, mnist.x_test[7]) > 0.8
    corners = np.concatenate([pixels[:4, :4].ravel(), pixels[-4:, -4:].ravel()])
    assert corners.max() == 0


# Phone photos: a page of `ink` (1 = full ink) lit by `light`, as a phone's JPEG.
PAGE = (480, 640)  # decoded at half size, 240 x 320, as a phone photo is


def photo(
    ink: np.ndarray,
    light: np.ndarray | float = 1.0,
    colour: tuple[float, float, float] = (0.12, 0.12, 0.12),
    lines: np.ndarray | None = None,
    noise: float = 2.0,
) -> bytes:
    """Reflectance (white paper, printed `lines` in light blue, `ink` in `colour`) times
    `light`, with sensor noise, as a JPEG."""
    reflectance = np.full((*PAGE, 3), 0.9, dtype=np.float32)
    if lines is not None:
        reflectance *= 1 - lines[..., None] * (1 - np.array([0.6, 0.75, 0.92]))
    reflectance *= 1 - ink[..., None] * (1 - np.array(colour))
    seen = 255 * reflectance * np.expand_dims(light, -1)
    seen += np.random.default_rng(0).normal(0, noise, seen.shape)
    return encode(Image.fromarray(np.clip(seen, 0, 255).astype(np.uint8)), "JPEG", quality=90)


def drawing(ink: np.ndarray) -> bytes:
    """The same page as a clean drawing: black ink on white, no light, no noise."""
    return encode(Image.fromarray(np.rint(255 * (1 - ink)).astype(np.uint8)))


def clean(ink: np.ndarray) -> np.ndarray:
    return to_mnist(drawing(ink))


def on_page(digit: np.ndarray, top: int = 100, left: int = 240, height: int = 240) -> np.ndarray:
    """The digit's strokes `height` px tall on an empty page, at (top, left)."""
    page = np.zeros(PAGE, dtype=np.float32)
    ink = renderings.strokes(digit, height, 0.5)
    page[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return page


def ink_of(data: bytes) -> np.ndarray:
    return preprocess.ink_map(preprocess.decode(data, 10**8))


def touches_edge(ink: np.ndarray, band: int = 3) -> bool:
    return bool(
        ink[:band].any() or ink[-band:].any() or ink[:, :band].any() or ink[:, -band:].any()
    )


def box(ink: np.ndarray) -> tuple[int, int, int, int]:
    """Top, bottom, left and right of the ink."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def ruled(spacing: float, tilt: float, vertical: bool = False) -> np.ndarray:
    """Printed lines 3 px wide every `spacing` px, tilted `tilt` degrees."""
    ys, xs = np.mgrid[0 : PAGE[0], 0 : PAGE[1]].astype(np.float32)
    across = ys + np.tan(np.radians(tilt)) * xs
    lines = np.clip(2.0 - np.abs((across % spacing) - spacing / 2), 0, 1)
    if vertical:
        down = xs - np.tan(np.radians(tilt)) * ys
        lines = np.maximum(lines, np.clip(2.0 - np.abs((down % spacing) - spacing / 2), 0, 1))
    return lines


def test_a_dim_photo_is_still_dark_ink_on_paper(mnist):
    """Paper at a third of full brightness is still the light ground, not the ink."""
    page = on_page(mnist.x_test[11])
    assert similarity(to_mnist(photo(page, light=0.33)), clean(page)) > 0.9


def test_a_hard_shadow_reaching_into_the_page_is_not_ink(mnist):
    """The phone's shadow, a band from the top left corner: its edges are kept exactly
    and its corners, narrower than the closing's square, are put back."""
    page = on_page(mnist.x_test[12])
    ys, xs = np.mgrid[0 : PAGE[0], 0 : PAGE[1]]
    along, across = (xs - 140 + ys) / np.sqrt(2), (ys - xs + 140) / np.sqrt(2)
    light = np.where((np.abs(across) < 70) & (along < 300), 0.45, 1.0)
    ink = ink_of(photo(page, light=light))
    assert not touches_edge(ink)
    assert similarity(preprocess.to_field(ink), clean(page)) > 0.85


def test_dark_corners_of_a_vignetted_photo_are_not_ink(mnist):
    """Light falling off towards the corners is followed to the edge, even under pencil."""
    page = on_page(mnist.x_test[13])
    ys, xs = np.mgrid[0 : PAGE[0], 0 : PAGE[1]]
    light = 1 - 0.5 * ((ys / PAGE[0] - 0.5) ** 2 + (xs / PAGE[1] - 0.5) ** 2) / 0.5
    ink = ink_of(photo(page, light=light, colour=(0.6, 0.6, 0.6), noise=3.0))
    assert not touches_edge(ink)
    assert similarity(preprocess.to_field(ink), clean(page)) > 0.9


def test_a_noiseless_photo_with_a_shadow_leaves_no_grain_in_it(mnist):
    """Paper so clean that no grain shows, but lit unevenly, is still a photo: its 8-bit
    steps and the shadow's compression ripples are not ink."""
    page = on_page(mnist.x_test[14])
    ys, xs = np.mgrid[0 : PAGE[0], 0 : PAGE[1]]
    light = np.where(xs > 460 + 0.2 * ys, 0.5, 1.0) * (1 - 0.1 * ys / PAGE[0])
    ink = ink_of(photo(page, light=light, noise=0.0))
    assert np.abs(np.subtract(box(ink), box(ink_of(drawing(page))))).max() <= 3


def test_ruled_paper_lines_are_taken_out_and_blue_ink_kept(mnist):
    page = on_page(mnist.x_test[15])
    ink = ink_of(photo(page, colour=(0.2, 0.3, 0.75), lines=ruled(52, 2.5)))
    assert not touches_edge(ink)  # the lines ran from edge to edge
    assert similarity(preprocess.to_field(ink), clean(page)) > 0.9


def test_squared_paper_lines_are_taken_out_both_ways(mnist):
    page = on_page(mnist.x_test[16])
    ink = ink_of(photo(page, lines=ruled(36, -1.5, vertical=True)))
    assert not touches_edge(ink)
    assert similarity(preprocess.to_field(ink), clean(page)) > 0.9


def test_a_stroke_crossing_printed_lines_stays_whole():
    page = np.zeros(PAGE, dtype=np.float32)
    page[90:390, 300:318] = 1.0  # a "1" across five ruled lines
    ink = ink_of(photo(page, lines=ruled(60, 1.0)))
    rows = np.flatnonzero(ink[:, 150:159].max(axis=1) > 0.5)
    assert not touches_edge(ink)
    assert rows[-1] - rows[0] + 1 == rows.size >= 145  # no gap where a line was


def test_hairline_and_marker_strokes_are_brought_towards_mnist_stroke_width(mnist):
    digit = mnist.x_test[6]
    reference = to_mnist(encode(Image.fromarray(digit)))
    thin = 255 * (1 - renderings.strokes(digit, 400, 0.15))
    thick = 255 * (1 - renderings.strokes(digit, 400, 0.95))
    for page in (thin, thick):
        pixels = to_mnist(encode(Image.fromarray(page.astype(np.uint8))))
        assert similarity(pixels, reference) > 0.75


@pytest.mark.parametrize(
    "mode", ["L", "LA", "RGB", "RGBA", "P", "CMYK", "I;16", "1"], ids=lambda mode: f"mode-{mode}"
)
def test_every_common_pixel_format_gives_the_same_digit(mnist, mode):
    gray = Image.fromarray(255 - mnist.x_test[7]).resize((112, 112))
    reference = to_mnist(encode(gray))
    if mode == "I;16":
        converted = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    elif mode == "1":
        converted = gray.point(lambda v: 255 if v > 128 else 0).convert("1")
    else:
        converted = gray.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert similarity(to_mnist(encode(converted, fmt)), reference) > 0.9


def test_only_the_first_frame_of_an_animation_is_read(mnist):
    frames = [Image.fromarray(255 - mnist.x_test[i]).convert("P") for i in (8, 9)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert similarity(to_mnist(gif), to_mnist(encode(frames[0]))) > 0.99


def test_bytes_that_are_not_an_image_are_rejected():
    for data in (b"", b"hello, world", b"%PDF-1.7\n", b'<svg xmlns="http://www.w3.org/2000/svg"/>'):
        with pytest.raises(NotAnImage):
            to_mnist(data)


def test_a_truncated_file_is_rejected(mnist):
    png = encode(Image.fromarray(mnist.x_test[0]).resize((200, 200)))
    jpeg = encode(Image.fromarray(mnist.x_test[0]).resize((200, 200)), "JPEG")
    for data in (png[: len(png) // 2], jpeg[: len(jpeg) // 2]):
        with pytest.raises(NotAnImage):
            to_mnist(data)


def test_too_many_pixels_are_refused_from_the_header_before_decoding():
    # A decompression bomb: a few kilobytes that would decode to 400 million pixels.
    bomb = encode(Image.new("1", (20_000, 20_000)))
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge):
        to_mnist(bomb, max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge):
        to_mnist(encode(Image.new("L", (100, 100), 255)), max_pixels=9_999)


@pytest.mark.parametrize("level", [0, 255])
def test_a_blank_page_has_no_digit(level):
    with pytest.raises(BlankImage):
        to_mnist(encode(Image.new("L", (300, 200), level)))


@pytest.mark.parametrize("level", [0, 255])
def test_a_single_pixel_image_is_blank_not_a_crash(level):
    with pytest.raises(BlankImage):
        to_mnist(encode(Image.new("L", (1, 1), level)))


def test_errors_are_value_errors_the_http_layer_can_map():
    assert issubclass(preprocess.ImageError, ValueError)
    for kind in (NotAnImage, ImageTooLarge, BlankImage):
        assert issubclass(kind, preprocess.ImageError)


def test_a_cielab_tiff_is_read_by_its_lightness(mnist):
    """Pillow cannot convert LAB to gray; its L channel is the lightness we need."""
    lightness = Image.fromarray(255 - mnist.x_test[0]).resize((112, 112))
    neutral = Image.new("L", lightness.size, 128)
    lab = encode(Image.merge("LAB", (lightness, neutral, neutral)), "TIFF")
    assert np.array_equal(to_mnist(lab), to_mnist(encode(lightness)))


def test_nan_and_infinite_pixels_in_a_float_image_are_not_a_crash(mnist):
    values = np.asarray(Image.fromarray(255 - mnist.x_test[0]).resize((112, 112)), np.float32)
    values[:4, :4] = np.nan
    values[-4:, -4:] = np.inf
    pixels = to_mnist(encode(Image.fromarray(values, mode="F"), "TIFF"))
    assert similarity(pixels, mnist.x_test[0]) > 0.9
    with pytest.raises(BlankImage):
        to_mnist(encode(Image.fromarray(np.full((9, 9), np.nan, np.float32), mode="F"), "TIFF"))


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "TGA"])
def test_formats_pillow_knows_but_we_do_not_accept_are_not_an_image(mnist, fmt):
    """Only PNG, JPEG, GIF, BMP, TIFF and WebP reach a decoder: less code for uploads to hit."""
    digit = Image.fromarray(255 - mnist.x_test[0]).convert("RGB")
    with pytest.raises(NotAnImage, match="PNG, JPEG, GIF, BMP, TIFF, WebP"):
        to_mnist(encode(digit, fmt))


def test_the_header_gives_format_size_and_type_without_decoding():
    buffer = io.BytesIO()
    Image.new("L", (300, 200), 255).save(buffer, format="PNG")
    header_only = buffer.getvalue()[:64]  # the pixel data is cut off
    assert read_header(header_only, max_pixels=60_000) == Header("PNG", 300, 200)
    assert read_header(header_only, max_pixels=60_000).mime_type == "image/png"
    with pytest.raises(ImageTooLarge):
        read_header(header_only, max_pixels=59_999)
    with pytest.raises(NotAnImage):
        to_mnist(header_only)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_ink_level_percentile_is_numpys_to_the_last_bit(dtype) -> None:
    """The stretch of faint ink divides by this level: a faster percentile must not move it."""
    rng = np.random.default_rng(5)
    for size in [*range(1, 40), 784, 76_800]:
        values = rng.random(size).astype(dtype)
        for q in (0, 1, 50, 99.5, 100):
            assert preprocess._percentile(values, q) == float(np.percentile(values, q))
