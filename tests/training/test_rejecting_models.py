"""The committed versions with a rejector (v4, v5): the contract signature, v2's answers,
and flat probabilities for what is not a digit."""

from __future__ import annotations

import numpy as np
import pytest

from infra.rollout.signature import check_version
from tests.conftest import ROOT
from training.saved_model import served

COMMITTED = ROOT / "models" / "mnist"
REJECTING = (4, 5)


@pytest.mark.parametrize("version", REJECTING)
def test_a_rejecting_version_meets_the_signature_contract(version):
    assert check_version(COMMITTED / str(version)) == []


@pytest.mark.parametrize("version", REJECTING)
def test_a_rejecting_version_names_the_digits_v2_names_in_distributions(mnist, version):
    answers = served(COMMITTED / str(version))(mnist.x_test[:1000])
    v2 = served(COMMITTED / "2")(mnist.x_test[:1000])
    np.testing.assert_allclose(answers.sum(axis=1), 1, atol=1e-5)
    # The digit head is v2's network: doubt flattens the distribution, never reorders it.
    assert np.array_equal(answers.argmax(axis=1), v2.argmax(axis=1))
    assert np.mean(answers.max(axis=1) >= 0.5) >= 0.99


@pytest.mark.parametrize("version", REJECTING)
def test_a_rejecting_version_gives_most_nondigits_a_flat_distribution(nondigit_fields, version):
    v3 = served(COMMITTED / "3")(nondigit_fields).max(axis=1)
    top = served(COMMITTED / str(version))(nondigit_fields).max(axis=1)
    # On the full "eval" split most get less than 0.5, where v3 gave 54% of them 0.5 or more.
    assert np.mean(top < 0.5) >= 0.8
    assert top.mean() <= v3.mean() - 0.2
