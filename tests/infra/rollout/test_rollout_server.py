"""The rollout tool's view of the model server: the function's client, RolloutError messages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.rollout.errors import RolloutError
from infra.rollout.server import ServerView
from recognizer.model_client import VersionState
from tests.conftest import SHIPPED, STABLE_VERSION, free_port


def test_versions_and_labels_are_the_model_servers(model_server):
    view = ServerView(model_server, "mnist")
    assert view.versions()[STABLE_VERSION] == VersionState("AVAILABLE")
    assert STABLE_VERSION in view.available() <= SHIPPED.versions
    assert view.label_version("stable") == STABLE_VERSION


def test_an_unknown_label_or_model_is_none_or_no_versions(model_server):
    assert ServerView(model_server, "mnist").label_version("no-such-label") is None
    assert ServerView(model_server, "no-such-model").versions() == {}


def test_an_unreachable_server_is_named_in_the_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RolloutError) as raised:
        ServerView(url, "mnist").versions()
    assert str(raised.value) == f"the model server at {url} is unreachable (ConnectionError)"


class Failing(BaseHTTPRequestHandler):
    """Answers every GET with the server's `status` and a body naming it."""

    def do_GET(self) -> None:
        body = f"scripted {self.server.status}".encode()  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [500, 503])
def test_an_error_status_is_reported_with_its_body(failing, status):
    failing.status = status  # type: ignore[attr-defined]
    view = ServerView(f"http://127.0.0.1:{failing.server_address[1]}", "mnist")
    for ask in (view.versions, lambda: view.label_version("stable")):
        with pytest.raises(RolloutError) as raised:
            ask()
        assert str(raised.value) == f"the model server answered {status}: scripted {status}"


def test_a_400_for_a_label_is_no_version(failing):
    failing.status = 400  # type: ignore[attr-defined]
    view = ServerView(f"http://127.0.0.1:{failing.server_address[1]}", "mnist")
    assert view.label_version("stable") is None
