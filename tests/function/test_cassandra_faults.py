"""Faults of a real Cassandra node while the function serves: stopped, killed, frozen.

The node is a one-node cluster of this module's own (tests.support.cassandra), so it can
be stopped and started again on the same data directory, killed, or frozen with SIGSTOP:
a JVM that keeps its sockets open and answers nothing, as a node in a long GC pause or on
a stalled disk does. Every test leaves it running (SIGCONT and start_node in `finally`).

The contract, as for SQLite in test_faults.py: a store that cannot record is 503
`store_unavailable` with Retry-After (never a 200, never a 500), within
CASSANDRA_REQUEST_TIMEOUT_SECONDS, not a hung request; /readyz is 503 and names the
prediction store; nothing is recorded for a request that failed, and what was recorded
before is intact; once Cassandra answers again, the same function process answers 200.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests

from infra.cassandra.local import LocalCluster
from tests.conftest import ROOT
from tests.support.cassandra import LiveCassandra, start_test_node
from tests.support.cassandra_function import function_app
from tests.support.function_server import running_function

SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
THREE = (ROOT / "tests" / "data" / "samples" / "three-photo.jpg").read_bytes()
REQUEST_TIMEOUT = 1.0  # CASSANDRA_REQUEST_TIMEOUT_SECONDS
CONNECT_TIMEOUT = 1.0  # CASSANDRA_CONNECT_TIMEOUT_SECONDS
SLACK = 1.5  # model server, image work, a busy 2-core machine
# Once Cassandra answers CQL again, the function must answer within this: two Retry-Afters.
RECOVERY_BOUND = 10.0
# Generous bound for the short outages below, where the driver's backoff is still short.
SHORT_OUTAGE_RECOVERY = 60.0


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[LocalCluster]:
    """A Cassandra node of this module's own: its tests stop, kill and freeze it."""
    cluster = start_test_node(tmp_path_factory.mktemp("cassandra-faults"))
    try:
        yield cluster
    finally:
        cluster.stop(grace=20)


@pytest.fixture(scope="module")
def node_keyspaces(node) -> LiveCassandra:
    """One namer of keyspaces for the module, so that each test's keyspace is new."""
    return LiveCassandra(node)


@pytest.fixture
def live(node, node_keyspaces) -> LiveCassandra:
    """The module's node, running and not frozen, whatever the test before did to it."""
    if node.node(1).running():
        os.kill(node.node(1).process.pid, signal.SIGCONT)
    else:
        node.start_node(1)
    return node_keyspaces


@pytest.fixture
def keyspace(live) -> str:
    return live.keyspace("faults")


@pytest.fixture
def env(live, keyspace, function_env) -> dict[str, str]:
    return {
        **live.env(keyspace),
        "CASSANDRA_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        "CASSANDRA_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
    }


@pytest.fixture
def client(env, monkeypatch):
    """The real app on the module's node, connected by a first prediction."""
    with function_app(monkeypatch, **env) as app:
        yield app.test_client()


@contextmanager
def stopped(cluster: LocalCluster, kill: bool = False) -> Iterator[None]:
    """Cassandra drained and stopped (or SIGKILLed); started again on the same data."""
    if kill:
        cluster.kill_node(1)
    else:
        cluster.stop_node(1)
    try:
        yield
    finally:
        cluster.start_node(1)


