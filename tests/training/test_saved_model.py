"""training.saved_model: a committed version asked in this process, batch by batch."""

from __future__ import annotations

import numpy as np

from tests.conftest import ROOT
from training.saved_model import BATCH, served


def test_probabilities_of_more_than_one_batch_are_each_images_own(mnist):
    images, labels = mnist.x_test[: BATCH + 3], mnist.y_test[: BATCH + 3]
    predict = served(ROOT / "models" / "mnist" / "2")
    probabilities = predict(images)
    assert probabilities.shape == (BATCH + 3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert np.mean(probabilities.argmax(axis=1) == labels) > 0.98
    np.testing.assert_allclose(predict(images[BATCH:]), probabilities[BATCH:], atol=1e-6)
