"""One contract for both prediction stores: SQLite (local runs) and Cassandra (production).

Every test of the first part runs once per store, through the parametrised `backend`
fixture: SQLite on a fresh file, Cassandra on a fresh keyspace of the live test node
(tests/support/cassandra.py) with the whole schema applied. What they assert is what the
function relies on from whichever store it is given (records.PredictionStore).

The second part is what only Cassandra has, against the same live node: 32-bit float
columns, one partition per UTC day and the look-back of `recent`, the statements it
sends, its connections (one per process, also after a fork), the faults a live node can
be made to give, and the schema: applied to a fresh keyspace, applied again, and applied
over the previous release's schema; and the largest request the function accepts, recorded
while other threads keep reading (a save once flooded the connection). SQLite's own
behaviour (WAL, a file deleted or moved) is in test_sqlite_store.py; Cassandra code that
needs no node, and the faults a live node cannot be made to give, are in
test_cassandra_store.py.

This file is also the program each process of the two-process claim race runs (the
`__main__` block at the end).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.query import SimpleStatement

from infra.cassandra.apply_schema import SCHEMA, apply, render, split_statements
from infra.cassandra.local import free_ports
from recognizer import cassandra_store
from recognizer.cassandra_store import (
    CONNECT_RETRY_SECONDS,
    CassandraSettings,
    CassandraStore,
    build_cluster,
)
from recognizer.records import (
    IDEMPOTENCY_WINDOW_SECONDS,
    Feedback,
    IdempotencyClaim,
    PredictionStore,
    Record,
    StoreUnavailable,
    new_record_id,
    order_key,
    time_of,
    without_upload,
)
from recognizer.sqlite_store import SqliteStore
from recognizer.verdict import Verdict
from tests.function.records_factory import UPLOAD_CAP, make_record

ROOT = Path(__file__).resolve().parents[2]
STORES = ("sqlite", "cassandra")
NOW = datetime(2024, 5, 17, 12, 30, tzinfo=UTC)  # a store opened with now=NOW sees this time


# -- the stores ------------------------------------------------------------------------------


def open_store(
    location: dict[str, str], *, now: datetime | None = None, window: int | None = None
) -> PredictionStore:
    """A store on `location`, as the function opens it, with these changes:

    `now` fixes Cassandra's clock: the day `recent` starts looking back from, and the time a
    claim is stamped with. SQLite has no look-back (`recent` reads the whole file), so it
    needs no clock. `window` is the idempotency window in seconds instead of 24 hours: the
    TTL of a Cassandra claim, the age at which SQLite deletes one.
    """
    window_setting = {} if window is None else {"idempotency_window_seconds": window}
    if location["store"] == "sqlite":
        return SqliteStore(Path(location["path"]), **window_setting)
    settings = CassandraSettings.from_env(
        {
            "CASSANDRA_CONTACT_POINTS": location["contact_points"],
            "CASSANDRA_KEYSPACE": location["keyspace"],
            "CASSANDRA_CONNECT_TIMEOUT_SECONDS": location.get("connect_timeout", "5"),
        }
    )
    clock = (lambda: datetime.now(UTC)) if now is None else (lambda: now)
    return CassandraStore(settings, clock=clock, **window_setting)


@dataclass
class Backend:
    """One kind of store with storage of its own for one test.

    `location` says where the storage is (JSON, so a child process can open it too);
    every `open()` is another client of it, as each worker process of the function is.
    """

    kind: str
    location: dict[str, str]
    opened: list[PredictionStore] = field(default_factory=list)

    def open(self, *, now: datetime | None = None, window: int | None = None) -> PredictionStore:
        store = open_store(self.location, now=now, window=window)
        self.opened.append(store)
        return store

    def unreachable(self) -> PredictionStore:
        """A store of the same kind whose storage cannot be reached."""
        if self.kind == "sqlite":
            blocker = Path(self.location["path"]).parent.with_name("a-file-not-a-folder")
            blocker.write_text("a file where the store's folder should be")
            location = {"store": "sqlite", "path": str(blocker / "predictions.sqlite3")}
        else:
            [port] = free_ports(1, ["127.0.0.1"])  # nothing listens there
            location = {**self.location, "contact_points": f"127.0.0.1:{port}"}
            location["connect_timeout"] = "2"
        store = open_store(location)
        self.opened.append(store)
        return store


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        location = {"store": "sqlite", "path": str(tmp_path / "log" / "predictions.sqlite3")}
    else:
        cassandra = request.getfixturevalue("cassandra")
        location = {
            "store": "cassandra",
            "contact_points": cassandra.contact_points,
            "keyspace": cassandra.keyspace("contract"),
        }
    backend = Backend(request.param, location)
    yield backend
    for store in backend.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> PredictionStore:
    return backend.open()


def newest_first(records: list) -> list:
    return sorted(records, key=lambda record: record.created_at, reverse=True)


def claim_for(request: str, count: int = 2) -> IdempotencyClaim:
    return IdempotencyClaim(request, tuple(new_record_id() for _ in range(count)))


# == the contract: every test runs against SQLite and against Cassandra ======================


def test_a_saved_record_reads_back_field_for_field(store: PredictionStore) -> None:
    now = datetime.now(UTC)
    records = [
        make_record(digit=0, at=now - timedelta(seconds=3)),
        make_record(digit=9, version=20240517123000, at=now - timedelta(seconds=2)),  # bigint
        make_record(digit=4, model_name="mnist-large", latency_ms=0.001, at=now),
    ]
    store.save(records)
    for record in records:
        got = store.get(record.id)
        assert got == record
        assert got.created_at.utcoffset() == timedelta(0)  # aware UTC, as it went in
    assert store.recent(10) == newest_first(records)  # the history reads the same fields


def test_none_values_read_back_as_none(store: PredictionStore) -> None:
    pinned = make_record(model_label=None)  # a request that pinned a version has no label
    over_the_cap = make_record(upload=None)
    store.save([pinned, over_the_cap])
    assert store.get(pinned.id).model_label is None
    assert store.get(over_the_cap.id).upload.content is None
    assert store.get(pinned.id) == pinned and store.get(over_the_cap.id) == over_the_cap


def test_every_verdict_reads_back_with_its_candidates_and_reasons(store: PredictionStore) -> None:
    now = datetime.now(UTC)
    records = [
        make_record(digit=0, verdict=Verdict("unsure", (0, 6, 8), ("ambiguous",)), at=now),
        make_record(
            verdict=Verdict("not_a_digit", (), ("touches_edge", "unusual_shape")),
            at=now - timedelta(seconds=1),
        ),
        # recorded before the service gave verdicts
        make_record(verdict=None, at=now - timedelta(seconds=2)),
    ]
    store.save(records)
    assert [store.get(record.id) for record in records] == records
    assert store.recent(3) == newest_first(records)


def test_a_correction_is_kept_with_its_record_and_the_last_one_wins(store: PredictionStore) -> None:
    record = make_record()
    store.save([record])
    first = Feedback(3, datetime.now(UTC).replace(microsecond=0))
    assert store.correct(record.id, first)
    assert store.get(record.id) == replace(record, feedback=first)
    last = Feedback(None, first.created_at + timedelta(seconds=1))  # "not a digit"
    assert store.correct(record.id, last)
    assert store.get(record.id).feedback == last
    assert store.recent(1)[0].feedback == last
    store.save([record])  # a retried save of the record leaves the correction be
    assert store.get(record.id).feedback == last


def test_a_correction_of_an_unknown_id_makes_no_record(store: PredictionStore) -> None:
    never_saved = make_record()
    assert not store.correct(never_saved.id, Feedback(1, datetime.now(UTC).replace(microsecond=0)))
    assert store.get(never_saved.id) is None and store.recent(10) == []


def test_an_upload_over_the_cap_keeps_its_digest_and_size_but_not_its_bytes(
    store: PredictionStore,
) -> None:
    at_the_cap = make_record(upload=b"\x89PNG" + os.urandom(UPLOAD_CAP - 4))
    over_the_cap = make_record(upload=None)  # the function keeps no bytes past the cap
    store.save([at_the_cap, over_the_cap])
    kept = store.get(at_the_cap.id).upload
    assert kept.content == at_the_cap.upload.content and kept.size == UPLOAD_CAP
    dropped = store.get(over_the_cap.id).upload
    assert dropped.content is None
    assert (dropped.sha256, dropped.size) == (over_the_cap.upload.sha256, UPLOAD_CAP + 1)
    assert dropped.content_type == "image/png"


def test_history_is_newest_first_across_utc_days_and_limited(backend: Backend) -> None:
    store = backend.open(now=NOW)  # Cassandra reads the day partitions back from NOW's day
    midnight = NOW.replace(hour=0, minute=0)
    today = [make_record(at=NOW - timedelta(minutes=m)) for m in (5, 30, 10)]
    around_midnight = [
        make_record(at=midnight),  # 00:00:00.000: today
        make_record(at=midnight - timedelta(milliseconds=1)),  # 23:59:59.999: yesterday
    ]
    earlier = [make_record(at=NOW - timedelta(days=d, hours=1)) for d in (1, 3, 6)]
    everything = newest_first([*today, *around_midnight, *earlier])
    store.save(earlier[1:])
    store.save([today[0], around_midnight[1]])
    for record in [*today[1:], around_midnight[0], earlier[0]]:
        store.save([record])
    assert store.recent(100) == everything
    assert store.recent(3) == everything[:3]
    assert store.recent(4) == everything[:4]  # the 4th is in the same day's partition
    assert store.recent(5) == everything[:5]  # the 5th is yesterday's, at 23:59:59.999
    assert store.recent(1) == everything[:1]
    assert store.recent(0) == []
    assert store.recent(10**12) == everything  # a huge limit is no error


def test_lookup_by_id_finds_that_record_and_nothing_else(store: PredictionStore) -> None:
    record = make_record(at=datetime.now(UTC) - timedelta(minutes=1))
    other = make_record(at=record.created_at - timedelta(days=2))
    store.save([record, other])
    assert store.get(record.id) == record and store.get(other.id) == other
    same_time = uuid.UUID(int=record.id.int ^ 1)  # same time, same day, another node
    assert same_time.version == 1 and store.get(same_time) is None
    assert store.get(new_record_id()) is None  # an id of now, never saved
    assert store.get(make_record(at=datetime(2001, 1, 1, tzinfo=UTC)).id) is None  # no such day


def test_ids_that_are_not_time_based_are_never_found(store: PredictionStore) -> None:
    store.save([make_record()])
    assert store.get(uuid.uuid4()) is None  # a client's guess, or a random id
    assert store.get(uuid.UUID(int=0)) is None  # the nil UUID (version 0)
    assert store.get(uuid.uuid5(uuid.NAMESPACE_URL, "https://example.org/")) is None


def test_saving_an_id_again_adds_no_second_record(store: PredictionStore) -> None:
    first = make_record(digit=3, at=datetime.now(UTC) - timedelta(seconds=1))
    other = make_record(digit=4)
    store.save([first])
    store.save([first, other])  # a retried batch, one of whose records was saved before
    store.save([first])
    assert store.recent(10) == newest_first([first, other])
    assert store.get(first.id) == first


def test_a_retry_with_other_values_still_leaves_one_record(store: PredictionStore) -> None:
    """Two attempts racing with one Idempotency-Key write the same ids with their own
    latencies. Which attempt's record is kept differs by store (SQLite the first, Cassandra
    the last: see their own tests); that there is one record per id does not."""
    first = make_record()
    retry = replace(first, latency_ms=first.latency_ms + 40)
    store.save([first])
    store.save([retry])
    assert store.get(first.id) in (first, retry)
    assert [r.id for r in store.recent(10)] == [first.id]


def test_records_of_one_request_come_back_last_image_first(store: PredictionStore) -> None:
    """The function makes a request's ids one after another, often within one millisecond:
    the history still has one order for them, the reverse of the images'."""
    ids = ids_in_one_millisecond(6)
    records = [make_record(digit=n, id=i, created_at=time_of(i)) for n, i in enumerate(ids)]
    assert len({r.created_at for r in records}) == 1
    store.save(records)
    assert store.recent(10) == records[::-1]


