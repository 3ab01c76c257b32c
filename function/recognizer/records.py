"""What the prediction store keeps, and the small interface every store implements.

The function only talks to `PredictionStore`; SQLite (local default) and Cassandra
(production) are interchangeable behind it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from recognizer.verdict import Verdict

_UUID_EPOCH = datetime(1582, 10, 15, tzinfo=UTC)  # where version-1 UUID time starts
# How long an idempotency key is remembered: a retry within this window gets the first
# attempt's records; after it the key is forgotten and the same request records anew.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 60 * 60


class StoreUnavailable(Exception):
    """The store could not durably record or read: callers answer 503, never 200."""


@dataclass(frozen=True)
class Upload:
    """The original upload. `content` is None when it was larger than the storage cap."""

    content: bytes | None
    content_type: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Feedback:
    """A person's correction of a prediction: the right digit, or None for "not a digit"."""

    digit: int | None
    created_at: datetime  # timezone-aware UTC, millisecond precision


@dataclass(frozen=True)
class Record:
    """One recorded prediction: one image, one answer, the model version that gave it."""

    id: uuid.UUID  # a time-based UUID (version 1): its timestamp is the record's time
    created_at: datetime  # timezone-aware UTC, millisecond precision
    digit: int
    confidence: float
    probabilities: tuple[float, ...]  # ten floats
    model_name: str
    model_version: int
    model_label: str | None  # the label whose version answered (stable after a canary fallback)
    input_image: bytes  # the 28x28 uint8 input the model saw, row-major (784 bytes)
    upload: Upload
    latency_ms: float
    verdict: Verdict | None  # None for a record written before the service gave verdicts
    feedback: Feedback | None = None  # the last correction; none when the service records it


@dataclass(frozen=True)
class IdempotencyClaim:
    """What an idempotency key is held for: a digest of the request and its record ids.

    The ids are chosen before the model is asked, so every attempt of the request writes
    the same rows; the stores keep a digest of the key, never the key itself.
    """

    request_sha256: str
    record_ids: tuple[uuid.UUID, ...]


def new_record_id() -> uuid.UUID:
    """A time-based UUID (Cassandra's timeuuid) for now, with a random node, not the host's MAC."""
    return uuid.uuid1(node=secrets.randbits(48) | 0x010000000000)


def time_of(record_id: uuid.UUID) -> datetime:
    """The UTC time inside a version-1 UUID, to the millisecond."""
    if record_id.version != 1:
        raise ValueError(f"{record_id} is not a time-based (version 1) UUID")
    return _UUID_EPOCH + timedelta(milliseconds=record_id.time // 10_000)


class PredictionStore(Protocol):
    """An append-only, time-ordered log of predictions."""

    def save(self, records: Sequence[Record]) -> None:
        """Durably record every one of `records`, or raise StoreUnavailable.

        Saving an id that is already stored adds no second record: retries are safe.
        """

    def claim(self, key_sha256: str, claim: IdempotencyClaim) -> IdempotencyClaim:
        """Hold the key for `claim` unless a claim made within the idempotency window
        already holds it; the claim that holds it now either way (the first writer wins)."""

    def release(self, key_sha256: str, claim: IdempotencyClaim) -> None:
        """Forget the key if `claim` (its request digest and record ids) still holds it:
        the request it stood for was refused and recorded nothing."""

    def correct(self, record_id: uuid.UUID, feedback: Feedback) -> bool:
        """Keep `feedback` as the record's correction, replacing any earlier one (the last
        one wins); False, and nothing written, when no record has that id."""

    def get(self, record_id: uuid.UUID) -> Record | None:
        """The record with this id, or None."""

    def recent(self, limit: int) -> list[Record]:
        """Up to `limit` most recent records, newest first."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
