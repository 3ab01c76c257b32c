"""Per-version figures from the prediction log, and the status report that shows them."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from infra.rollout.errors import RolloutError
from infra.rollout.logstats import Row, percentile, sqlite_rows, summarize
from infra.rollout.report import StatusFacts, render_status
from infra.rollout.served import Served
from infra.rollout.server import VersionState
from recognizer.records import Record, Upload, new_record_id, time_of
from recognizer.sqlite_log import SqliteLog
from recognizer.verdict import Verdict


def test_figures_per_version():
    rows = [Row(2, "stable", 0.99, 10.0, "digit")] * 8 + [
        Row(2, None, 0.5, 30.0, None),
        Row(3, "canary", 0.95, 5.0, "digit"),
        Row(3, "canary", 0.85, 15.0, "unsure"),
    ]
    two, three = summarize(rows, low_confidence=0.9)
    assert (two.version, two.requests, three.requests) == (2, 9, 2)
    assert two.share == pytest.approx(9 / 11)
    assert two.by_label == {"stable": 8, "(pinned)": 1}
    assert two.mean_confidence == pytest.approx((8 * 0.99 + 0.5) / 9)
    assert two.low_confidence_share == pytest.approx(1 / 9)
    assert (two.latency_p50_ms, three.latency_p50_ms, three.latency_p95_ms) == (10.0, 10.0, 14.5)
    assert two.accuracy is None and three.low_confidence_share == 0.5
    # Shares among the records that have a verdict: the pinned one predates verdicts.
    assert two.verdict_shares == {"digit": 1.0}
    assert three.verdict_shares == {"digit": 0.5, "unsure": 0.5}


def test_percentiles_interpolate_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def record(
    version: int, label: str | None, confidence: float, at: datetime, verdict: str = "digit"
) -> Record:
    record_id = new_record_id()
    probabilities = (confidence,) + (0.0,) * 9
    return Record(
        id=record_id,
        created_at=at,
        digit=0,
        confidence=confidence,
        probabilities=probabilities,
        model_name="mnist",
        model_version=version,
        model_label=label,
        input_image=bytes(784),
        upload=Upload(b"x", "image/png", hashlib.sha256(b"x").hexdigest(), 1),
        latency_ms=12.0,
        verdict=Verdict(verdict, (0,) if verdict != "not_a_digit" else (), ()),
    )


def test_the_sqlite_log_is_read_over_the_window(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    log = SqliteLog(path)
    now = time_of(new_record_id())
    log.save(
        [
            record(2, "stable", 0.99, now),
            record(3, "canary", 0.8, now, verdict="not_a_digit"),
            record(2, "stable", 0.99, now - timedelta(days=2)),
        ]
    )
    log.close()
    rows = sqlite_rows(path, since=now - timedelta(hours=1))
    assert sorted(rows, key=lambda r: r.version) == [
        Row(2, "stable", 0.99, 12.0, "digit"),
        Row(3, "canary", 0.8, 12.0, "not_a_digit"),
    ]


def test_a_log_written_before_verdicts_is_read_without_them(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE predictions (model_version INTEGER, model_label TEXT, "
            "confidence REAL, latency_ms REAL, created_at_ms INTEGER)"
        )
        db.execute("INSERT INTO predictions VALUES (1, 'stable', 0.9, 4.0, 1)")
    assert sqlite_rows(path, since=datetime.fromtimestamp(0, UTC)) == [
        Row(1, "stable", 0.9, 4.0, None)
    ]


def test_a_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(RolloutError, match="no prediction log at"):
        sqlite_rows(tmp_path / "missing.sqlite3", since=datetime.now(UTC))


def test_the_status_report_shows_disk_config_server_and_figures():
    facts = StatusFacts(
        model="mnist",
        config_file="serving/models.config",
        served=Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3}),
        on_disk={1: [], 2: [], 3: [], 4: ["no output 'digit'"]},
        server_url="http://localhost:8501",
        server_versions={
            1: VersionState("AVAILABLE"),
            2: VersionState("AVAILABLE"),
            3: VersionState("LOADING"),
        },
        server_labels={"stable": 2, "canary": None},
        log_source="SQLite /tmp/x.sqlite3",
        figures=summarize(
            [Row(2, "stable", 0.99, 10.0, "digit"), Row(3, "canary", 0.7, 20.0, "unsure")], 0.9
        ),
        window_hours=24,
        low_confidence=0.9,
    )
    text = render_status(facts)
    print(text)
    lines = text.splitlines()
    assert lines[0] == (
        "model mnist: serving/models.config serves versions [1, 2, 3], "
        "labels canary -> 3, stable -> 2"
    )
    assert any(line.split()[:6] == ["3", "yes", "ok", "yes", "canary", "LOADING"] for line in lines)
    assert any(line.split()[:4] == ["4", "yes", "no", "output"] for line in lines)
    stable_row = "2 1 50.0% stable 1 0.9900 0.0% 10.0 10.0 100.0% / 0.0% / 0.0% n/a"
    assert any(line.split() == stable_row.split() for line in lines)
    assert any(line.split()[9:14] == ["0.0%", "/", "100.0%", "/", "0.0%"] for line in lines)
    assert "accuracy: n/a until users can correct answers" in text
