"""The status page in Chromium at desktop and phone widths, over a day of made-up traffic
in the function's SQLite store: it renders its table and plots, fits a phone without
sideways scrolling, and runs no script. `DOC_SCREENSHOTS=1` rewrites
docs/screenshots/status-{desktop,phone}.png."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from recognizer.sqlite_store import SqliteStore
from tests.conftest import ROOT
from tests.e2e.test_page import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE
from tests.function.status_history import history, seed
from tests.support.function_server import running_function

TOKEN = "status-page-token-0123456789"
ARTIFACTS = ROOT / "test-artifacts" / "status"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture
def status_url(model_stand_in, tmp_path):
    sqlite_path = tmp_path / "predictions.sqlite3"
    store = SqliteStore(sqlite_path)
    seed(store, history(datetime.now(UTC)))
    store.close()
    with running_function(model_stand_in.url, sqlite_path, API_TOKEN=TOKEN) as url:
        yield f"{url}/status"


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_the_status_page_renders_and_fits(playwright_driver, status_url, name, viewport):
    # The session's Playwright (conftest.py): test_page.py's is still running when this
    # module runs after it, and a second sync_playwright() in one thread is refused.
    browser = playwright_driver.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    try:
        context = browser.new_context(
            viewport=viewport,
            locale="en-US",
            timezone_id="UTC",
            extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
            java_script_enabled=False,  # the page needs none
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        assert page.goto(status_url).status == 200
        assert page.locator("svg").count() == 3
        for index in range(3):
            box = page.locator("svg").nth(index).bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 90
            assert box["x"] + box["width"] <= viewport["width"]
        canary = page.locator("tr", has_text="v1").first.inner_text()
        assert "DRIFTED" in canary
        widths = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        assert widths[0] <= widths[1], "the page scrolls sideways"
        # The style block applies (the CSP allows it by its hash): no refusal logged.
        assert not [e for e in errors if "Content Security Policy" in e], errors
        collapse = page.evaluate("getComputedStyle(document.querySelector('table')).borderCollapse")
        assert collapse == "collapse"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        if os.environ.get("DOC_SCREENSHOTS"):
            page.screenshot(path=DOC_SCREENSHOTS / f"status-{name}.png", full_page=True)
    finally:
        browser.close()
