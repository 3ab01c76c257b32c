"""training.rejection: how the rejector's doubt is folded into the ten probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from training import models, rejection


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
