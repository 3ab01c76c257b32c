"""Which environment variables the function reads, asked of its own parsers.

Every deployment (Compose, Kubernetes, Cloud) is checked against this list, so a setting
added to the function shows up as a failing check instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping

from recognizer.cassandra_store import CassandraSettings
from recognizer.config import Settings
from tests.support.environ import RecordingEnv

# Read by functions-framework and its gunicorn, not by the function's code.
SERVER_VARIABLES = frozenset({"PORT", "WORKERS", "THREADS"})


def variables_read_by_function() -> frozenset[str]:
    """Names the function's settings parsers look up (Cassandra's with a contact point set)."""
    general = RecordingEnv()
    Settings.from_env(general)
    cassandra = RecordingEnv({"CASSANDRA_CONTACT_POINTS": "cassandra"})
    CassandraSettings.from_env(cassandra)
    return frozenset(general.asked | cassandra.asked)


def parse(env: Mapping[str, str]) -> tuple[Settings, CassandraSettings | None]:
    """The function's settings for `env`, as it would parse them at start; ValueError if bad."""
    settings = Settings.from_env(dict(env))
    store = (
        CassandraSettings.from_env(dict(env)) if settings.prediction_store == "cassandra" else None
    )
    return settings, store
