"""Wiring: the model client, the prediction store and the use case, built from the settings.

They are built on the first request, not at import: functions-framework imports the
function in gunicorn's master and then forks, and a socket or pool made before the fork
is broken in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from recognizer.budget import DecodeBudget
from recognizer.config import Settings
from recognizer.identity import IdentityTokens
from recognizer.model_client import ModelClient
from recognizer.records import PredictionStore
from recognizer.service import Recognizer


@dataclass(frozen=True)
class Clients:
    recognizer: Recognizer
    model: ModelClient
    store: PredictionStore

    def close(self) -> None:
        self.model.close()
        self.store.close()


def connect(settings: Settings, decode_budget: DecodeBudget) -> Clients:
    """The clients; `decode_budget` is the process's, which request bodies count in too."""
    model = ModelClient(
        settings.model_server_url,
        settings.model_name,
        settings.model_timeout_seconds,
        settings.label_cache_seconds,
        retries=settings.model_retries,
        retry_backoff_seconds=settings.model_retry_backoff_seconds,
        auth_headers=(
            IdentityTokens(settings.model_server_url).headers
            if settings.model_server_id_token
            else None
        ),
    )
    store = open_store(settings)
    recognizer = Recognizer(
        model,
        store,
        settings.model_name,
        settings.max_image_pixels,
        settings.max_request_pixels,
        settings.upload_store_max_bytes,
        decode_budget=decode_budget,
        decode_cpu_seconds=settings.decode_cpu_seconds,
        verdict_policy=settings.verdict_policy,
        coalesce_window_seconds=settings.coalesce_window_ms / 1000,
        max_batch_images=settings.max_batch_images,
    )
    return Clients(recognizer, model, store)


def open_store(settings: Settings) -> PredictionStore:
    if settings.prediction_store == "cassandra":
        # Imported here: only deployments with Cassandra pay for its driver.
        from recognizer.cassandra_store import CassandraStore

        return CassandraStore(settings.cassandra, retention=settings.retention)
    from recognizer.sqlite_store import SqliteStore

    return SqliteStore(settings.sqlite_path, retention=settings.retention)
