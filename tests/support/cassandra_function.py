"""The function on a live Cassandra: an in-process app on a keyspace, and what the keyspace holds.

`function_app` builds functions-framework's real app for the `recognize` target with the
given environment and closes the function's clients (the driver's Cluster) afterwards, so
a suite of many apps leaves no connections or driver threads behind. `stored` reads the
keyspace directly with the driver, not through the function: what a test sees in the
table is what Cassandra holds, whatever the function answers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import functions_framework
import pytest

from recognizer.cassandra_store import build_cluster
from tests.conftest import ROOT
from tests.support.cassandra import LiveCassandra

MAIN = ROOT / "function" / "main.py"


@contextmanager
def function_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[object]:
    """The real app (a Flask app) with `env` set; its clients are closed on leaving."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = functions_framework.create_app("recognize", str(MAIN))
    api = sys.modules["main"]._api  # what functions-framework just loaded from main.py
    try:
        yield app
    finally:
        api.close()


@dataclass(frozen=True)
class StoredRow:
    id: str
    model_version: int
    model_label: str | None
    upload_sha256: str


def stored(cassandra: LiveCassandra, keyspace: str) -> list[StoredRow]:
    """Every prediction row of `keyspace`, read straight from Cassandra (newest first per
    partition)."""
    cluster = build_cluster(cassandra.settings(keyspace))
    try:
        session = cluster.connect()
        rows = session.execute(
            f"SELECT id, model_version, model_label, upload_sha256 FROM {keyspace}.records"
        )
        return [
            StoredRow(str(r["id"]), r["model_version"], r["model_label"], r["upload_sha256"])
            for r in rows
        ]
    finally:
        cluster.shutdown()


def stored_keys(cassandra: LiveCassandra, keyspace: str) -> list[dict]:
    """Every row of the keyspace's idempotency_keys table, straight from Cassandra."""
    cluster = build_cluster(cassandra.settings(keyspace))
    try:
        session = cluster.connect()
        return list(session.execute(f"SELECT * FROM {keyspace}.idempotency_keys"))
    finally:
        cluster.shutdown()
