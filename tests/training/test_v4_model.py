"""The committed v4: the contract signature, v2's answers, and flat probabilities for what is
not a digit."""

from __future__ import annotations

import numpy as np

from infra.rollout.signature import check_version
from tests.conftest import ROOT
from training.saved_model import served

COMMITTED = ROOT / "models" / "mnist"


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
