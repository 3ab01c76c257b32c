"""A request of many images is decoded in chunks, each chunk's model call made while the
next one decodes (service.PIPELINE_CHUNK): every record still gets its own image's answer,
an unusable image is named by its place in the whole request, and a request with an
idempotency key asks only after its claim, in one call.

Against the in-process model stand-in (it counts the :predict calls) and real SQLite.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from recognizer import preprocess
from recognizer.canary import Route
from recognizer.model_client import ModelClient
from recognizer.service import PIPELINE_CHUNK, Recognizer
from recognizer.sqlite_store import SqliteStore
from tests.conftest import ROOT
from tests.support.model_stand_in import ModelStandIn, answer

SAMPLES = ROOT / "tests" / "data" / "samples"
IMAGES = [path.read_bytes() for path in sorted(SAMPLES.iterdir())]
COUNT = 2 * PIPELINE_CHUNK + PIPELINE_CHUNK // 2  # two whole chunks and a half


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), 255).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def store(tmp_path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "predictions.sqlite3")
    yield store
    store.close()


def recognizer_for(url: str, store: SqliteStore) -> Recognizer:
    model = ModelClient(url, "mnist", timeout_seconds=30, label_cache_seconds=60)
    return Recognizer(model, store, "mnist", 40_000_000, 40_000_000, 256 * 1024)


def test_a_big_request_goes_in_chunks_and_each_record_has_its_own_answer(
    model_stand_in: ModelStandIn, store: SqliteStore
):
    images = [IMAGES[n % len(IMAGES)] for n in range(COUNT)]
    recognition = recognizer_for(model_stand_in.url, store).recognize(images, Route("stable"))
    assert model_stand_in.predictions_asked == 3
    assert len(recognition.records) == COUNT
    for record in recognition.records:
        pixels = np.frombuffer(record.input_image, dtype=np.uint8).reshape(1, 28, 28)
        probabilities, digits = answer(pixels, record.model_version)
        assert record.digit == int(digits[0])
        assert record.probabilities == pytest.approx(tuple(probabilities[0]))
        assert store.get(record.id) is not None
    # In order: the n-th record is the n-th image's.
    singles = [
        recognizer_for(model_stand_in.url, store).recognize([image], Route("stable")).records[0]
        for image in IMAGES
    ]
    for n, record in enumerate(recognition.records):
        assert record.input_image == singles[n % len(IMAGES)].input_image


def test_an_unusable_image_in_a_later_chunk_is_named_by_its_place(
    model_stand_in: ModelStandIn, store: SqliteStore
):
    images = [IMAGES[0]] * COUNT
    images[PIPELINE_CHUNK + 3] = blank_png()
    with pytest.raises(preprocess.BlankImage, match=f"^image {PIPELINE_CHUNK + 4}: "):
        recognizer_for(model_stand_in.url, store).recognize(images, Route("stable"))
    assert store.page(10).records == []  # nothing recorded


def test_a_keyed_big_request_asks_once_after_its_claim(
    model_stand_in: ModelStandIn, store: SqliteStore
):
    recognizer = recognizer_for(model_stand_in.url, store)
    images = [IMAGES[1]] * COUNT
    first = recognizer.recognize(images, Route("stable"), idempotency_key="big")
    assert model_stand_in.predictions_asked == 1
    again = recognizer.recognize(images, Route("stable"), idempotency_key="big")
    assert again.replayed
    assert [r.id for r in again.records] == [r.id for r in first.records]
    assert model_stand_in.predictions_asked == 1
