"""What only the embedded SQLite prediction store does: one file in WAL mode, one transaction
per batch, the first of two writes of an id kept, and a file deleted or moved away noticed.

What it shares with the Cassandra log (round trips, history, claims, concurrency) is in
test_store_contract.py, which runs against both.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from dataclasses import replace

import pytest

from recognizer.records import IdempotencyClaim, StoreUnavailable, Upload, new_record_id
from recognizer.sqlite_store import SqliteStore
from tests.function.records_factory import make_record


@pytest.fixture
def log(tmp_path):
    store = SqliteStore(tmp_path / "log" / "predictions.sqlite3")
    yield store
    store.close()


def test_reading_never_waits_for_a_writer(tmp_path):
    """WAL mode: even a writer holding the file's exclusive lock leaves readers be."""
    path = tmp_path / "predictions.sqlite3"
    log = SqliteStore(path, timeout_seconds=0.5)
    record = make_record()
    log.save([record])
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("DELETE FROM predictions")  # not committed: readers see the record
    try:
        assert log.get(record.id) == record
        assert log.recent(10) == [record]
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        log.close()


def test_a_batch_is_saved_in_one_transaction(log):
    records = [make_record(digit=n) for n in range(3)]
    log.save(records)
    refused = replace(make_record(), upload=Upload(b"png", None, "00", 3))  # type: ignore[arg-type]
    failing_batch = [make_record(), refused]  # the database refuses the second row (NOT NULL)
    with pytest.raises(StoreUnavailable):
        log.save(failing_batch)
    assert log.get(failing_batch[0].id) is None  # nothing of the failed batch was kept
    assert len(log.recent(10)) == 3


def test_saving_an_id_again_keeps_the_first_record(log):
    """ON CONFLICT DO NOTHING: a second attempt's values are dropped (Cassandra keeps the
    last; test_store_contract.py has what both do: one record per id)."""
    first = make_record(digit=3)
    log.save([first])
    log.save([replace(first, digit=5, latency_ms=99.5)])
    assert log.get(first.id) == first


def claim_for(request: str) -> IdempotencyClaim:
    return IdempotencyClaim(request, (new_record_id(),))


def test_setting_up_waits_for_another_process_writing_the_new_file(tmp_path):
    """Worker processes open the same new file together; SQLite refuses the switch to WAL
    at once, without waiting, while another connection holds the write lock."""
    path = tmp_path / "predictions.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other_process_setup (x)")
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, other.execute, args=("COMMIT",)).start()
    log = SqliteStore(path)
    record = make_record()
    log.save([record])
    assert log.get(record.id) == record
    log.close()
    other.close()


def test_a_deleted_file_fails_the_write_then_a_new_file_takes_over(tmp_path):
    """SQLite would go on writing to the deleted file: a record nobody could ever read."""
    folder = tmp_path / "log"
    log = SqliteStore(folder / "predictions.sqlite3")
    log.save([make_record()])
    shutil.rmtree(folder)
    lost = make_record()
    with pytest.raises(StoreUnavailable, match="deleted or replaced"):
        log.save([lost])
    recorded = make_record()
    log.save([recorded])  # a new, empty file at the same path
    assert [r.id for r in log.recent(10)] == [recorded.id]
    assert [r.id for r in SqliteStore(folder / "predictions.sqlite3").recent(10)] == [recorded.id]
    log.close()


def test_a_moved_file_fails_ping_and_claims(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    log = SqliteStore(path)
    log.ping()
    path.rename(tmp_path / "moved-away.sqlite3")
    with pytest.raises(StoreUnavailable):
        log.ping()
    log.ping()  # recovered on a new file
    path.rename(tmp_path / "moved-again.sqlite3")
    with pytest.raises(StoreUnavailable):
        log.claim("key", claim_for("request"))
    log.close()


# The file the release before verdicts made (sqlite_store.py at 7c8a5ba): no verdict columns.
PREVIOUS_RELEASE_SCHEMA = """
CREATE TABLE predictions (
    id TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, digit INTEGER NOT NULL,
    confidence REAL NOT NULL, probabilities TEXT NOT NULL, model_name TEXT NOT NULL,
    model_version INTEGER NOT NULL, model_label TEXT, input_image BLOB NOT NULL, upload BLOB,
    upload_content_type TEXT NOT NULL, upload_sha256 TEXT NOT NULL,
    upload_size INTEGER NOT NULL, latency_ms REAL NOT NULL
);
"""


def test_a_file_from_before_verdicts_gains_their_columns_and_keeps_its_records(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    old = make_record(verdict=None)
    with sqlite3.connect(path) as db:
        db.executescript(PREVIOUS_RELEASE_SCHEMA)
        u = old.upload
        db.execute(
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (str(old.id), int(old.created_at.timestamp() * 1000), old.digit, old.confidence,
             json.dumps(list(old.probabilities)), old.model_name, old.model_version,
             old.model_label, old.input_image, u.content, u.content_type, u.sha256, u.size,
             old.latency_ms),
        )  # fmt: skip
    db.close()
    log = SqliteStore(path)
    assert log.get(old.id) == old  # read with no verdict: none was given then
    new = make_record()
    log.save([new])
    assert log.get(new.id).verdict == new.verdict
    log.close()
    assert SqliteStore(path).get(new.id) == new  # opening it again adds nothing twice
