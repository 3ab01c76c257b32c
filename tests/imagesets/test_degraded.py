"""imagesets.degraded: every kind is a real image file of the digit, the same every time."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagesets import degraded, nondigits
from recognizer.preprocess import to_mnist


@pytest.mark.parametrize("kind", list(degraded.KINDS))
def test_every_kind_is_a_light_image_file_that_preprocesses_to_a_field(kind, mnist):
    rng = np.random.default_rng(1)
    for digit in mnist.x_test[:3]:
        data = degraded.KINDS[kind](digit, rng)
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format in {"PNG", "JPEG"}
        assert np.median(np.asarray(image.convert("L"))) > 120  # dark ink on light paper
        field = to_mnist(data)
        assert field.shape == (28, 28) and field.max() > 0


def test_low_resolution_keeps_only_8_to_16_pixels_of_detail(mnist):
    rng = np.random.default_rng(2)
    ink = degraded.low_resolution(mnist.x_test[0], rng, Image.Resampling.NEAREST)
    rows = {tuple(row) for row in (ink > 0).astype(int)}
    assert 84 <= ink.shape[0] <= 224 and len(rows) <= 16  # nearest: blocks of equal rows


def test_the_set_is_the_same_each_time_with_labels_and_other_digits_per_kind(mnist):
    digits, labels = mnist.x_test[:40], mnist.y_test[:40]
    first = degraded.render_degraded(digits, labels, seed=3, per_kind=2)
    assert first == degraded.render_degraded(digits, labels, seed=3, per_kind=2)
    assert [kind for kind, _, _ in first[::2]] == list(degraded.KINDS)
    assert [label for _, label, _ in first] == [int(y) for y in labels[: 2 * len(degraded.KINDS)]]


def test_held_out_non_digits_are_kinds_training_never_draws(mnist):
    uploads = nondigits.make_held_out(2, seed=1)
    assert [kind for kind, _ in uploads] == ["spiral", "spiral", "pen star", "pen star"]
    assert not set(nondigits.HELD_OUT_KINDS) & set(nondigits.KINDS)
    assert uploads == nondigits.make_held_out(2, seed=1)
    for _, data in uploads:
        assert to_mnist(data).max() > 0
