"""Coalescing: requests in flight together share one model call and one durable write.

The use case runs against the in-process model stand-in (its `predicted` counts the
:predict calls, its `fault` holds one open while others arrive) and real SQLite files;
the coalescer alone is checked with a plain function, as it is one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from recognizer.canary import Route
from recognizer.cassandra_store import CassandraStore
from recognizer.coalesce import Coalescer
from recognizer.model_client import ModelClient, UnexpectedStatus
from recognizer.records import Record, StoreUnavailable
from recognizer.service import Recognition, Recognizer
from recognizer.sqlite_store import SqliteStore
from tests.conftest import ROOT
from tests.support.model_stand_in import Fault, ModelStandIn, answer

SAMPLES = ROOT / "tests" / "data" / "samples"
IMAGES = [path.read_bytes() for path in sorted(SAMPLES.iterdir())]
STABLE = Route("stable")
HOLD_SECONDS = 1.0  # the first call is held this long: the others arrive meanwhile
WINDOW_SECONDS = 0.1


class CountingStore(SqliteStore):
    """Real SQLite; counts the durable writes (each one transaction and fsync)."""

    def __init__(self, *args: object, fail: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.saves: list[int] = []
        self.fail = fail

    def save(self, records: Sequence[Record]) -> None:
        self.saves.append(len(records))
        if self.fail:
            raise StoreUnavailable("could not record predictions in SQLite: disk I/O error")
        super().save(records)


@pytest.fixture
def store(tmp_path) -> Iterator[CountingStore]:
    store = CountingStore(tmp_path / "predictions.sqlite3")
    yield store
    store.close()


def recognizer_for(url: str, store: SqliteStore, window: float = WINDOW_SECONDS) -> Recognizer:
    model = ModelClient(url, "mnist", timeout_seconds=30, label_cache_seconds=60)
    return Recognizer(
        model, store, "mnist", 40_000_000, 40_000_000, 256 * 1024, coalesce_window_seconds=window
    )


def at_once(recognizer: Recognizer, requests: list[list[bytes]], **kwargs) -> list:
    """Each request on its own thread, started together: a Recognition or what it raised."""
    outcomes: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def one(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = recognizer.recognize(requests[n], STABLE, **kwargs)
        except Exception as error:
            outcomes[n] = error

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def requests_of(count: int) -> list[list[bytes]]:
    """Different images (and counts of them) per request, so every answer is its own."""
    return [[IMAGES[n % len(IMAGES)]] * (1 + n % 3) for n in range(count)]


def test_requests_in_flight_together_share_calls_and_each_gets_its_own_answer(
    model_stand_in: ModelStandIn, store: CountingStore
):
    model_stand_in.fault = Fault(delay=HOLD_SECONDS)
    recognizer = recognizer_for(model_stand_in.url, store)
    requests = requests_of(8)
    outcomes = at_once(recognizer, requests)

    assert all(isinstance(outcome, Recognition) for outcome in outcomes), outcomes
    # 8 requests: the first call goes with those ready at once, the rest with the next.
    assert model_stand_in.predictions_asked <= 2
    assert len(store.saves) <= 2
    assert sum(store.saves) == sum(len(images) for images in requests)
    for images, outcome in zip(requests, outcomes, strict=True):
        assert len(outcome.records) == len(images)
        for record in outcome.records:
            pixels = np.frombuffer(record.input_image, dtype=np.uint8).reshape(1, 28, 28)
            probabilities, digits = answer(pixels, record.model_version)
            assert record.digit == int(digits[0])
            assert record.probabilities == pytest.approx(tuple(probabilities[0]))
            assert store.get(record.id) is not None  # durable before the answer


class CountingCassandra(CassandraStore):
    """A live node's store; counts the shared writes."""

    saves: list[int]

    def save(self, records: Sequence[Record]) -> None:
        self.saves.append(len(records))
        super().save(records)


