"""`python -m infra.rollout status` reading the prediction store from either store.

The function runs under gunicorn (functions-framework's production server) on SQLite or
on a keyspace of the session's live Cassandra node, splitting unpinned clients between
stable and canary (CANARY_PERCENT), and real predictions go through it: a stable client's,
a canary client's, pinned to the canary label, pinned to version 1, one batch of two. The
store holds every one of them; the rollout tool, run as an operator runs it with that
store's settings, counts the split's traffic only (pinned requests chose their version
and are no evidence of the split, #23), per version and label. A record three days old
(written straight into the store) is inside a 100-hour window only, and a Cassandra that
cannot be reached is named in the report, not a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from cassandra.util import uuid_from_time

from recognizer import canary
from recognizer.cassandra_store import CassandraStore
from recognizer.records import Record, Upload, time_of
from recognizer.sqlite_store import SqliteStore
from tests.conftest import PYTHON, ROOT, SHELL_SETTINGS, STABLE_VERSION, free_port
from tests.support.cassandra_function import stored
from tests.support.function_server import running_function

SAMPLES = ROOT / "tests" / "data" / "samples"
SEVEN = (SAMPLES / "seven.png").read_bytes()
THREE = (SAMPLES / "three-photo.jpg").read_bytes()
CANARY_PERCENT = 50
PEOPLE = [f"person-{n}" for n in range(20)]
IN_CANARY = next(p for p in PEOPLE if canary.bucket(canary.client_key(p, None)) < CANARY_PERCENT)
IN_STABLE = next(p for p in PEOPLE if canary.bucket(canary.client_key(p, None)) >= CANARY_PERCENT)
# (query, images, X-Client-Id): what is sent; the figures count images, not requests.
TRAFFIC = [("", [SEVEN], IN_STABLE)] * 4 + [("", [THREE], IN_CANARY)] * 2
TRAFFIC += [("?label=canary", [THREE], IN_STABLE)] * 2 + [("?version=1", [SEVEN], IN_CANARY)] * 3
TRAFFIC += [("", [SEVEN, THREE], IN_STABLE)]
# version -> label -> images; the live model server serves the shipped config's labels.
# HELD is what the store holds; EXPECTED what the figures count: the split's traffic, so
# neither the ?label=canary pins (still labelled canary) nor the ?version=1 pins (#23).
HELD = {STABLE_VERSION: {"stable": 6, "canary": 4}, 1: {"(pinned)": 3}}
EXPECTED = {STABLE_VERSION: {"stable": 6, "canary": 2}}
FIGURE_ROW = re.compile(r"^  (\d+)\s+(\d+)\s+(\d+\.\d)%\s+(.*?)\s+\d\.\d{4}\s", re.M)


@dataclass
class Deployment:
    store: str
    env: dict[str, str]  # the store's settings, as the function and the tool read them
    sqlite: Path
    keyspace: str | None
    answers: list[dict]


@pytest.fixture(params=["sqlite", "cassandra"])
def deployment(request, model_server, tmp_path) -> Iterator[Deployment]:
    sqlite = tmp_path / "predictions.sqlite3"
    keyspace = None
    env = {"PREDICTION_STORE": "sqlite"}
    if request.param == "cassandra":
        cassandra = request.getfixturevalue("cassandra")
        keyspace = cassandra.keyspace("rollout")
        env = cassandra.env(keyspace)
    split = {"CANARY_PERCENT": str(CANARY_PERCENT)}
    with (
        running_function(model_server, sqlite, **env, **split) as url,
        requests.Session() as session,
    ):
        env = {**env, "SQLITE_PATH": str(sqlite)}  # where the tool reads SQLite
        answers = []
        for query, images, client in TRAFFIC:
            files = [("image", (f"{n}.img", image)) for n, image in enumerate(images)]
            response = session.post(
                f"{url}/predict{query}", files=files, headers={"X-Client-Id": client}, timeout=30
            )
            assert response.status_code == 200, response.text
            answers.extend(response.json()["predictions"])
        yield Deployment(request.param, env, sqlite, keyspace, answers)


def status(model_server: str, env: dict[str, str], *args: str) -> str:
    """The rollout tool's status, run as an operator would with the store's settings."""
    base = {k: v for k, v in os.environ.items() if k not in SHELL_SETTINGS}
    done = subprocess.run(
        [PYTHON, "-m", "infra.rollout", "status", "--server", model_server, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def figures(report: str) -> dict[int, tuple[int, dict[str, int]]]:
    """version -> (records, {label: records}) from the report's figures table."""
    table = {}
    for match in FIGURE_ROW.finditer(report):
        labels = dict(part.rsplit(" ", 1) for part in match[4].split(", "))
        table[int(match[1])] = (int(match[2]), {k: int(v) for k, v in labels.items()})
    return table