@contextmanager
def frozen(cluster: LocalCluster) -> Iterator[None]:
    """The JVM stopped with SIGSTOP: its sockets stay open and nothing answers."""
    pid = cluster.node(1).process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def predict(client, image: bytes = SEVEN, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    kind = "image/png" if image is SEVEN else "image/jpeg"
    return client.post("/predict", data=image, content_type=kind, headers=headers)


def assert_unavailable(response, code: str = "store_unavailable") -> str:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    assert int(response.headers["Retry-After"]) > 0
    return error["message"]


def assert_not_ready(client) -> dict:
    ready, elapsed = timed(lambda: client.get("/readyz"))
    assert elapsed < REQUEST_TIMEOUT + CONNECT_TIMEOUT + SLACK, f"/readyz took {elapsed:.1f} s"
    assert_unavailable(ready, "not_ready")
    body = ready.get_json()
    assert "prediction_store" in body["error"]["message"]
    assert body["checks"]["prediction_store"].startswith("failing")
    assert body["checks"]["model_server"].startswith("ok")
    return body["checks"]


def wait_ready(client, bound: float) -> float:
    """Seconds until /readyz is 200 again (asserted within `bound`), polling twice a second."""
    started = time.monotonic()
    while True:
        status = client.get("/readyz").status_code
        elapsed = time.monotonic() - started
        if status == 200:
            return elapsed
        assert elapsed < bound, f"still not ready {elapsed:.0f} s after Cassandra answered again"
        time.sleep(0.5)


def history_ids(client) -> list[str]:
    response = client.get("/predictions?limit=100")
    assert response.status_code == 200, response.get_data(as_text=True)
    return [p["id"] for p in response.get_json()["predictions"]]


def one_id(response) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    (prediction,) = response.get_json()["predictions"]
    return prediction["id"]


# -- stopped or killed ------------------------------------------------------------------


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_a_node_gone_while_serving_is_503_not_ready_and_the_function_recovers(node, client, kill):
    earlier = one_id(predict(client))
    record = client.get(f"/predictions/{earlier}").get_json()
    assert client.get("/readyz").status_code == 200
    with stopped(node, kill=kill):
        for call in (
            lambda: predict(client),
            lambda: predict(client, key="outage-1"),
            lambda: client.get("/predictions"),
            lambda: client.get(f"/predictions/{earlier}"),  # an outage, not "no such record"
            lambda: client.get(f"/predictions/{earlier}/image"),
        ):
            response, elapsed = timed(call)
            assert_unavailable(response)
            assert elapsed < REQUEST_TIMEOUT + SLACK
        assert_not_ready(client)
    waited = wait_ready(client, SHORT_OUTAGE_RECOVERY)  # the same app: no restart
    print(f"ready again {waited:.1f} s after the node answered")
    after = one_id(predict(client))
    assert history_ids(client) == [after, earlier]  # nothing from the outage
    assert client.get(f"/predictions/{earlier}").get_json() == record
    retry = predict(client, key="outage-1")  # the key's failed attempt is retried, once
    assert history_ids(client) == [one_id(retry), after, earlier]
    assert one_id(predict(client, key="outage-1")) == one_id(retry)


def test_a_function_started_while_cassandra_is_down_connects_once_it_is_up(node, env, monkeypatch):
    with function_app(monkeypatch, **env) as app:
        client = app.test_client()
        with stopped(node):
            response, elapsed = timed(lambda: predict(client))
            assert "cannot connect" in assert_unavailable(response)
            assert elapsed < CONNECT_TIMEOUT + SLACK
            assert_not_ready(client)
        wait_ready(client, SHORT_OUTAGE_RECOVERY)
        recorded = one_id(predict(client))
        assert history_ids(client) == [recorded]


def test_after_a_long_outage_the_function_answers_soon_after_cassandra_is_back(node, client):
    """75 s down: the driver's next reconnection attempt is then ~127 s after the outage
    began (1, 2, 4, ... 64 s apart), about 40 s after the node answers again."""
    earlier = one_id(predict(client))
    with stopped(node):
        assert_unavailable(predict(client))
        time.sleep(75)
    waited = wait_ready(client, RECOVERY_BOUND)
    print(f"ready again {waited:.1f} s after the node answered")
    assert history_ids(client)[-1] == earlier


# -- frozen: a node that keeps its connections and answers nothing ----------------------


def test_a_frozen_node_is_503_within_the_request_timeout_and_the_function_recovers(node, client):
    earlier = one_id(predict(client))
    with frozen(node):
        for call in (
            lambda: predict(client),
            lambda: predict(client, key="frozen-1"),
            lambda: client.get("/predictions"),
            lambda: client.get(f"/predictions/{earlier}"),
        ):
            response, elapsed = timed(call)
            assert_unavailable(response)
            assert elapsed < REQUEST_TIMEOUT + SLACK, f"{elapsed:.1f} s"
        assert_not_ready(client)
    wait_ready(client, SHORT_OUTAGE_RECOVERY)
    assert one_id(predict(client, THREE)) in history_ids(client)


def test_a_retry_with_its_key_after_a_write_that_timed_out_records_once(node, client):
    """The frozen node may still apply the timed-out write once it resumes: with an
    Idempotency-Key the retry writes into the same ids, so there is one record either way."""
    earlier = one_id(predict(client))
    with frozen(node):
        assert_unavailable(predict(client, THREE, key="frozen-2"))
    wait_ready(client, SHORT_OUTAGE_RECOVERY)
    time.sleep(2)  # let the resumed node apply whatever it had queued
    retry = one_id(predict(client, THREE, key="frozen-2"))
    assert history_ids(client) == [retry, earlier]
    assert one_id(predict(client, THREE, key="frozen-2")) == retry


def test_a_write_that_timed_out_is_answered_503_that_says_it_may_still_be_recorded(
    node, client, live, keyspace
):
    """A frozen node applies the timed-out write when it resumes, so the 503 cannot say
    'not recorded' (it once did, and the record then appeared): it says the outcome is
    unknown and how to retry safely, with the same Idempotency-Key (the test above)."""
    earlier = one_id(predict(client))
    with frozen(node):
        message = assert_unavailable(predict(client, THREE))
    assert "did not record" not in message
    assert "may still be recorded" in message
    assert "Idempotency-Key" in message
    wait_ready(client, SHORT_OUTAGE_RECOVERY)
    time.sleep(2)  # let the resumed node apply whatever it had queued
    # Which write the freeze caught decides whether the record appears: the partition's
    # index entry is written first and, when it times out, the record is never sent; when
    # the record's own write timed out, the node applies it on resuming. Either way there
    # is at most the one it told of, and the earlier record is still found.
    found = history_ids(client)
    assert len(found) in (1, 2) and found[-1] == earlier, found


def test_concurrent_first_requests_to_a_frozen_node_are_each_answered_in_bounded_time(
    node, env, monkeypatch
):
    """A function that starts (or forks a worker) while Cassandra is unresponsive."""
    with function_app(monkeypatch, **env) as app, frozen(node):
        barrier = threading.Barrier(6)

        def attempt(_: int) -> tuple[int, float]:
            client = app.test_client()
            barrier.wait()
            response, elapsed = timed(lambda: predict(client))
            return response.status_code, elapsed

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(attempt, range(6)))
    assert [status for status, _ in results] == [503] * 6
    slowest = max(elapsed for _, elapsed in results)
    assert slowest < CONNECT_TIMEOUT + REQUEST_TIMEOUT + SLACK, sorted(e for _, e in results)


