"""Which environment variables the function reads, asked of its own parsers.

Every deployment (Compose, Kubernetes, Cloud) is checked against this list, so a setting
added to the function shows up as a failing check instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping

from recognizer.cassandra_log import CassandraSettings
from recognizer.config import Settings

# Read by functions-framework and its gunicorn, not by the function's code.
SERVER_VARIABLES = frozenset({"PORT", "WORKERS", "THREADS"})


class _Recorder(dict):
    """A mapping that remembers every name looked up with get()."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def variables_read_by_function() -> frozenset[str]:
    """Names the function's settings parsers look up (Cassandra's with a contact point set)."""
    general = _Recorder()
    Settings.from_env(general)
    cassandra = _Recorder({"CASSANDRA_CONTACT_POINTS": "cassandra"})
    CassandraSettings.from_env(cassandra)
    return frozenset(general.asked | cassandra.asked)


def parse(env: Mapping[str, str]) -> tuple[Settings, CassandraSettings | None]:
    """The function's settings for `env`, as it would parse them at start; ValueError if bad."""
    settings = Settings.from_env(dict(env))
    store = (
        CassandraSettings.from_env(dict(env)) if settings.prediction_store == "cassandra" else None
    )
    return settings, store
