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
import copy
import logging
import math
import os
import re
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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

from recognizer import tallies
from recognizer.config import CassandraSettings
from recognizer.records import (
    IDEMPOTENCY_WINDOW_SECONDS,
    Feedback,
    IdempotencyClaim,
    Page,
    Record,
    Retention,
    StoreUnavailable,
    Upload,
    first_id_of,
    order_key,
    time_of,
    without_upload,
)
from recognizer.verdict import Verdict

_log = logging.getLogger(__name__)

LEGACY_TABLE = "predictions"  # the released layout: one partition per UTC day
TABLE = "records"
UPLOADS_TABLE = "uploads"
BUCKETS_TABLE = "record_buckets"
CORRECTIONS_TABLE = "corrections"
COUNTS_TABLE = "version_counts"
LAYOUT_TABLE = "store_layout"
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
    "bucket",
    "shard",
    "id",
    "created_at",
    "digit",
    "confidence",
    "probabilities",
    "model_name",
    "model_version",
    "model_label",
    "input_image",
    "upload_content_type",
    "upload_sha256",
    "upload_size",
    "upload_kept",
    "latency_ms",
    "verdict",
    "verdict_candidates",
    "verdict_reasons",
    "client_key",
    "pinned",
)
# A correction is an UPDATE of its record's row, never written by the INSERT: a retried
# INSERT of the record leaves any correction as it was.
_FEEDBACK_COLUMNS = ("feedback_digit", "feedback_at", "feedback_client")
_READ_COLUMNS = ", ".join(_COLUMNS[2:] + _FEEDBACK_COLUMNS)  # bucket, shard: from the id
# The released layout's columns, read while a migration is under way (and by it).
LEGACY_COLUMNS = (
    "id, created_at, digit, confidence, probabilities, model_name, model_version, "
    "model_label, input_image, upload, upload_content_type, upload_sha256, upload_size, "
    "latency_ms, verdict, verdict_candidates, verdict_reasons, feedback_digit, feedback_at"
)
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
FLUSH_SECONDS = 1.0  # a process writes its per-version counts at most this often
_COUNTED_KEPT = 200_000  # ids a process remembers having counted
_NEWEST = uuid.UUID(fields=(0xFFFFFFFF, 0xFFFF, 0x1FFF, 0x80, 0x00, 0))  # after every id

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
    """The UTC day of a version-1 UUID: the released layout's partition, the corrections'."""
    return time_of(record_id).date()


@dataclass(frozen=True)
class Layout:
    """How records are spread (the keyspace's `store_layout` row, read at start-up)."""

    shards: int
    bucket_seconds: int

    def bucket_of(self, record_id: uuid.UUID) -> datetime:
        """The start of the id's time bucket, UTC."""
        seconds = int(time_of(record_id).timestamp()) // self.bucket_seconds * self.bucket_seconds
        return datetime.fromtimestamp(seconds, tz=UTC)

    def index_seconds(self, keep: int) -> int:
        """How long a partition's index entry lives: past its bucket's last record."""
        return keep + self.bucket_seconds

    def shard_of(self, record_id: uuid.UUID) -> int:
        """A stable hash of the id (CRC-32: the same in every process and release)."""
        return zlib.crc32(record_id.bytes) % self.shards

    def key(self, record_id: uuid.UUID) -> tuple[datetime, int]:
        return self.bucket_of(record_id), self.shard_of(record_id)


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
class _Counts:
    """This process's per-(hour, version, pinned) totals (tallies.py), and which changed."""

    writer: uuid.UUID = field(default_factory=uuid.uuid1)
    totals: dict[tuple[datetime, int, bool], tallies.Tally] = field(default_factory=dict)
    dirty: set[tuple[datetime, int, bool]] = field(default_factory=set)
    counted: OrderedDict[uuid.UUID, None] = field(default_factory=OrderedDict)
    flushed_at: float = -math.inf
    lock: threading.Lock = field(default_factory=threading.Lock)
    timer: threading.Timer | None = None  # a flush of what waits, when no save comes

    def later(self, flush: Callable[[], None]) -> None:
        """Flush what is left FLUSH_SECONDS from now unless a flush is already waiting."""
        with self.lock:
            if not self.dirty or (self.timer is not None and self.timer.is_alive()):
                return
            self.timer = threading.Timer(FLUSH_SECONDS, flush)
            self.timer.daemon = True
            self.timer.start()

    def add(self, records: Sequence[Record]) -> None:
        with self.lock:
            for record in records:
                if record.id in self.counted:
                    continue
                self.counted[record.id] = None
                if len(self.counted) > _COUNTED_KEPT:
                    self.counted.popitem(last=False)
                key = (tallies.hour_of(record.created_at), record.model_version, record.pinned)
                self.totals.setdefault(key, tallies.Tally()).add(record)
                self.dirty.add(key)

    def take(
        self, now: float, force: bool
    ) -> list[tuple[tuple[datetime, int, bool], tallies.Tally]]:
        """The changed totals (copies) when a flush is due; they count as written."""
        with self.lock:
            if not self.dirty or (not force and now - self.flushed_at < FLUSH_SECONDS):
                return []
            self.flushed_at = now
            taken = [(key, copy.deepcopy(self.totals[key])) for key in sorted(self.dirty)]
            self.dirty.clear()
            return taken

    def again(self, keys: Iterable[tuple[datetime, int, bool]]) -> None:
        with self.lock:
            self.dirty.update(keys)


