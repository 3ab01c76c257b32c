"""imagesets.nondigits: every kind is an image file the function reads; the splits differ."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagesets import nondigits
from recognizer.preprocess import BlankImage, to_mnist


@pytest.fixture(scope="module")
def sources(mnist):
    return {split: nondigits.source(split, mnist) for split in nondigits.SPLITS}


@pytest.mark.parametrize("kind", list(nondigits.KINDS))
def test_every_kind_is_an_image_file_that_preprocesses_to_a_field_or_is_blank(kind, sources):
    rng = np.random.default_rng(3)
    blank = 0
    for split in nondigits.SPLITS:
        for _ in range(3):
            data = nondigits.KINDS[kind](rng, sources[split])
            image = Image.open(io.BytesIO(data))
            image.load()
            assert image.format in {"PNG", "JPEG"}
            try:
                field = to_mnist(data)
            except BlankImage:
                blank += 1
                continue
            assert field.shape == (28, 28) and field.dtype == np.uint8 and field.max() > 0
    if kind not in nondigits.MAY_BE_BLANK:
        assert blank == 0


def test_a_set_is_the_same_each_time_and_holds_what_was_asked(mnist):
    counts = {"letter": 2, "shape": 1, "cut-off digit": 1}
    first = nondigits.make_set(counts, seed=5, split="eval", mnist=mnist)
    assert [kind for kind, _ in first] == ["letter", "letter", "shape", "cut-off digit"]
    assert nondigits.make_set(counts, seed=5, split="eval", mnist=mnist) == first


def test_more_of_one_kind_leaves_the_other_kinds_as_they_were(mnist):
    few = dict(nondigits.make_set({"dots": 1, "word": 1}, seed=1, mnist=mnist))
    more = nondigits.make_set({"dots": 1, "word": 3}, seed=1, mnist=mnist)
    assert more[0] == ("dots", few["dots"]) and more[1] == ("word", few["word"])


def test_train_and_eval_differ_in_streams_fonts_digits_and_shapes(mnist, sources):
    train = nondigits.make_set(2, seed=0, split="train", mnist=mnist)
    held_out = nondigits.make_set(2, seed=0, split="eval", mnist=mnist)
    for kind in set(nondigits.KINDS) - {"empty paper"}:  # two empty canvases can be one file
        assert [d for k, d in train if k == kind] != [d for k, d in held_out if k == kind]
    assert not set(sources["train"].fonts) & set(sources["eval"].fonts)
    assert all(font.is_file() for split in sources.values() for font in split.fonts)
    assert sources["train"].digits is mnist.x_train and sources["eval"].digits is mnist.x_test
    assert set(sources["eval"].shapes) > set(sources["train"].shapes)


def test_unknown_kinds_and_splits_are_refused(mnist):
    with pytest.raises(ValueError, match="unknown kinds"):
        nondigits.make_set({"circle": 1}, mnist=mnist)
    with pytest.raises(ValueError, match="split"):
        nondigits.source("test", mnist)  # type: ignore[arg-type]
