"""A writer waiting for another process's SQLite write lock asks again every
BUSY_POLL_SECONDS (sqlite_store._begin) instead of through SQLite's growing sleeps, and
still gives up at its timeout. The other process is a plain sqlite3 connection holding
BEGIN IMMEDIATE; the store under test is the real one on the same file.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest

from recognizer.records import StoreUnavailable
from recognizer.sqlite_store import SqliteStore
from tests.function.records_factory import make_record


def hold_write_lock(path, release: threading.Event, held: threading.Event) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    held.set()
    release.wait(30)
    other.execute("COMMIT")
    other.close()


def test_a_save_waits_for_the_other_writer_then_records(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    store = SqliteStore(path, timeout_seconds=10)
    store.save([make_record()])  # the file and its schema exist
    release, held = threading.Event(), threading.Event()
    other = threading.Thread(target=hold_write_lock, args=(path, release, held))
    other.start()
    held.wait(10)
    record = make_record()
    saving = threading.Thread(target=store.save, args=([record],))
    saving.start()
    saving.join(0.3)
    assert saving.is_alive()  # still waiting for the lock
    assert store.get(record.id) is None
    release.set()
    saving.join(10)
    other.join(10)
    assert store.get(record.id) is not None
    # The connection's own busy timeout is back for everything else.
    assert store._connection().execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    store.close()


def test_a_save_gives_up_at_its_timeout(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    store = SqliteStore(path, timeout_seconds=0.2)
    store.save([make_record()])
    release, held = threading.Event(), threading.Event()
    other = threading.Thread(target=hold_write_lock, args=(path, release, held))
    other.start()
    held.wait(10)
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.save([make_record()])
    finally:
        release.set()
        other.join(10)
    store.save([make_record()])  # and works again once the lock is free
    store.close()
