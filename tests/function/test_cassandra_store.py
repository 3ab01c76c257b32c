"""CassandraStore code that needs no Cassandra, and the faults a live node cannot give.

Everything a store does with a node answering (round trips, day partitions, the look-back,
claims, connections, the schema on a live keyspace, Unavailable and refused writes from
the node itself) is in test_store_contract.py, against the live test node. Here: settings
from the environment, the driver Cluster built from them, the driver's retry policy, the
schema file as text and the tool that applies it (dry runs, usage errors), what importing
the module costs; and at the end the faults a live node cannot be made to give on demand
(server-side timeouts, a reset connection), injected into a real session to the live node.
"""

from __future__ import annotations

import ast
import re
import ssl
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from cassandra import (
    ConsistencyLevel,
    ReadTimeout,
    WriteTimeout,
    WriteType,
    cqltypes,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from infra.cassandra import apply_schema
from infra.cassandra.apply_schema import render, split_statements
from recognizer import cassandra_store
from recognizer.cassandra_store import CassandraSettings, CassandraStore, build_cluster
from recognizer.records import IdempotencyClaim, Record, StoreUnavailable, Upload, new_record_id
from recognizer.verdict import Verdict
from tests.function.records_factory import make_record

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_TEXT = (ROOT / "infra" / "cassandra" / "schema.cql").read_text(encoding="utf-8")
LEVELS = "one of LOCAL_QUORUM, QUORUM, LOCAL_ONE, ONE, TWO, THREE, ALL"
SETTINGS = CassandraSettings(contact_points=(("127.0.0.1", 9042),))


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
    """{table: ({column: cqltype}, primary key text)} of every table in the schema, with
    the columns that later ALTER TABLE ... ADD statements add."""
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
        added = re.match(r"ALTER TABLE \w+\.(\w+) ADD IF NOT EXISTS \((.*)\)$", statement, re.S)
        if added:
            for item in (part.strip() for part in top_level_split(added[2])):
                column, type_name = item.split(None, 1)
                tables[added[1]][0][column] = cql_type(type_name)
    return tables


def parse_table(schema: str, table: str = "predictions") -> tuple[dict[str, type], str]:
    """({column: cqltype}, primary key text) of `table` in the schema."""
    tables = parse_tables(schema)
    assert table in tables, f"no CREATE TABLE for {table}"
    return tables[table]


# -- nothing happens at import or construction ------------------------------------------------


def test_nothing_is_created_before_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn imports the function in its master and forks: no Cluster may exist yet."""
    monkeypatch.setattr(cassandra_store, "Cluster", lambda *a, **k: pytest.fail("Cluster made"))
    CassandraStore.from_env({"CASSANDRA_CONTACT_POINTS": "cassandra"})
    CassandraStore(SETTINGS, cluster_factory=lambda settings: pytest.fail("connected too early"))


def test_import_starts_no_threads_and_needs_only_driver_stdlib_and_the_package() -> None:
    code = (
        "import threading, recognizer.cassandra_store as m; "
        "assert threading.active_count() == 1, threading.enumerate()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT / "function", check=True)
    tree = ast.parse(Path(cassandra_store.__file__).read_text(encoding="utf-8"))
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
    assert imported - set(sys.stdlib_module_names) == {"cassandra", "recognizer"}


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
    log = CassandraStore.from_env(FULL_ENV)
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
        (
            {"CASSANDRA_PORT": "nine"},
            "CASSANDRA_PORT must be a whole number from 1 to 65535, not 'nine'",
        ),
        ({"CASSANDRA_PORT": "70000"}, "CASSANDRA_PORT must be between 1 and 65535, not '70000'"),
        ({"CASSANDRA_KEYSPACE": "my-keyspace"}, "CASSANDRA_KEYSPACE"),
        (
            {"CASSANDRA_CONSISTENCY": "SERIAL"},
            f"CASSANDRA_CONSISTENCY must be {LEVELS}, not 'SERIAL'",
        ),
        ({"CASSANDRA_CONSISTENCY": "most"}, f"CASSANDRA_CONSISTENCY must be {LEVELS}, not 'MOST'"),
        (
            {"CASSANDRA_PROTOCOL_VERSION": "3"},
            "CASSANDRA_PROTOCOL_VERSION must be between 4 and 5, not '3'",
        ),
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
    log = CassandraStore.from_env()
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


# -- the schema and the tool that applies it -----------------------------------------------------


def test_schema_is_idempotent_and_shaped_for_a_time_ordered_log() -> None:
    statements = split_statements(SCHEMA_TEXT)
    creates = [s for s in statements if s.upper().startswith("CREATE")]
    alters = [s for s in statements if s.upper().startswith("ALTER")]
    inserts = [s for s in statements if s.upper().startswith("INSERT")]
    assert (len(creates), len(alters), len(inserts), len(statements)) == (9, 1, 1, 11)
    assert all(re.match(r"CREATE \w+ IF NOT EXISTS ", s) for s in creates)
    # The released layout's table is only ever altered where it exists (an upgrade).
    assert all(
        re.match(r"ALTER TABLE IF EXISTS \w+\.predictions ADD IF NOT EXISTS ", s) for s in alters
    )
    assert all(s.endswith("IF NOT EXISTS") for s in inserts)  # the layout is written once
    keyspace, *_ = statements
    assert "{'class': 'SimpleStrategy', 'replication_factor': 1}" in keyspace
    [table] = [s for s in creates if ".records (" in s]
    assert "PRIMARY KEY ((bucket, shard), id)" in table
    assert "CLUSTERING ORDER BY (id DESC)" in table
    assert "'class': 'UnifiedCompactionStrategy'" in table


def test_schema_columns_hold_every_record_field() -> None:
    columns, key = parse_table(SCHEMA_TEXT, "records")
    assert key == "PRIMARY KEY ((bucket, shard), id)"
    assert columns["bucket"].cql_parameterized_type() == "timestamp"
    assert columns["shard"].cql_parameterized_type() == "int"
    assert columns["id"] is cqltypes.TimeUUIDType
    assert columns["created_at"].cql_parameterized_type() == "timestamp"
    assert columns["probabilities"].cql_parameterized_type() == "list<float>"
    assert columns["input_image"] is cqltypes.BytesType and "upload" not in columns  # apart
    assert columns["verdict"].cql_parameterized_type() == "text"
    assert columns["verdict_candidates"].cql_parameterized_type() == "list<int>"
    assert columns["verdict_reasons"].cql_parameterized_type() == "list<text>"
    assert columns["feedback_digit"].cql_parameterized_type() == "int"
    assert columns["feedback_at"].cql_parameterized_type() == "timestamp"
    fields = {f for f in Record.__dataclass_fields__ if f not in {"upload", "verdict", "feedback"}}
    fields |= {f"upload_{f}" for f in Upload.__dataclass_fields__ if f not in ("content", "stored")}
    fields |= {"upload_kept"}  # whether `uploads` holds the bytes
    fields |= {"verdict"} | {f"verdict_{f}" for f in Verdict.__dataclass_fields__ if f != "kind"}
    fields |= {"feedback_digit", "feedback_at", "feedback_client"}  # Feedback's fields
    assert set(columns) == fields | {"bucket", "shard"}
    assert "CREATE TABLE IF NOT EXISTS mnist.uploads (\n    id" in SCHEMA_TEXT  # blobs apart


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
    assert "--" not in out and out.count(";") == 11
    assert split_statements(out) == split_statements(SCHEMA_TEXT)
    assert "CREATE KEYSPACE IF NOT EXISTS mnist\n" in out


def test_dry_run_substitutes_keyspace_and_replication(capsys: pytest.CaptureFixture[str]) -> None:
    replication = "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': '2'}"
    code = apply_schema.main(
        ["--dry-run", "--replication", replication], environ={"CASSANDRA_KEYSPACE": "mnist_eu"}
    )
    assert code == 0
    keyspace, legacy, layout, default, table, *_, keys = split_statements(capsys.readouterr().out)
    assert keyspace.startswith("CREATE KEYSPACE IF NOT EXISTS mnist_eu\n")
    assert "replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': '2'}" in keyspace
    assert "SimpleStrategy" not in keyspace
    assert legacy.startswith("ALTER TABLE IF EXISTS mnist_eu.predictions ADD IF NOT EXISTS (")
    assert layout.startswith("CREATE TABLE IF NOT EXISTS mnist_eu.store_layout (")
    assert default.startswith("INSERT INTO mnist_eu.store_layout ")
    assert table.startswith("CREATE TABLE IF NOT EXISTS mnist_eu.records (")
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


def test_apply_without_contact_points_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert apply_schema.main([], environ={}) == 2
    assert "CASSANDRA_CONTACT_POINTS is required" in capsys.readouterr().err


def test_apply_against_nothing_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"CASSANDRA_CONTACT_POINTS": "127.0.0.1:1", "CASSANDRA_CONNECT_TIMEOUT_SECONDS": "1"}
    assert apply_schema.main([], environ=environ) == 1  # the real driver, refused at once
    assert "NoHostAvailable" in capsys.readouterr().err


# -- faults a live node cannot be made to give ---------------------------------------------------
# The live node answers everything here but the one fault each test injects. What it cannot
# be made to give on demand: a server-side write or read timeout (a replica slower than the
# coordinator's timeout: this one-node test cluster has no other replica, and its timeouts
# are in infra's cassandra.yaml), a CAS timeout in particular (the claim's outcome unknown),
# and a connection reset in the middle of a request. Unavailable, an unreachable node, a
# node that stops answering, refused writes and a missing table come from the live node
# itself: see test_store_contract.py.


class FaultySession:
    """A real driver Session to the live node that raises `fault`, when set, instead of
    sending a statement (execute_async: from the future's result(), as the driver does)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.fault: BaseException | None = None

    def prepare(self, query: str) -> Any:
        return self._session.prepare(query)

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if self.fault is not None:
            raise self.fault
        return self._session.execute(statement, *args, **kwargs)

    def execute_async(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if self.fault is None:
            return self._session.execute_async(statement, *args, **kwargs)
        future: Future = Future()
        future.set_exception(self.fault)
        return future


class FaultyCluster:
    def __init__(self, settings: CassandraSettings) -> None:
        self.cluster = build_cluster(settings)
        self.session: FaultySession | None = None

    def connect(self) -> FaultySession:
        self.session = FaultySession(self.cluster.connect())
        return self.session

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def fault_keyspace(cassandra: Any) -> str:
    return cassandra.keyspace("faults")


LOCAL_QUORUM = ConsistencyLevel.LOCAL_QUORUM
FAULTS = {
    "write-timeout": WriteTimeout(
        "timed out", consistency=LOCAL_QUORUM, write_type=WriteType.SIMPLE
    ),
    "cas-timeout": WriteTimeout("timed out", consistency=LOCAL_QUORUM, write_type=WriteType.CAS),
    "read-timeout": ReadTimeout("timed out", consistency=LOCAL_QUORUM),
    "connection-reset": ConnectionException("Connection reset by peer"),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_faults_a_live_node_cannot_give_are_store_unavailable(
    cassandra: Any, fault_keyspace: str, fault: BaseException
) -> None:
    clusters: list[FaultyCluster] = []

    def factory(settings: CassandraSettings) -> FaultyCluster:
        clusters.append(FaultyCluster(settings))
        return clusters[-1]

    log = CassandraStore(cassandra.settings(fault_keyspace), cluster_factory=factory)
    record = make_record()
    log.save([record])  # connected, and the node answers
    clusters[0].session.fault = fault
    calls = {
        "save": lambda: log.save([make_record(), make_record()]),
        "claim": lambda: log.claim("key", IdempotencyClaim("request", (new_record_id(),))),
        "get": lambda: log.get(record.id),
        "recent": lambda: log.recent(5),
        "ping": log.ping,
    }
    causes = {}
    for name, call in calls.items():
        try:
            call()
        except StoreUnavailable as exc:  # a 503: never a 500, never "claimed" or "recorded"
            causes[name] = exc.__cause__
    assert causes == dict.fromkeys(calls, fault)
    clusters[0].session.fault = None
    assert log.get(record.id) == record  # a fault is not remembered: the next call works
    assert len(clusters) == 1
    log.close()