def held(deployment: Deployment, cassandra_fixture) -> Counter:
    """(version, label) -> records, read from the store itself, not through the tool."""
    if deployment.store == "sqlite":
        with sqlite3.connect(deployment.sqlite) as db:
            rows = db.execute("SELECT model_version, model_label FROM predictions").fetchall()
        return Counter((v, label or "(pinned)") for v, label in rows)
    rows = stored(cassandra_fixture, deployment.keyspace)
    return Counter((row.model_version, row.model_label or "(pinned)") for row in rows)


def old_record(days: float) -> Record:
    """A version-1 prediction made `days` ago, as the function would have recorded it."""
    record_id = uuid_from_time(datetime.now(UTC) - timedelta(days=days))
    return Record(
        id=record_id,
        created_at=time_of(record_id),
        digit=7,
        confidence=0.5,
        probabilities=(0.5, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1),
        model_name="mnist",
        model_version=1,
        model_label="stable",
        input_image=bytes(784),
        upload=Upload(SEVEN, "image/png", hashlib.sha256(SEVEN).hexdigest(), len(SEVEN)),
        latency_ms=3.0,
        verdict=None,  # recorded before the service gave verdicts
    )


def write_directly(deployment: Deployment, record: Record) -> None:
    if deployment.store == "sqlite":
        log = SqliteStore(deployment.sqlite)
    else:
        log = CassandraStore.from_env(deployment.env)
    try:
        log.save([record])
    finally:
        log.close()


def test_status_counts_every_recorded_image_per_version_and_label(
    deployment, model_server, request
):
    report = status(model_server, deployment.env)
    source = "Cassandra (CASSANDRA_* settings)" if deployment.store == "cassandra" else "SQLite"
    assert f"prediction store: {source}" in report
    expected = {v: (sum(labels.values()), labels) for v, labels in EXPECTED.items()}
    assert figures(report) == expected
    cassandra = request.getfixturevalue("cassandra") if deployment.store == "cassandra" else None
    held_counts = held(deployment, cassandra)
    assert held_counts == Counter(
        {(v, label): n for v, labels in HELD.items() for label, n in labels.items()}
    )
    answered = Counter(
        (a["model"]["version"], a["model"]["label"] or "(pinned)") for a in deployment.answers
    )
    assert answered == held_counts
    # 8 of the split's 8 images: version 1 answered pinned requests only
    assert re.search(rf"^  {STABLE_VERSION}\s+\d+\s+100\.0%", report, re.M)


def test_the_window_reaches_back_across_day_partitions(deployment, model_server):
    """Three days back is another Cassandra day partition (and outside 24 h). The old
    record was unpinned stable traffic, so it counts; version 1's pinned ones never do."""
    write_directly(deployment, old_record(days=3))
    assert 1 not in figures(status(model_server, deployment.env))
    report = status(model_server, deployment.env, "--window-hours", "100")
    wide = figures(report)
    assert wide[1] == (1, {"stable": 1})
    assert wide[STABLE_VERSION] == (8, {"stable": 6, "canary": 2})
    assert re.search(rf"^  {STABLE_VERSION}\s+\d+\s+88\.9%", report, re.M)  # 8 of 9 images


def test_status_names_a_cassandra_it_cannot_reach(model_server):
    env = {
        "PREDICTION_STORE": "cassandra",
        "CASSANDRA_CONTACT_POINTS": f"127.0.0.1:{free_port()}",
        "CASSANDRA_CONNECT_TIMEOUT_SECONDS": "2",
    }
    report = status(model_server, env)
    assert "prediction store: Cassandra (CASSANDRA_* settings)" in report
    assert re.search(r"^  cannot connect to Cassandra: NoHostAvailable", report, re.M), report
    row = rf"^  {STABLE_VERSION}\s+yes\s+ok\s+yes\s+canary, stable\s+AVAILABLE"
    assert re.search(row, report, re.M)
