"""The committed v3: the contract signature, MNIST accuracy, and doubt about what is not a digit."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from infra.rollout.signature import check_version
from tests.conftest import ROOT
from training.saved_model import served

COMMITTED = ROOT / "models" / "mnist"


def test_v3_meets_the_signature_contract():
    assert check_version(COMMITTED / "3") == []
    signature = tf.saved_model.load(str(COMMITTED / "3")).signatures["serving_default"]
    (image,) = signature.structured_input_signature[1].values()
    assert (image.name, image.dtype, image.shape.as_list()) == ("image", tf.uint8, [None, 28, 28])
    outputs = signature.structured_outputs
    assert (outputs["probabilities"].dtype, outputs["probabilities"].shape.as_list()) == (
        tf.float32,
        [None, 10],
    )
    assert (outputs["digit"].dtype, outputs["digit"].shape.as_list()) == (tf.int64, [None])


def test_v3_reads_mnist_digits_and_its_probabilities_are_distributions(mnist):
    signature = tf.saved_model.load(str(COMMITTED / "3")).signatures["serving_default"]
    out = signature(image=tf.constant(mnist.x_test[:400]))
    probabilities, digits = out["probabilities"].numpy(), out["digit"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(digits, probabilities.argmax(axis=1))
    assert np.mean(digits == mnist.y_test[:400]) >= 0.99


def test_v3_is_much_less_sure_than_v2_of_what_is_not_a_digit(nondigit_fields):
    v2 = served(COMMITTED / "2")(nondigit_fields).max(axis=1)
    v3 = served(COMMITTED / "3")(nondigit_fields).max(axis=1)
    # On the full "eval" split: mean top probability 0.81 -> 0.57, at or over 0.9 50% -> 18%.
    assert v3.mean() <= v2.mean() - 0.15
    assert np.mean(v3 >= 0.9) <= 0.6 * np.mean(v2 >= 0.9)
