"""Upload sets as the model sees them: the function's preprocessing, and the on-disk cache."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from training import uploads


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_fields_are_the_functions_input_and_blank_uploads_are_left_out(mnist):
    empty = np.full((50, 50), 255, dtype=np.uint8)
    arrays = uploads.to_fields(
        [("digit", png(mnist.x_test[0])), ("empty", png(empty)), ("digit", png(mnist.x_test[1]))]
    )
    assert np.array_equal(arrays["fields"], mnist.x_test[:2])  # MNIST passes through unchanged
    assert list(arrays["index"]) == [0, 2] and list(arrays["kinds"]) == ["digit", "digit"]
    assert list(arrays["blank_kinds"]) == ["empty"]


def test_a_set_is_made_once_per_input(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "CACHE_DIR", tmp_path)
    made = []

    def make(value: int):
        def inner() -> dict[str, np.ndarray]:
            made.append(value)
            return {"values": np.arange(value)}

        return inner

    first = uploads.cached("set", make(3), (np.zeros(2),))
    again = uploads.cached("set", make(3), (np.zeros(2),))
    other = uploads.cached("set", make(4), (np.ones(2),))
    assert made == [3, 4]
    assert np.array_equal(first["values"], again["values"]) and len(other["values"]) == 4
    assert len(list(tmp_path.glob("set-*.npz"))) == 2
