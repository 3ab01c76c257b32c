"""The TF Serving REST client: label resolution, explicit-version predictions, error mapping."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from recognizer.model_client import (
    ModelClient,
    ModelNotServing,
    ModelTimeout,
    ModelUnavailable,
    UnexpectedStatus,
    UnknownModel,
    VersionState,
    predict_body,
)
from tests.conftest import SHIPPED, STABLE_VERSION, free_port


def client_for(url: str, timeout: float = 5.0) -> ModelClient:
    return ModelClient(url, "mnist", timeout_seconds=timeout, label_cache_seconds=5.0)


def test_a_label_resolves_to_the_available_version_it_points_at(model_server):
    assert client_for(model_server).resolve("stable") == STABLE_VERSION


def test_predicting_by_label_names_the_version_that_answered(model_server, mnist):
    answer = client_for(model_server).predict_label(mnist.x_test[:8], "stable")
    assert answer.version == STABLE_VERSION and answer.label == "stable"
    assert answer.probabilities.shape == (8, 10) and answer.probabilities.dtype == np.float32
    assert np.array_equal(answer.digits, mnist.y_test[:8])
    assert np.allclose(answer.probabilities.sum(axis=1), 1, atol=1e-4)


def test_a_pinned_version_answers_and_has_no_label(model_server, mnist):
    answer = client_for(model_server).predict_version(mnist.x_test[:4], 1)
    assert answer.version == 1 and answer.label is None
    assert answer.digits.shape == (4,)


def test_unknown_versions_and_labels_are_unknown_model(model_server, mnist):
    client = client_for(model_server)
    with pytest.raises(UnknownModel):
        client.predict_version(mnist.x_test[:1], 42)
    with pytest.raises(UnknownModel):
        client.predict_label(mnist.x_test[:1], "no-such-label")


def test_versions_lists_every_version_the_status_endpoint_reports(model_server):
    states = client_for(model_server).versions()
    assert set(states) == SHIPPED.versions  # each version, loaded or loading
    assert states[STABLE_VERSION] == VersionState("AVAILABLE")


def test_a_model_the_server_does_not_have_has_no_versions(model_server):
    client = ModelClient(model_server, "no-such-model", 5.0, 5.0)
    with pytest.raises(ModelNotServing):
        client.versions()


def test_label_version_asks_the_server_every_time(scripted):
    client = client_for(url_of(scripted))
    for version in (2, 3):
        scripted.ok_body = json.dumps({"model_spec": {"version": str(version)}}).encode()
        assert client.label_version("canary") == version
    assert [path for _, path, _, _ in scripted.asked] == [
        "/v1/models/mnist/labels/canary/metadata"
    ] * 2


def test_an_unknown_label_is_unknown_model_to_label_version(model_server):
    with pytest.raises(UnknownModel):
        client_for(model_server).label_version("no-such-label")


def test_an_unexpected_status_keeps_its_status_and_body(scripted):
    scripted.script = [500]
    with pytest.raises(UnexpectedStatus) as raised:
        client_for(url_of(scripted)).versions()
    assert (raised.value.status, raised.value.body) == (500, b'{"error": "scripted"}')
    assert str(raised.value) == "the model server answered 500 for model 'mnist'"


def test_a_closed_port_is_model_unavailable(mnist):
    with pytest.raises(ModelUnavailable):
        client_for(f"http://127.0.0.1:{free_port()}").predict_label(mnist.x_test[:1], "stable")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a hung model server."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_no_answer_within_the_timeout_is_model_timeout(silent_server, mnist):
    with pytest.raises(ModelTimeout):
        client_for(silent_server, timeout=0.3).predict_version(mnist.x_test[:1], 2)


# -- bounded retries ------------------------------------------------------------------------


ONE_PREDICTION = json.dumps({"outputs": {"probabilities": [[0.1] * 10], "digit": [0]}}).encode()


class ScriptedServer(ThreadingHTTPServer):
    """A stand-in model server: answers the next status of its script (the last repeats),
    with `ok_body` for a 200, and counts the attempts it is asked and the connections they
    came on; keeps what each request asked (method, path, headers, body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Scripted)
        self.lock = threading.Lock()
        self.attempts = 0
        self.connections = 0
        self.asked: list[tuple[str, str, dict[str, str], bytes]] = []
        self.script = [200]
        self.ok_body = ONE_PREDICTION
        self.stall_body_seconds = 0.0  # send the headers, then wait this long before the body

    def next_status(self) -> int:
        with self.lock:
            self.attempts += 1
            return self.script[min(self.attempts, len(self.script)) - 1]


