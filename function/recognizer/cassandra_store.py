"""The production prediction store: one partition per UTC day, and the idempotency keys.

functions-framework imports this module in gunicorn's master and then forks, and a
driver `Cluster` made before the fork is broken in the worker. So nothing touches the
network until first use; the Cluster/Session is then made once per process, under a
lock (the server runs many threads), reused by every invocation and shut down at exit.

Idempotency keys live in a second table, claimed with a lightweight transaction
(INSERT ... IF NOT EXISTS, so the first of racing claims wins) and forgotten after
records.IDEMPOTENCY_WINDOW_SECONDS through a TTL; a record is written with a plain
INSERT, an upsert, so a retry writing the same id adds no second row.

Retries are bounded everywhere: the driver's default RetryPolicy retries a read timeout
at most once (and only when enough replicas answered), never a timed-out write (except
a batch log write, once), an Unavailable once on the next host, and a connection or
server error on the next host of the query plan, each host at most once; all of it
within `request_timeout`, which bounds the whole request. A failed connect is retried
only by the next call.

The schema lives in infra/cassandra/schema.cql. Only cassandra-driver and the standard
library are imported: this ships in the light function.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cassandra import ConsistencyLevel, DriverException, OperationTimedOut, WriteTimeout
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.pool import NoConnectionsAvailable
from cassandra.protocol import ErrorMessage
from cassandra.query import UNSET_VALUE, PreparedStatement, dict_factory

from recognizer.config import CassandraSettings
from recognizer.records import (
    IDEMPOTENCY_WINDOW_SECONDS,
    Feedback,
    IdempotencyClaim,
    Record,
    StoreUnavailable,
    Upload,
    time_of,
)
from recognizer.verdict import Verdict

_log = logging.getLogger(__name__)

TABLE = "predictions"
IDEMPOTENCY_TABLE = "idempotency_keys"

# What the driver raises when Cassandra cannot serve a request: all of it means "503".
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    DriverException,  # Unavailable, Read/WriteTimeout, OperationTimedOut, InvalidRequest...
    NoHostAvailable,
    ConnectionException,
    NoConnectionsAvailable,
    ErrorMessage,
    OSError,  # sockets, DNS, TLS
)

_COLUMNS = (
    "day",
    "id",
    "created_at",
    "digit",
    "confidence",
    "probabilities",
    "model_name",
    "model_version",
    "model_label",
    "input_image",
    "upload",
    "upload_content_type",
    "upload_sha256",
    "upload_size",
    "latency_ms",
    "verdict",
    "verdict_candidates",
    "verdict_reasons",
)
# A correction is written into its record's row (an UPDATE of the same day and id, so the
# day-bucketed log needs no second table) and never by the INSERT: a retried INSERT of
# the record leaves any correction as it was.
_FEEDBACK_COLUMNS = ("feedback_digit", "feedback_at")
_READ_COLUMNS = ", ".join(_COLUMNS[1:] + _FEEDBACK_COLUMNS)  # `day` is known from the id
PING_QUERY = "SELECT release_version FROM system.local"
# After a write failed, readiness writes this key (never a SHA-256 in hex, so no claim
# can have it) at the writes' consistency, with a short TTL, until one such write works:
# system.local answers from the coordinator alone, even when no write can be made.
PROBE_KEY = "write-probe"
PROBE_TTL_SECONDS = 60
_WRITE_WINDOW = 4  # writes of one save in flight at once
# After a failed connect, requests fail at once for this long instead of each waiting
# out a connect timeout of its own, one after another behind the lock.
CONNECT_RETRY_SECONDS = 1.0
# Reconnecting to a node that was down: soon, and never giving up (the default doubles
# to 10 minutes and stops after 64 attempts: the function then needed a restart).
RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS = 0.5, 5.0
MAX_RECENT = 10_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def build_cluster(settings: CassandraSettings) -> Cluster:
    """A driver Cluster for these settings; it touches the network only on connect()."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc)),
        consistency_level=ConsistencyLevel.name_to_value[settings.consistency],
        request_timeout=settings.request_timeout,
        row_factory=dict_factory,
    )
    auth = None
    if settings.username is not None:
        auth = PlainTextAuthProvider(username=settings.username, password=settings.password)
    ssl_context = None
    if settings.ssl_ca_file is not None:
        ssl_context = ssl.create_default_context(cafile=settings.ssl_ca_file)
        ssl_context.check_hostname = settings.ssl_verify_hostname
    return Cluster(
        contact_points=list(settings.contact_points),
        port=settings.port,
        protocol_version=settings.protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=auth,
        ssl_context=ssl_context,
        connect_timeout=settings.connect_timeout,
        reconnection_policy=ExponentialReconnectionPolicy(
            RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS, max_attempts=None
        ),
    )


