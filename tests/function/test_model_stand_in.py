"""The model stand-in answers the function's questions as the development model server does.

Each request the function or the rollout tool makes (and their failures: an unknown
label, version or model, a path outside the API) is sent to both, serving the shipped
models.config: the statuses, the error bodies byte for byte, the version states and the
version a label names are the same; a prediction has the same outputs and shapes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.conftest import shipped_stand_in

PIXELS = np.random.default_rng(7).integers(0, 256, (3, 28, 28), dtype=np.uint8)
PREDICT = json.dumps({"signature_name": "serving_default", "inputs": {"image": PIXELS.tolist()}})
QUESTIONS = [
    ("GET", "/v1/models/mnist/labels/stable/metadata"),
    ("GET", "/v1/models/mnist/labels/canary/metadata"),
    ("GET", "/v1/models/mnist/labels/no-such-label/metadata"),
    ("GET", "/v1/models/mnist/versions/1/metadata"),
    ("GET", "/v1/models/mnist/versions/99/metadata"),
    ("GET", "/v1/models/mnist/metadata"),
    ("GET", "/v1/models/other/labels/stable/metadata"),
    ("GET", "/v1/models/other/versions/1/metadata"),
    ("GET", "/v1/models/mnist"),
    ("GET", "/v1/models/mnist/versions/2"),
    ("GET", "/v1/models/mnist/versions/99"),
    ("GET", "/v1/models/other"),
    ("POST", "/v1/models/mnist/versions/1:predict"),
    ("POST", "/v1/models/mnist/labels/stable:predict"),
    ("POST", "/v1/models/mnist/versions/99:predict"),
    ("POST", "/v1/models/mnist/labels/no-such-label:predict"),
    ("POST", "/v1/models/mnist/versions/1:explain"),
    ("GET", "/v2/models/mnist"),
]


@pytest.fixture(scope="module")
def stand_in():
    with shipped_stand_in() as server:
        yield server.url


def ask(url: str, method: str, path: str) -> requests.Response:
    body = PREDICT if method == "POST" else None
    return requests.request(
        method, url + path, data=body, headers={"Content-Type": "application/json"}, timeout=30
    )


@pytest.mark.parametrize(("method", "path"), QUESTIONS, ids=[f"{m} {p}" for m, p in QUESTIONS])
def test_the_stand_in_answers_as_the_model_server(model_server, stand_in, method, path):
    real, fake = ask(model_server, method, path), ask(stand_in, method, path)
    assert fake.status_code == real.status_code, (real.text, fake.text)
    assert fake.headers["Content-Type"].split(";")[0] == real.headers["Content-Type"].split(";")[0]
    if real.status_code != 200:
        assert fake.content == real.content
    elif path.endswith("/metadata"):
        assert fake.json()["model_spec"] == real.json()["model_spec"]
        assert fake.json()["metadata"].keys() == real.json()["metadata"].keys()
    elif path.endswith(":predict"):
        real_outputs, fake_outputs = real.json()["outputs"], fake.json()["outputs"]
        assert fake_outputs.keys() == real_outputs.keys()
        for name, values in real_outputs.items():
            assert np.shape(fake_outputs[name]) == np.shape(values)
    else:
        assert fake.json() == real.json()
