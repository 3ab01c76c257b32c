"""Refuse to import TensorFlow, to prove a suite runs without it (TESTS_WITHOUT_TENSORFLOW=1).

A finder first on sys.meta_path raises ImportError for `tensorflow` and its submodules,
as a fresh environment without it would; tests/conftest.py installs it before anything
else is imported and deselects the tests marked `real_model`.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

VARIABLE = "TESTS_WITHOUT_TENSORFLOW"
REFUSED = frozenset({"tensorflow"})


class RefuseTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in REFUSED:
            raise ImportError(f"{name} is refused: {VARIABLE}=1", name=name)
        return None


def requested() -> bool:
    return os.environ.get(VARIABLE) == "1"


def install() -> None:
    """Refuse TensorFlow from now on in this process; it must not be imported already."""
    already = sorted(name for name in sys.modules if name.partition(".")[0] in REFUSED)
    if already:
        raise RuntimeError(f"{VARIABLE}=1, but TensorFlow is already imported: {already[:3]}")
    if not any(isinstance(finder, RefuseTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, RefuseTensorFlow())