def test_on_a_live_cassandra_node_members_share_writes_awaited_together(
    model_stand_in: ModelStandIn, cassandra
):
    store = CountingCassandra(cassandra.settings(cassandra.keyspace("coalesce")))
    store.saves = []
    model_stand_in.fault = Fault(delay=HOLD_SECONDS)
    requests = requests_of(8)
    try:
        outcomes = at_once(recognizer_for(model_stand_in.url, store), requests)
        assert all(isinstance(outcome, Recognition) for outcome in outcomes), outcomes
        assert len(store.saves) <= 2
        assert sum(store.saves) == sum(len(images) for images in requests)
        for images, outcome in zip(requests, outcomes, strict=True):
            assert len(outcome.records) == len(images)
            for record in outcome.records:
                kept = store.get(record.id)
                assert kept is not None
                assert kept.digit == record.digit
    finally:
        store.close()


def test_a_failed_shared_model_call_fails_every_member_and_records_nothing(
    model_stand_in: ModelStandIn, store: CountingStore
):
    model_stand_in.fault = Fault(
        delay=HOLD_SECONDS, answer=lambda status, body: (500, b'{"error": "boom"}')
    )
    outcomes = at_once(recognizer_for(model_stand_in.url, store), requests_of(6))

    assert all(isinstance(outcome, UnexpectedStatus) for outcome in outcomes), outcomes
    assert model_stand_in.predictions_asked <= 2
    assert store.saves == []


def test_a_failed_shared_write_fails_every_member_and_keys_stay_retryable(
    model_stand_in: ModelStandIn, tmp_path
):
    failing = CountingStore(tmp_path / "predictions.sqlite3", fail=True)
    recognizer = recognizer_for(model_stand_in.url, failing)
    requests = requests_of(6)
    outcomes = []
    lock = threading.Lock()
    start = threading.Barrier(len(requests))

    def one(n: int) -> None:
        start.wait()
        try:
            result = recognizer.recognize(requests[n], STABLE, idempotency_key=f"key-{n}")
        except Exception as error:
            result = error
        with lock:
            outcomes.append((n, result))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(outcomes) == len(requests)
    assert all(isinstance(result, StoreUnavailable) for _, result in outcomes), outcomes
    assert len(failing.saves) < len(requests)  # the write was shared
    # Each key's attempt failed: its retry predicts again into the same ids, and records.
    failing.fail = False
    for n, images in enumerate(requests):
        retried = recognizer.recognize(images, STABLE, idempotency_key=f"key-{n}")
        assert not retried.replayed
        assert all(failing.get(record.id) is not None for record in retried.records)
        again = recognizer.recognize(images, STABLE, idempotency_key=f"key-{n}")
        assert [r.id for r in again.records] == [r.id for r in retried.records]
    failing.close()


def test_requests_to_different_versions_are_not_mixed(
    model_stand_in: ModelStandIn, store: CountingStore
):
    model_stand_in.fault = Fault(delay=HOLD_SECONDS / 2)
    recognizer = recognizer_for(model_stand_in.url, store)
    versions = sorted(model_stand_in.states)[:2]
    results: dict[int, Recognition] = {}
    start = threading.Barrier(6)

    def one(n: int) -> None:
        start.wait()
        results[n] = recognizer.recognize([IMAGES[0]], Route("pin", version=versions[n % 2]))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    for n, recognition in results.items():
        record = recognition.records[0]
        assert record.model_version == versions[n % 2]
        pixels = np.frombuffer(record.input_image, dtype=np.uint8).reshape(1, 28, 28)
        probabilities, _ = answer(pixels, versions[n % 2])
        assert record.probabilities == pytest.approx(tuple(probabilities[0]))
    assert set(model_stand_in.predicted) == set(versions)


