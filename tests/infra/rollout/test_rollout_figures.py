"""Per-version figures from the prediction store, and the status report that shows them."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from infra.rollout.errors import RolloutError
from infra.rollout.figures import Row, is_right, percentile, sqlite_rows, summarize
from infra.rollout.report import StatusFacts, render_status, status_json
from infra.rollout.served import Served
from infra.rollout.stats import wilson
from recognizer import drift
from recognizer.model_client import VersionState
from recognizer.records import Feedback, new_record_id, time_of
from recognizer.sqlite_store import SqliteStore
from tests.infra.rollout.corrected_store import record


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
    assert (two.latency_p50_ms, three.latency_p50_ms, three.latency_p99_ms) == (10.0, 10.0, 14.9)
    assert two.accuracy is None and two.accuracy_ci is None and two.corrected == 0
    assert three.low_confidence_share == 0.5
    # Shares among the records that have a verdict: the pinned one predates verdicts.
    assert two.verdict_shares == {"digit": 1.0}
    assert three.verdict_shares == {"digit": 0.5, "unsure": 0.5}


@pytest.mark.parametrize(
    ("verdict", "digit", "person", "right"),
    [
        ("digit", 7, 7, True),
        ("digit", 7, 1, False),
        ("digit", 7, None, False),  # it named a digit; the person says there is none
        (None, 7, 7, True),  # a record from before verdicts answered like "digit"
        ("unsure", 7, 7, True),  # "not sure: 7 or ...": its first candidate was right
        ("unsure", 7, 1, False),
        ("unsure", 7, None, False),  # it still offered digits
        ("not_a_digit", 7, 7, False),  # it refused a real digit, whatever the model's guess
        ("not_a_digit", 7, None, True),
    ],
)
def test_what_counts_as_a_right_answer(verdict, digit, person, right):
    assert is_right(Row(2, "stable", 0.9, 1.0, verdict, digit, True, person)) is right


def test_accuracy_is_right_among_corrected_with_a_wilson_interval():
    rows = (
        [Row(2, "stable", 0.99, 1.0, "digit", 7, True, 7)] * 45
        + [Row(2, "stable", 0.99, 1.0, "digit", 7, True, 3)] * 4
        + [Row(2, "stable", 0.6, 1.0, "not_a_digit", 0, True, None)]
        + [Row(2, "stable", 0.99, 1.0, "digit", 7)] * 50  # nobody corrected these
    )
    [two] = summarize(rows, low_confidence=0.9)
    assert (two.requests, two.corrected, two.right) == (100, 50, 46)
    assert two.accuracy == 0.92
    assert two.accuracy_ci == wilson(46, 50) == pytest.approx((0.8116, 0.9685), abs=1e-4)


def test_percentiles_interpolate_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([float(n) for n in range(1, 201)], 99) == pytest.approx(198.01)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_the_sqlite_store_is_read_over_the_window(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    log = SqliteStore(path)
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


def test_corrections_are_read_from_the_sqlite_store_as_the_function_keeps_them(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    log = SqliteStore(path)
    now = time_of(new_record_id())
    seven, dot, nine = (
        record(2, "stable", 0.99, now, digit=7),
        record(2, "stable", 0.7, now, verdict="not_a_digit"),
        record(3, "canary", 0.9, now, digit=9),
    )
    log.save([seven, dot, nine, record(3, "canary", 0.9, now)])
    later = now + timedelta(minutes=1)
    assert log.correct(seven.id, Feedback(1, later))
    assert log.correct(seven.id, Feedback(7, later))  # the last correction wins
    assert log.correct(dot.id, Feedback(None, later))  # "not a digit"
    assert log.correct(nine.id, Feedback(4, later))
    log.close()
    rows = sqlite_rows(path, since=now - timedelta(hours=1))
    assert sorted((r.version, r.digit, r.corrected, r.feedback_digit) for r in rows) == [
        (2, 0, True, None),
        (2, 7, True, 7),
        (3, 0, False, None),
        (3, 9, True, 4),
    ]
    two, three = summarize(rows, low_confidence=0.9)
    assert (two.corrected, two.right, three.corrected, three.right) == (2, 2, 1, 0)


def test_a_log_written_before_verdicts_and_corrections_is_read_without_them(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE predictions (model_version INTEGER, model_label TEXT, digit INTEGER, "
            "confidence REAL, latency_ms REAL, created_at_ms INTEGER)"
        )
        db.execute("INSERT INTO predictions VALUES (1, 'stable', 7, 0.9, 4.0, 1)")
    [row] = sqlite_rows(path, since=datetime.fromtimestamp(0, UTC))
    assert row == Row(1, "stable", 0.9, 4.0, None, 7, False, None)
    assert summarize([row], 0.9)[0].accuracy is None


def test_a_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(RolloutError, match="no prediction store at"):
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
            [
                Row(2, "stable", 0.99, 10.0, "digit"),
                Row(3, "canary", 0.7, 20.0, "unsure", 4, True, 4),
                Row(3, "canary", 0.95, 20.0, "digit", 5, True, 6),
            ],
            0.9,
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
    stable_row = "2 1 33.3% stable 1 0.9900 0.0% 10.0 10.0 100.0% / 0.0% / 0.0% 0 n/a n/a"
    assert any(line.split() == stable_row.split() for line in lines)
    # 1 of 2 corrections right: 50.0%, Wilson 9.5%-90.5%.
    canary_row = (
        "3 2 66.7% canary 2 0.8250 50.0% 20.0 20.0 50.0% / 50.0% / 0.0% 2 50.0% (9.5%-90.5%) n/a"
    )
    assert any(line.split() == canary_row.split() for line in lines)
    assert "until users can correct" not in text
    assert "otherwise right / corrected" in text and "95% Wilson interval" in text


def test_status_json_has_the_contract_shape():
    rows = [Row(2, "stable", 0.99, 10.0, "digit", 7, True, 7)] * 3 + [
        Row(2, None, 0.5, 30.0, None),
        Row(3, "canary", 0.8, 5.0, "unsure"),
    ]
    served = Served(frozenset({1, 2, 3}), {"stable": 2, "canary": 3, "blue": 2})
    document = status_json(summarize(rows, 0.9), served)
    two, three = document["versions"]
    low, high = wilson(3, 3)
    assert two == {
        "version": 2,
        "labels": ["blue", "stable"],
        "requests": 4,
        "feedback": 3,
        "accuracy": 1.0,
        "accuracy_ci": [low, high],
        "mean_confidence": pytest.approx((3 * 0.99 + 0.5) / 4),
        "low_confidence_share": 0.25,
        "latency_ms": {"p50": 10.0, "p99": pytest.approx(29.4)},
        "verdicts": {"digit": 1.0, "unsure": 0.0, "not_a_digit": 0.0},
        "drift": None,  # no reference profile given
    }
    assert (three["labels"], three["feedback"], three["accuracy"], three["accuracy_ci"]) == (
        ["canary"],
        0,
        None,
        None,
    )
    assert three["verdicts"] == {"digit": 0.0, "unsure": 1.0, "not_a_digit": 0.0}
    assert set(document) == {"versions"}


def test_status_shows_drift_against_stable_profile_once_a_window_is_large_enough():
    """A version far less sure than v5's profile is DRIFTED from 200 records; before,
    its PSI shows with the window's size; one like v5 is not."""
    reference = (5, drift.load_profile(5))
    unsure = [Row(1, "canary", 0.6, 5.0, "not_a_digit", d % 10) for d in range(200)]
    like_v5 = [Row(5, "stable", 0.999, 5.0, "digit", d % 10) for d in range(200)]
    served = Served(frozenset({1, 5}), {"stable": 5, "canary": 1})
    facts = dict(
        model="mnist", config_file="c", served=served, on_disk={}, server_url="u",
        server_versions={}, server_labels={}, log_source="s", window_hours=24,
        low_confidence=0.9, reference=reference,
    )  # fmt: skip
    text = render_status(StatusFacts(figures=summarize(unsure + like_v5, 0.9), **facts))
    (canary,) = [line for line in text.splitlines() if line.split()[:2] == ["1", "200"]]
    assert canary.endswith("DRIFTED")
    (stable,) = [line for line in text.splitlines() if line.split()[:2] == ["5", "200"]]
    assert "DRIFTED" not in stable
    assert "against v5's profile" in text
    few = render_status(StatusFacts(figures=summarize(unsure[:199], 0.9), **facts))
    (row,) = [line for line in few.splitlines() if line.split()[:2] == ["1", "199"]]
    assert row.endswith("n<200)") and "DRIFTED" not in row
    document = status_json(summarize(unsure + like_v5, 0.9), served, reference)
    one, five = document["versions"]
    assert one["drift"]["reference_version"] == 5
    assert {"confidence", "verdict"} <= set(one["drift"]["drifted"])
    assert five["drift"]["drifted"] == [] and five["drift"]["judged"] is True
