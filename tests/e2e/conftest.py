"""The local stack for real: the function under functions-framework's production server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.function_server import running_function


@pytest.fixture(scope="session")
def function_url(model_server, tmp_path_factory) -> Iterator[str]:
    """The function with default settings, wired to the model server."""
    with running_function(
        model_server, tmp_path_factory.mktemp("log") / "predictions.sqlite3"
    ) as url:
        yield url