def ids_in_one_millisecond(count: int) -> list[uuid.UUID]:
    """Version-1 ids 100 ns apart within one millisecond, as new_record_id() makes them."""
    base = new_record_id()
    start = base.time - base.time % 10_000  # the millisecond's first 100-ns tick
    return [
        uuid.UUID(
            fields=(
                tick & 0xFFFFFFFF,
                (tick >> 32) & 0xFFFF,
                (tick >> 48) & 0x0FFF | 0x1000,  # version 1
                base.clock_seq_hi_variant,
                base.clock_seq_low,
                base.node,
            )
        )
        for tick in range(start, start + count)
    ]


def test_a_retry_finds_the_records_written_into_the_claimed_ids(store: PredictionStore) -> None:
    """The function's Idempotency-Key flow: claim ids, write the records into them; a
    retry's claim answers with those ids, and their records are there."""
    claim = store.claim("key", claim_for("request", count=2))
    records = [
        make_record(digit=n, id=i, created_at=time_of(i)) for n, i in enumerate(claim.record_ids)
    ]
    store.save(records)
    retry = store.claim("key", claim_for("request", count=2))
    assert [store.get(record_id) for record_id in retry.record_ids] == records


def test_saving_nothing_is_no_error(store: PredictionStore) -> None:
    store.save([])
    assert store.recent(10) == []


# -- idempotency claims ----------------------------------------------------------------------


def test_the_first_claim_of_a_key_wins(store: PredictionStore) -> None:
    first, second = claim_for("request-a", 3), claim_for("request-b", 3)
    assert store.claim("key-1", first) == first
    assert store.claim("key-1", second) == first  # with its record ids, in their order
    assert store.claim("key-1", first) == first  # the winner asking again is no new claim
    assert store.claim("key-2", second) == second  # another key is free


def test_another_store_on_the_same_storage_sees_the_records_and_claims(backend: Backend) -> None:
    """Each worker process of the function opens the store for itself."""
    writer = backend.open()
    record, claim = make_record(), claim_for("request-a")
    writer.save([record])
    writer.claim("key", claim)
    writer.close()
    reader = backend.open()
    assert reader.get(record.id) == record
    assert reader.recent(10) == [record]
    assert reader.claim("key", claim_for("request-b")) == claim


