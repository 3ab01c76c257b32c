"""CassandraLog against a live Cassandra, e.g. the docker-compose stack.

Runs only when CASSANDRA_CONTACT_POINTS is set (with the other CASSANDRA_* settings).
It applies the schema to its own keyspace (CASSANDRA_TEST_KEYSPACE, default mnist_it)
and writes into a randomly chosen day of 2001-2009, so it never meets real traffic;
that day's partitions are deleted afterwards.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cassandra.util import uuid_from_time

from infra.cassandra.apply_schema import SCHEMA, apply, render, split_statements
from recognizer.cassandra_log import CassandraLog, CassandraSettings, build_cluster, day_of
from recognizer.records import Record, Upload

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("CASSANDRA_CONTACT_POINTS", "").strip(),
        reason="CASSANDRA_CONTACT_POINTS is not set: no live Cassandra to test against",
    ),
]

KEYSPACE = os.environ.get("CASSANDRA_TEST_KEYSPACE", "").strip() or "mnist_it"
DAY = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(3000))
END_OF_DAY = DAY + timedelta(hours=23, minutes=59)
UPLOAD_CAP = 256 * 1024  # what the function keeps; larger uploads are stored as null


def make_record(created_at: datetime, upload: bytes = b"\x89PNG small", **changes) -> Record:
    created_at = created_at.replace(microsecond=created_at.microsecond // 1000 * 1000)
    record = Record(
        id=uuid_from_time(created_at),
        created_at=created_at,
        digit=3,
        confidence=0.97,
        probabilities=(0.001, 0.002, 0.003, 0.97, 0.004, 0.005, 0.006, 0.007, 0.001, 0.001),
        model_name="mnist",
        model_version=2,
        model_label="stable",
        input_image=bytes(range(256)) * 3 + bytes(16),
        upload=Upload(
            content=upload if len(upload) <= UPLOAD_CAP else None,
            content_type="image/png",
            sha256="cd" * 32,
            size=len(upload),
        ),
        latency_ms=8.5,
    )
    return replace(record, **changes)


@pytest.fixture(scope="module")
def settings() -> Iterator[CassandraSettings]:
    settings = CassandraSettings.from_env({**os.environ, "CASSANDRA_KEYSPACE": KEYSPACE})
    statements = render(split_statements(SCHEMA.read_text(encoding="utf-8")), keyspace=KEYSPACE)
    apply(statements, settings, wait=60.0, report=lambda line: None)
    apply(statements, settings, report=lambda line: None)  # a second run is harmless
    yield settings
    cluster = build_cluster(settings)
    try:
        session = cluster.connect()
        delete = session.prepare(f"DELETE FROM {KEYSPACE}.predictions WHERE day = ?")
        for back in range(3):
            session.execute(delete, [(DAY - timedelta(days=back)).date()])
    finally:
        cluster.shutdown()


@pytest.fixture
def store(settings: CassandraSettings) -> Iterator[CassandraLog]:
    log = CassandraLog(settings, clock=lambda: END_OF_DAY)
    yield log
    log.close()


def test_ping(store: CassandraLog) -> None:
    store.ping()


def test_records_read_back_by_id(store: CassandraLog) -> None:
    records = [make_record(DAY + timedelta(hours=1, seconds=i), digit=i) for i in range(5)]
    store.save(records)
    assert [store.get(record.id) for record in records] == records
    assert store.get(uuid_from_time(DAY + timedelta(hours=2))) is None


def test_upload_over_the_cap_is_null_and_under_it_is_kept(store: CassandraLog) -> None:
    kept = make_record(DAY + timedelta(hours=3), upload=os.urandom(UPLOAD_CAP))
    dropped = make_record(DAY + timedelta(hours=3, seconds=1), upload=os.urandom(UPLOAD_CAP + 1))
    pinned = make_record(DAY + timedelta(hours=3, seconds=2), model_label=None)
    store.save([kept, dropped, pinned])
    assert store.get(kept.id).upload.content == kept.upload.content
    got = store.get(dropped.id)
    assert got.upload.content is None and got.upload.size == UPLOAD_CAP + 1
    assert store.get(pinned.id).model_label is None


def test_recent_is_newest_first_across_days(store: CassandraLog) -> None:
    today = [make_record(DAY + timedelta(hours=h)) for h in (20, 22, 21)]
    yesterday = [make_record(DAY - timedelta(hours=h)) for h in (1, 2)]
    store.save([*today, *yesterday])
    assert day_of(yesterday[0].id) == (DAY - timedelta(days=1)).date()
    newest_first = sorted(today, key=lambda r: r.created_at, reverse=True)
    assert store.recent(3) == newest_first
    everything = store.recent(1000)  # this day's records from the other tests too
    times = [record.created_at for record in everything]
    assert times == sorted(times, reverse=True)
    assert everything[:3] == newest_first
    assert everything[-2:] == sorted(yesterday, key=lambda r: r.created_at, reverse=True)
