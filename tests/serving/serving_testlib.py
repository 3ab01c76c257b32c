"""Helpers for the model server tests: tiny SavedModels, deployments, polling with deadlines.

Two models carry the contract signature (image uint8 [-1,28,28] -> probabilities
float32 [-1,10], digit int64 [-1]) and answer differently, so a test can tell
which version replied: "bucket" answers mean intensity // 25.6, "flipped"
answers 9 minus that. A constant image of value k makes it obvious.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import ModelServer

IMAGE_SPEC = tf.TensorSpec([None, 28, 28], tf.uint8, name="image")
FAST_POLL = 0.05
DEADLINE_SECONDS = 20.0


class DigitModel(tf.Module):
    def __init__(self, flipped: bool) -> None:
        super().__init__()
        self.flipped = flipped

    @tf.function(input_signature=[IMAGE_SPEC])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        mean = tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2])
        bucket = tf.clip_by_value(tf.cast(tf.floor(mean / 25.6), tf.int64), 0, 9)
        digit = 9 - bucket if self.flipped else bucket
        probabilities = tf.one_hot(digit, 10, dtype=tf.float32) * 0.9 + 0.01
        return {"probabilities": probabilities, "digit": digit}

    @tf.function(input_signature=[IMAGE_SPEC])
    def mean_intensity(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"mean": tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2]) / 255.0}


EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name="inputs")
EXAMPLE_FEATURES = {
    "x": tf.io.FixedLenFeature([], tf.float32),
    "y": tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
}


class ExampleModel(tf.Module):
    """Classify and regress signatures on tf.Examples: scores [1 - x, x], regression x * y."""

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(inputs, EXAMPLE_FEATURES)
        x = features["x"]
        scores = tf.stack([1.0 - x, x], axis=1)
        classes = tf.tile(tf.constant([["low", "high"]]), [tf.shape(x)[0], 1])
        return {"classes": classes, "scores": scores}

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(inputs, EXAMPLE_FEATURES)
        return {"outputs": features["x"] * features["y"]}


def build_model_store(root: Path) -> dict[str, Path]:
    """SavedModels: bucket (with warmup), flipped, bad_warmup (fails to load), corrupt,
    and examples (classify/regress signatures)."""
    store = {}
    for kind in ("bucket", "flipped", "bad_warmup"):
        module = DigitModel(flipped=kind == "flipped")
        path = root / kind
        tf.saved_model.save(
            module,
            str(path),
            signatures={"serving_default": module.serve, "mean_intensity": module.mean_intensity},
        )
        store[kind] = path
    write_warmup(store["bucket"], np.zeros((2, 28, 28), dtype=np.uint8))
    # The graph cannot average a rank-2 input over axes 1 and 2: the warmup fails there.
    write_warmup(store["bad_warmup"], np.zeros((1, 28), dtype=np.uint8))
    examples = ExampleModel()
    store["examples"] = root / "examples"
    tf.saved_model.save(
        examples,
        str(store["examples"]),
        signatures={"serving_default": examples.classify, "regress": examples.regress},
    )
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"this is not a protobuf")
    store["corrupt"] = corrupt
    return store


def write_warmup(version_dir: Path, images: np.ndarray) -> None:
    """assets.extra/tf_serving_warmup_requests holding one PredictionStore."""
    target = version_dir / "assets.extra"
    target.mkdir(parents=True, exist_ok=True)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    with tf.io.TFRecordWriter(str(target / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


def expected_digit(value: int, kind: str) -> int:
    """What model `kind` answers for a constant image of `value`."""
    bucket = min(int(np.floor(np.float32(value) / np.float32(25.6))), 9)  # as the graph does
    return 9 - bucket if kind == "flipped" else bucket


def image(value: int) -> list[list[int]]:
    return np.full((28, 28), value, dtype=np.uint8).tolist()


def model_config(
    *,
    policy: str = "specific { versions: 1 versions: 2 }",
    labels: dict[str, int] | None = None,
    base_path: str = "/models/mnist",
    name: str = "mnist",
) -> str:
    """A models.config text in the shipped file's shape."""
    label_text = "".join(
        f'    version_labels {{ key: "{key}" value: {value} }}\n'
        for key, value in (labels or {}).items()
    )
    return (
        "model_config_list {\n  config {\n"
        f'    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ {policy} }}\n{label_text}  }}\n}}\n"
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace a file the way a careful tool does, so pollers never read half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Deployment:
    """A models directory and config file a test can change under a running server."""

    def __init__(self, root: Path, store: dict[str, Path]) -> None:
        self.root = root
        self.store = store
        self.models_dir = root / "models"
        self.model_dir = self.models_dir / "mnist"
        self.model_dir.mkdir(parents=True)
        self.config_file = root / "models.config"

    def add_version(self, version: int, kind: str) -> Path:
        """Export the way training does: copy to a temporary name, then rename into place."""
        temporary = self.model_dir / f".tmp-{version}"
        shutil.copytree(self.store[kind], temporary)
        target = self.model_dir / str(version)
        temporary.rename(target)
        return target

    def write_config(self, **kwargs: Any) -> None:
        write_atomically(self.config_file, model_config(**kwargs))

    def server_options(self, **overrides: Any) -> dict[str, Any]:
        """ModelServer keyword arguments: free port, this deployment, fast polling."""
        return {
            "rest_api_port": 0,
            "model_config_file": self.config_file,
            "models_dir": self.models_dir,
            "file_system_poll_wait_seconds": FAST_POLL,
            "model_config_file_poll_wait_seconds": FAST_POLL,
            **overrides,
        }


def wait_for(
    condition: Callable[[], Any], *, timeout: float = DEADLINE_SECONDS, what: str = ""
) -> Any:
    """Poll until condition() is truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.02)


def version_states(url: str, model: str = "mnist") -> dict[int, str]:
    """{version: state} from the REST status endpoint ({} while the model has no versions)."""
    response = requests.get(f"{url}/v1/models/{model}", timeout=10)
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return {int(s["version"]): s["state"] for s in response.json()["model_version_status"]}


def predict_digit(url: str, value: int, route: str = "") -> int:
    """The digit answered for a constant image; route is e.g. '/versions/1' or '/labels/stable'."""
    response = requests.post(
        f"{url}/v1/models/mnist{route}:predict", json={"instances": [image(value)]}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["digit"]


# The REST calls and answers the fidelity tests (test_fidelity_*.py) share.
MNIST = "/v1/models/mnist"
GOOD = {"instances": [image(0)]}


def post(server: ModelServer, path: str, body: object, **kwargs: object) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(f"{server.url}{path}", data=data, timeout=10, **kwargs)


def get(server: ModelServer, path: str, **kwargs: object) -> requests.Response:
    return requests.get(f"{server.url}{path}", timeout=10, **kwargs)


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"] == "application/json", response.headers
    return response.json()["error"]
