"""training.rejection: how the rejector's doubt is folded into the ten probabilities."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from tests.conftest import ROOT
from training import from_store, models, rejection
from training.corrections import Correction
from training.from_store import Options
from training.outlier_exposure import saved_weights
from training.train import VALIDATION_IMAGES


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (16, 28, 28)).astype(np.float32)


def _exported(doubt_bias: float, temperature: float = 1.0):
    """The combined model of an untrained digit head and a rejector whose logit is its bias."""
    head = models.small_cnn(logits=True)
    doubt = rejection.rejector()
    kernel, _ = doubt.layers[-1].get_weights()
    doubt.layers[-1].set_weights([np.zeros_like(kernel), np.array([doubt_bias], np.float32)])
    return head, rejection.combined(head, doubt, temperature, shift=0.0)


def test_no_doubt_leaves_the_digit_heads_tempered_softmax(pixels):
    head, model = _exported(doubt_bias=-40.0, temperature=0.5)
    logits = head.predict(pixels, verbose=0)
    expected = np.exp(logits / 0.5 - (logits / 0.5).max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=1e-5)


def test_half_doubt_mixes_halfway_to_flat_and_keeps_the_argmax(pixels):
    head, model = _exported(doubt_bias=0.0)
    got = model.predict(pixels, verbose=0)
    logits = head.predict(pixels, verbose=0)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, 0.5 * softmax + 0.05, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(got.argmax(axis=1), logits.argmax(axis=1))


def test_certain_doubt_is_flat_but_still_names_the_digit_heads_answer(pixels):
    head, model = _exported(doubt_bias=40.0)
    got = model.predict(pixels, verbose=0)
    assert got.max() <= 0.1 + 1e-4
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(got.argmax(axis=1), head.predict(pixels, verbose=0).argmax(axis=1))


MODELS = ROOT / "models"


def test_a_rejecting_version_splits_back_into_its_head_and_its_rejector(mnist):
    """What --from-store starts from when stable is v4: its head is v2's, as exported."""
    x_val, y_val = mnist.x_train[-VALIDATION_IMAGES:], mnist.y_train[-VALIDATION_IMAGES:]
    assert rejection.is_rejecting(MODELS / "mnist" / "4")
    assert not rejection.is_rejecting(MODELS / "mnist" / "3")
    start = rejection.saved_start(MODELS / "mnist" / "4", x_val, y_val)  # checks the rebuild
    v2 = saved_weights(MODELS / "mnist" / "2", models.small_cnn(logits=True))
    assert all(np.array_equal(a, b) for a, b in zip(start.head, v2, strict=True))
    assert start.doubt is not None and start.doubt[-2].shape == (64, 1)
    with pytest.raises(ValueError, match="does not hold a digit head and a rejector"):
        rejection.saved_start(MODELS / "mnist" / "3", x_val, y_val)


def test_from_store_fine_tunes_a_rejecting_stable_and_keeps_its_reading(tmp_path, mnist):
    """Corrections teach v4's rejector where to doubt; its head, so its MNIST argmax, stays."""
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "4").symlink_to(MODELS / "mnist" / "4", target_is_directory=True)
    now = datetime.now(UTC)
    found = [
        Correction(f"{n:064x}", mnist.x_test[n], int(mnist.y_test[n]), now, 0) for n in range(40)
    ] + [Correction(f"{n:064x}", np.full((28, 28), 90, np.uint8), None, now, 1) for n in (40, 41)]
    options = Options(version=9, start_from=4, models_dir=tmp_path, mnist_images=600,
                      outliers_per_kind=5, digit_uploads_per_kind=10, max_drop=1.0)  # fmt: skip
    report = from_store.train_from_store(found, options, mnist)
    assert report["recipe"] == "cnn_reject (its rejector)"
    assert report["mnist_test"]["after"] == report["mnist_test"]["before"]
    assert report["exported"] and rejection.is_rejecting(tmp_path / "mnist" / "9")
