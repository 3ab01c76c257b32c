"""The canary flood of #23, repeated on the live stack: one client's uploads and corrections
through gunicorn into the function's SQLite log, then the analysis `rollout analyze` runs
on that log (figures.sqlite_rows, summarize, analysis.decide). Before, 150 + 150 pinned
uploads and 300 corrections made it say roll back, 550 + 550 promote; now pinned traffic
is left out, a client counts for at most CORRECTIONS_PER_CLIENT corrections, and too few
distinct clients is "not enough independent evidence", so the decision stays "wait"."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests

from infra.rollout import analysis, figures
from recognizer import canary
from recognizer.cassandra_store import CassandraStore
from tests.support import live_function
from tests.support.live_function import SEVEN, functions

two_labels = live_function.two_labels
STABLE, CANARY = live_function.STABLE_VERSION, live_function.CANARY_VERSION
OPEN = {"PIN_REQUIRES_TOKEN": "false", "CORRECTIONS_PER_CLIENT_PER_HOUR": "0",
        "CORRECTIONS_PER_RECORD_PER_HOUR": "0"}  # fmt: skip


def flood(url: str, query: str, right: bool, count: int, client: str) -> None:
    """`count` uploads, each corrected (to its answer when `right`, else to another digit),
    all from one client."""
    for _ in range(count):
        answer = requests.post(
            f"{url}/predict{query}",
            data=SEVEN,
            headers={"Content-Type": "image/png", "X-Client-Id": client},
            timeout=60,
        ).json()["predictions"][0]
        said_none = answer["verdict"] == "not_a_digit"  # right: "not a digit" (is_right)
        if right:
            digit = None if said_none else answer["digit"]
        else:
            digit = answer["digit"] if said_none else (answer["digit"] + 1) % 10
        corrected = requests.put(
            f"{url}/predictions/{answer['id']}/feedback",
            json={"digit": digit, "token": answer["feedback_token"]},
            headers={"X-Client-Id": client},
            timeout=30,
        )
        assert corrected.status_code == 200, corrected.text


def decision(sqlite) -> analysis.Decision:
    """As `analyze` decides, on accuracy alone: the share checks are opened wide (the two
    stand-in versions differ in confidence and verdicts on any image)."""
    rows = figures.sqlite_rows(sqlite, datetime.now(UTC) - timedelta(hours=1))
    by_version = {f.version: f for f in figures.summarize(rows, 0.0)}
    wide = analysis.Thresholds(accuracy_margin=0.2, verdict_margin=1.0, min_requests=10**6)
    return analysis.decide(by_version.get(STABLE), by_version.get(CANARY), wide)


def client_in(canary_bucket: bool) -> str:
    return next(
        name
        for name in (f"flooder-{n}" for n in range(10_000))
        if (canary.bucket(canary.client_key(name, None)) < 50) is canary_bucket
    )


@pytest.mark.parametrize("pin", [True, False], ids=["label-pins", "unpinned"])
def test_one_clients_flood_does_not_decide_the_canary(two_labels, tmp_path, pin):
    sqlite = tmp_path / "flood.sqlite3"
    env = {**OPEN, "SQLITE_PATH": str(sqlite), "CANARY_PERCENT": "50"}
    with functions(two_labels.url, tmp_path, env, 1) as (url,):
        # The canary's answers corrected as wrong, stable's as right: a roll back, before.
        flood(url, "?label=canary" if pin else "", False, 30, client_in(canary_bucket=True))
        flood(url, "?label=stable" if pin else "", True, 30, client_in(canary_bucket=False))
    rows = figures.sqlite_rows(sqlite, datetime.now(UTC) - timedelta(hours=1))
    assert len(rows) == 60 and all(r.pinned is pin for r in rows)
    made = decision(sqlite)
    assert made.action == analysis.WAIT, made
    if not pin:
        (accuracy,) = [c for c in made.checks if c.signal == "accuracy"]
        assert accuracy.outcome == analysis.INCONCLUSIVE
        assert "not enough independent evidence" in accuracy.reason
        # Counted without the evidence rules, the same log says roll back.
        legacy = [replace(r, client=None) for r in rows]
        by_version = {f.version: f for f in figures.summarize(legacy, 0.0)}
        wide = analysis.Thresholds(accuracy_margin=0.2, verdict_margin=1.0, min_requests=10**6)
        before = analysis.decide(by_version[STABLE], by_version[CANARY], wide)
        assert before.action == analysis.ROLLBACK, (by_version, before)


def test_on_cassandra_the_counts_and_corrections_weigh_a_flood_as_the_log_does(
    two_labels, tmp_path, cassandra
):
    """`rollout analyze` on Cassandra reads per-hour counts and the corrections table, not
    the records: there too pinned traffic is left out and one client's corrections count
    at most CORRECTIONS_PER_CLIENT times, so the same flood leaves the decision at wait."""
    keyspace = cassandra.keyspace("flood")
    env = {**OPEN, **cassandra.env(keyspace), "CANARY_PERCENT": "50"}
    with functions(two_labels.url, tmp_path, env, 1) as (url,):
        flood(url, "", False, 30, client_in(canary_bucket=True))
        flood(url, "", True, 30, client_in(canary_bucket=False))
        flood(url, "?label=canary", False, 10, "pinning-client")
    store = CassandraStore(cassandra.settings(keyspace))
    try:
        counted = figures.store_figures(store, datetime.now(UTC) - timedelta(hours=1), 0.0)
    finally:
        store.close()
    by_version = {f.version: f for f in counted}
    assert sum(f.requests for f in counted) == 60  # the 10 pinned uploads are left out
    for version in (STABLE, CANARY):
        assert by_version[version].corrected == figures.CORRECTIONS_PER_CLIENT
        assert by_version[version].correcting_clients == 1
    wide = analysis.Thresholds(accuracy_margin=0.2, verdict_margin=1.0, min_requests=10**6)
    made = analysis.decide(by_version[STABLE], by_version[CANARY], wide)
    assert made.action == analysis.WAIT, made
