"""The embedded prediction store: zero setup, for local runs and tests.

One SQLite file in WAL mode (readers never block the writer) with `synchronous=FULL`,
so a committed record survives a power cut: a 200 means recorded. Connections are
opened lazily, one per thread, because functions-framework forks after import and
serves each request on a thread of its own.

SQLite goes on writing to a file that was deleted or moved away (the open descriptor
still works), so a write commits only while its files are still the ones at their paths:
the database, and its -wal and -shm files (a commit lands in the -wal file: one deleted
under a running store swallows every later commit). Otherwise the store answers
StoreUnavailable, every thread drops its connection, and the next use opens the files
at the path afresh.

While writes fail (a full disk, a read-only file), `ping` fails too, so readiness turns
503 with them; it tries a small write of its own to notice when they work again.
Messages never name the file: they reach clients.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from recognizer.records import (
    IDEMPOTENCY_WINDOW_SECONDS,
    Feedback,
    IdempotencyClaim,
    Page,
    Record,
    Retention,
    StoreUnavailable,
    Upload,
    order_key,
)
from recognizer.verdict import Verdict

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
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    content BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key_sha256 TEXT PRIMARY KEY,
    request_sha256 TEXT NOT NULL,
    record_ids TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_oldest_first ON idempotency_keys (created_at_ms);
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, filler BLOB NOT NULL);
"""
# Columns added after the first release, each added to an older file on opening (SQLite
# has no ADD COLUMN IF NOT EXISTS). NULL in a row written before them.
_ADDED_COLUMNS = (
    ("verdict", "TEXT"),  # digit, unsure or not_a_digit
    ("verdict_candidates", "TEXT"),  # JSON list of digits, most likely first
    ("verdict_reasons", "TEXT"),  # JSON list of reason codes
    ("feedback_digit", "INTEGER"),  # a person's correction; NULL: "not a digit", or none
    ("feedback_at_ms", "INTEGER"),  # when it was made; NULL when there is no correction
    ("feedback_client", "TEXT"),  # the correcting client
    ("client_key", "TEXT"),  # the requesting client (params.client_key)
    ("pinned", "INTEGER"),  # 1: the request pinned its version or label
    ("order_key", "TEXT"),  # records.order_key in hex: the history's order and cursor
    ("expires_at_ms", "INTEGER"),  # RETENTION_DAYS after it was written
)
# Made after the columns above exist: the history walks it, newest first.
_INDEXES = """
CREATE INDEX IF NOT EXISTS predictions_by_order ON predictions (order_key DESC);
CREATE INDEX IF NOT EXISTS predictions_newest_first ON predictions (created_at_ms DESC);
CREATE INDEX IF NOT EXISTS predictions_by_expiry ON predictions (expires_at_ms);
CREATE INDEX IF NOT EXISTS uploads_by_expiry ON uploads (expires_at_ms);
"""
PRUNE_EVERY_SECONDS = 60.0  # expired rows are deleted by a write at most this often
# How often a writer asks again for the write lock another process holds. SQLite's own
# busy handler sleeps 1, 2, 5, 10, 25 ... ms between tries, so a writer of one worker
# slept on long after the other's ~1 ms commit had ended (p50 35 ms at concurrency 8).
BUSY_POLL_SECONDS = 0.0005
ROW_OVERHEAD_BYTES = 2048  # a record without its upload: the 28x28 input, ids, JSON
# The files SQLite keeps beside the database in WAL mode; a commit writes into -wal.
_SIDE_FILES = ("-wal", "-shm")
_COLUMNS = (
    "id, created_at_ms, digit, confidence, probabilities, model_name, model_version, "
    "model_label, input_image, upload_content_type, upload_sha256, upload_size, "
    "latency_ms, verdict, verdict_candidates, verdict_reasons, client_key, pinned, "
    "order_key, expires_at_ms"
)
# A correction is an UPDATE of its record's row; the INSERT never names these columns.
_READ_COLUMNS = (
    "p.id, created_at_ms, digit, confidence, probabilities, model_name, model_version, "
    "model_label, input_image, upload_content_type, upload_sha256, upload_size, latency_ms, "
    "verdict, verdict_candidates, verdict_reasons, client_key, pinned, feedback_digit, "
    "feedback_at_ms, feedback_client"
)
_WITH_UPLOAD = (
    f"SELECT {_READ_COLUMNS}, u.content FROM predictions p "
    "LEFT JOIN uploads u ON u.id = p.id AND u.expires_at_ms > ?"
)
# No bytes read: whether they are stored comes from the uploads table's primary key.
_WITHOUT_UPLOAD = (
    f"SELECT {_READ_COLUMNS}, EXISTS (SELECT 1 FROM uploads u WHERE u.id = p.id "
    "AND u.expires_at_ms > ?) FROM predictions p"
)