# -- under gunicorn: no worker hangs ----------------------------------------------------


def test_under_gunicorn_a_frozen_then_stopped_node_never_hangs_a_worker(
    node, env, model_stand_in, tmp_path
):
    """Two threads, six requests at once on a frozen node: each is answered 503 in turn,
    /healthz still answers, and the same worker serves 200s once Cassandra is back."""
    settings = {**env, "WORKERS": "1", "THREADS": "2"}
    with running_function(model_stand_in.url, tmp_path / "unused.sqlite3", **settings) as url:
        session = requests.Session()

        def post(_: int = 0) -> tuple[requests.Response, float]:
            return timed(
                lambda: requests.post(
                    f"{url}/predict",
                    data=SEVEN,
                    headers={"Content-Type": "image/png"},
                    timeout=30,
                )
            )

        first, _ = post()
        assert first.status_code == 200, first.text
        with frozen(node):
            started = time.monotonic()
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(post, range(6)))
            wall = time.monotonic() - started
            for response, _ in answers:
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "store_unavailable"
                assert int(response.headers["Retry-After"]) > 0
            assert wall < 3 * (REQUEST_TIMEOUT + SLACK), f"6 requests on 2 threads: {wall:.1f} s"
            health, elapsed = timed(lambda: session.get(f"{url}/healthz", timeout=30))
            assert health.status_code == 200 and elapsed < SLACK
            ready = session.get(f"{url}/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["checks"]["prediction_store"].startswith("failing")
        with stopped(node):
            response, elapsed = post()
            assert response.status_code == 503 and elapsed < REQUEST_TIMEOUT + SLACK
            assert response.json()["error"]["code"] == "store_unavailable"
        deadline = time.monotonic() + SHORT_OUTAGE_RECOVERY
        while session.get(f"{url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the worker did not recover"
            time.sleep(0.5)
        after, _ = post()
        assert after.status_code == 200, after.text
        history = session.get(f"{url}/predictions?limit=100", timeout=30).json()["predictions"]
        ids = [p["id"] for p in history]  # (and the frozen node's late writes: see above)
        assert ids[0] == after.json()["predictions"][0]["id"]
        assert ids[-1] == first.json()["predictions"][0]["id"]