def test_a_lone_request_makes_its_own_calls_at_once(
    model_stand_in: ModelStandIn, store: CountingStore
):
    # A window of a whole second: a leader that waited for it would be counted.
    recognizer = recognizer_for(model_stand_in.url, store, window=1.0)
    for images in requests_of(3):
        recognizer.recognize(images, STABLE)
    assert model_stand_in.predictions_asked == 3
    assert store.saves == [1, 2, 3]
    assert recognizer._models.waits == 0
    assert recognizer._saves.waits == 0


def test_a_zero_window_turns_coalescing_off(model_stand_in: ModelStandIn, store: CountingStore):
    model_stand_in.fault = Fault(delay=0.2)
    outcomes = at_once(recognizer_for(model_stand_in.url, store, window=0), requests_of(4))
    assert all(isinstance(outcome, Recognition) for outcome in outcomes)
    assert model_stand_in.predictions_asked == 4
    assert len(store.saves) == 4


# ------------------------------------------------------------------ the coalescer alone
def doubling(calls: list[list[int]], hold: threading.Event | None = None):
    def run(key: str, items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if hold is not None:
            hold.wait(10)
        if any(item < 0 for item in items):
            raise ValueError(f"negative in {list(items)}")
        return [2 * item for item in items]

    return run


def test_the_coalescer_does_not_wait_when_nothing_else_is_coming():
    calls: list[list[int]] = []
    coalescer: Coalescer[str, int, int] = Coalescer(doubling(calls), 10.0, 64)
    with coalescer.expect("k"):
        assert coalescer.submit("k", 3) == 6
    assert coalescer.submit("k", 4) == 8  # never expected at all
    assert calls == [[3], [4]]
    assert coalescer.waits == 0


def test_the_coalescer_waits_for_those_on_their_way_and_caps_a_call():
    calls: list[list[int]] = []
    coalescer: Coalescer[str, int, int] = Coalescer(doubling(calls), 10.0, 5, size=lambda i: i)
    results: dict[int, int | Exception] = {}
    expecting = threading.Barrier(4)

    def one(item: int) -> None:
        with coalescer.expect("k"):
            expecting.wait()
            try:
                results[item] = coalescer.submit("k", item)
            except ValueError as error:
                results[item] = error

    threads = [threading.Thread(target=one, args=(item,)) for item in (1, 2, -1, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # 1 + 2 + (-1) + 4 = 6 > 5: two calls; the one holding -1 fails each of its members.
    assert sorted(item for call in calls for item in call) == [-1, 1, 2, 4]
    assert len(calls) == 2
    assert all(sum(call) <= 5 or len(call) == 1 for call in calls)
    failed = next(call for call in calls if -1 in call)
    for item in (1, 2, -1, 4):
        if item in failed:
            assert isinstance(results[item], ValueError)
        else:
            assert results[item] == 2 * item


def test_members_arriving_during_a_call_go_together_in_the_next():
    calls: list[list[int]] = []
    hold = threading.Event()
    coalescer: Coalescer[str, int, int] = Coalescer(doubling(calls, hold), 0.001, 64)
    results: dict[int, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, coalescer.submit("k", 0)))
    first.start()
    while not calls:
        threading.Event().wait(0.005)
    others = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, coalescer.submit("k", n)))
        for n in range(1, 6)
    ]
    for thread in others:
        thread.start()
    while len(coalescer._groups["k"].waiting) < 5:
        threading.Event().wait(0.005)
    hold.set()
    for thread in [first, *others]:
        thread.join(30)
    assert len(calls) == 2
    assert calls[0] == [0]
    assert sorted(calls[1]) == [1, 2, 3, 4, 5]
    assert results == {n: 2 * n for n in range(6)}


def test_the_stand_in_answer_is_what_the_test_compares_with():
    # The comparison above is only worth something if versions answer differently.
    pixels = np.full((1, 28, 28), 200, dtype=np.uint8)
    assert not np.allclose(answer(pixels, 1)[0], answer(pixels, 2)[0])
