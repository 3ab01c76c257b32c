"""Fixtures shared by the committed models' tests."""

from __future__ import annotations

import numpy as np
import pytest

from imagesets import nondigits
from recognizer.preprocess import BlankImage, to_mnist


@pytest.fixture(scope="session")
def nondigit_fields(mnist) -> np.ndarray:
    """A few held-out ("eval") nondigits of every kind, through the function's preprocessing
    (made once for the v3, v4 and v5 tests)."""
    fields = []
    for _, data in nondigits.make_set(8, seed=11, split="eval", mnist=mnist):
        try:
            fields.append(to_mnist(data))
        except BlankImage:
            continue
    return np.stack(fields)