def day_of(record_id: uuid.UUID) -> date:
    """The UTC day bucket of a version-1 UUID: the day of the time inside it."""
    return time_of(record_id).date()


def _verdict_values(verdict: Verdict | None) -> tuple[Any, ...]:
    if verdict is None:
        return None, None, None
    return verdict.kind, list(verdict.candidates), list(verdict.reasons)


def _float32(value: float) -> float:
    """The shortest decimal with the same float32: 0.998 reads back as 0.998, not 0.99800002."""
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _utc(value: datetime) -> datetime:
    """The driver returns naive UTC datetimes; records carry aware ones, to the millisecond."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    return _EPOCH + timedelta(milliseconds=(micros + 500) // 1000)


# Node addresses in driver messages: IPv4 (with a port or not), [IPv6]:port, bare IPv6,
# host:port. They reach clients in error messages, and clients have no business with them.
_ADDRESS = re.compile(
    r"\[[0-9A-Fa-f:.]+\](?::\d+)?"
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"
    r"|\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}\b"
    r"|\b[A-Za-z0-9][A-Za-z0-9.-]*:\d{2,5}\b"
)


def _busy(exc: BaseException) -> bool:
    """The driver sent nothing: every connection's socket buffer or request ids were full."""
    return (
        isinstance(exc, NoHostAvailable)
        and bool(exc.errors)
        and all(isinstance(e, ConnectionBusy | NoConnectionsAvailable) for e in exc.errors.values())
    )


def _unrecorded(failures: Sequence[BaseException], total: int) -> str:
    """Why a save failed. A write that timed out may still be applied by its replicas (a
    frozen node applies it when it resumes), so it is never called unrecorded."""
    if any(_timed_out(failure) for failure in failures):
        return (
            f"Cassandra did not confirm {len(failures)} of {total} predictions in time: they "
            "may still be recorded. Retry with the same Idempotency-Key to record them once: "
            f"{_describe(failures[0])}"
        )
    return f"Cassandra did not record {len(failures)} of {total} predictions: " + _describe(
        failures[0]
    )


def _timed_out(exc: BaseException) -> bool:
    if isinstance(exc, NoHostAvailable):
        return any(_timed_out(error) for error in exc.errors.values())
    return isinstance(exc, WriteTimeout | OperationTimedOut)


def _describe(exc: BaseException) -> str:
    """The error's kind and message, node addresses taken out (the driver logs them)."""
    return _ADDRESS.sub("<node>", f"{type(exc).__name__}: {exc}")


@dataclass
class _Connection:
    cluster: Any
    session: Any
    insert: PreparedStatement
    select_one: PreparedStatement
    select_day: PreparedStatement
    claim: PreparedStatement
    pid: int
    release: PreparedStatement | None = None  # prepared on first use: refusals are rare
    correct: PreparedStatement | None = None  # so are corrections


def _prepared_lwt(conn: _Connection, query: str) -> PreparedStatement:
    """A lightweight transaction prepared on first use (refusals and corrections are rare),
    idempotent, at the claims' serial consistency."""
    try:
        statement = conn.session.prepare(query)
    except DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"Cassandra prepare failed: {_describe(exc)}") from exc
    statement.is_idempotent = True
    statement.serial_consistency_level = conn.claim.serial_consistency_level
    return statement


