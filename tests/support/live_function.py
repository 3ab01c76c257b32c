"""Live function processes for the #23 attacks: gunicorn (function/serve.py) in front of
the model stand-in with stable and canary on versions whose answers differ, recording
into SQLite or a fresh keyspace of the session's Cassandra node."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.support.function_server import running_function
from tests.support.model_stand_in import ModelStandIn

SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
TOKEN = "t0ken-for-the-race-test"
SECRET = "f" * 64
STABLE_VERSION, CANARY_VERSION = 1, 2


@pytest.fixture
def two_labels() -> Iterator[ModelStandIn]:
    """stable and canary on versions whose answers differ."""
    with ModelStandIn(labels={"stable": STABLE_VERSION, "canary": CANARY_VERSION}) as stand_in:
        yield stand_in


@pytest.fixture(params=["sqlite", "cassandra"])
def store_env(request, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"SQLITE_PATH": str(tmp_path / "shared.sqlite3")}
    cassandra = request.getfixturevalue("cassandra")
    return cassandra.env(cassandra.keyspace("scope"))


@contextmanager
def functions(model_url: str, tmp_path: Path, env: dict[str, str], count: int) -> Iterator[list]:
    """`count` function processes on one store."""
    settings = {
        "API_TOKEN": TOKEN,
        "FEEDBACK_SECRET": SECRET,
        "CANARY_PERCENT": "50",
        "WORKERS": "1",
        "THREADS": "8",
        **env,
    }
    sqlite = Path(settings.pop("SQLITE_PATH", tmp_path / "unused.sqlite3"))
    with ExitStack() as stack:
        yield [
            stack.enter_context(running_function(model_url, sqlite, **settings))
            for _ in range(count)
        ]


def post(url: str, client_id: str, key: str, image: bytes = SEVEN, token: bool = False):
    headers = {"Content-Type": "image/png", "Idempotency-Key": key, "X-Client-Id": client_id}
    if token:
        headers["Authorization"] = f"Bearer {TOKEN}"
    return requests.post(f"{url}/predict", data=image, headers=headers, timeout=60)


def stored(url: str, prediction_id: str) -> dict:
    response = requests.get(
        f"{url}/predictions/{prediction_id}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()
