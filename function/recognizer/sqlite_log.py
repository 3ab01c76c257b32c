"""The embedded prediction log: zero setup, for local runs and tests.

One SQLite file in WAL mode (readers never block the writer) with `synchronous=FULL`,
so a committed record survives a power cut: a 200 means recorded. Connections are
opened lazily, one per thread, because functions-framework forks after import and
serves each request on a thread of its own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from recognizer.records import Record, StoreUnavailable, Upload

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    digit INTEGER NOT NULL,
    confidence REAL NOT NULL,
    probabilities TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    model_label TEXT,
    input_image BLOB NOT NULL,
    upload BLOB,
    upload_content_type TEXT NOT NULL,
    upload_sha256 TEXT NOT NULL,
    upload_size INTEGER NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_newest_first ON predictions (created_at_ms DESC);
"""
_COLUMNS = (
    "id, created_at_ms, digit, confidence, probabilities, model_name, model_version, "
    "model_label, input_image, upload, upload_content_type, upload_sha256, upload_size, latency_ms"
)


class SqliteLog:
    """PredictionLog on a local SQLite file."""

    def __init__(self, path: Path, timeout_seconds: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready = False

    def save(self, records: Sequence[Record]) -> None:
        if not records:
            return
        rows = [_to_row(record) for record in records]
        placeholders = ", ".join("?" * len(rows[0]))
        with self._errors("record"), self._connection() as connection:
            connection.executemany(
                f"INSERT INTO predictions ({_COLUMNS}) VALUES ({placeholders})", rows
            )

    def get(self, record_id: uuid.UUID) -> Record | None:
        with self._errors("read"):
            row = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM predictions WHERE id = ?", (str(record_id),))
                .fetchone()
            )
        return _from_row(row) if row else None

    def recent(self, limit: int) -> list[Record]:
        with self._errors("read"):
            rows = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM predictions "
                    "ORDER BY created_at_ms DESC, rowid DESC LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        return [_from_row(row) for row in rows]

    def ping(self) -> None:
        with self._errors("reach"):
            self._connection().execute("SELECT 1 FROM predictions LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    def _connect(self) -> sqlite3.Connection:
        """Open this thread's connection; the first one also sets up the file.

        Setup (WAL, schema) happens once per process, under the lock, before any
        other thread connects. IMMEDIATE transactions take the
        write lock up front, so a writer waits its turn (up to the timeout) instead
        of failing on a snapshot that another writer made stale.
        """
        with self._lock:
            if not self._schema_ready:
                self._path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self._path,
                timeout=self._timeout,
                check_same_thread=False,
                isolation_level="IMMEDIATE",
            )
            try:
                connection.execute("PRAGMA synchronous=FULL")
                if not self._schema_ready:
                    _switch_to_wal(connection, self._timeout)
                    connection.executescript(_SCHEMA)
                    self._schema_ready = True
            except sqlite3.Error:
                connection.close()
                raise
            self._connections.append(connection)
        return connection

    def _errors(self, action: str) -> AbstractContextManager[None]:
        return _store_errors(f"could not {action} predictions in {self._path}")


def _switch_to_wal(connection: sqlite3.Connection, timeout_seconds: float) -> None:
    """Retry the switch while the file is busy: SQLite fails it at once, without
    waiting, if another process is setting up or writing the same new file."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def _store_errors(message: str) -> Iterator[None]:
    """Turn any SQLite or filesystem error into StoreUnavailable, naming what failed."""
    try:
        yield
    except (sqlite3.Error, OSError) as error:
        raise StoreUnavailable(f"{message}: {error}") from error


def _to_row(record: Record) -> tuple:
    return (
        str(record.id),
        int(record.created_at.timestamp() * 1000),
        record.digit,
        record.confidence,
        json.dumps(list(record.probabilities)),
        record.model_name,
        record.model_version,
        record.model_label,
        record.input_image,
        record.upload.content,
        record.upload.content_type,
        record.upload.sha256,
        record.upload.size,
        record.latency_ms,
    )


def _from_row(row: tuple) -> Record:
    (id_, created_ms, digit, confidence, probabilities, name, version, label,
     input_image, upload, content_type, sha256, size, latency_ms) = row  # fmt: skip
    return Record(
        id=uuid.UUID(id_),
        created_at=datetime.fromtimestamp(created_ms / 1000, tz=UTC),
        digit=digit,
        confidence=confidence,
        probabilities=tuple(json.loads(probabilities)),
        model_name=name,
        model_version=version,
        model_label=label,
        input_image=input_image,
        upload=Upload(upload, content_type, sha256, size),
        latency_ms=latency_ms,
    )
