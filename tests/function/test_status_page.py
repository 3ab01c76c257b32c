"""GET /status: per version traffic, verdicts, accuracy with its interval, drift and
latency, with hourly plots as inline SVG, behind the API token."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import functions_framework
import pytest

from infra.rollout.stats import wilson as rollout_wilson
from recognizer import drift, status_page
from recognizer.sqlite_store import SqliteStore
from tests.conftest import ROOT
from tests.function.status_history import history, seed

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TOKEN = "status-token-0123456789"


def test_the_interval_is_the_rollout_tools():
    for k, n in ((0, 1), (9, 10), (50, 100), (100, 100)):
        assert status_page.wilson(k, n) == pytest.approx(rollout_wilson(k, n))


def test_each_version_is_summarized_and_the_worse_canary_drifts():
    records = history(NOW)
    summaries = {s.version: s for s in status_page.summarize(records, (5, drift.load_profile(5)))}
    five, one = summaries[5], summaries[1]
    assert five.requests == 480 and one.requests == 240
    assert five.verdict_shares["digit"] == 1.0 and one.verdict_shares["digit"] < 0.7
    assert one.drift is not None and one.drift.drifted
    assert five.drift is not None and five.drift.judged and not five.drift.drifted
    assert five.corrected > 0 and 0 <= five.right <= five.corrected


def test_the_page_has_a_row_per_version_and_three_plots_and_no_script():
    page = status_page.render(history(NOW), NOW, (5, drift.load_profile(5))).decode()
    assert page.count("<svg") == 3 and "<polyline" in page
    assert "<script" not in page.lower()
    rows = re.findall(r"<tr><td>(v\d)</td>", page)
    assert rows == ["v1", "v5"]
    assert re.search(r"<td>v1</td>.*DRIFTED", page)
    assert "drift vs v5&#x27;s profile" in page or "drift vs v5's profile" in page


def test_no_records_is_an_empty_page_not_an_error():
    page = status_page.render([], NOW, None).decode()
    assert "0 predictions" in page and page.count("<svg") == 3


@pytest.fixture
def app_with_history(function_env, monkeypatch):
    monkeypatch.setenv("API_TOKEN", TOKEN)
    store = SqliteStore(function_env)
    seed(store, history(datetime.now(UTC)))
    store.close()
    return functions_framework.create_app(
        "recognize", str(ROOT / "function" / "main.py")
    ).test_client()


def test_the_page_needs_the_token_and_allows_only_its_own_style(app_with_history):
    assert app_with_history.get("/status").status_code == 401
    answer = app_with_history.get("/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.mimetype == "text/html"
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "'sha256-" in policy
    page = answer.get_data(as_text=True)
    assert re.findall(r"<tr><td>(v\d)</td>", page) == ["v1", "v5"]
    assert "480" in page  # stable's requests in the window
    assert re.search(r"<td>v5</td>(<td>[^<]*</td>){3}<td>\d+\.\d% \(", page)  # corrected
