"""CassandraLog against the real cassandra-driver, offline.

Only the network is faked. `prepare()` returns a real `PreparedStatement` whose bind
metadata carries the driver's own cqltypes for the columns *as declared in
infra/cassandra/schema.cql*, so the store's `bind()` runs the real serializers and a
type mismatch between code and schema fails here. The fake keeps the serialized bytes
and answers SELECTs by decoding them with the same cqltypes, so every read-back below
went through the real wire encoding.
"""

from __future__ import annotations

import ast
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
    WriteType,
    cqltypes,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster, NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import ColumnMetadata
from cassandra.query import UNSET_VALUE, BoundStatement, PreparedStatement
from cassandra.util import uuid_from_time

from infra.cassandra import apply_schema
from infra.cassandra.apply_schema import render, split_statements
from recognizer import cassandra_log
from recognizer.cassandra_log import PING_QUERY, CassandraLog, CassandraSettings, build_cluster
from recognizer.records import (
    IDEMPOTENCY_WINDOW_SECONDS,
    IdempotencyClaim,
    Record,
    StoreUnavailable,
    Upload,
    new_record_id,
    time_of,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_TEXT = (ROOT / "infra" / "cassandra" / "schema.cql").read_text(encoding="utf-8")
SETTINGS = CassandraSettings(contact_points=(("127.0.0.1", 9042),))
NOW = datetime(2024, 5, 17, 12, 30, tzinfo=UTC)


# -- schema -> driver types ---------------------------------------------------------------


def cql_type(name: str) -> type:
    """The driver's type class for a CQL type name such as frozen<list<float>>."""
    name = cqltypes.strip_frozen(name.strip())  # the protocol never reports frozenness
    outer, _, inner = name.partition("<")
    if inner:
        params = [cql_type(part) for part in top_level_split(inner[:-1])]
        return cqltypes._cqltypes[outer].apply_parameters(params)
    return cqltypes._cqltypes[name]


def top_level_split(text: str) -> list[str]:
    """Split on commas outside (...) and <...>."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "(<") - (char in ")>")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_tables(schema: str) -> dict[str, tuple[dict[str, type], str]]:
    """{table: ({column: cqltype}, primary key text)} of every table in the schema."""
    tables = {}
    for statement in split_statements(schema):
        match = re.match(r"CREATE TABLE IF NOT EXISTS \w+\.(\w+) \((.*)\) WITH", statement, re.S)
        if match:
            columns, key = {}, ""
            for item in (part.strip() for part in top_level_split(match[2])):
                if item.upper().startswith("PRIMARY KEY"):
                    key = item
                else:
                    column, type_name = item.split(None, 1)
                    columns[column] = cql_type(type_name)
            tables[match[1]] = (columns, key)
    return tables


def parse_table(schema: str, table: str = "predictions") -> tuple[dict[str, type], str]:
    """({column: cqltype}, primary key text) of `table` in the schema."""
    tables = parse_tables(schema)
    assert table in tables, f"no CREATE TABLE for {table}"
    return tables[table]


# -- the fake network -----------------------------------------------------------------------

INSERT_RE = re.compile(
    r"INSERT INTO (\w+)\.(\w+) \(([\w, ]+)\) VALUES \(([?, ]+)\)( IF NOT EXISTS)?( USING TTL \d+)?"
)
SELECT_RE = re.compile(r"SELECT ([\w, ]+) FROM (\w+)\.(\w+) WHERE (.+?)( LIMIT \?)?")


class FakeCassandra:
    """The tables' rows as serialized bytes, behind the Session calls the store makes."""

    def __init__(self, schema: str = SCHEMA_TEXT) -> None:
        self.tables = {name: columns for name, (columns, _) in parse_tables(schema).items()}
        self.columns = self.tables.get("predictions", {})
        self.rows: dict[bytes, dict[bytes, dict[str, bytes | None]]] = {}  # day -> id -> cells
        self.claims: dict[bytes, dict[str, bytes]] = {}  # key_sha256 -> cells
        self.bound: list[BoundStatement] = []
        self.prepared: list[str] = []
        self.executed: list[str] = []
        self.async_executed: list[BoundStatement] = []
        self.clusters: list[FakeCluster] = []
        self.fail: Callable[[str], BaseException | None] = lambda query: None
        self.protocol_version = 5
        self.profile: Any = None

    def cluster(self, settings: CassandraSettings) -> FakeCluster:
        """A cluster_factory for CassandraLog: the real (unconnected) Cluster, our network."""
        cluster = FakeCluster(build_cluster(settings), self)
        self.clusters.append(cluster)
        return cluster

    def prepare(self, query: str) -> PreparedStatement:
        self.prepared.append(query)
        if insert := INSERT_RE.fullmatch(query):
            keyspace, table, names = insert[1], insert[2], insert[3].split(", ")
            assert insert[4].count("?") == len(names)
        elif select := SELECT_RE.fullmatch(query):
            keyspace, table = select[2], select[3]
            names = re.findall(r"(\w+) = \?", select[4]) + (["[limit]"] * bool(select[5]))
        else:
            raise AssertionError(f"unexpected query {query!r}")
        if table not in self.tables:
            raise InvalidRequest(f"unconfigured table {table}")
        types = {**self.tables[table], "[limit]": cqltypes.Int32Type}
        unknown = [name for name in names if name not in types]
        if unknown:
            raise InvalidRequest(f"Undefined column name {unknown[0]}")
        meta = [ColumnMetadata(keyspace, table, name, types[name]) for name in names]
        return PreparedStatement(meta, b"id", [0], query, keyspace, self.protocol_version, [], None)

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> list:
        query = (
            statement if isinstance(statement, str) else statement.prepared_statement.query_string
        )
        self.executed.append(query)
        if (error := self.fail(query)) is not None:
            raise error
        if query == PING_QUERY:
            return self.profile.row_factory(["release_version"], [("5.0.2",)])
        assert isinstance(statement, BoundStatement), "data statements must be prepared"
        self.bound.append(statement)
        names = [column.name for column in statement.prepared_statement.column_metadata]
        bound = dict(zip(names, statement.values, strict=True))
        if "IF NOT EXISTS" in query:  # a lightweight transaction on the idempotency keys
            return self._insert_if_not_exists(bound)
        partition = self.rows.setdefault(bound["day"], {})
        if query.startswith("INSERT"):  # an upsert; unset values write nothing
            cells = partition.setdefault(bound["id"], {})
            cells.update({k: v for k, v in bound.items() if v is not UNSET_VALUE})
            return []
        selected = SELECT_RE.fullmatch(query)[1].split(", ")
        ids = sorted(partition, key=lambda b: (uuid.UUID(bytes=b).time, b), reverse=True)
        if "id" in bound:
            ids = [i for i in ids if i == bound["id"]]
        if "[limit]" in bound:
            ids = ids[: cqltypes.Int32Type.deserialize(bound["[limit]"], self.protocol_version)]
        decoded = [
            tuple(
                self.columns[c].from_binary(partition[i].get(c), self.protocol_version)
                for c in selected
            )
            for i in ids
        ]
        return self.profile.row_factory(selected, decoded)

    def _insert_if_not_exists(self, bound: dict[str, bytes]) -> list:
        """Cassandra's answer: [applied] true, or false with the row that is already there."""
        held = self.claims.setdefault(bound["key_sha256"], bound)
        if held is bound:
            return self.profile.row_factory(["[applied]"], [(True,)])
        types = self.tables["idempotency_keys"]
        names = sorted(held)
        values = [types[n].from_binary(held[n], self.protocol_version) for n in names]
        return self.profile.row_factory(["[applied]", *names], [(False, *values)])

    def execute_async(self, statement: Any, *args: Any, **kwargs: Any) -> Future:
        self.async_executed.append(statement)
        future: Future = Future()
        try:
            future.set_result(self.execute(statement))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def cell(self, record_id: uuid.UUID, column: str) -> Any:
        """A stored cell decoded with the schema's type (or KeyError when never written)."""
        for partition in self.rows.values():
            if record_id.bytes in partition:
                raw = partition[record_id.bytes][column]
                return self.columns[column].from_binary(raw, self.protocol_version)
        raise KeyError(record_id)


class FakeCluster:
    """The real driver Cluster object, never connected; connect() hands out the fake."""

    def __init__(self, real: Cluster, server: FakeCassandra) -> None:
        self.real, self.server, self.shut_down = real, server, False

    def connect(self) -> FakeCassandra:
        self.server.profile = self.real.profile_manager.default  # its row_factory shapes rows
        self.server.protocol_version = self.real.protocol_version
        return self.server

    def shutdown(self) -> None:
        self.shut_down = True
        self.real.shutdown()


@pytest.fixture
def server() -> FakeCassandra:
    return FakeCassandra()


@pytest.fixture
def store(server: FakeCassandra):
    log = CassandraLog(SETTINGS, cluster_factory=server.cluster, clock=lambda: NOW)
    yield log
    log.close()


def make_record(
    created_at: datetime = NOW, *, digit: int = 7, content: bytes | None = b"\x89PNG img", **changes
) -> Record:
    """A record whose id is a version-1 UUID with created_at's time, as the function makes."""
    created_at = created_at.replace(microsecond=created_at.microsecond // 1000 * 1000)
    probabilities = tuple(0.991 if d == digit else 0.001 for d in range(10))
    record = Record(
        id=uuid_from_time(created_at),
        created_at=created_at,
        digit=digit,
        confidence=0.991,
        probabilities=probabilities,
        model_name="mnist",
        model_version=2,
        model_label="stable",
        input_image=bytes(range(256)) * 3 + bytes(16),
        upload=Upload(content=content, content_type="image/png", sha256="ab" * 32, size=5123),
        latency_ms=12.75,
    )
    return replace(record, **changes)


# -- round trips through the real serializers ---------------------------------------------------


def test_saved_record_reads_back_equal(store: CassandraLog) -> None:
    record = make_record(datetime(2024, 5, 17, 9, 15, 42, 123000, tzinfo=UTC))
    store.save([record])
    got = store.get(record.id)
    assert got == record
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert isinstance(got.probabilities, tuple) and len(got.input_image) == 784


def test_ids_made_by_the_function_round_trip(store: CassandraLog) -> None:
    record_id = new_record_id()  # 100 ns precision; created_at is its millisecond
    record = make_record(id=record_id, created_at=time_of(record_id))
    store.save([record])
    assert store.get(record_id) == record


def test_none_values_read_back_as_none_without_writing_nulls(
    store: CassandraLog, server: FakeCassandra
) -> None:
    record = make_record(content=None, model_label=None)  # upload over the cap, pinned version
    store.save([record])
    got = store.get(record.id)
    assert got.upload.content is None and got.model_label is None
    assert got.upload.size == 5123 and got.upload.sha256 == "ab" * 32
    with pytest.raises(KeyError):  # unset, not null: no tombstone per row
        server.cell(record.id, "upload")


def test_floats_are_kept_as_float32_and_read_back_in_shortest_form(store: CassandraLog) -> None:
    record = make_record(confidence=0.998, probabilities=(0.998, 0.0002, 1e-07, *[0.0] * 7))
    precise = make_record(NOW - timedelta(seconds=1), confidence=0.123456789012)
    store.save([record, precise])
    assert store.get(record.id).probabilities == record.probabilities
    assert store.get(record.id).confidence == 0.998
    assert store.get(precise.id).confidence == 0.12345679  # float32 precision, by schema


def test_large_model_version_fits(store: CassandraLog) -> None:
    record = make_record(model_version=20240517123000)  # timestamp-style versions: bigint
    store.save([record])
    assert store.get(record.id).model_version == 20240517123000


def test_day_bucket_is_the_utc_day_of_the_id(store: CassandraLog, server: FakeCassandra) -> None:
    late = make_record(datetime(2024, 5, 16, 23, 59, 59, 999000, tzinfo=UTC))
    early = make_record(datetime(2024, 5, 17, 0, 0, 0, 0, tzinfo=UTC))
    store.save([late, early])
    assert server.cell(late.id, "day").date() == date(2024, 5, 16)
    assert server.cell(early.id, "day").date() == date(2024, 5, 17)
    assert store.get(late.id) == late and store.get(early.id) == early


def test_several_records_are_written_concurrently_not_batched(
    store: CassandraLog, server: FakeCassandra
) -> None:
    records = [make_record(NOW - timedelta(minutes=i), digit=i) for i in range(5)]
    store.save(records)
    queries = [s.prepared_statement.query_string for s in server.async_executed]
    assert len(queries) == 5 and all(q.startswith("INSERT INTO mnist.predictions") for q in queries)
    assert all(s.is_idempotent for s in server.async_executed)  # safe for the driver to retry
    assert [store.get(r.id) for r in records] == records


def test_recent_is_newest_first_across_days_within_the_lookback(store: CassandraLog) -> None:
    today = [make_record(NOW - timedelta(minutes=m)) for m in (30, 5, 10)]
    yesterday = [make_record(NOW - timedelta(days=1, minutes=m)) for m in (1, 2)]
    older = make_record(NOW - timedelta(days=3))
    too_old = make_record(NOW - timedelta(days=7))  # 8th bucket: outside the default 7
    store.save([*today, *yesterday, older, too_old])
    expected = sorted([*today, *yesterday, older], key=lambda r: r.created_at, reverse=True)
    assert store.recent(100) == expected
    assert store.recent(4) == expected[:4]
    assert store.recent(0) == []
    assert store.recent(10**12) == expected  # no 32-bit overflow in LIMIT


def test_recent_reads_no_more_buckets_than_needed(
    store: CassandraLog, server: FakeCassandra
) -> None:
    store.save([make_record(NOW - timedelta(minutes=m)) for m in range(3)])
    server.executed.clear()
    assert len(store.recent(2)) == 2
    assert len(server.executed) == 1
    server.executed.clear()
    store.recent(10)  # sparse log: every bucket of the look-back, no more
    assert len(server.executed) == 7


def test_lookback_is_configurable(server: FakeCassandra) -> None:
    log = CassandraLog(
        replace(SETTINGS, lookback_days=1), cluster_factory=server.cluster, clock=lambda: NOW
    )
    try:
        log.save([make_record(NOW), make_record(NOW - timedelta(days=1))])
        assert [r.created_at for r in log.recent(10)] == [NOW]
    finally:
        log.close()


def test_get_unknown_or_non_time_ids(store: CassandraLog, server: FakeCassandra) -> None:
    store.save([make_record()])
    assert store.get(uuid_from_time(NOW)) is None
    server.executed.clear()
    assert store.get(uuid.uuid4()) is None
    assert server.executed == []


# -- idempotency claims: a lightweight transaction with a TTL --------------------------------


def claim_for(request: str, count: int = 2) -> IdempotencyClaim:
    return IdempotencyClaim(request, tuple(new_record_id() for _ in range(count)))


def test_the_first_claim_of_a_key_wins(store: CassandraLog) -> None:
    first, second = claim_for("request-a"), claim_for("request-b")
    assert store.claim("key-1", first) == first
    assert store.claim("key-1", second) == first  # decoded from Cassandra's not-applied row
    assert store.claim("key-2", second) == second


def test_a_claim_is_insert_if_not_exists_with_the_idempotency_window_as_ttl(
    store: CassandraLog, server: FakeCassandra
) -> None:
    store.claim("key", claim_for("request"))
    [statement] = server.bound
    query = statement.prepared_statement.query_string
    assert query.startswith("INSERT INTO mnist.idempotency_keys ")
    assert query.endswith(f" IF NOT EXISTS USING TTL {IDEMPOTENCY_WINDOW_SECONDS}")
    assert IDEMPOTENCY_WINDOW_SECONDS == 24 * 60 * 60
    assert statement.serial_consistency_level == ConsistencyLevel.LOCAL_SERIAL
    assert statement.is_idempotent  # a claim that ran already answers with itself


def test_a_claim_outside_local_consistency_uses_serial(server: FakeCassandra) -> None:
    log = CassandraLog(replace(SETTINGS, consistency="QUORUM"), cluster_factory=server.cluster)
    log.claim("key", claim_for("request"))
    log.close()
    assert server.bound[0].serial_consistency_level == ConsistencyLevel.SERIAL


def test_a_claim_that_times_out_is_store_unavailable(
    store: CassandraLog, server: FakeCassandra
) -> None:
    server.fail = lambda query: WriteTimeout("timed out", write_type=WriteType.CAS)
    with pytest.raises(StoreUnavailable, match="idempotency claim failed"):
        store.claim("key", claim_for("request"))


def test_records_written_into_claimed_ids_are_found_by_a_retry(
    store: CassandraLog, server: FakeCassandra
) -> None:
    claim = store.claim("key", claim_for("request", count=1))
    record = make_record(id=claim.record_ids[0], created_at=time_of(claim.record_ids[0]))
    store.save([record])
    store.save([record])  # a racing retry: the same row again, an upsert
    retry = store.claim("key", claim_for("request", count=1))
    assert [store.get(record_id) for record_id in retry.record_ids] == [record]
    assert sum(len(partition) for partition in server.rows.values()) == 1


def test_a_schema_without_the_idempotency_table_is_unavailable() -> None:
    statements = split_statements(SCHEMA_TEXT)
    server = FakeCassandra(";\n".join(s for s in statements if "idempotency_keys" not in s))
    log = CassandraLog(SETTINGS, cluster_factory=server.cluster)
    with pytest.raises(StoreUnavailable, match="idempotency_keys"):
        log.ping()


def test_the_driver_retries_nothing_forever() -> None:
    """The profile keeps the driver's RetryPolicy: a timed-out write (a claim's CAS, a
    record's INSERT) is never retried, other failures at most once."""
    cluster = build_cluster(SETTINGS)
    try:
        policy = cluster.profile_manager.default.retry_policy
    finally:
        cluster.shutdown()
    cl = ConsistencyLevel.LOCAL_QUORUM
    for write_type in (WriteType.SIMPLE, WriteType.CAS):
        assert policy.on_write_timeout(None, cl, write_type, 2, 1, 0) == (policy.RETHROW, None)
    assert policy.on_read_timeout(None, cl, 2, 2, False, 0)[0] == policy.RETRY
    assert policy.on_read_timeout(None, cl, 2, 2, False, 1) == (policy.RETHROW, None)
    assert policy.on_unavailable(None, cl, 2, 1, 0)[0] == policy.RETRY_NEXT_HOST
    assert policy.on_unavailable(None, cl, 2, 1, 1) == (policy.RETHROW, None)


# -- code and schema must agree: the real serializers refuse mismatches -------------------------


def test_wrong_python_type_is_a_bug_not_an_outage(
    store: CassandraLog, server: FakeCassandra
) -> None:
    with pytest.raises(TypeError, match="digit"):
        store.save([make_record(digit="7")])
    assert server.async_executed == []


@pytest.mark.parametrize(
    ("declared", "changed"),
    [
        ("frozen<list<float>>", "frozen<list<int>>"),
        ("confidence          float", "confidence          int"),
        ("created_at          timestamp", "created_at          text"),
        ("model_name          text", "model_name          int"),
        ("latency_ms          double", "latency_ms          bigint"),
    ],
)
def test_schema_that_disagrees_with_the_code_fails(declared: str, changed: str) -> None:
    assert declared in SCHEMA_TEXT
    server = FakeCassandra(SCHEMA_TEXT.replace(declared, changed))
    log = CassandraLog(SETTINGS, cluster_factory=server.cluster)
    try:
        with pytest.raises((TypeError, AttributeError)):  # what the driver's serializers raise
            log.save([make_record()])
    finally:
        log.close()


def test_missing_column_means_unavailable() -> None:
    server = FakeCassandra(SCHEMA_TEXT.replace("    latency_ms          double,\n", ""))
    log = CassandraLog(SETTINGS, cluster_factory=server.cluster)
    with pytest.raises(StoreUnavailable, match="latency_ms"):
        log.ping()
    assert server.clusters[0].shut_down


# -- driver errors become StoreUnavailable -----------------------------------------------------

DRIVER_ERRORS = [
    NoHostAvailable("Unable to complete the operation against any hosts", {}),
    WriteTimeout("timed out", consistency=ConsistencyLevel.LOCAL_QUORUM, write_type=0),
    ReadTimeout("timed out", consistency=ConsistencyLevel.LOCAL_QUORUM),
    Unavailable("not enough replicas", ConsistencyLevel.LOCAL_QUORUM, 2, 1),
    OperationTimedOut("client timeout"),
    ConnectionException("connection reset"),
]


@pytest.mark.parametrize("error", DRIVER_ERRORS, ids=lambda e: type(e).__name__)
def test_driver_errors_become_store_unavailable(
    store: CassandraLog, server: FakeCassandra, error: Exception
) -> None:
    record = make_record()
    store.save([record])
    server.fail = lambda query: error
    with pytest.raises(StoreUnavailable) as raised:
        store.save([make_record(NOW - timedelta(seconds=1))])
    assert raised.value.__cause__ is error
    for call in (lambda: store.get(record.id), lambda: store.recent(5), store.ping):
        with pytest.raises(StoreUnavailable):
            call()


def test_one_failed_write_fails_the_save_after_waiting_for_all(
    store: CassandraLog, server: FakeCassandra
) -> None:
    records = [make_record(NOW - timedelta(seconds=i)) for i in range(3)]
    calls = iter(range(100))
    server.fail = lambda query: (
        WriteTimeout("timed out", write_type=0) if next(calls) == 1 else None
    )
    with pytest.raises(StoreUnavailable, match="1 of 3"):
        store.save(records)
    server.fail = lambda query: None
    assert [store.get(r.id) is not None for r in records] == [True, False, True]


def test_failed_connect_is_unavailable_and_retried(server: FakeCassandra) -> None:
    attempts: list[FakeCluster] = []

    def refuse() -> None:
        raise NoHostAvailable("Unable to connect to any servers", {})

    def flaky(settings: CassandraSettings) -> FakeCluster:
        cluster = server.cluster(settings)
        attempts.append(cluster)
        if len(attempts) == 1:
            cluster.connect = refuse
        return cluster

    log = CassandraLog(SETTINGS, cluster_factory=flaky)
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        log.ping()
    assert attempts[0].shut_down  # no leaked driver threads
    log.ping()
    assert len(attempts) == 2 and not attempts[1].shut_down
    log.close()
    assert attempts[1].shut_down


# -- one lazy Cluster per process -------------------------------------------------------------


def test_nothing_is_created_before_first_use(
    server: FakeCassandra, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cassandra_log, "Cluster", lambda *a, **k: pytest.fail("Cluster made"))
    CassandraLog.from_env({"CASSANDRA_CONTACT_POINTS": "cassandra"})
    CassandraLog(SETTINGS, cluster_factory=server.cluster)
    assert server.clusters == []


def test_import_starts_no_threads_and_needs_only_driver_and_stdlib() -> None:
    code = (
        "import threading, recognizer.cassandra_log as m; "
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT / "function", check=True)
    tree = ast.parse(Path(cassandra_log.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert imported - set(sys.stdlib_module_names) == {"cassandra"}


def test_first_use_from_many_threads_connects_once(
    server: FakeCassandra, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[Callable] = []
    monkeypatch.setattr(cassandra_log.atexit, "register", registered.append)

    def slow(settings: CassandraSettings) -> FakeCluster:
        time.sleep(0.05)  # widen the race window
        return server.cluster(settings)

    log = CassandraLog(SETTINGS, cluster_factory=slow, clock=lambda: NOW)
    barrier, errors = threading.Barrier(16), []

    def use() -> None:
        barrier.wait()
        try:
            log.ping()
            log.save([make_record(datetime.now(UTC))])
            log.recent(3)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(server.clusters) == 1
    assert len(server.prepared) == 4  # prepared once, reused by every call
    assert registered == [log.close]
    log.close()
    assert server.clusters[0].shut_down
    with pytest.raises(StoreUnavailable, match="closed"):
        log.ping()


def test_a_forked_worker_makes_its_own_cluster(
    store: CassandraLog, server: FakeCassandra, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.ping()
    child = SimpleNamespace(getpid=lambda: os.getpid() + 1, path=os.path)
    monkeypatch.setattr(cassandra_log, "os", child)
    store.ping()
    assert len(server.clusters) == 2
    store.close()
    assert server.clusters[1].shut_down
    assert not server.clusters[0].shut_down  # the parent's: not the child's to close
    server.clusters[0].real.shutdown()


# -- settings ----------------------------------------------------------------------------------


def test_from_env_defaults() -> None:
    settings = CassandraSettings.from_env(
        {"CASSANDRA_CONTACT_POINTS": "cass1, cass2:9043,[::1]:9044,::1", "CASSANDRA_USERNAME": ""}
    )
    assert settings == CassandraSettings(
        contact_points=(("cass1", 9042), ("cass2", 9043), ("::1", 9044), ("::1", 9042))
    )
    assert (settings.keyspace, settings.local_dc, settings.consistency) == (
        "mnist",
        "datacenter1",
        "LOCAL_QUORUM",
    )
    assert (settings.protocol_version, settings.request_timeout, settings.connect_timeout) == (
        5,
        5.0,
        5.0,
    )
    assert (settings.username, settings.ssl_ca_file, settings.lookback_days) == (None, None, 7)


FULL_ENV = {
    "CASSANDRA_CONTACT_POINTS": "10.0.0.1,10.0.0.2",
    "CASSANDRA_PORT": "19042",
    "CASSANDRA_KEYSPACE": "mnist_eu",
    "CASSANDRA_LOCAL_DC": "eu-west",
    "CASSANDRA_CONSISTENCY": "local_one",
    "CASSANDRA_USERNAME": "recognizer",
    "CASSANDRA_PASSWORD": " s3cret-pw",
    "CASSANDRA_SSL_CA_FILE": ssl.get_default_verify_paths().cafile or "/missing",
    "CASSANDRA_SSL_VERIFY_HOSTNAME": "false",
    "CASSANDRA_PROTOCOL_VERSION": "4",
    "CASSANDRA_REQUEST_TIMEOUT_SECONDS": "2.5",
    "CASSANDRA_CONNECT_TIMEOUT_SECONDS": "3",
    "CASSANDRA_RECENT_LOOKBACK_DAYS": "30",
}
needs_ca = pytest.mark.skipif(
    not Path(FULL_ENV["CASSANDRA_SSL_CA_FILE"]).is_file(), reason="no system CA bundle"
)


@needs_ca
def test_from_env_reads_every_setting_and_never_shows_the_password() -> None:
    settings = CassandraSettings.from_env(FULL_ENV)
    assert settings.contact_points == (("10.0.0.1", 19042), ("10.0.0.2", 19042))
    assert settings.keyspace == "mnist_eu" and settings.local_dc == "eu-west"
    assert settings.consistency == "LOCAL_ONE" and settings.protocol_version == 4
    assert settings.username == "recognizer" and settings.password == " s3cret-pw"
    assert settings.ssl_verify_hostname is False
    assert (settings.request_timeout, settings.connect_timeout) == (2.5, 3.0)
    assert settings.lookback_days == 30
    log = CassandraLog.from_env(FULL_ENV)
    for text in (repr(settings), str(settings), repr(log), str(log)):
        assert "s3cret-pw" not in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"CASSANDRA_CONTACT_POINTS": ""}, "CASSANDRA_CONTACT_POINTS is required"),
        ({"CASSANDRA_CONTACT_POINTS": "a,,b"}, "empty entry"),
        ({"CASSANDRA_CONTACT_POINTS": "a:port"}, "port must be"),
        ({"CASSANDRA_CONTACT_POINTS": "[::1]:0"}, "port must be"),
        ({"CASSANDRA_CONTACT_POINTS": ":9042"}, "no valid host"),
        ({"CASSANDRA_PORT": "nine"}, "CASSANDRA_PORT='nine' is not a whole number"),
        ({"CASSANDRA_PORT": "70000"}, "CASSANDRA_PORT='70000' must be between 1 and 65535"),
        ({"CASSANDRA_KEYSPACE": "my-keyspace"}, "CASSANDRA_KEYSPACE"),
        ({"CASSANDRA_CONSISTENCY": "SERIAL"}, "CASSANDRA_CONSISTENCY='SERIAL'"),
        ({"CASSANDRA_CONSISTENCY": "MOST"}, "CASSANDRA_CONSISTENCY='MOST'"),
        ({"CASSANDRA_PROTOCOL_VERSION": "3"}, "CASSANDRA_PROTOCOL_VERSION='3' must be between 4"),
        ({"CASSANDRA_PROTOCOL_VERSION": "v5"}, "CASSANDRA_PROTOCOL_VERSION"),
        ({"CASSANDRA_REQUEST_TIMEOUT_SECONDS": "0"}, "CASSANDRA_REQUEST_TIMEOUT_SECONDS"),
        ({"CASSANDRA_CONNECT_TIMEOUT_SECONDS": "soon"}, "CASSANDRA_CONNECT_TIMEOUT_SECONDS"),
        ({"CASSANDRA_USERNAME": "u"}, "CASSANDRA_USERNAME and CASSANDRA_PASSWORD together"),
        ({"CASSANDRA_PASSWORD": "p"}, "CASSANDRA_USERNAME and CASSANDRA_PASSWORD together"),
        ({"CASSANDRA_SSL_CA_FILE": "/no/such/ca.pem"}, "CASSANDRA_SSL_CA_FILE"),
        ({"CASSANDRA_SSL_VERIFY_HOSTNAME": "maybe"}, "CASSANDRA_SSL_VERIFY_HOSTNAME"),
        ({"CASSANDRA_RECENT_LOOKBACK_DAYS": "0"}, "CASSANDRA_RECENT_LOOKBACK_DAYS"),
    ],
)
def test_from_env_rejects_bad_values(changes: dict[str, str], message: str) -> None:
    environ = {"CASSANDRA_CONTACT_POINTS": "cassandra", **changes}
    with pytest.raises(ValueError, match=re.escape(message)):
        CassandraSettings.from_env(environ)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASSANDRA_CONTACT_POINTS", "db1:9043")
    monkeypatch.setenv("CASSANDRA_LOCAL_DC", "dc9")
    log = CassandraLog.from_env()
    assert log.settings.contact_points == (("db1", 9043),) and log.settings.local_dc == "dc9"


def test_error_messages_do_not_echo_the_password() -> None:
    with pytest.raises(ValueError) as raised:
        CassandraSettings.from_env(
            {"CASSANDRA_CONTACT_POINTS": "c", "CASSANDRA_PASSWORD": "s3cret-pw"}
        )
    assert "s3cret-pw" not in str(raised.value)


def test_cluster_profile_from_default_settings() -> None:
    cluster = build_cluster(CassandraSettings.from_env({"CASSANDRA_CONTACT_POINTS": "127.0.0.1"}))
    try:
        profile = cluster.profile_manager.default
        assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
        assert profile.request_timeout == 5.0
        assert isinstance(profile.load_balancing_policy, TokenAwarePolicy)
        child = profile.load_balancing_policy._child_policy
        assert isinstance(child, DCAwareRoundRobinPolicy) and child.local_dc == "datacenter1"
        assert cluster.protocol_version == 5
        assert cluster.contact_points == [("127.0.0.1", 9042)]
        assert cluster.connect_timeout == 5.0
        assert cluster.auth_provider is None and cluster.ssl_context is None
        assert not cluster.is_shutdown and cluster.control_connection._connection is None
    finally:
        cluster.shutdown()


@needs_ca
def test_cluster_profile_from_full_settings() -> None:
    cluster = build_cluster(CassandraSettings.from_env(FULL_ENV))
    try:
        profile = cluster.profile_manager.default
        assert profile.consistency_level == ConsistencyLevel.LOCAL_ONE
        assert profile.request_timeout == 2.5
        assert profile.load_balancing_policy._child_policy.local_dc == "eu-west"
        assert cluster.protocol_version == 4 and cluster.port == 19042
        assert isinstance(cluster.auth_provider, PlainTextAuthProvider)
        assert cluster.auth_provider.username == "recognizer"
        assert cluster.ssl_context.verify_mode == ssl.CERT_REQUIRED
        assert cluster.ssl_context.check_hostname is False
    finally:
        cluster.shutdown()


# -- the schema and the tool that applies it -----------------------------------------------------


def test_schema_is_idempotent_and_shaped_for_a_time_ordered_log() -> None:
    statements = split_statements(SCHEMA_TEXT)
    creates = [s for s in statements if s.upper().startswith("CREATE")]
    assert len(creates) == len(statements) == 3
    assert all(re.match(r"CREATE \w+ IF NOT EXISTS ", s) for s in creates)
    keyspace, table, _ = statements
    assert "{'class': 'SimpleStrategy', 'replication_factor': 1}" in keyspace
    assert "CLUSTERING ORDER BY (id DESC)" in table
    assert "'class': 'TimeWindowCompactionStrategy'" in table
    assert "'compaction_window_unit': 'DAYS'" in table


def test_schema_columns_hold_every_record_field() -> None:
    columns, key = parse_table(SCHEMA_TEXT)
    assert key == "PRIMARY KEY ((day), id)"
    assert columns["day"] is cqltypes.SimpleDateType
    assert columns["id"] is cqltypes.TimeUUIDType
    assert columns["created_at"].cql_parameterized_type() == "timestamp"
    assert columns["probabilities"].cql_parameterized_type() == "list<float>"
    assert columns["input_image"] is cqltypes.BytesType and columns["upload"] is cqltypes.BytesType
    fields = {f for f in Record.__dataclass_fields__ if f != "upload"}
    fields |= {f"upload_{f}" for f in Upload.__dataclass_fields__ if f != "content"} | {"upload"}
    assert set(columns) == fields | {"day"}


def test_schema_keeps_idempotency_keys_by_digest_with_their_record_ids() -> None:
    columns, key = parse_table(SCHEMA_TEXT, "idempotency_keys")
    assert key == "PRIMARY KEY (key_sha256)"
    assert columns["record_ids"].cql_parameterized_type() == "list<timeuuid>"
    assert set(columns) == {"key_sha256", "request_sha256", "record_ids", "created_at"}


def test_split_statements_respects_strings_and_comments() -> None:
    text = """
    -- a comment; with a semicolon
    CREATE TABLE IF NOT EXISTS ks."odd;name" (a int) WITH comment = 'it''s; fine'; /* x; y */
    // another; comment
    INSERT INTO ks.t (a) VALUES (1)
    """
    assert split_statements(text) == [
        """CREATE TABLE IF NOT EXISTS ks."odd;name" (a int) WITH comment = 'it''s; fine'""",
        "INSERT INTO ks.t (a) VALUES (1)",
    ]
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("CREATE TABLE t (a text) WITH comment = 'oops;")


def test_dry_run_prints_the_statements(capsys: pytest.CaptureFixture[str]) -> None:
    assert apply_schema.main(["--dry-run"], environ={}) == 0
    out = capsys.readouterr().out
    assert "--" not in out and out.count(";") == 3
    assert split_statements(out) == split_statements(SCHEMA_TEXT)
    assert "CREATE KEYSPACE IF NOT EXISTS mnist\n" in out


def test_dry_run_substitutes_keyspace_and_replication(capsys: pytest.CaptureFixture[str]) -> None:
    replication = "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': '2'}"
    code = apply_schema.main(
        ["--dry-run", "--replication", replication], environ={"CASSANDRA_KEYSPACE": "mnist_eu"}
    )
    assert code == 0
    keyspace, table, keys = split_statements(capsys.readouterr().out)
    assert keyspace.startswith("CREATE KEYSPACE IF NOT EXISTS mnist_eu\n")
    assert "replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': '2'}" in keyspace
    assert "SimpleStrategy" not in keyspace
    assert table.startswith("CREATE TABLE IF NOT EXISTS mnist_eu.predictions (")
    assert keys.startswith("CREATE TABLE IF NOT EXISTS mnist_eu.idempotency_keys (")


@pytest.mark.parametrize("bad", ["3", "{'dc1': 3}", "{'class': 'X', 'dc1': [3]}", "{oops"])
def test_bad_replication_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        apply_schema.main(["--dry-run", "--replication", bad], environ={})
    assert raised.value.code == 2
    assert "--replication" in capsys.readouterr().err


def test_bad_keyspace_is_refused() -> None:
    with pytest.raises(ValueError, match="keyspace"):
        render(split_statements(SCHEMA_TEXT), keyspace="x; DROP KEYSPACE mnist")


def test_apply_runs_every_statement_then_shuts_down() -> None:
    executed: list[tuple[str, float]] = []

    class Session:
        def execute(self, statement: str, timeout: float) -> None:
            executed.append((statement, timeout))

    class DdlCluster:
        shut_down = False

        def connect(self) -> Session:
            return Session()

        def shutdown(self) -> None:
            DdlCluster.shut_down = True

    statements = render(split_statements(SCHEMA_TEXT))
    apply_schema.apply(statements, SETTINGS, cluster_factory=lambda s: DdlCluster(), report=print)
    assert executed == [(s, 60.0) for s in statements] and DdlCluster.shut_down


def test_apply_without_contact_points_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert apply_schema.main([], environ={}) == 2
    assert "CASSANDRA_CONTACT_POINTS is required" in capsys.readouterr().err


def test_apply_against_nothing_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"CASSANDRA_CONTACT_POINTS": "127.0.0.1:1", "CASSANDRA_CONNECT_TIMEOUT_SECONDS": "1"}
    assert apply_schema.main([], environ=environ) == 1  # the real driver, refused at once
    assert "NoHostAvailable" in capsys.readouterr().err
