"""The uploads every bench sends: a 28x28 MNIST PNG and a 640x480 JPEG photo of a digit."""

from __future__ import annotations

import functools
import io
import uuid

import numpy as np
from PIL import Image, ImageFilter

from imagesets.renderings import _paper, _place, strokes
from training.data import load_mnist

PNG = "image/png"
JPEG = "image/jpeg"


@functools.cache
def digit() -> np.ndarray:
    """A real MNIST test digit (a 7), white on black."""
    return load_mnist().x_test[0]


@functools.cache
def mnist_png() -> bytes:
    """The digit exactly as MNIST has it, as a 28x28 grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(digit()).save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def photo_jpeg() -> bytes:
    """A 640x480 phone-style photo: dark ink on unevenly lit, noisy paper (renderings.py)."""
    rng = np.random.default_rng(7)
    ink = _place(strokes(digit(), 260, 0.45), (480, 640), rng)
    image = _paper(ink, rng).filter(ImageFilter.GaussianBlur(0.6))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def multipart(images: list[bytes], content_type: str = PNG) -> tuple[bytes, str]:
    """A multipart/form-data body with one `image` file field per image, and its type."""
    boundary = uuid.uuid4().hex
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{n}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + image
        + b"\r\n"
        for n, image in enumerate(images)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )
