"""The local stack for real: the function under functions-framework's production server, and
the session's one Playwright for the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.function_server import running_function

if TYPE_CHECKING:
    from playwright.sync_api import Playwright


@pytest.fixture(scope="session")
def function_url(model_server, tmp_path_factory) -> Iterator[str]:
    """The function with default settings, wired to the model server."""
    with running_function(
        model_server, tmp_path_factory.mktemp("log") / "predictions.sqlite3"
    ) as url:
        yield url


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    """The session's one Playwright, for every browser test module: while one runs, its sync
    API refuses to start another in the same thread ("inside the asyncio loop")."""
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright is not importable (`make test` installs it from requirements-dev.txt)",
    )
    with sync_api.sync_playwright() as driver:
        yield driver