def test_a_claim_is_forgotten_after_the_idempotency_window(backend: Backend) -> None:
    window = 2  # seconds; a Cassandra TTL, so whole seconds
    store = backend.open(window=window)
    old, new, newer = claim_for("request-a"), claim_for("request-b"), claim_for("request-c")
    assert store.claim("key", old) == old
    assert store.claim("key", new) == old  # within the window: the first claim holds
    time.sleep(window + 0.5)
    assert store.claim("key", new) == new  # forgotten: the same key is claimed anew
    assert store.claim("key", newer) == new
    assert store.claim("other-key", old) == old


def test_claims_racing_from_many_threads_have_one_winner(store: PredictionStore) -> None:
    threads, rounds = 12, 8
    answers: list[list[tuple[IdempotencyClaim, IdempotencyClaim] | BaseException]] = [
        [] for _ in range(rounds)
    ]
    start = threading.Barrier(threads)

    def claim_each_round(n: int) -> None:
        for r in range(rounds):
            mine = claim_for(f"request of thread {n}")
            start.wait()  # all threads claim round r's key at once
            try:
                answers[r].append((mine, store.claim(f"key-{r}", mine)))
            except BaseException as exc:  # shown by the assertion below
                answers[r].append(exc)

    workers = [threading.Thread(target=claim_each_round, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    for r, round_answers in enumerate(answers):
        assert len(round_answers) == threads and all(isinstance(a, tuple) for a in round_answers), (
            f"round {r}: {round_answers}"
        )
        winners = [mine for mine, held in round_answers if held == mine]
        assert len(winners) == 1, f"round {r}: {len(winners)} threads won the key"
        assert {held for _, held in round_answers} == {winners[0]}  # all see the winner


def test_claims_racing_from_two_processes_have_one_winner(backend: Backend) -> None:
    backend.open().ping()  # the storage is set up before the processes start
    rounds = 15
    answers = race_in_processes(backend.location, processes=2, rounds=rounds)
    for r in range(rounds):
        won = [answer[r]["won"] for answer in answers]
        held = {json.dumps(answer[r]["held"]) for answer in answers}
        assert won.count(True) == 1, f"round {r}: {won.count(True)} processes won the key"
        assert len(held) == 1, f"round {r}: the processes saw different claims: {held}"
    records_claimed = {tuple(answer[r]["held"][1]) for answer in answers for r in range(rounds)}
    assert len(records_claimed) == rounds  # each key holds the record ids of its winner


def race_in_processes(location: dict[str, str], processes: int, rounds: int) -> list[list[dict]]:
    """Start `processes` copies of this file (see `claim_on_schedule`) on `location`; once
    all are connected, give them one schedule: the same key at the same instant per round."""
    paths = [str(ROOT / "function"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    command = [sys.executable, __file__, json.dumps(location), str(rounds)]
    children = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout.readline() == "connected\n", "a claiming process did not start"
        start = time.time() + 0.5
        for child in children:
            child.stdin.write(f"{start}\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [child.returncode for child in children] == [0] * processes
    return [[json.loads(line) for line in output.splitlines()] for output in outputs]


def claim_on_schedule(location: dict[str, str], rounds: int) -> None:
    """One racing process: connect, say so, read the start time, then claim key-0, key-1, ...
    at start + 0.1 s * round, each for a claim of its own; print what held each key."""
    store = open_store(location)
    store.ping()
    print("connected", flush=True)
    start = float(sys.stdin.readline())
    for r in range(rounds):
        time.sleep(max(0.0, start + 0.1 * r - time.time()))
        mine = claim_for(f"request of process {os.getpid()}")
        held = store.claim(f"key-{r}", mine)
        ids = [str(record_id) for record_id in held.record_ids]
        print(json.dumps({"won": held == mine, "held": [held.request_sha256, ids]}), flush=True)
    store.close()


# -- concurrency, liveness ------------------------------------------------------------------


def test_many_threads_write_without_losing_a_record(store: PredictionStore) -> None:
    saved: list[uuid.UUID] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write(count: int) -> None:
        for n in range(count):
            records = [make_record(digit=n % 10)] if n % 5 else [make_record(), make_record()]
            try:
                store.save(records)
            except BaseException as exc:  # shown by the assertion below
                errors.append(exc)
                return
            with lock:
                saved.extend(record.id for record in records)

    threads = [threading.Thread(target=write, args=(20,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(saved) == 8 * 24
    history = store.recent(1000)
    assert sorted(r.id.int for r in history) == sorted(i.int for i in saved)


def test_ping_answers_on_a_live_store(store: PredictionStore) -> None:
    store.ping()  # the first use: it connects (Cassandra) or creates the file (SQLite)
    store.save([make_record()])
    store.ping()


def test_a_store_that_cannot_be_reached_is_unavailable_on_every_call(backend: Backend) -> None:
    store = backend.unreachable()
    calls: dict[str, Callable[[], Any]] = {
        "ping": store.ping,
        "save": lambda: store.save([make_record()]),
        "claim": lambda: store.claim("key", claim_for("request")),
        "get": lambda: store.get(new_record_id()),
        "recent": lambda: store.recent(5),
    }
    answered = []
    for name, call in calls.items():
        try:
            call()
        except StoreUnavailable:  # a 503 for the client; any other error would be a 500
            continue
        answered.append(name)
    assert answered == []


# == Cassandra only, on the live node ========================================================

PREVIOUS_SCHEMA = ROOT / "tests" / "data" / "schema" / "previous-release-4f21132.cql"
# What the previous release's CassandraStore wrote (cassandra_store.py at commit 4f21132).
PREVIOUS_COLUMNS = (
    "day", "id", "created_at", "digit", "confidence", "probabilities", "model_name",
    "model_version", "model_label", "input_image", "upload", "upload_content_type",
    "upload_sha256", "upload_size", "latency_ms",
)  # fmt: skip


class RecordedSession:
    """A real driver Session to the live node that notes what the store sends through it."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.prepared: list[str] = []
        self.sent: list[Any] = []  # every statement executed, synchronously or not

    def prepare(self, query: str) -> Any:
        self.prepared.append(query)
        return self._session.prepare(query)

    def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(statement)
        return self._session.execute(statement, *args, **kwargs)

    def execute_async(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(statement)
        return self._session.execute_async(statement, *args, **kwargs)

    def queries(self, table: str) -> list[Any]:
        """The bound statements sent that name `table`."""
        return [
            s
            for s in self.sent
            if f".{table} " in getattr(getattr(s, "prepared_statement", s), "query_string", str(s))
        ]


class RecordedCluster:
    """The real Cluster of build_cluster(settings); connect() gives a RecordedSession."""

    def __init__(self, settings: CassandraSettings) -> None:
        self.cluster = build_cluster(settings)
        self.session: RecordedSession | None = None

    def connect(self) -> RecordedSession:
        self.session = RecordedSession(self.cluster.connect())
        return self.session

    def shutdown(self) -> None:
        self.cluster.shutdown()


def bound_value(statement: Any, column: str) -> Any:
    """A value of a bound statement, decoded with the type the node gave for its column."""
    for meta, value in zip(
        statement.prepared_statement.column_metadata, statement.values, strict=True
    ):
        if meta.name == column:
            return meta.type.from_binary(value, statement.prepared_statement.protocol_version)
    raise KeyError(column)


@pytest.fixture(scope="module")
def cql(cassandra: Any) -> Iterator[Any]:
    """A driver session of the test's own, for reading the tables directly (rows as dicts)."""
    cluster = build_cluster(cassandra.settings("system"))
    yield cluster.connect()
    cluster.shutdown()


@pytest.fixture
def keyspace(cassandra: Any) -> str:
    return cassandra.keyspace("cassandra")


@pytest.fixture
def open_log(cassandra: Any, keyspace: str) -> Iterator[Callable[..., CassandraStore]]:
    """open_log(now=..., window=..., cluster_factory=..., CASSANDRA_X=...): a CassandraStore
    on the test's keyspace; the CASSANDRA_* keywords change its settings."""
    opened: list[CassandraStore] = []

    def open_log(
        *,
        now: datetime | None = None,
        window: int | None = None,
        cluster_factory: Callable[[CassandraSettings], Any] = build_cluster,
        **env: object,
    ) -> CassandraStore:
        clock = (lambda: datetime.now(UTC)) if now is None else (lambda: now)
        extra = {} if window is None else {"idempotency_window_seconds": window}
        log = CassandraStore(
            cassandra.settings(keyspace, **env),
            cluster_factory=cluster_factory,
            clock=clock,
            **extra,
        )
        opened.append(log)
        return log

    yield open_log
    for log in opened:
        log.close()


def recorded(clusters: list[RecordedCluster]) -> Callable[[CassandraSettings], RecordedCluster]:
    """A cluster_factory that keeps every cluster it makes in `clusters`."""

    def factory(settings: CassandraSettings) -> RecordedCluster:
        clusters.append(RecordedCluster(settings))
        return clusters[-1]

    return factory


def new_keyspace_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def apply_schema(cassandra: Any, schema: str, keyspace: str) -> None:
    """Apply a schema's text to `keyspace` as `python -m infra.cassandra.apply_schema` does."""
    statements = render(split_statements(schema), keyspace=keyspace)
    # Connecting is retried as the Compose schema job does: a node busy with many
    # keyspaces' schema changes (on a loaded 2-core machine) may let one connect time out.
    apply(statements, cassandra.settings(keyspace), report=lambda line: None, wait=30)


# -- paging, erasure, the fields for per-client caps (#22) ---------------------------------------


def all_pages(store: PredictionStore, limit: int) -> tuple[list[Record], int]:
    """Every page from the newest on, following `next`; the records and the page count."""
    records, cursor, pages = [], None, 0
    while True:
        page = store.page(limit, cursor)
        records += page.records
        pages += 1
        assert len(page.records) <= limit
        if page.next is None:
            return records, pages
        assert page.next == page.records[-1].id
        cursor = page.next


def test_pages_walk_the_history_newest_first_whole_and_once(backend: Backend) -> None:
    store = backend.open(now=NOW)
    minutes = [
        make_record(at=NOW - timedelta(minutes=m, seconds=s)) for m in range(4) for s in (1, 2, 3)
    ]
    same_ms = [
        make_record(digit=n, id=i, created_at=time_of(i))
        for n, i in enumerate(ids_in_one_millisecond(4))
    ]  # now, in the real clock's millisecond: newer than NOW
    days = [make_record(at=NOW - timedelta(days=d, hours=2)) for d in (1, 2, 5)]
    everything = sorted([*minutes, *same_ms, *days], key=lambda r: order_key(r.id), reverse=True)
    store.save([*days, *minutes[::2]])
    store.save([*minutes[1::2], *same_ms])
    if backend.kind == "cassandra":  # its clock (NOW) starts the walk; now's records are later
        everything = [r for r in everything if r.created_at <= NOW]
    lean = [without_upload(r) for r in everything]
    for limit in (1, 4, 5, 100):
        records, pages = all_pages(store, limit)
        assert records == lean, limit  # every record once, newest first, no upload bytes
        assert pages == max(1, -(-len(lean) // limit)), limit
        assert all(r.upload.content is None and r.upload.kept for r in records)
    assert store.page(0).records == [] and store.page(3).next == lean[2].id


def test_a_page_never_repeats_or_skips_while_records_arrive(backend: Backend) -> None:
    store = backend.open()
    older = [make_record(at=datetime.now(UTC) - timedelta(minutes=m)) for m in range(1, 8)]
    store.save(older)
    first = store.page(3)
    arriving = [make_record() for _ in range(5)]  # newer than every page already read
    store.save(arriving)
    rest, _ = all_pages_from(store, 3, first.next)
    assert [r.id for r in first.records + rest] == [
        r.id for r in sorted(older, key=lambda r: order_key(r.id), reverse=True)
    ]


def all_pages_from(
    store: PredictionStore, limit: int, cursor: uuid.UUID | None
) -> tuple[list[Record], int]:
    records, pages = [], 0
    while cursor is not None:
        page = store.page(limit, cursor)
        records, pages, cursor = records + page.records, pages + 1, page.next
    return records, pages


def test_an_erased_prediction_is_gone_from_every_read(store: PredictionStore) -> None:
    erased, kept = make_record(), make_record(digit=3)
    store.save([erased, kept])
    assert store.correct(erased.id, Feedback(1, datetime.now(UTC).replace(microsecond=0), "id:a"))
    assert store.delete(erased.id)
    assert store.get(erased.id) is None and store.get(erased.id, upload=False) is None
    assert [r.id for r in store.recent(10)] == [kept.id]
    assert [r.id for r in store.page(10).records] == [kept.id]
    assert not store.correct(erased.id, Feedback(2, datetime.now(UTC).replace(microsecond=0)))
    assert store.get(erased.id) is None  # a correction never brings it back
    assert not store.delete(erased.id)  # erasing it again: there is nothing left
    assert store.get(kept.id) == kept


def test_the_client_key_pin_and_correcting_client_read_back(store: PredictionStore) -> None:
    """#23's per-client evidence caps: who asked, whether they pinned, who corrected."""
    asked = make_record(client_key="id:alice", pinned=True)
    plain = make_record()
    store.save([asked, plain])
    got = store.get(asked.id)
    assert (got.client_key, got.pinned) == ("id:alice", True)
    assert (store.get(plain.id).client_key, store.get(plain.id).pinned) == (None, False)
    at = datetime.now(UTC).replace(microsecond=0)
    assert store.correct(asked.id, Feedback(4, at, "addr:10.0.0.7"))
    assert store.get(asked.id).feedback == Feedback(4, at, "addr:10.0.0.7")
    [listed] = [r for r in store.page(5).records if r.id == asked.id]  # the history's too
    assert (listed.client_key, listed.pinned) == ("id:alice", True)
    assert listed.feedback == Feedback(4, at, "addr:10.0.0.7")


def test_a_single_record_can_be_read_without_its_upload(store: PredictionStore) -> None:
    record, over = make_record(), make_record(upload=None)
    store.save([record, over])
    lean = store.get(record.id, upload=False)
    assert lean == without_upload(record) and lean.upload.content is None and lean.upload.kept
    assert not store.get(over.id, upload=False).upload.kept


def test_an_erased_prediction_is_in_no_sqlite_table(tmp_path: Path) -> None:
    """SQLite's side of the erasure: every table of the file read directly after delete."""
    path = tmp_path / "log.sqlite3"
    store = SqliteStore(path)
    erased, kept = make_record(), make_record()
    store.save([erased, kept])
    assert store.correct(erased.id, Feedback(2, datetime.now(UTC).replace(microsecond=0)))
    assert store.delete(erased.id)
    store.close()
    with sqlite3.connect(path) as db:
        tables = [
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        held = {}
        for table in tables:
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if "id" in columns:
                held[table] = {row[0] for row in db.execute(f"SELECT id FROM {table}")}
    assert held == {"predictions": {str(kept.id)}, "uploads": {str(kept.id)}, "write_probe": set()}


# -- what the columns keep --------------------------------------------------------------------


def test_floats_are_kept_as_float32_and_read_back_as_their_shortest_decimal(
    open_log: Callable[..., CassandraStore], cql: Any, keyspace: str
) -> None:
    log = open_log()
    decimals = make_record(
        confidence=0.998, probabilities=(0.998, 0.0002, 1e-07, 0.0, 0.5, 1.0, 0.25, 3e-05, 0.1, 0.7)
    )
    precise = make_record(confidence=0.123456789012)  # more digits than a float32 holds
    widened = make_record(confidence=struct_float32(0.92))  # 0.9200000166893005
    log.save([decimals, precise, widened])
    [row] = cql.execute(
        f"SELECT confidence FROM {keyspace}.records WHERE bucket = %s AND shard = %s AND id = %s",
        (*layout_of(cql, keyspace).key(decimals.id), decimals.id),
    )
    assert row["confidence"] == struct_float32(0.998) != 0.998  # the column is a float32
    assert log.get(decimals.id) == decimals  # ... read back as the decimal that was sent
    assert log.get(precise.id).confidence == 0.12345679  # float32 precision, by the schema
    assert log.get(widened.id).confidence == 0.92


def struct_float32(value: float) -> float:
    """The float32 nearest `value`, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def layout_of(cql: Any, keyspace: str) -> cassandra_store.Layout:
    [row] = cql.execute(
        f"SELECT shards, bucket_seconds FROM {keyspace}.store_layout WHERE name = 'records'"
    )
    return cassandra_store.Layout(row["shards"], row["bucket_seconds"])


def test_each_record_is_in_the_partition_of_its_minute_and_shard(
    open_log: Callable[..., CassandraStore], cql: Any, keyspace: str
) -> None:
    late = make_record(at=datetime(2024, 5, 16, 23, 59, 59, 999000, tzinfo=UTC))
    early = make_record(at=datetime(2024, 5, 17, 0, 0, tzinfo=UTC))
    open_log().save([late, early])
    layout = layout_of(cql, keyspace)
    assert (layout.shards, layout.bucket_seconds) == (64, 60)  # schema.cql's default
    rows = cql.execute(f"SELECT bucket, shard, id FROM {keyspace}.records")
    keys = {row["id"]: (row["bucket"].replace(tzinfo=UTC), row["shard"]) for row in rows}
    assert keys == {
        late.id: (datetime(2024, 5, 16, 23, 59, tzinfo=UTC), zlib.crc32(late.id.bytes) % 64),
        early.id: (datetime(2024, 5, 17, 0, 0, tzinfo=UTC), zlib.crc32(early.id.bytes) % 64),
    }
    index = cql.execute(f"SELECT day, bucket, shard FROM {keyspace}.record_buckets")
    assert {(r["day"].date(), r["bucket"].replace(tzinfo=UTC), r["shard"]) for r in index} == {
        (date(2024, 5, 16), *keys[late.id]),
        (date(2024, 5, 17), *keys[early.id]),
    }
    uploads = cql.execute(f"SELECT id, content FROM {keyspace}.uploads")
    assert {row["id"]: row["content"] for row in uploads} == {
        late.id: late.upload.content,
        early.id: early.upload.content,
    }


def test_recent_looks_back_lookback_days_of_partitions(
    open_log: Callable[..., CassandraStore],
) -> None:
    log = open_log(now=NOW)  # the default look-back: 7 days, today included
    today = make_record(at=NOW - timedelta(minutes=1))
    six_days_ago = make_record(at=NOW - timedelta(days=6))
    seven_days_ago = make_record(at=NOW - timedelta(days=7))
    log.save([today, six_days_ago, seven_days_ago])
    assert log.recent(10) == [today, six_days_ago]
    assert log.get(seven_days_ago.id) == seven_days_ago  # kept, and found by its id
    one_day = open_log(now=NOW, CASSANDRA_RECENT_LOOKBACK_DAYS=1)
    assert one_day.recent(10) == [today]


def test_a_page_reads_only_the_partitions_it_needs(
    open_log: Callable[..., CassandraStore],
) -> None:
    clusters: list[RecordedCluster] = []
    log = open_log(now=NOW, cluster_factory=recorded(clusters))
    minute = NOW - timedelta(minutes=1)
    newest = [make_record(at=minute + timedelta(milliseconds=m)) for m in range(5)]
    log.save([*newest, make_record(at=NOW - timedelta(days=3))])
    session = clusters[0].session
    layout = cassandra_store.Layout(64, 60)

    def read(limit: int) -> tuple[set[tuple[datetime, int]], list[date]]:
        session.sent.clear()
        log.page(limit)
        partitions = {
            (bound_value(s, "bucket").replace(tzinfo=UTC), bound_value(s, "shard"))
            for s in session.queries("records")
        }
        return partitions, [bound_value(s, "day").date() for s in session.queries("record_buckets")]

    # The newest minute holds enough: only its non-empty shards, only today's index.
    assert read(2) == ({layout.key(r.id) for r in newest}, [NOW.date()])
    partitions, days = read(10)  # not enough: back through the look-back's days
    assert days == [NOW.date() - timedelta(days=back) for back in range(7)]
    assert len(partitions) == len({layout.key(r.id) for r in newest}) + 1


def test_a_retry_with_other_values_overwrites_the_record(
    open_log: Callable[..., CassandraStore],
) -> None:
    """An INSERT is an upsert: the last attempt's values are the record (SQLite keeps the
    first attempt's; either way there is one record per id)."""
    log = open_log()
    first = make_record()
    retry = replace(first, latency_ms=first.latency_ms + 40, model_version=3)
    log.save([first])
    log.save([retry])
    assert log.get(first.id) == retry


def test_none_values_are_left_unset_not_written_as_tombstones(
    open_log: Callable[..., CassandraStore], cql: Any, keyspace: str
) -> None:
    """A null would write a tombstone per record; the store leaves the columns unset."""
    record = make_record(upload=None, model_label=None, at=NOW)
    open_log().save([record])
    query = SimpleStatement(f"SELECT * FROM {keyspace}.records WHERE bucket = %s AND shard = %s")
    result = cql.execute(query, layout_of(cql, keyspace).key(record.id), trace=True)
    assert [row["id"] for row in result] == [record.id]
    events = [event.description for event in result.get_query_trace().events]
    read = [e for e in events if "live rows and" in e]
    assert read and all("and 0 tombstone cells" in e for e in read), events


def test_an_erased_prediction_is_in_no_table(
    open_log: Callable[..., CassandraStore], cql: Any, keyspace: str
) -> None:
    """Every table that holds anything of a record, read as cqlsh would, after DELETE."""
    log = open_log()
    erased, kept = make_record(), make_record()
    log.save([erased, kept])
    assert log.correct(erased.id, Feedback(2, datetime.now(UTC).replace(microsecond=0)))
    assert log.correct(kept.id, Feedback(3, datetime.now(UTC).replace(microsecond=0)))

    def holding(table: str) -> set[uuid.UUID]:
        return {row["id"] for row in cql.execute(f"SELECT id FROM {keyspace}.{table}")}

    tables = ("records", "uploads", "corrections")
    assert [holding(t) for t in tables] == [{erased.id, kept.id}] * 3
    assert log.delete(erased.id)
    assert [holding(t) for t in tables] == [{kept.id}] * 3
    # What is left: the bucket index (partition keys, no record data) and the anonymous
    # per-version counts, which never name a record.
    index = {row["table_name"] for row in cql.execute(
        "SELECT table_name FROM system_schema.columns WHERE keyspace_name = %s "
        "AND column_name = 'id' ALLOW FILTERING",
        (keyspace,),
    )}  # fmt: skip
    assert index == {*tables}  # no other table keeps an id


def test_version_counts_are_exact_and_a_retry_counts_nothing_twice(
    open_log: Callable[..., CassandraStore],
) -> None:
    clusters: list[RecordedCluster] = []
    first = open_log(now=NOW, cluster_factory=recorded(clusters))
    other = open_log(now=NOW)  # a second process: a writer of its own
    at = NOW - timedelta(minutes=30)
    v2 = [make_record(version=2, at=at + timedelta(seconds=n)) for n in range(120)]
    v3 = [make_record(version=3, at=at, model_label="canary") for _ in range(6)]
    v3[0] = replace(v3[0], pinned=True)  # counted apart
    first.save(v2[:60])
    first.save(v2[:60])  # a retry of the same records
    first.save([*v2[60:], *v3[:3]])
    other.save(v3[3:])
    other.save(v3[3:])
    first.close()  # each flushes what it counted
    other.close()
    reader = open_log(now=NOW, cluster_factory=recorded(clusters))
    counts = reader.version_tallies(NOW - timedelta(hours=1))
    assert {key: t.requests for key, t in counts.items()} == {
        (2, False): 120,
        (3, False): 5,
        (3, True): 1,
    }
    assert counts[3, False].labels == {"canary": 5} and counts[2, False].labels == {"stable": 120}
    assert sum(counts[2, False].digits) == 120 and counts[2, False].confidence_sum == pytest.approx(
        sum(r.confidence for r in v2), rel=1e-6
    )
    assert clusters[1].session.queries("records") == []  # no record read at all
    assert reader.version_tallies(NOW + timedelta(hours=1)) == {}  # an empty window


def test_corrections_are_read_from_their_table_by_the_records_day(
    open_log: Callable[..., CassandraStore],
) -> None:
    clusters: list[RecordedCluster] = []
    log = open_log(now=NOW, cluster_factory=recorded(clusters))
    old, new, plain = (make_record(at=NOW - timedelta(days=d)) for d in (3, 1, 1))
    log.save([old, new, plain])
    at = NOW.replace(microsecond=0)
    for record in (old, new):
        assert log.correct(record.id, Feedback(None, at, "id:bob"))
    clusters[0].session.sent.clear()
    found = log.corrections(NOW - timedelta(days=2))
    assert [(c["id"], c["feedback_digit"], c["client_key"]) for c in found] == [
        (new.id, None, "id:bob")
    ]
    assert clusters[0].session.queries("records") == []


# -- the statements it sends --------------------------------------------------------------------


def test_records_are_written_concurrently_by_idempotent_inserts_not_a_batch(
    open_log: Callable[..., CassandraStore],
) -> None:
    clusters: list[RecordedCluster] = []
    log = open_log(cluster_factory=recorded(clusters))
    records = [make_record(digit=n) for n in range(5)]
    log.save(records)
    writes = clusters[0].session.queries("records")
    assert [bound_value(s, "id") for s in writes] == [r.id for r in records]
    assert all(s.prepared_statement.query_string.startswith("INSERT INTO ") for s in writes)
    assert all(s.is_idempotent for s in writes)  # so the driver may retry one
    assert [log.get(r.id) for r in records] == records


def test_a_claim_is_a_lightweight_transaction_kept_for_the_idempotency_window(
    open_log: Callable[..., CassandraStore], cql: Any, keyspace: str
) -> None:
    clusters: list[RecordedCluster] = []
    log = open_log(now=NOW, cluster_factory=recorded(clusters))
    claim = claim_for("request")
    log.claim("key", claim)
    [row] = cql.execute(
        f"SELECT request_sha256, record_ids, created_at, TTL(request_sha256) AS ttl "
        f"FROM {keyspace}.idempotency_keys WHERE key_sha256 = 'key'"
    )
    assert (row["request_sha256"], tuple(row["record_ids"])) == (
        claim.request_sha256,
        claim.record_ids,
    )
    assert row["created_at"] == NOW.replace(tzinfo=None)  # when it was claimed, by the clock
    assert IDEMPOTENCY_WINDOW_SECONDS - 60 < row["ttl"] <= IDEMPOTENCY_WINDOW_SECONDS  # 24 h
    [sent] = clusters[0].session.queries("idempotency_keys")
    assert sent.serial_consistency_level == ConsistencyLevel.LOCAL_SERIAL  # LOCAL_QUORUM's
    assert sent.is_idempotent  # a claim that ran already answers with itself
    quorum = open_log(cluster_factory=recorded(clusters), CASSANDRA_CONSISTENCY="QUORUM")
    assert quorum.claim("key", claim_for("other")) == claim
    [sent] = clusters[1].session.queries("idempotency_keys")
    assert sent.serial_consistency_level == ConsistencyLevel.SERIAL


# -- connections ---------------------------------------------------------------------------------


def test_first_use_from_many_threads_makes_one_connection(
    open_log: Callable[..., CassandraStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[Callable[[], None]] = []
    monkeypatch.setattr(cassandra_store.atexit, "register", registered.append)
    clusters: list[RecordedCluster] = []
    factory = recorded(clusters)

    def slow_factory(settings: CassandraSettings) -> RecordedCluster:
        time.sleep(0.05)  # widen the window in which threads could each connect
        return factory(settings)

    log = open_log(cluster_factory=slow_factory)
    start, errors = threading.Barrier(16), []

    def use() -> None:
        start.wait()
        try:
            log.ping()
            log.save([make_record()])
            log.recent(3)
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(clusters) == 1
    prepared = clusters[0].session.prepared
    assert len(prepared) == len(set(prepared))  # each statement prepared once, then reused
    assert len(log.recent(100)) == 16
    assert registered == [log.close]  # shut down at exit
    log.close()
    assert clusters[0].cluster.is_shutdown
    with pytest.raises(StoreUnavailable, match="closed"):
        log.ping()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_worker_connects_anew_and_leaves_the_parents_connection_alone(
    open_log: Callable[..., CassandraStore],
) -> None:
    """gunicorn forks its workers; a connection made before the fork is unusable after it."""
    log = open_log()
    before = make_record()
    log.save([before])  # connected, in the parent, before the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write a record, read the parent's, close, tell the parent
        status = 1
        try:
            os.close(read_end)
            written = make_record(digit=3)
            log.save([written])
            if log.get(before.id) == before and log.get(written.id) == written:
                os.write(write_end, written.id.bytes)
            log.close()  # the child's connection only
            status = 0
        except BaseException:  # the child must never return into pytest
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked worker hung")
    written_id = os.read(read_end, 16)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert len(written_id) == 16, "the child could not write and read back"
    log.ping()  # the parent's connection still works after the child closed its own
    assert log.get(uuid.UUID(bytes=written_id)).digit == 3


def test_a_failed_connect_is_unavailable_and_a_call_after_a_pause_connects(
    open_log: Callable[..., CassandraStore],
) -> None:
    """For CONNECT_RETRY_SECONDS after a failed connect, calls fail at once instead of each
    waiting out a connect timeout of its own; the first call after it connects anew."""
    [nowhere] = free_ports(1, ["127.0.0.1"])
    made: list[Any] = []

    def first_to_nowhere(settings: CassandraSettings) -> Any:
        if not made:  # the node is unreachable the first time
            settings = replace(
                settings, contact_points=(("127.0.0.1", nowhere),), connect_timeout=2
            )
        made.append(build_cluster(settings))
        return made[-1]

    log = open_log(cluster_factory=first_to_nowhere)
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        log.ping()
    assert made[0].is_shutdown  # its driver threads are gone
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        log.ping()  # within the pause: the same answer, no second attempt
    assert time.monotonic() - started < 0.5 and len(made) == 1
    time.sleep(CONNECT_RETRY_SECONDS)
    log.ping()  # after it, the call tries again, and this time the node answers
    assert len(made) == 2 and not made[1].is_shutdown
    log.close()
    assert made[1].is_shutdown


# -- faults the live node gives -------------------------------------------------------------


def test_too_few_replicas_make_every_call_unavailable(
    open_log: Callable[..., CassandraStore],
) -> None:
    """Consistency TWO on a one-node cluster: the node itself answers Unavailable."""
    log = open_log(CASSANDRA_CONSISTENCY="TWO")
    calls: dict[str, Callable[[], Any]] = {
        "save": lambda: log.save([make_record()]),
        "claim": lambda: log.claim("key", claim_for("request")),
        "get": lambda: log.get(new_record_id()),
        "recent": lambda: log.recent(5),
        "ping": log.ping,
    }
    unavailable = {}
    for name, call in calls.items():
        try:
            call()
        except StoreUnavailable as exc:
            unavailable[name] = "Cannot achieve consistency level TWO" in str(exc)
    assert unavailable == dict.fromkeys(calls, True)


def test_a_node_that_stops_answering_is_unavailable_within_the_request_timeout(
    cassandra: Any, open_log: Callable[..., CassandraStore]
) -> None:
    """The node's JVM is paused (SIGSTOP): to a client, a long GC pause or a partition.
    Every call gives up after CASSANDRA_REQUEST_TIMEOUT_SECONDS; once the node answers
    again, so does the store, on the same connection."""
    log = open_log(CASSANDRA_REQUEST_TIMEOUT_SECONDS=1)
    record = make_record()
    log.save([record])
    calls: dict[str, Callable[[], Any]] = {
        "save": lambda: log.save([make_record()]),
        "claim": lambda: log.claim("key", claim_for("request")),
        "get": lambda: log.get(record.id),
        "recent": lambda: log.recent(5),
        "ping": log.ping,
    }
    outcomes = {}
    with paused(cassandra.cluster.members[0].process.pid):
        for name, call in calls.items():
            started = time.monotonic()
            try:
                call()
            except StoreUnavailable as exc:
                outcomes[name] = (type(exc.__cause__).__name__, time.monotonic() - started < 3)
    assert outcomes == dict.fromkeys(calls, ("OperationTimedOut", True))
    assert log.get(record.id) == record


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP the process, and wait until every one of its threads has stopped (a signal
    is not instantaneous: a loopback write can complete in the meantime); SIGCONT after."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while not all(
            stat.read_text().rpartition(")")[2].split()[0] in "tT"
            for stat in Path(f"/proc/{pid}/task").glob("*/stat")
        ):
            assert time.monotonic() < deadline, "the node did not stop"
            time.sleep(0.01)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_refused_writes_fail_the_save_after_every_write_has_answered(
    open_log: Callable[..., CassandraStore],
) -> None:
    """The writes of one save go out together; the save waits for all of them, counts the
    ones the node refused (here: over its message size), and the others are recorded."""
    log = open_log()

    def too_big() -> Record:
        return make_record(upload=b"\x89PNG" + bytes(20 * 2**20))

    # The refused ones last: a write sent after 20 MiB can be refused by the driver as well
    # (see test_the_largest_request_the_function_accepts_is_recorded_on_a_slower_link).
    records = [make_record(), make_record(), too_big(), too_big()]
    with pytest.raises(StoreUnavailable, match="did not record 2 of 4") as raised:
        log.save(records)
    assert isinstance(raised.value.__cause__, InvalidRequest)  # the first refusal
    assert [log.get(r.id) is not None for r in records] == [True, True, False, False]


def small_send_buffer(settings: CassandraSettings) -> Any:
    """build_cluster's Cluster with a 64 KiB socket send buffer: a link that drains slower
    than loopback, as between a Cloud Run instance and its Cassandra nodes."""
    cluster = build_cluster(settings)
    cluster.sockopts = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)]
    return cluster


def test_the_largest_request_the_function_accepts_is_recorded_on_a_slower_link(
    open_log: Callable[..., CassandraStore],
) -> None:
    """38 uploads of 256 KiB (UPLOAD_STORE_MAX_BYTES, all kept) are a 10 MiB request
    (MAX_REQUEST_BYTES): the function accepts it, so its store must record it. On loopback
    with default buffers about one such save in five fails; on this link nearly all do."""
    log = open_log(cluster_factory=small_send_buffer)
    for _ in range(10):
        batch = largest_request()
        log.save(batch)
        assert [log.get(r.id) for r in batch] == batch


def largest_request() -> list[Record]:
    """The records of a 10 MiB request: 38 uploads of 256 KiB, every one kept."""
    return [make_record(upload=b"\x89PNG" + os.urandom(UPLOAD_CAP - 4)) for _ in range(38)]


def test_other_requests_are_served_while_the_largest_request_is_recorded(
    open_log: Callable[..., CassandraStore],
) -> None:
    """One worker process serves many requests on threads over one connection to the node
    (here on loopback, with default buffers): a record's lookup must not fail because
    another thread is recording a large request."""
    log = open_log()
    known = make_record()
    log.save([known])
    failures: list[StoreUnavailable] = []
    done = threading.Event()

    def read_meanwhile() -> None:
        while not done.is_set():
            try:
                assert log.get(known.id) == known
            except StoreUnavailable as exc:
                failures.append(exc)

    reader = threading.Thread(target=read_meanwhile)
    reader.start()
    try:
        for _ in range(20):  # until a lookup fails: one save in a few floods the connection
            log.save(largest_request())
            if failures:
                break
    finally:
        done.set()
        reader.join(timeout=60)
    if failures:
        raise failures[0]  # e.g. NoHostAvailable: ConnectionBusy('... is overloaded')


def test_a_wrong_python_type_is_a_bug_not_an_outage(
    open_log: Callable[..., CassandraStore],
) -> None:
    log = open_log()
    record = make_record(digit="7")
    with pytest.raises(TypeError, match="digit"):
        log.save([record])
    assert log.get(record.id) is None


# -- the schema ----------------------------------------------------------------------------------


def test_the_schema_makes_a_fresh_keyspace_shaped_for_the_log(cassandra: Any, cql: Any) -> None:
    keyspace = new_keyspace_name("fresh")
    made: list[Any] = []

    def cluster(settings: CassandraSettings) -> Any:
        made.append(build_cluster(settings))
        return made[-1]

    statements = render(split_statements(SCHEMA.read_text(encoding="utf-8")), keyspace=keyspace)
    apply(statements, cassandra.settings(keyspace), cluster_factory=cluster, report=lambda _: None)
    assert [c.is_shutdown for c in made] == [True]  # the tool leaves no connection open
    [space] = cql.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
    )
    assert space["replication"]["class"].endswith("SimpleStrategy")  # as schema.cql says
    tables = {
        row["table_name"]: row
        for row in cql.execute(
            "SELECT table_name, compaction FROM system_schema.tables WHERE keyspace_name = %s",
            (keyspace,),
        )
    }
    assert set(tables) == {
        "store_layout",
        "records",
        "uploads",
        "record_buckets",
        "corrections",
        "version_counts",
        "migration_ranges",
        "idempotency_keys",
    }  # no `predictions`: a fresh keyspace has nothing to migrate
    for table in ("records", "uploads"):
        assert tables[table]["compaction"]["class"].endswith("UnifiedCompactionStrategy")
    keys = {
        (row["table_name"], row["column_name"]): (row["kind"], row["clustering_order"])
        for row in cql.execute(
            "SELECT table_name, column_name, kind, clustering_order FROM system_schema.columns "
            "WHERE keyspace_name = %s",
            (keyspace,),
        )
        if row["kind"] != "regular"
    }
    assert keys == {
        ("store_layout", "name"): ("partition_key", "none"),
        ("records", "bucket"): ("partition_key", "none"),
        ("records", "shard"): ("partition_key", "none"),
        ("records", "id"): ("clustering", "desc"),  # newest first within a partition
        ("uploads", "id"): ("partition_key", "none"),
        ("record_buckets", "day"): ("partition_key", "none"),
        ("record_buckets", "bucket"): ("clustering", "desc"),
        ("record_buckets", "shard"): ("clustering", "asc"),
        ("corrections", "day"): ("partition_key", "none"),
        ("corrections", "id"): ("clustering", "desc"),
        ("version_counts", "day"): ("partition_key", "none"),
        ("version_counts", "hour"): ("clustering", "desc"),
        ("version_counts", "model_version"): ("clustering", "asc"),
        ("version_counts", "pinned"): ("clustering", "asc"),
        ("version_counts", "writer"): ("clustering", "asc"),
        ("migration_ranges", "range_start"): ("partition_key", "none"),
        ("migration_ranges", "range_end"): ("clustering", "asc"),
        ("idempotency_keys", "key_sha256"): ("partition_key", "none"),
    }
    log = CassandraStore(cassandra.settings(keyspace))
    log.ping()  # every statement the store prepares fits the tables
    log.close()


def table_shapes(cql: Any, keyspace: str) -> list[dict]:
    rows = cql.execute(
        "SELECT table_name, column_name, type, kind FROM system_schema.columns "
        "WHERE keyspace_name = %s",
        (keyspace,),
    )
    return sorted(rows, key=lambda row: (row["table_name"], row["column_name"]))


def test_applying_the_schema_again_changes_nothing(
    cassandra: Any, cql: Any, keyspace: str, open_log: Callable[..., CassandraStore]
) -> None:
    log = open_log()
    record, claim = make_record(), claim_for("request")
    log.save([record])
    log.claim("key", claim)
    shapes = table_shapes(cql, keyspace)
    for _ in range(2):
        apply_schema(cassandra, SCHEMA.read_text(encoding="utf-8"), keyspace)
    assert table_shapes(cql, keyspace) == shapes
    assert log.get(record.id) == record
    assert log.claim("key", claim_for("other")) == claim


@pytest.mark.parametrize(
    ("release", "refused_for"),
    [
        # Before idempotency keys: only the predictions table, without verdicts.
        (PREVIOUS_SCHEMA, "store_layout"),
        # Before verdicts: both tables, the predictions without the verdict columns.
        (PREVIOUS_SCHEMA.with_name("previous-release-7c8a5ba.cql"), "store_layout"),
    ],
    ids=["before-idempotency-keys", "before-verdicts"],
)
def test_the_schema_applies_over_the_previous_releases(
    cassandra: Any, cql: Any, release: Path, refused_for: str
) -> None:
    """An older release's records read on (with no verdict: none was given then), and the
    new features work, once the current schema is applied over its tables."""
    keyspace = new_keyspace_name("upgrade")
    apply_schema(cassandra, release.read_text(encoding="utf-8"), keyspace)
    old = make_record(at=datetime.now(UTC) - timedelta(minutes=5), model_label=None, verdict=None)
    insert = cql.prepare(
        f"INSERT INTO {keyspace}.predictions ({', '.join(PREVIOUS_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in PREVIOUS_COLUMNS)})"
    )
    u = old.upload
    cql.execute(insert, (
        old.created_at.date(), old.id, old.created_at, old.digit, old.confidence,
        list(old.probabilities), old.model_name, old.model_version, old.model_label,
        old.input_image, u.content, u.content_type, u.sha256, u.size, old.latency_ms,
    ))  # fmt: skip
    log = CassandraStore(cassandra.settings(keyspace))
    with pytest.raises(StoreUnavailable, match=refused_for):
        log.ping()  # this release refuses the old schema: apply the schema before deploying
    apply_schema(cassandra, SCHEMA.read_text(encoding="utf-8"), keyspace)
    time.sleep(CONNECT_RETRY_SECONDS)  # a failed connect is tried again after this pause
    log.ping()
    assert log.get(old.id) == old
    new = make_record()
    log.save([new])
    assert log.recent(10) == [new, old]
    claim = claim_for("request")
    assert log.claim("key", claim) == claim
    assert log.claim("key", claim_for("retry")) == claim
    log.close()


@pytest.mark.parametrize(
    ("declared", "changed"),
    [
        ("frozen<list<float>>", "frozen<list<int>>"),
        ("confidence          float", "confidence          int"),
        ("created_at          timestamp", "created_at          text"),
        ("model_name          text", "model_name          int"),
        ("latency_ms          double", "latency_ms          bigint"),
    ],
    ids=["probabilities", "confidence", "created_at", "model_name", "latency_ms"],
)
def test_a_schema_that_disagrees_with_the_code_fails_loudly(
    cassandra: Any, declared: str, changed: str
) -> None:
    schema = SCHEMA.read_text(encoding="utf-8")
    records = schema.index("CREATE TABLE IF NOT EXISTS mnist.records")
    assert records < schema.index(declared, records) < schema.index("mnist.uploads", records)
    head, tail = schema[:records], schema[records:]
    keyspace = new_keyspace_name("drift")
    apply_schema(cassandra, head + tail.replace(declared, changed, 1), keyspace)  # records
    log = CassandraStore(cassandra.settings(keyspace))
    try:
        with pytest.raises((TypeError, AttributeError)):  # what the driver's serializers raise
            log.save([make_record()])
    finally:
        log.close()


def test_a_missing_column_makes_the_store_unavailable(cassandra: Any) -> None:
    schema = SCHEMA.read_text(encoding="utf-8").replace("    latency_ms          double,\n", "")
    keyspace = new_keyspace_name("missing")
    apply_schema(cassandra, schema, keyspace)
    clusters: list[RecordedCluster] = []
    log = CassandraStore(cassandra.settings(keyspace), cluster_factory=recorded(clusters))
    with pytest.raises(StoreUnavailable, match="latency_ms"):
        log.ping()
    assert clusters[0].cluster.is_shutdown  # the failed start left no connection behind
    log.close()


# == a process of the two-process claim race =================================================

if __name__ == "__main__":
    claim_on_schedule(json.loads(sys.argv[1]), int(sys.argv[2]))
