"""Fuzzing: whatever bytes arrive, preprocessing answers an MNIST input or an ImageError.

An exception of any other kind would reach the HTTP layer as a 500. The inputs are
random bytes, random bytes behind a real format's magic number, and real images of
random formats, modes and sizes made with Pillow, then corrupted: bytes flipped,
spans overwritten, the file cut short. Runs are derandomized, so CI sees the same
inputs every time (about 10,000 in all; see the `max_examples` below).
"""

from __future__ import annotations

import io
import json

import flask
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from werkzeug.test import EnvironBuilder

from recognizer import preprocess, uploads

# Pillow warns about the corrupt TIFF and EXIF data these tests feed it, thousands of times.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,  # the same inputs on every run and every machine
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


MAX_PIXELS = 1_000_000  # small, so the pixel limit is exercised too

MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\xff\xd8\xff\xe1",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
]
# Modes each writer accepts; decoding them back gives every mode an upload can arrive in.
MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P", "RGB"],
    "BMP": ["1", "L", "P", "RGB", "RGBA"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I", "F"],
    "WEBP": ["RGB", "RGBA"],
}

FORMAT_MODES = [(fmt, mode) for fmt, modes in MODES.items() for mode in modes]


def assert_mnist_or_image_error(data: bytes) -> None:
    try:
        pixels = preprocess.to_mnist(data, max_pixels=MAX_PIXELS)
    except preprocess.ImageError as error:
        assert str(error)  # the message is what a person reads
    else:
        assert pixels.shape == (28, 28) and pixels.dtype == np.uint8


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """A real image file: random format, mode, size, and content from noise to a shape."""
    fmt, mode = draw(st.sampled_from(FORMAT_MODES))
    # Mostly small, for speed; sometimes past WORKING_SIDE, so large photos' path runs too.
    width = draw(st.integers(1, 96) | st.sampled_from([700, 1100]))
    height = draw(st.sampled_from([1, 2, 3, draw(st.integers(1, 96))]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "stroke", "flat"]))
    gray = np.full((height, width), draw(st.integers(0, 255)), dtype=np.uint8)
    if kind == "noise":
        gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
    elif kind == "stroke":
        gray[:, width // 3 : width // 3 + max(1, width // 8)] = 255 - gray[0, 0]
    image = Image.fromarray(gray)
    if mode in {"I;16", "I"}:
        image = Image.fromarray(gray.astype(np.uint16) * 257).convert(mode)
    elif mode == "F":
        values = gray.astype(np.float32)
        odd = rng.random(values.shape) < 0.05  # float files can hold what no camera would
        values[odd] = rng.choice([np.nan, np.inf, -np.inf, -1e30], size=int(odd.sum()))
        image = Image.fromarray(values, mode="F")
    elif mode == "LAB":  # Pillow cannot convert to LAB; build it from its channels
        neutral = Image.new("L", image.size, 128)
        image = Image.merge("LAB", (image, neutral, neutral))
    elif mode != "L":
        image = image.convert(mode)
    exif = Image.Exif()
    if fmt != "GIF" and draw(st.booleans()):
        exif[0x0112] = draw(st.integers(0, 10))  # Orientation: 1-8 are defined
    buffer = io.BytesIO()
    frames = draw(st.integers(1, 3)) if fmt in {"GIF", "TIFF", "WEBP", "PNG"} else 1
    image.save(
        buffer,
        format=fmt,
        exif=exif,
        save_all=frames > 1,
        append_images=[image] * (frames - 1),
    )
    return buffer.getvalue()


@st.composite
def corrupted(draw: st.DrawFn, files: st.SearchStrategy[bytes]) -> bytes:
    """A file with bytes flipped, spans overwritten or deleted, and maybe cut short."""
    data = bytearray(draw(files))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "overwrite", "delete", "insert"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "overwrite":
            span = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(span)] = span
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.sampled_from([b"\x00", b"\xff" * 4, b"\xff\xd8"]))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@fuzz(examples=2_500)
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    assert_mnist_or_image_error(data)


@fuzz(examples=2_000)
@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
def test_random_bytes_behind_a_real_magic_number(magic, rest):
    assert_mnist_or_image_error(magic + rest)


@fuzz(examples=1_500)
@given(images())
def test_valid_images_of_every_format_mode_and_size(data):
    """Undamaged images always give an input, or BlankImage when they are flat."""
    try:
        pixels = preprocess.to_mnist(data, max_pixels=MAX_PIXELS)
    except preprocess.BlankImage:
        return
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8


@fuzz(examples=3_000)
@given(corrupted(images()))
def test_corrupted_images(data):
    assert_mnist_or_image_error(data)


def json_values() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    base64ish = st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n :,"
    )
    leaves = scalars | base64ish | st.just("data:image/png;base64,iVBORw0KGgo=")
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(["image", "images", "x"]) | st.text(), children)
        ),
        max_leaves=12,
    )


def read(body: bytes, content_type: str) -> list[bytes]:
    environ = EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ()
    return uploads.read_images(flask.Request(environ), max_images=64)


def assert_images_or_request_error(body: bytes, content_type: str) -> None:
    try:
        images = read(body, content_type)
    except uploads.RequestError as error:
        assert str(error)
    else:
        assert images and all(isinstance(image, bytes) and image for image in images)


@fuzz(examples=1_000)
@given(json_values())
def test_json_bodies_of_any_shape(document):
    assert_images_or_request_error(json.dumps(document).encode(), "application/json")


@fuzz(examples=500)
@given(
    st.binary(max_size=512),
    st.sampled_from(
        [
            "application/json",
            "image/png",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
            "application/octet-stream",
            "application/ld+json",
        ]
    ),
)
def test_any_bytes_with_any_content_type(body, content_type):
    assert_images_or_request_error(body, content_type)