class _Scripted(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the connection open between requests, as TF Serving
    server: ScriptedServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers["Content-Length"])))

    def _answer(self, request_body: bytes) -> None:
        with self.server.lock:
            self.server.asked.append((self.command, self.path, dict(self.headers), request_body))
        status = self.server.next_status()
        body = self.server.ok_body if status == 200 else b'{"error": "scripted"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(self.server.stall_body_seconds)
        with contextlib.suppress(OSError):  # the client may have given up waiting
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server: ScriptedServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>gateway error</html>",
        b'{"outputs": {"probabilities": [[0.5]], "digit": [1]}}',
        b'{"model_version_status": [{"version": "2", "state": "LOADING"}]}',
        b"[]",
    ],
)
def test_nonsense_from_the_model_server_is_model_unavailable(scripted, body, mnist):
    scripted.ok_body = body
    with pytest.raises(ModelUnavailable):
        client_for(url_of(scripted)).predict_label(mnist.x_test[:1], "stable")


def test_the_prediction_is_asked_in_compact_json_of_the_pixels(scripted, mnist):
    images = mnist.x_test[:3]
    outputs = {"probabilities": [[0.1] * 10] * 3, "digit": [0] * 3}
    scripted.ok_body = json.dumps({"outputs": outputs}).encode()
    client_for(url_of(scripted)).predict_version(images, 2)
    method, path, headers, body = scripted.asked[-1]
    assert (method, path) == ("POST", "/v1/models/mnist/versions/2:predict")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "signature_name": "serving_default",
        "inputs": {"image": images.tolist()},
    }
    assert b" " not in body  # nothing after , and :


@pytest.mark.parametrize("shape", [(1, 28, 28), (64, 28, 28), (3, 1, 5), (2, 4, 1), (1, 1, 1)])
def test_the_body_is_what_json_dumps_writes_for_the_pixels(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    pixels.flat[::7] = 0  # one-digit numbers among the two- and three-digit ones
    pixels.flat[::11] = 255
    doc = {"signature_name": "serving_default", "inputs": {"image": pixels.tolist()}}
    assert predict_body(pixels) == json.dumps(doc, separators=(",", ":")).encode()
    # Not C-ordered in memory: the same numbers in the same order.
    transposed = np.ascontiguousarray(pixels.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert predict_body(transposed) == predict_body(pixels)


def test_a_body_of_no_images_is_an_empty_list():
    assert json.loads(predict_body(np.zeros((0, 28, 28), np.uint8)))["inputs"]["image"] == []


def test_pixels_must_be_uint8():
    with pytest.raises(TypeError, match="uint8"):
        predict_body(np.zeros((1, 28, 28), np.float32))


def test_a_path_in_the_model_server_url_prefixes_every_request(scripted, mnist):
    client = client_for(f"{url_of(scripted)}/tf-serving/")
    client.predict_version(mnist.x_test[:1], 2)
    scripted.ok_body = b'{"model_spec": {"name": "mnist", "version": "2"}}'
    client.resolve("stable")
    assert [path for _, path, _, _ in scripted.asked] == [
        "/tf-serving/v1/models/mnist/versions/2:predict",
        "/tf-serving/v1/models/mnist/labels/stable/metadata",
    ]


def test_requests_one_after_another_share_one_connection(scripted, mnist):
    client = client_for(url_of(scripted))
    for _ in range(5):
        client.predict_version(mnist.x_test[:1], 2)
    assert scripted.attempts == 5 and scripted.connections == 1


def test_an_answer_whose_body_stops_coming_is_a_timeout_asked_once(scripted, mnist):
    scripted.stall_body_seconds = 1.0
    client = ModelClient(url_of(scripted), "mnist", 0.3, 5.0, retries=2, retry_backoff_seconds=0)
    started = time.monotonic()
    with pytest.raises(ModelTimeout):
        client.predict_version(mnist.x_test[:1], 2)
    assert scripted.attempts == 1 and time.monotonic() - started < 0.9


@pytest.mark.parametrize("status", [502, 503])
def test_a_transient_status_is_retried_until_it_passes(scripted, status, mnist):
    scripted.script = [status, status, 200]
    client = ModelClient(url_of(scripted), "mnist", 5.0, 5.0, retries=2, retry_backoff_seconds=0)
    client.predict_version(mnist.x_test[:1], 2)
    assert scripted.attempts == 3


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_are_bounded_then_the_client_gives_up(scripted, retries, mnist):
    scripted.script = [503]
    client = ModelClient(
        url_of(scripted), "mnist", 5.0, 5.0, retries=retries, retry_backoff_seconds=0
    )
    with pytest.raises(ModelUnavailable, match="503"):
        client.predict_version(mnist.x_test[:1], 2)
    assert scripted.attempts == 1 + retries


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, ModelUnavailable), (404, UnknownModel), (500, ModelUnavailable), (504, ModelTimeout)],
)
def test_other_failures_are_asked_once(scripted, status, error, mnist):
    scripted.script = [status, 200]
    client = ModelClient(url_of(scripted), "mnist", 5.0, 5.0, retries=2, retry_backoff_seconds=0)
    with pytest.raises(error):
        client.predict_version(mnist.x_test[:1], 2)
    assert scripted.attempts == 1


