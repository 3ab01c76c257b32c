"""The committed v4: the contract signature, v2's answers, and flat probabilities for what is
not a digit."""

from __future__ import annotations

import numpy as np
import pytest

from imagesets import nondigits
from infra.rollout.signature import check_version
from recognizer.preprocess import BlankImage, to_mnist
from tests.conftest import ROOT
from training.saved_model import served

COMMITTED = ROOT / "models" / "mnist"


@pytest.fixture(scope="module")
def nondigit_fields(mnist) -> np.ndarray:
    """A few held-out ("eval") nondigits of every kind, through the function's preprocessing."""
    fields = []
    for _, data in nondigits.make_set(8, seed=11, split="eval", mnist=mnist):
        try:
            fields.append(to_mnist(data))
        except BlankImage:
            continue
    return np.stack(fields)


def test_v4_meets_the_signature_contract():
    assert check_version(COMMITTED / "4") == []


def test_v4_names_the_digits_v2_names_and_its_probabilities_are_distributions(mnist):
    v4 = served(COMMITTED / "4")(mnist.x_test[:1000])
    v2 = served(COMMITTED / "2")(mnist.x_test[:1000])
    np.testing.assert_allclose(v4.sum(axis=1), 1, atol=1e-5)
    # The digit head is v2's network: doubt flattens the distribution, never reorders it.
    assert np.array_equal(v4.argmax(axis=1), v2.argmax(axis=1))
    assert np.mean(v4.max(axis=1) >= 0.5) >= 0.99


def test_v4_gives_most_nondigits_a_flat_distribution(nondigit_fields):
    v3 = served(COMMITTED / "3")(nondigit_fields).max(axis=1)
    v4 = served(COMMITTED / "4")(nondigit_fields).max(axis=1)
    # On the full "eval" split most get less than 0.5, where v3 gave 54% of them 0.5 or more.
    assert np.mean(v4 < 0.5) >= 0.8
    assert v4.mean() <= v3.mean() - 0.2
