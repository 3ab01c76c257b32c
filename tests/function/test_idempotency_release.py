"""An idempotency key first used on a request that was refused (a 4xx) is released: the
client may fix the request and use the key again (issue 12). Before, an unknown version
(404) kept the key held for 24 hours, and the corrected request was refused with 422.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognizer.canary import Route
from recognizer.model_client import ModelAnswer, UnknownModel
from recognizer.service import Recognizer
from recognizer.sqlite_store import SqliteStore


@pytest.fixture
def sqlite_path(tmp_path) -> Path:
    return tmp_path / "predictions.sqlite3"


def png(side: int = 28) -> bytes:
    pixels = np.zeros((side, side), dtype=np.uint8)
    pixels[side // 4 : side // 2, side // 4 : 3 * side // 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class _Model:
    """Answers version 2; version 9 does not exist."""

    def __init__(self) -> None:
        self.calls = 0

    def predict_version(self, inputs, version):
        self.calls += 1
        if version != 2:
            raise UnknownModel(f"the model server has no version {version}")
        probabilities = np.full((len(inputs), 10), 0.01, dtype=np.float32)
        probabilities[:, 7] = 0.91
        return ModelAnswer(digits=np.full(len(inputs), 7), probabilities=probabilities,
                           version=2, label=None)  # fmt: skip

    def predict_label(self, inputs, label):
        return self.predict_version(inputs, 2)


def test_a_key_first_used_on_a_refused_request_can_be_used_again(sqlite_path):
    store = SqliteStore(sqlite_path)
    recognizer = Recognizer(_Model(), store, "mnist", 40_000_000, 40_000_000, 262_144)
    with pytest.raises(UnknownModel):
        recognizer.recognize([png()], Route(label="stable", version=9), "key-1")
    recognition = recognizer.recognize([png()], Route(label="stable", version=2), "key-1")
    assert not recognition.replayed and recognition.records[0].model_version == 2
    again = recognizer.recognize([png()], Route(label="stable", version=2), "key-1")
    assert again.replayed and again.records[0].id == recognition.records[0].id
    store.close()


def test_over_http_the_corrected_request_may_use_the_key(client):
    """The finding as seen against `make demo`: 404 for version 999, then 422 for the
    corrected request under the same key, for 24 hours."""
    image, headers = png(), {"Idempotency-Key": "retry-after-a-typo"}
    refused = client.post("/predict?version=999", data=image, content_type="image/png",
                          headers=headers)  # fmt: skip
    assert refused.status_code == 404
    fixed = client.post("/predict?version=2", data=image, content_type="image/png",
                        headers=headers)  # fmt: skip
    assert fixed.status_code == 200, fixed.get_data(as_text=True)
    again = client.post("/predict?version=2", data=image, content_type="image/png",
                        headers=headers)  # fmt: skip
    assert again.get_json()["predictions"] == fixed.get_json()["predictions"]
    assert len(client.get("/predictions").get_json()["predictions"]) == 1