def test_backoff_grows_and_never_outlasts_the_timeout(scripted, mnist):
    scripted.script = [503]
    client = ModelClient(url_of(scripted), "mnist", 1.0, 5.0, retries=10, retry_backoff_seconds=0.1)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable):
        client.predict_version(mnist.x_test[:1], 2)
    elapsed = time.monotonic() - started
    # Waits of 0.05-0.1, 0.1-0.2 and 0.2-0.4 s always fit in the 1 s budget, the next
    # (0.4-0.8 s) only sometimes, the one after (0.8-1.6 s) never: the budget, not the
    # ten retries allowed, ends it.
    assert 4 <= scripted.attempts <= 5 and 0.35 <= elapsed < 1.0


@pytest.fixture
def resetting_server() -> Iterator[dict[str, int]]:
    """Accepts each connection and resets it at once: a server dying under the client."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = {"port": listener.getsockname()[1], "connections": 0}

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            seen["connections"] += 1
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    yield seen
    listener.close()


def test_a_reset_connection_is_retried_then_unavailable(resetting_server, mnist):
    url = f"http://127.0.0.1:{resetting_server['port']}"
    client = ModelClient(url, "mnist", 5.0, 5.0, retries=2, retry_backoff_seconds=0)
    with pytest.raises(ModelUnavailable, match="unreachable"):
        client.predict_version(mnist.x_test[:1], 2)
    assert resetting_server["connections"] == 3


def test_a_refused_connection_is_retried_with_backoff(mnist):
    client = ModelClient(
        f"http://127.0.0.1:{free_port()}", "mnist", 5.0, 5.0, retries=2, retry_backoff_seconds=0.2
    )
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="unreachable"):
        client.predict_version(mnist.x_test[:1], 2)
    assert 0.3 <= time.monotonic() - started < 2  # two waits: 0.1-0.2 s, then 0.2-0.4 s


def test_a_timeout_is_not_retried(mnist):
    """The listener never answers; the connections it queued count the attempts."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    client = ModelClient(
        f"http://127.0.0.1:{listener.getsockname()[1]}", "mnist", 0.5, 5.0, retries=2
    )
    started = time.monotonic()
    connections: list[socket.socket] = []
    try:
        with pytest.raises(ModelTimeout):
            client.predict_version(mnist.x_test[:1], 2)
        elapsed = time.monotonic() - started
        listener.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while True:
                connections.append(listener.accept()[0])
    finally:
        for connection in connections:
            connection.close()
        listener.close()
    assert len(connections) == 1
    assert 0.5 <= elapsed < 1.0  # the budget once, not three times