def _read_layout(session: Any, keyspace: str) -> tuple[Layout, bool]:
    """The keyspace's layout, and whether the released layout must still be read."""
    rows = {
        row["name"]: row
        for row in session.execute(
            f"SELECT name, shards, bucket_seconds, state FROM {keyspace}.{LAYOUT_TABLE}"
        )
    }
    found = rows.get("records")
    if found is None or not found["shards"] or not found["bucket_seconds"]:
        raise StoreUnavailable(
            f"keyspace {keyspace} has no store layout: apply infra/cassandra/schema.cql"
        )
    legacy_table = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s",
        (keyspace, LEGACY_TABLE),
    )
    migrated = rows.get("migration", {}).get("state") == "done"
    return Layout(found["shards"], found["bucket_seconds"]), bool(
        list(legacy_table)
    ) and not migrated


@dataclass
class _Connection:
    cluster: Any
    session: Any
    layout: Layout
    legacy: bool  # the released layout's table is still read (its migration is not done)
    statements: dict[str, PreparedStatement]
    claim: PreparedStatement
    pid: int
    indexed: set[tuple[datetime, int]] = field(default_factory=set)  # partitions in the index
    counts: _Counts = field(default_factory=lambda: _Counts())
    release: PreparedStatement | None = None  # prepared on first use: refusals are rare
    correct: PreparedStatement | None = None  # so are corrections

    def __getattr__(self, name: str) -> PreparedStatement:
        try:
            return self.__dict__["statements"][name]
        except KeyError:
            raise AttributeError(name) from None


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
        retention: Retention | None = None,
    ) -> None:
        self.settings = settings
        self.retention = retention or Retention()
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
            layout, legacy = _read_layout(session, ks)
            queries = {
                "insert": f"INSERT INTO {ks}.{TABLE} ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)}) USING TTL ?",
                "insert_upload": f"INSERT INTO {ks}.{UPLOADS_TABLE} (id, content) VALUES (?, ?) "
                "USING TTL ?",
                "insert_bucket": f"INSERT INTO {ks}.{BUCKETS_TABLE} (day, bucket, shard) "
                "VALUES (?, ?, ?) USING TTL ?",
                "select_one": f"SELECT {_READ_COLUMNS} FROM {ks}.{TABLE} "
                "WHERE bucket = ? AND shard = ? AND id = ?",
                "select_upload": f"SELECT content FROM {ks}.{UPLOADS_TABLE} WHERE id = ?",
                "select_shard": f"SELECT {_READ_COLUMNS} FROM {ks}.{TABLE} "
                "WHERE bucket = ? AND shard = ? AND id < ? LIMIT ?",
                "select_buckets": f"SELECT bucket, shard FROM {ks}.{BUCKETS_TABLE} "
                "WHERE day = ? AND bucket <= ?",
                "insert_correction": f"INSERT INTO {ks}.{CORRECTIONS_TABLE} (day, id, "
                "model_version, digit, verdict, feedback_digit, feedback_at, client_key, pinned) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
                "delete_record": f"DELETE FROM {ks}.{TABLE} WHERE bucket = ? AND shard = ? "
                "AND id = ?",
                "delete_upload": f"DELETE FROM {ks}.{UPLOADS_TABLE} WHERE id = ?",
                "delete_correction": f"DELETE FROM {ks}.{CORRECTIONS_TABLE} "
                "WHERE day = ? AND id = ?",
                "select_counts": "SELECT model_version, pinned, requests, labels, verdicts, "
                f"confidence_sum, confidence_bins, latency_bins, digits FROM {ks}.{COUNTS_TABLE} "
                "WHERE day = ? AND hour >= ?",
                "select_corrections": "SELECT id, model_version, digit, verdict, feedback_digit, "
                f"feedback_at, client_key, pinned FROM {ks}.{CORRECTIONS_TABLE} "
                "WHERE day = ? AND id >= ?",
                "insert_counts": f"INSERT INTO {ks}.{COUNTS_TABLE} (day, hour, model_version, "
                "pinned, writer, requests, labels, verdicts, confidence_sum, confidence_bins, "
                "latency_bins, digits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
            }
            if legacy:
                queries |= {
                    "legacy_one": f"SELECT {LEGACY_COLUMNS} FROM {ks}.{LEGACY_TABLE} "
                    "WHERE day = ? AND id = ?",
                    "legacy_day": f"SELECT {LEGACY_COLUMNS} FROM {ks}.{LEGACY_TABLE} "
                    "WHERE day = ? AND id < ? LIMIT ?",
                    "legacy_delete": f"DELETE FROM {ks}.{LEGACY_TABLE} WHERE day = ? AND id = ?",
                }
            statements = {name: session.prepare(query) for name, query in queries.items()}
            claim = session.prepare(
                f"INSERT INTO {ks}.{IDEMPOTENCY_TABLE} "
                "(key_sha256, request_sha256, record_ids, created_at) VALUES (?, ?, ?, ?) "
                f"IF NOT EXISTS USING TTL {self._window}"
            )
        except DRIVER_ERRORS as exc:
            if cluster is not None:
                cluster.shutdown()  # a failed start is retried on the next call
            raise StoreUnavailable(f"cannot connect to Cassandra: {_describe(exc)}") from exc
        except StoreUnavailable:
            cluster.shutdown()
            raise
        # Same id, same row; a claim that ran already answers with itself: safe to retry.
        for statement in (*statements.values(), claim):
            statement.is_idempotent = True
        local = self.settings.consistency.startswith("LOCAL_")
        claim.serial_consistency_level = (
            ConsistencyLevel.LOCAL_SERIAL if local else ConsistencyLevel.SERIAL
        )
        if self._conn is None:  # first connection of this object
            atexit.register(self.close)
        _log.info(
            "connected to Cassandra %s (local DC %s, keyspace %s, consistency %s, %d shards "
            "of %d s buckets%s)",
            ", ".join(f"{h}:{p}" for h, p in self.settings.contact_points),
            self.settings.local_dc,
            ks,
            self.settings.consistency,
            layout.shards,
            layout.bucket_seconds,
            ", reading the released layout too until its migration is done" if legacy else "",
        )
        return _Connection(cluster, session, layout, legacy, statements, claim, os.getpid())

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
        """Write the records a few at a time (no multi-partition batch: blobs, size limits):
        first the bucket index of a partition this process has not indexed yet (so a page
        never misses a record), then each record and its upload, all with their TTLs."""
        if not records:
            return
        conn = self._connection()
        keep = self.retention.records_seconds
        new_partitions = {conn.layout.key(r.id) for r in records} - conn.indexed
        index_ttl = conn.layout.index_seconds(keep)
        index = [
            conn.insert_bucket.bind((bucket.date(), bucket, shard, index_ttl))
            for bucket, shard in sorted(new_partitions)
        ]
        with self._writing():
            failures = [f for f in self._write_all(conn, index) if f is not None]
            if not failures:
                if len(conn.indexed) > 100_000:  # old buckets: never written to again
                    conn.indexed.clear()
                conn.indexed.update(new_partitions)
                failures, written = self._write_records(conn, records, keep)
                conn.counts.add(written)
                self._flush_counts(conn)
                conn.counts.later(lambda: self._flush_counts(conn, force=True))
            if failures:
                raise StoreUnavailable(_unrecorded(failures, len(records))) from failures[0]

    def _write_records(
        self, conn: _Connection, records: Sequence[Record], keep: int
    ) -> tuple[list[BaseException], list[Record]]:
        """Each upload, then the records whose upload is written (or was not kept): a record
        is never found without the upload it says is kept. One failure per record at most."""
        kept = [r for r in records if r.upload.content is not None]
        uploads = [
            conn.insert_upload.bind((r.id, r.upload.content, self.retention.uploads_seconds))
            for r in kept
        ]
        failed = dict(zip((r.id for r in kept), self._write_all(conn, uploads), strict=True))
        unset = UNSET_VALUE  # a null would write a tombstone; unset writes nothing
        ready = [r for r in records if failed.get(r.id) is None]
        inserts = [
            conn.insert.bind([*(unset if v is None else v for v in self._values(conn, r)), keep])
            for r in ready
        ]
        results = self._write_all(conn, inserts)
        written = [r for r, f in zip(ready, results, strict=True) if f is None]
        failures = [f for f in failed.values() if f is not None]
        return failures + [f for f in results if f is not None], written

    def _flush_counts(self, conn: _Connection, force: bool = False) -> None:
        """Upsert this process's changed per-version totals (at most once a second unless
        forced). A failure keeps them for the next flush: the save itself stands."""
        taken = conn.counts.take(time.monotonic(), force)
        if not taken:
            return
        ttl = self.retention.records_seconds
        statements = [
            conn.insert_counts.bind(
                (
                    hour.date(),
                    hour,
                    version,
                    pinned,
                    conn.counts.writer,
                    t.requests,
                    dict(t.labels),
                    dict(t.verdicts),
                    t.confidence_sum,
                    t.confidence_bins,
                    t.latency_bins,
                    t.digits,
                    ttl,
                )
            )
            for (hour, version, pinned), t in taken
        ]
        try:
            results = self._write_all(conn, statements)
        except StoreUnavailable as error:
            results = [error] * len(statements)
        failed = [key for (key, _), f in zip(taken, results, strict=True) if f is not None]
        if failed:
            conn.counts.again(failed)
            _log.warning("could not write %d per-version counts; kept for the next", len(failed))

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A write: its failure is remembered (readiness fails) until a write works."""
        try:
            yield
        except StoreUnavailable as error:
            self._write_failure = str(error)
            raise
        self._write_failure = None

    def _write_all(
        self, conn: _Connection, statements: Sequence[Any]
    ) -> list[BaseException | None]:
        """Every write, `_WRITE_WINDOW` in flight at once, waiting for all even after a
        failure; each statement's failure, or None, in order.

        Sending a 64-image batch of 256 KiB uploads at once filled the connection's socket
        buffer, and the driver then refused this request's writes and every other thread's
        queries with ConnectionBusy. A small window keeps the connection free for others."""
        results: list[BaseException | None] = []
        for start in range(0, len(statements), _WRITE_WINDOW):
            window = statements[start : start + _WRITE_WINDOW]
            try:
                futures = [conn.session.execute_async(s) for s in window]
            except DRIVER_ERRORS as exc:
                raise StoreUnavailable(f"Cassandra write failed: {_describe(exc)}") from exc
            for statement, future in zip(window, futures, strict=True):
                try:
                    future.result()
                    results.append(None)
                except DRIVER_ERRORS as exc:
                    if not _busy(exc):
                        results.append(exc)
                        continue
                    try:
                        self._execute(conn, statement)  # refused unsent: send it again
                        results.append(None)
                    except DRIVER_ERRORS as again:
                        results.append(again)
        return results

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
        an id that has none, and corrections of one record apply one after another. Then
        the corrections table's row, for training and analysis. Both carry the record's
        remaining lifetime as their TTL, so a correction never outlives its record."""
        record = self.get(record_id, upload=False)
        if record is None:
            return False
        conn = self._connection()
        age = (self._clock() - record.created_at).total_seconds()
        ttl = max(1, int(self.retention.records_seconds - age))
        if conn.correct is None:  # the same correction again changes nothing: idempotent
            conn.correct = _prepared_lwt(
                conn,
                f"UPDATE {self.settings.keyspace}.{TABLE} USING TTL ? SET feedback_digit = ?, "
                "feedback_at = ?, feedback_client = ? WHERE bucket = ? AND shard = ? AND id = ? "
                "IF EXISTS",
            )
        bucket, shard = conn.layout.key(record_id)
        values = (ttl, feedback.digit, feedback.created_at, feedback.client_key, bucket, shard)
        with self._writing():
            [row] = self._query(conn, conn.correct, (*values, record_id), action="correction")
            if not row["[applied]"]:
                return self._correct_legacy(conn, record_id, feedback)
            self._query(
                conn,
                conn.insert_correction,
                (
                    day_of(record_id),
                    record_id,
                    record.model_version,
                    record.digit,
                    None if record.verdict is None else record.verdict.kind,
                    feedback.digit,
                    feedback.created_at,
                    feedback.client_key,
                    record.pinned,
                    ttl,
                ),
                action="correction",
            )
        return True

    def _correct_legacy(self, conn: _Connection, record_id: uuid.UUID, feedback: Feedback) -> bool:
        """A record not migrated yet is corrected where it is (the migration copies it)."""
        if not conn.legacy:
            return False
        statement = _prepared_lwt(
            conn,
            f"UPDATE {self.settings.keyspace}.{LEGACY_TABLE} SET feedback_digit = ?, "
            "feedback_at = ? WHERE day = ? AND id = ? IF EXISTS",
        )
        values = (feedback.digit, feedback.created_at, day_of(record_id), record_id)
        [row] = self._query(conn, statement, values, action="correction")
        return bool(row["[applied]"])

    def get(self, record_id: uuid.UUID, *, upload: bool = True) -> Record | None:
        if record_id.version != 1:  # only time-based ids are ever stored
            return None
        conn = self._connection()
        rows = self._query(conn, conn.select_one, (*conn.layout.key(record_id), record_id))
        if not rows or rows[0]["created_at"] is None:
            return self._get_legacy(conn, record_id, upload)
        record = self._record(rows[0])
        if upload and rows[0]["upload_kept"]:
            found = self._query(conn, conn.select_upload, (record_id,))
            content = bytes(found[0]["content"]) if found and found[0]["content"] else None
            record = replace(record, upload=replace(record.upload, content=content))
        return record

    def _get_legacy(self, conn: _Connection, record_id: uuid.UUID, upload: bool) -> Record | None:
        if not conn.legacy:
            return None
        rows = self._query(conn, conn.legacy_one, (day_of(record_id), record_id))
        if not rows:
            return None
        record = legacy_record(rows[0])
        return record if upload else without_upload(record)

    def recent(self, limit: int) -> list[Record]:
        """The newest page, with every upload read by its id (tools and tests; the history
        reads `page`)."""
        if limit <= 0:
            return []
        records = self.page(min(limit, MAX_RECENT)).records
        return [self.get(r.id) or r for r in records]

    def page(self, limit: int, before: uuid.UUID | None = None) -> Page:
        """Walk the days back from `before`'s (or today), at most `lookback_days` of them;
        in each, the non-empty partitions its bucket index names, newest bucket first, all
        shards of a bucket at once, each `LIMIT limit + 1`; merged in timeuuid order. The
        walk stops as soon as limit + 1 records are found: work bounded by the page."""
        limit = max(0, min(limit, MAX_RECENT))
        conn = self._connection()
        cursor = _NEWEST if before is None else before
        start = (self._clock() if before is None else time_of(before)).astimezone(UTC)
        start_bucket = start if before is None else conn.layout.bucket_of(before)
        found: dict[uuid.UUID, Record] = {}
        for back in range(self.settings.lookback_days):
            day = start.date() - timedelta(days=back)
            want = limit + 1 - len(found)
            candidates = self._day_page(conn, day, start_bucket, cursor, want)
            if conn.legacy:
                rows = self._query(conn, conn.legacy_day, (day, cursor, want))
                candidates += [without_upload(legacy_record(row)) for row in rows]
            for record in sorted(candidates, key=lambda r: order_key(r.id), reverse=True)[:want]:
                found.setdefault(record.id, record)
            if len(found) > limit:
                break
        records = sorted(found.values(), key=lambda r: order_key(r.id), reverse=True)
        more = len(records) > limit
        records = records[:limit]
        return Page(records, records[-1].id if more and records else None)

    def _day_page(
        self, conn: _Connection, day: date, start: datetime, cursor: uuid.UUID, want: int
    ) -> list[Record]:
        """At least `want` of the day's newest records before `cursor` (or all it has). The
        day's index is read lazily, a driver page (5,000 partitions) at a time."""
        index = conn.select_buckets.bind((day, start))
        records: list[Record] = []
        try:
            partitions = iter(conn.session.execute(index))
            shards: list[tuple[datetime, int]] = []
            for row in partitions:
                if shards and row["bucket"] != shards[0][0]:
                    records += self._read_partitions(conn, shards, cursor, want)
                    shards = []
                    if len(records) >= want:
                        return records
                shards.append((row["bucket"], row["shard"]))
        except DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Cassandra read failed: {_describe(exc)}") from exc
        if shards:
            records += self._read_partitions(conn, shards, cursor, want)
        return records

    def _read_partitions(
        self,
        conn: _Connection,
        partitions: Sequence[tuple[datetime, int]],
        cursor: uuid.UUID,
        want: int,
    ) -> list[Record]:
        """One bucket's shards, read at once (token-aware: each goes to its own replicas)."""
        try:
            futures = [
                conn.session.execute_async(conn.select_shard.bind((bucket, shard, cursor, want)))
                for bucket, shard in partitions
            ]
            rows = [row for future in futures for row in future.result()]
        except DRIVER_ERRORS as exc:
            raise StoreUnavailable(f"Cassandra read failed: {_describe(exc)}") from exc
        return [self._record(row) for row in rows if row["created_at"] is not None]

    def delete(self, record_id: uuid.UUID) -> bool:
        """Erase the record, its upload and its correction (and a copy in the released
        layout): plain DELETEs, each idempotent, so a retried erasure is safe."""
        record = self.get(record_id, upload=False)
        if record is None:
            return False
        conn = self._connection()
        statements = [
            conn.delete_record.bind((*conn.layout.key(record_id), record_id)),
            conn.delete_upload.bind((record_id,)),
            conn.delete_correction.bind((day_of(record_id), record_id)),
        ]
        if conn.legacy:
            statements.append(conn.legacy_delete.bind((day_of(record_id), record_id)))
        with self._writing():
            failures = [f for f in self._write_all(conn, statements) if f is not None]
            if failures:
                raise StoreUnavailable(
                    f"Cassandra did not erase {record_id}: {_describe(failures[0])}"
                ) from failures[0]
        return True

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
            if conn.counts.timer is not None:
                conn.counts.timer.cancel()
            self._flush_counts(conn, force=True)
            conn.cluster.shutdown()

    # -- reads for the rollout tool and training ----------------------------------------

    def version_tallies(self, since: datetime) -> dict[tuple[int, bool], tallies.Tally]:
        """Each (version, pinned)'s totals over the hours from `since`'s to now: one
        partition per UTC day, hours x versions x writers rows (`since`'s hour counts whole).
        Pinned traffic apart: a request that chose its version is no evidence of a split."""
        conn = self._connection()
        start = tallies.hour_of(since)
        result: dict[tuple[int, bool], tallies.Tally] = {}
        day = start.date()
        while day <= self._clock().astimezone(UTC).date():
            for row in self._query(conn, conn.select_counts, (day, start)):
                key = (row["model_version"], bool(row["pinned"]))
                result.setdefault(key, tallies.Tally()).merge(
                    tallies.Tally(
                        row["requests"],
                        Counter(row["labels"] or {}),
                        Counter(row["verdicts"] or {}),
                        row["confidence_sum"],
                        list(row["confidence_bins"]),
                        list(row["latency_bins"]),
                        list(row["digits"]),
                    )
                )
            day += timedelta(days=1)
        return result

    def corrections(self, since: datetime) -> list[dict[str, Any]]:
        """The corrections of records made from `since` on, by the records' days: a read
        as long as the corrections, not the records (training --from-store, analysis)."""
        conn = self._connection()
        low = first_id_of(since)
        found: list[dict[str, Any]] = []
        day = since.astimezone(UTC).date()
        while day <= self._clock().astimezone(UTC).date():
            found += self._query(conn, conn.select_corrections, (day, low))
            day += timedelta(days=1)
        return found

    # -- rows -------------------------------------------------------------------------

    @staticmethod
    def _values(conn: _Connection, record: Record) -> tuple[Any, ...]:
        if record.id.version != 1:
            raise ValueError(f"record id {record.id} is not a time-based (version 1) UUID")
        upload = record.upload
        return (
            *conn.layout.key(record.id),
            record.id,
            record.created_at,
            record.digit,
            record.confidence,
            list(record.probabilities),
            record.model_name,
            record.model_version,
            record.model_label,
            record.input_image,
            upload.content_type,
            upload.sha256,
            upload.size,
            upload.content is not None,
            record.latency_ms,
            *_verdict_values(record.verdict),
            record.client_key,
            record.pinned,
        )

    @staticmethod
    def _record(row: Mapping[str, Any]) -> Record:
        """A record from a row of `records`; the upload's bytes are read apart."""
        record = legacy_record({**row, "upload": None})
        return replace(
            record,
            upload=replace(record.upload, stored=bool(row["upload_kept"])),
            client_key=row["client_key"],
            pinned=bool(row["pinned"]),
            feedback=None
            if row["feedback_at"] is None
            else Feedback(row["feedback_digit"], _utc(row["feedback_at"]), row["feedback_client"]),
        )


def legacy_record(row: Mapping[str, Any]) -> Record:
    """A record from a row of the released layout (`predictions`), upload included."""
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