class CassandraStore:
    """PredictionStore on Cassandra. Every driver failure surfaces as StoreUnavailable."""

    def __init__(
        self,
        settings: CassandraSettings,
        *,
        cluster_factory: Callable[[CassandraSettings], Any] = build_cluster,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        idempotency_window_seconds: int = IDEMPOTENCY_WINDOW_SECONDS,
    ) -> None:
        self.settings = settings
        self._window = int(idempotency_window_seconds)  # a CQL TTL is whole seconds
        self._cluster_factory = cluster_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._connect_failure: tuple[float, str] | None = None  # (until when, why)
        self._closed = False
        self._write_failure: str | None = None  # why the last write failed, until one works

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CassandraStore:
        """For tools that only read the store: CASSANDRA_* (default: os.environ), checked by
        CassandraSettings.from_env; connects on first use."""
        return cls(CassandraSettings.from_env(env))

    def __repr__(self) -> str:
        return f"CassandraStore({self.settings!r})"

    # -- connection -------------------------------------------------------------------

    def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.pid == os.getpid():
            return conn
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the Cassandra prediction store is closed")
            # A connection inherited through fork() is unusable: make this process its own.
            if self._conn is None or self._conn.pid != os.getpid():
                failed = self._connect_failure
                if failed is not None and time.monotonic() < failed[0]:
                    raise StoreUnavailable(failed[1])
                try:
                    self._conn = self._connect()
                except StoreUnavailable as exc:
                    self._connect_failure = (time.monotonic() + CONNECT_RETRY_SECONDS, str(exc))
                    raise
                self._connect_failure = None
            return self._conn

    def _connect(self) -> _Connection:
        ks, cluster = self.settings.keyspace, None
        try:
            cluster = self._cluster_factory(self.settings)
            session = cluster.connect()
            insert = session.prepare(
                f"INSERT INTO {ks}.{TABLE} ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
            )
            select_one = session.prepare(
                f"SELECT {_READ_COLUMNS} FROM {ks}.{TABLE} WHERE day = ? AND id = ?"
            )
            select_day = session.prepare(
                f"SELECT {_READ_COLUMNS} FROM {ks}.{TABLE} WHERE day = ? LIMIT ?"
            )
            claim = session.prepare(
                f"INSERT INTO {ks}.{IDEMPOTENCY_TABLE} "
                "(key_sha256, request_sha256, record_ids, created_at) VALUES (?, ?, ?, ?) "
                f"IF NOT EXISTS USING TTL {self._window}"
            )
        except DRIVER_ERRORS as exc:
            if cluster is not None:
                cluster.shutdown()  # a failed start is retried on the next call
            raise StoreUnavailable(f"cannot connect to Cassandra: {_describe(exc)}") from exc
        # Same id, same row; a claim that ran already answers with itself: safe to retry.
        for statement in (insert, select_one, select_day, claim):
            statement.is_idempotent = True
        local = self.settings.consistency.startswith("LOCAL_")
        claim.serial_consistency_level = (
            ConsistencyLevel.LOCAL_SERIAL if local else ConsistencyLevel.SERIAL
        )
        if self._conn is None:  # first connection of this object
            atexit.register(self.close)
        _log.info(
            "connected to Cassandra %s (local DC %s, keyspace %s, consistency %s)",
            ", ".join(f"{h}:{p}" for h, p in self.settings.contact_points),
            self.settings.local_dc,
            ks,
            self.settings.consistency,
        )
        return _Connection(cluster, session, insert, select_one, select_day, claim, os.getpid())

    def _query(
        self,
        conn: _Connection,
        statement: PreparedStatement,
        values: Sequence[Any],
        action: str = "read",
    ) -> list:
        bound = statement.bind(values)  # a TypeError here is a bug, not an outage
        try:
            return self._execute(conn, bound)
        except DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Cassandra {action} failed: {_describe(exc)}") from exc

    def _execute(self, conn: _Connection, statement: Any) -> list:
        """Execute, waiting out a busy connection (backpressure) within the request timeout."""
        deadline = time.monotonic() + self.settings.request_timeout
        pause = 0.002
        while True:
            try:
                return list(conn.session.execute(statement))
            except NoHostAvailable as exc:
                if not _busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- PredictionStore ----------------------------------------------------------------

    def save(self, records: Sequence[Record]) -> None:
        """Write the records a few at a time (no multi-partition batch: blobs, size limits)."""
        if not records:
            return
        conn = self._connection()
        unset = UNSET_VALUE  # a null would write a tombstone; unset writes nothing
        statements = [
            conn.insert.bind([unset if v is None else v for v in self._values(r)]) for r in records
        ]
        with self._writing():
            failures = self._write_all(conn, statements)
            if failures:
                raise StoreUnavailable(_unrecorded(failures, len(records))) from failures[0]

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write: its failure is remembered (readiness fails) until a write works."""
        try:
            yield
        except StoreUnavailable as error:
            self._write_failure = str(error)
            raise
        self._write_failure = None

    def _write_all(self, conn: _Connection, statements: Sequence[Any]) -> list[BaseException]:
        """Every write, `_WRITE_WINDOW` in flight at once, waiting for all even after a failure.

        Sending a 64-image batch of 256 KiB uploads at once filled the connection's socket
        buffer, and the driver then refused this request's writes and every other thread's
        queries with ConnectionBusy. A small window keeps the connection free for others."""
        failures: list[BaseException] = []
        for start in range(0, len(statements), _WRITE_WINDOW):
            window = statements[start : start + _WRITE_WINDOW]
            try:
                futures = [conn.session.execute_async(s) for s in window]
            except DRIVER_ERRORS as exc:
                raise StoreUnavailable(f"Cassandra write failed: {_describe(exc)}") from exc
            for statement, future in zip(window, futures, strict=True):
                try:
                    future.result()
                except DRIVER_ERRORS as exc:
                    if not _busy(exc):
                        failures.append(exc)
                        continue
                    try:
                        self._execute(conn, statement)  # refused unsent: send it again
                    except DRIVER_ERRORS as again:
                        failures.append(again)
        return failures

    def claim(self, key_sha256: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        """A lightweight transaction: applied, the claim is ours; not applied, Cassandra
        answers with the row that holds the key (a claim that expired is gone)."""
        conn = self._connection()
        values = (key_sha256, claim.request_sha256, list(claim.record_ids), self._clock())
        with self._writing():
            [row] = self._query(conn, conn.claim, values, action="idempotency claim")
        if row["[applied]"]:
            return claim
        return IdempotencyClaim(row["request_sha256"], tuple(row["record_ids"]))

    def release(self, key_sha256: str, claim: IdempotencyClaim) -> None:
        """A lightweight delete, applied only while `claim`'s request still holds the key."""
        conn = self._connection()
        if conn.release is None:
            conn.release = _prepared_lwt(
                conn,
                f"DELETE FROM {self.settings.keyspace}.{IDEMPOTENCY_TABLE} "
                "WHERE key_sha256 = ? IF request_sha256 = ?",
            )
        values = (key_sha256, claim.request_sha256)
        with self._writing():
            self._query(conn, conn.release, values, action="idempotency release")

    def correct(self, record_id: uuid.UUID, feedback: Feedback) -> bool:
        """An UPDATE ... IF EXISTS (a lightweight transaction): it never makes a row for
        an id that has none, and corrections of one record apply one after another."""
        if record_id.version != 1:
            return False
        conn = self._connection()
        if conn.correct is None:  # the same correction again changes nothing: idempotent
            conn.correct = _prepared_lwt(
                conn,
                f"UPDATE {self.settings.keyspace}.{TABLE} "
                "SET feedback_digit = ?, feedback_at = ? WHERE day = ? AND id = ? IF EXISTS",
            )
        values = (feedback.digit, feedback.created_at, day_of(record_id), record_id)
        with self._writing():
            [row] = self._query(conn, conn.correct, values, action="correction")
        return bool(row["[applied]"])

    def get(self, record_id: uuid.UUID) -> Record | None:
        if record_id.version != 1:  # only time-based ids are ever stored
            return None
        conn = self._connection()
        rows = self._query(conn, conn.select_one, (day_of(record_id), record_id))
        return self._record(rows[0]) if rows else None

    def recent(self, limit: int) -> list[Record]:
        """Today's bucket first, then earlier days, at most `lookback_days` buckets."""
        if limit <= 0:
            return []
        limit = min(limit, MAX_RECENT)  # LIMIT is a 32-bit int; a page this big is plenty
        conn = self._connection()
        today = self._clock().astimezone(UTC).date()
        records: list[Record] = []
        for back in range(self.settings.lookback_days):
            day = today - timedelta(days=back)
            rows = self._query(conn, conn.select_day, (day, limit - len(records)))
            records.extend(self._record(row) for row in rows)
            if len(records) >= limit:
                break
        return records[:limit]

    def ping(self) -> None:
        """Connects (preparing the statements checks the table exists) and asks the node.
        While writes fail, it also tries a write of its own (as SqliteStore does): a node
        can answer system.local when no write reaches enough replicas."""
        conn = self._connection()
        try:
            self._execute(conn, PING_QUERY)
        except DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Cassandra does not answer: {_describe(exc)}") from exc
        failure = self._write_failure
        if failure is None:
            return
        probe = (
            f"INSERT INTO {self.settings.keyspace}.{IDEMPOTENCY_TABLE} (key_sha256, created_at) "
            f"VALUES (%s, %s) USING TTL {PROBE_TTL_SECONDS}"
        )
        try:
            conn.session.execute(probe, (PROBE_KEY, self._clock()))
        except DRIVER_ERRORS:
            raise StoreUnavailable(f"writes are failing: {failure}") from None
        self._write_failure = None

    def close(self) -> None:
        with self._lock:
            conn, self._conn, self._closed = self._conn, None, True
        atexit.unregister(self.close)
        if conn is not None and conn.pid == os.getpid():
            conn.cluster.shutdown()

    # -- rows -------------------------------------------------------------------------

    @staticmethod
    def _values(record: Record) -> tuple[Any, ...]:
        if record.id.version != 1:
            raise ValueError(f"record id {record.id} is not a time-based (version 1) UUID")
        upload = record.upload
        return (
            day_of(record.id),
            record.id,
            record.created_at,
            record.digit,
            record.confidence,
            list(record.probabilities),
            record.model_name,
            record.model_version,
            record.model_label,
            record.input_image,
            upload.content,
            upload.content_type,
            upload.sha256,
            upload.size,
            record.latency_ms,
            *_verdict_values(record.verdict),
        )

    @staticmethod
    def _record(row: Mapping[str, Any]) -> Record:
        return Record(
            id=row["id"],
            created_at=_utc(row["created_at"]),
            digit=row["digit"],
            confidence=_float32(row["confidence"]),
            probabilities=tuple(_float32(p) for p in row["probabilities"] or ()),
            model_name=row["model_name"],
            model_version=row["model_version"],
            model_label=row["model_label"],
            input_image=bytes(row["input_image"] or b""),
            upload=Upload(
                content=None if row["upload"] is None else bytes(row["upload"]),
                content_type=row["upload_content_type"],
                sha256=row["upload_sha256"],
                size=row["upload_size"],
            ),
            latency_ms=row["latency_ms"],
            verdict=None
            if row["verdict"] is None
            else Verdict(
                row["verdict"],
                tuple(row["verdict_candidates"] or ()),
                tuple(row["verdict_reasons"] or ()),
            ),
            feedback=None
            if row["feedback_at"] is None
            else Feedback(row["feedback_digit"], _utc(row["feedback_at"])),
        )