class SqliteStore:
    """PredictionStore on a local SQLite file."""

    def __init__(
        self,
        path: Path,
        timeout_seconds: float = 5.0,
        idempotency_window_seconds: float = IDEMPOTENCY_WINDOW_SECONDS,
        retention: Retention | None = None,
    ) -> None:
        self._path = path
        self._retention = retention or Retention()
        self._pruned_at = -math.inf
        self._timeout = timeout_seconds
        self._idempotency_window_ms = int(idempotency_window_seconds * 1000)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready = False
        self._generation = 0  # raised when the files changed: every thread reconnects
        self._write_failure: str | None = None  # why the last write failed, until one works
        self._failed_write_bytes = 0  # about how much that write had to add to the files

    def save(self, records: Sequence[Record]) -> None:
        if not records:
            return
        now_ms = _now_ms()
        rows = [
            _to_row(record, now_ms + self._retention.records_seconds * 1000) for record in records
        ]
        expires = now_ms + self._retention.uploads_seconds * 1000
        uploads = [(str(r.id), r.upload.content, expires) for r in records if r.upload.content]
        placeholders = ", ".join("?" * len(rows[0]))
        size = sum(len(r.upload.content or b"") + ROW_OVERHEAD_BYTES for r in records)
        with self._writing("record", size), self._transaction() as connection:
            connection.executemany(
                f"INSERT INTO predictions ({_COLUMNS}) VALUES ({placeholders}) "
                "ON CONFLICT (id) DO NOTHING",
                rows,
            )
            connection.executemany(
                "INSERT INTO uploads (id, content, expires_at_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                uploads,
            )
            self._prune(connection, now_ms)

    def _prune(self, connection: sqlite3.Connection, now_ms: int) -> None:
        """Delete what outlived its retention (Cassandra's TTLs do it there), at most once
        a minute per process; reads never return an expired row meanwhile."""
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = time.monotonic()
        connection.execute("DELETE FROM predictions WHERE expires_at_ms <= ?", (now_ms,))
        connection.execute("DELETE FROM uploads WHERE expires_at_ms <= ?", (now_ms,))

    def claim(self, key_sha256: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        """Insert-if-absent, then read the holder, in one IMMEDIATE transaction: racing
        claims queue on the write lock and all but the first read the first one's row."""
        now_ms = int(time.time() * 1000)
        ids = json.dumps([str(record_id) for record_id in claim.record_ids])
        with self._writing("claim an idempotency key"), self._transaction() as connection:
            connection.execute(
                "DELETE FROM idempotency_keys WHERE created_at_ms <= ?",
                (now_ms - self._idempotency_window_ms,),
            )
            connection.execute(
                "INSERT INTO idempotency_keys (key_sha256, request_sha256, record_ids, "
                "created_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT (key_sha256) DO NOTHING",
                (key_sha256, claim.request_sha256, ids, now_ms),
            )
            request_sha256, held_ids = connection.execute(
                "SELECT request_sha256, record_ids FROM idempotency_keys WHERE key_sha256 = ?",
                (key_sha256,),
            ).fetchone()
        return IdempotencyClaim(request_sha256, tuple(uuid.UUID(i) for i in json.loads(held_ids)))

    def release(self, key_sha256: str, claim: IdempotencyClaim) -> None:
        """Forget the key if `claim` still holds it: its request was refused (a 4xx)."""
        ids = json.dumps([str(record_id) for record_id in claim.record_ids])
        with self._writing("release an idempotency key"), self._transaction() as connection:
            connection.execute(
                "DELETE FROM idempotency_keys "
                "WHERE key_sha256 = ? AND request_sha256 = ? AND record_ids = ?",
                (key_sha256, claim.request_sha256, ids),
            )

    def correct(self, record_id: uuid.UUID, feedback: Feedback) -> bool:
        at_ms = int(feedback.created_at.timestamp() * 1000)
        with self._writing("correct"), self._transaction() as connection:
            changed = connection.execute(
                "UPDATE predictions SET feedback_digit = ?, feedback_at_ms = ?, "
                "feedback_client = ? WHERE id = ? AND expires_at_ms > ?",
                (feedback.digit, at_ms, feedback.client_key, str(record_id), _now_ms()),
            ).rowcount
        return changed == 1

    def get(self, record_id: uuid.UUID, *, upload: bool = True) -> Record | None:
        now_ms = _now_ms()
        query = _WITH_UPLOAD if upload else _WITHOUT_UPLOAD
        with self._errors("read"):
            row = (
                self._connection()
                .execute(
                    f"{query} WHERE p.id = ? AND p.expires_at_ms > ?",
                    (now_ms, str(record_id), now_ms),
                )
                .fetchone()
            )
        return _from_row(row) if row else None

    def recent(self, limit: int) -> list[Record]:
        now_ms = _now_ms()
        with self._errors("read"):
            rows = (
                self._connection()
                .execute(
                    f"{_WITH_UPLOAD} WHERE p.expires_at_ms > ? ORDER BY order_key DESC LIMIT ?",
                    (now_ms, now_ms, limit),
                )
                .fetchall()
            )
        return [_from_row(row) for row in rows]

    def page(self, limit: int, before: uuid.UUID | None = None) -> Page:
        """The index on order_key: one range scan of limit + 1 rows at any depth."""
        limit = max(0, limit)
        cursor = "~" if before is None else _order_hex(before)  # "~" sorts after any hex
        now_ms = _now_ms()
        with self._errors("read"):
            rows = (
                self._connection()
                .execute(
                    f"{_WITHOUT_UPLOAD} WHERE order_key < ? AND expires_at_ms > ? "
                    "ORDER BY order_key DESC LIMIT ?",
                    (now_ms, cursor, now_ms, limit + 1),
                )
                .fetchall()
            )
        records = [_from_row(row) for row in rows]
        more = len(records) > limit
        records = records[:limit]
        return Page(records, records[-1].id if more and records else None)

    def delete(self, record_id: uuid.UUID) -> bool:
        """The record, its correction (in its row) and its upload, in one transaction."""
        with self._writing("erase"), self._transaction() as connection:
            connection.execute("DELETE FROM uploads WHERE id = ?", (str(record_id),))
            erased = connection.execute(
                "DELETE FROM predictions WHERE id = ?", (str(record_id),)
            ).rowcount
        return erased == 1

    def ping(self) -> None:
        with self._errors("reach"):
            self._connection().execute("SELECT 1 FROM predictions LIMIT 1").fetchall()
            self._check_file()
        if self._write_failure is not None:
            self._probe_write()

    def _probe_write(self) -> None:
        """Writes failed: try one that adds as much to the files as the failed one did (a
        small write may fit in pages SQLite already has, where the real one did not)."""
        failure, size = self._write_failure, self._failed_write_bytes
        try:
            with self._writing("write", size), self._transaction() as connection:
                connection.execute("INSERT INTO write_probe (filler) VALUES (zeroblob(?))", (size,))
            with self._errors("write"), self._transaction() as connection:
                connection.execute("DELETE FROM write_probe")
        except StoreUnavailable:
            raise StoreUnavailable(f"writes are failing: {failure}") from None

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.generation != self._generation:
            self._drop(connection)  # another thread found the files changed under it
            connection = None
        if connection is None:
            generation = self._generation
            connection = self._connect()
            # A first read makes SQLite open (and if need be create) -wal and -shm.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._local.files = self._identities()
            self._local.generation = generation
            self._local.connection = connection
        return connection

    def _identities(self) -> tuple[tuple[int, int] | None, ...]:
        paths = [self._path, *(Path(f"{self._path}{suffix}") for suffix in _SIDE_FILES)]
        return tuple(_file_identity(path) for path in paths)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that commits only if its file is still the one at the path."""
        connection = self._connection()
        with connection:
            self._begin(connection)
            yield connection
            if not self._moved():
                return
            connection.rollback()
        self._discard_moved(connection)

    def _begin(self, connection: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, asking for the write lock every BUSY_POLL_SECONDS until the
        timeout instead of through SQLite's busy handler, whose sleeps grow."""
        deadline = time.monotonic() + self._timeout
        connection.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    connection.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as error:
                    busy = error.sqlite_errorcode == sqlite3.SQLITE_BUSY
                    if not busy or time.monotonic() >= deadline:
                        raise
                time.sleep(BUSY_POLL_SECONDS)
        finally:
            connection.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    def _check_file(self) -> None:
        if self._moved():
            self._discard_moved(self._local.connection)

    def _moved(self) -> bool:
        """Whether any of this thread's files was deleted or replaced since it was opened
        (or its directory was: a new directory at the path is new files too)."""
        try:
            return self._identities() != self._local.files
        except OSError:
            return True

    def _discard_moved(self, connection: sqlite3.Connection) -> None:
        """Drop every thread's connection to files that changed; the next use opens anew."""
        with self._lock:
            self._generation += 1
            self._schema_ready = False
        self._drop(connection)
        raise StoreUnavailable("the database files were deleted or replaced while in use")

    def _drop(self, connection: sqlite3.Connection) -> None:
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        connection.close()

    @contextmanager
    def _writing(self, action: str, size: int = ROW_OVERHEAD_BYTES) -> Iterator[None]:
        """A write: its failure is remembered (readiness fails) until a write works."""
        try:
            with self._errors(action):
                yield
        except StoreUnavailable as error:
            self._write_failure, self._failed_write_bytes = str(error), size
            raise
        self._write_failure = None

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
                    _add_columns(connection, self._retention)
                    self._schema_ready = True
            except sqlite3.Error:
                connection.close()
                raise
            self._connections.append(connection)
        return connection

    def _errors(self, action: str) -> AbstractContextManager[None]:
        return _store_errors(f"could not {action} predictions in SQLite")


def _file_identity(path: Path) -> tuple[int, int] | None:
    """Device and inode of the file at `path`; None when there is none (OSError when its
    directory is gone)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise
        return None
    return status.st_dev, status.st_ino


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
        raise StoreUnavailable(f"{message}: {_reason(error)}") from error


def _reason(error: Exception) -> str:
    """What went wrong, without a file name: SQLite's own messages name none, an
    OSError's does (its strerror alone says what happened)."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)


def _add_columns(connection: sqlite3.Connection, retention: Retention) -> None:
    """Bring a file made by an older release up to this one: the added columns, the
    history's order key, expiry times counted from now, and uploads moved to their table."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}
    for name, kind in _ADDED_COLUMNS:
        if name not in present:
            connection.execute(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
    now_ms = _now_ms()
    older = connection.execute(
        "SELECT id FROM predictions WHERE order_key IS NULL OR expires_at_ms IS NULL"
    ).fetchall()
    connection.executemany(
        "UPDATE predictions SET order_key = ?, expires_at_ms = ? WHERE id = ?",
        [
            (_order_hex(uuid.UUID(id_)), now_ms + retention.records_seconds * 1000, id_)
            for (id_,) in older
        ],
    )
    connection.execute(
        "INSERT INTO uploads (id, content, expires_at_ms) SELECT id, upload, ? FROM predictions "
        "WHERE upload IS NOT NULL ON CONFLICT (id) DO NOTHING",
        (now_ms + retention.uploads_seconds * 1000,),
    )
    connection.execute("UPDATE predictions SET upload = NULL WHERE upload IS NOT NULL")
    connection.executescript(_INDEXES)
    connection.commit()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _order_hex(record_id: uuid.UUID) -> str:
    """records.order_key as text that sorts the same way."""
    tick, rest = order_key(record_id)
    return f"{tick:015x}{rest.hex()}"


def _to_row(record: Record, expires_at_ms: int) -> tuple:
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
        record.upload.content_type,
        record.upload.sha256,
        record.upload.size,
        record.latency_ms,
        *_verdict_columns(record.verdict),
        record.client_key,
        int(record.pinned),
        _order_hex(record.id),
        expires_at_ms,
    )


def _verdict_columns(verdict: Verdict | None) -> tuple[str | None, str | None, str | None]:
    if verdict is None:
        return None, None, None
    return verdict.kind, json.dumps(list(verdict.candidates)), json.dumps(list(verdict.reasons))


def _from_row(row: tuple) -> Record:
    (id_, created_ms, digit, confidence, probabilities, name, version, label,
     input_image, content_type, sha256, size, latency_ms, verdict, candidates, reasons,
     client_key, pinned, feedback_digit, feedback_at_ms, feedback_client, upload) = row  # fmt: skip
    # The last column is the upload's bytes, or (read without them) whether they are stored.
    content, stored = (
        (upload, None) if upload is None or isinstance(upload, bytes) else (None, bool(upload))
    )
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
        upload=Upload(content, content_type, sha256, size, stored),
        latency_ms=latency_ms,
        verdict=None
        if verdict is None
        else Verdict(verdict, tuple(json.loads(candidates)), tuple(json.loads(reasons))),
        feedback=None
        if feedback_at_ms is None
        else Feedback(
            feedback_digit, datetime.fromtimestamp(feedback_at_ms / 1000, tz=UTC), feedback_client
        ),
        client_key=client_key,
        pinned=bool(pinned),
    )
