"""The TF Serving REST client: label resolution, explicit-version predictions, error mapping."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from recognizer.model_client import ModelClient, ModelTimeout, ModelUnavailable, UnknownModel
from tests.conftest import free_port


def client_for(url: str, timeout: float = 5.0) -> ModelClient:
    return ModelClient(url, "mnist", timeout_seconds=timeout, label_cache_seconds=5.0)


def test_a_label_resolves_to_the_available_version_it_points_at(model_server):
    assert client_for(model_server).resolve("stable") == 2


def test_predicting_by_label_names_the_version_that_answered(model_server, mnist):
    answer = client_for(model_server).predict_label(mnist.x_test[:8], "stable")
    assert answer.version == 2 and answer.label == "stable"
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


class _Garbage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer()

    def _answer(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "body",
    [
        b"<html>gateway error</html>",
        b'{"outputs": {"probabilities": [[0.5]], "digit": [1]}}',
        b'{"model_version_status": [{"version": "2", "state": "LOADING"}]}',
        b"[]",
    ],
)
def test_nonsense_from_the_model_server_is_model_unavailable(body, mnist):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    server.body = body  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = client_for(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(ModelUnavailable):
            client.predict_label(mnist.x_test[:1], "stable")
    finally:
        server.shutdown()
        server.server_close()
