"""The SQLite store under a hostile host: its files deleted, replaced or moved under it, and
a full disk (issue 12).

SQLite goes on writing into a deleted -wal file through its open descriptor: every commit
after the deletion answered 200 and was lost. A write now commits only while the
database, -wal and -shm are the files it opened; a full disk fails writes and readiness
together; no message names the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from recognizer.records import StoreUnavailable
from recognizer.sqlite_store import SqliteStore
from tests.function.records_factory import make_record


@pytest.fixture
def sqlite_path(tmp_path) -> Path:
    return tmp_path / "store" / "predictions.sqlite3"


def _durable(path: Path, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Which of `ids` a new process would find: read through a fresh connection."""
    with sqlite3.connect(path) as connection:
        found = {row[0] for row in connection.execute("SELECT id FROM predictions")}
    return [record_id for record_id in ids if str(record_id) in found]


def _replace(path: Path) -> None:
    """Put a different file (same bytes, new inode) where `path` was."""
    copy = path.with_name(path.name + ".copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)


CHANGES = {
    "wal-deleted": lambda p: Path(f"{p}-wal").unlink(),
    "shm-deleted": lambda p: Path(f"{p}-shm").unlink(),
    "wal-replaced": lambda p: _replace(Path(f"{p}-wal")),
    "shm-replaced": lambda p: _replace(Path(f"{p}-shm")),
    "all-deleted": lambda p: [Path(f"{p}{s}").unlink() for s in ("", "-wal", "-shm")],
    "directory-moved": lambda p: p.parent.rename(p.parent.with_name("moved")),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_write_after_the_files_changed_is_refused_and_every_acknowledged_one_kept(
    sqlite_path, change
):
    """Deleting -wal under load: every later commit went into the deleted file, answered
    200 and was lost. Now each acknowledged write is in the files at the path."""
    store = SqliteStore(sqlite_path)
    acknowledged = []
    first = make_record()
    store.save([first])
    acknowledged.append(first.id)
    CHANGES[change](sqlite_path)
    refused = make_record()
    with pytest.raises(StoreUnavailable, match="deleted or replaced"):
        store.save([refused])
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # the store carries on with the files now at the path
        record = make_record()
        store.save([record])
        acknowledged.append(record.id)
    later = acknowledged[1:]
    store.close()
    assert _durable(sqlite_path, later) == later
    assert _durable(sqlite_path, [refused.id]) == []


def test_every_thread_drops_its_connection_when_the_files_changed(sqlite_path):
    store = SqliteStore(sqlite_path)
    store.save([make_record()])
    other_ready, go, other_done = threading.Event(), threading.Event(), threading.Event()
    results: list[object] = []

    def other_thread():
        store.save([make_record()])  # this thread's connection, to the first files
        other_ready.set()
        go.wait(10)
        record = make_record()
        try:
            store.save([record])
            results.append(record.id)
        except StoreUnavailable as error:
            results.append(error)
        other_done.set()

    threading.Thread(target=other_thread, daemon=True).start()
    assert other_ready.wait(10)
    Path(f"{sqlite_path}-wal").unlink()
    with pytest.raises(StoreUnavailable):
        store.save([make_record()])
    go.set()
    assert other_done.wait(10)
    (outcome,) = results
    store.close()
    if isinstance(outcome, uuid.UUID):  # acknowledged: then it must be in the files
        assert _durable(sqlite_path, [outcome]) == [outcome]


# --- a full disk: 503, not ready, and no path in the message ---------------------------------


def _fill_the_disk(store: SqliteStore) -> None:
    """SQLITE_FULL, as a full disk gives it: this thread's connection may not grow the file."""
    connection = store._connection()
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")


def _free_the_disk(store: SqliteStore) -> None:
    store._connection().execute("PRAGMA max_page_count = 1073741823")


def test_on_a_full_disk_writes_fail_readiness_fails_and_no_path_is_named(sqlite_path):
    store = SqliteStore(sqlite_path)
    store.save([make_record()])
    store.ping()
    _fill_the_disk(store)
    big = [make_record() for _ in range(50)]
    with pytest.raises(StoreUnavailable) as failed:
        store.save(big)
    assert "full" in str(failed.value)
    with pytest.raises(StoreUnavailable) as not_ready:
        store.ping()
    for message in (str(failed.value), str(not_ready.value)):
        assert str(sqlite_path.parent) not in message and "/" not in message, message
    _free_the_disk(store)
    store.ping()  # ready again once a write works
    store.save(big)
    store.close()


def test_a_store_error_names_no_path(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    store = SqliteStore(blocked / "predictions.sqlite3")
    with pytest.raises(StoreUnavailable) as failed:
        store.save([make_record()])
    assert str(tmp_path) not in str(failed.value), failed.value


def test_over_http_a_full_disk_is_a_503_and_not_ready_until_writes_work(function_env, monkeypatch):
    """The finding as it was seen: writes failed with 503 while /readyz stayed ready, and
    the message named the database path."""
    import functions_framework

    from recognizer import sqlite_store
    from tests.conftest import ROOT
    from tests.data.hostile import corpus

    connections: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def tracked(*args, **kwargs):
        connection = real_connect(*args, **kwargs)
        connections.append(connection)
        return connection

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", tracked)
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    client = app.test_client()
    seven = (corpus.HERE / "digit-7.png").read_bytes()
    assert client.post("/predict", data=seven, content_type="image/png").status_code == 200
    assert client.get("/readyz").status_code == 200
    for connection in connections:  # the disk fills up: no page can be added
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")
    big = seven + bytes(200_000)  # stored with the record: needs new pages
    failed = client.post("/predict", data=big, content_type="image/png")
    assert failed.status_code == 503, failed.get_data(as_text=True)
    assert failed.get_json()["error"]["code"] == "store_unavailable"
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.get_data(as_text=True)
    assert ready.get_json()["checks"]["prediction_store"].startswith("failing")
    for text in (failed.get_data(as_text=True), ready.get_data(as_text=True)):
        assert str(function_env.parent) not in text and "sqlite3" not in text, text
    for connection in connections:  # room again
        connection.execute("PRAGMA max_page_count = 1073741823")
    assert client.get("/readyz").status_code == 200
    assert client.post("/predict", data=big, content_type="image/png").status_code == 200
