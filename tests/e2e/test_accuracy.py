"""Accuracy through the whole stack: HTTP upload -> preprocessing -> model server -> record.

These are the acceptance figures of the recognition path; each test prints its numbers.
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np
import pytest
import requests
from PIL import Image

from imagesets import renderings
from imagesets.seed_style import seed_style
from tests.conftest import ROOT

MNIST_IMAGES = 1000
UPLOADS_PER_KIND = 100


def predict_upload(session: requests.Session, url: str, data: bytes) -> dict:
    response = session.post(
        f"{url}/predict", data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def model_digits(model_server: str, images: np.ndarray, version: int = 2) -> np.ndarray:
    """What the model itself says about 28x28 inputs, asked directly."""
    digits = []
    for start in range(0, len(images), 100):
        response = requests.post(
            f"{model_server}/v1/models/mnist/versions/{version}:predict",
            json={"inputs": {"image": images[start : start + 100].tolist()}},
            timeout=30,
        )
        response.raise_for_status()
        digits.extend(response.json()["outputs"]["digit"])
    return np.asarray(digits)


def test_mnist_test_images_as_png_lose_nothing_to_preprocessing(function_url, model_server, mnist):
    images, labels = mnist.x_test[:MNIST_IMAGES], mnist.y_test[:MNIST_IMAGES]
    own = float(np.mean(model_digits(model_server, images) == labels))
    with requests.Session() as session:
        answers = []
        for pixels in images:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            answers.append(predict_upload(session, function_url, buffer.getvalue())["digit"])
    through_function = float(np.mean(np.asarray(answers) == labels))
    print(
        f"\n{MNIST_IMAGES} MNIST test PNGs: model alone {own:.2%}, "
        f"through the function {through_function:.2%}"
    )
    assert abs(through_function - own) <= 0.002
    assert through_function >= 0.99


@pytest.fixture(scope="module")
def uploads(mnist):
    """Realistic uploads of MNIST test digits the model never trained on, in every kind."""
    start = 2000
    digits = mnist.x_test[start : start + UPLOADS_PER_KIND]
    labels = mnist.y_test[start : start + UPLOADS_PER_KIND]
    return [(kind, int(labels[i]), data) for kind, i, data in renderings.render_all(digits)]


def test_realistic_uploads_score_at_least_97_percent_and_beat_the_seed(
    function_url, model_server, uploads
):
    correct: dict[str, list[bool]] = defaultdict(list)
    with requests.Session() as session:
        for kind, label, data in uploads:
            correct[kind].append(predict_upload(session, function_url, data)["digit"] == label)
    seed_inputs = np.stack([seed_style(data) for _, _, data in uploads])
    seed_digits = model_digits(model_server, seed_inputs)
    seed_correct: dict[str, list[bool]] = defaultdict(list)
    for (kind, label, _), digit in zip(uploads, seed_digits, strict=True):
        seed_correct[kind].append(digit == label)

    print(f"\n{'kind':38} {'ours':>7} {'seed-style':>11}")
    for kind in correct:
        print(f"{kind:38} {np.mean(correct[kind]):7.1%} {np.mean(seed_correct[kind]):11.1%}")
    ours = float(np.mean([c for values in correct.values() for c in values]))
    seed = float(np.mean([c for values in seed_correct.values() for c in values]))
    print(f"{'all ' + str(len(uploads)) + ' uploads':38} {ours:7.1%} {seed:11.1%}")
    assert ours >= 0.97
    assert seed <= ours - 0.3


SAMPLES = ROOT / "tests" / "data" / "samples"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.mark.parametrize("sample", sorted(SAMPLES.iterdir()), ids=lambda path: path.name)
def test_the_sample_uploads_in_the_readme_are_recognized(function_url, sample):
    expected = WORDS.index(sample.stem.split("-")[0])
    with requests.Session() as session:
        assert predict_upload(session, function_url, sample.read_bytes())["digit"] == expected
