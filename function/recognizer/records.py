"""What the prediction store keeps, and the small interface every store implements.

The function only talks to `PredictionStore`; SQLite (local default) and Cassandra
(production) are interchangeable behind it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from recognizer.verdict import Verdict

_UUID_EPOCH = datetime(1582, 10, 15, tzinfo=UTC)  # where version-1 UUID time starts
# How long an idempotency key is remembered: a retry within this window gets the first
# attempt's records; after it the key is forgotten and the same request records anew.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 60 * 60


@dataclass(frozen=True)
class Retention:
    """How long records (RETENTION_DAYS) and uploads (UPLOAD_RETENTION_DAYS) are kept: TTLs
    on Cassandra, expiry times on SQLite. Uploads go first: they are the personal data."""

    records_days: int = 90
    uploads_days: int = 30

    @property
    def records_seconds(self) -> int:
        return self.records_days * 86_400

    @property
    def uploads_seconds(self) -> int:
        return min(self.uploads_days, self.records_days) * 86_400


class StoreUnavailable(Exception):
    """The store could not durably record or read: callers answer 503, never 200."""


@dataclass(frozen=True)
class Upload:
    """The original upload. `content` is None when it was larger than the storage cap."""

    content: bytes | None
    content_type: str
    sha256: str
    size: int
    # Whether the bytes are stored, when they were not read (a history page, a record's
    # details); None: `content` says. Not compared: it describes the read, not the upload.
    stored: bool | None = field(default=None, compare=False)

    @property
    def kept(self) -> bool:
        """Whether the store holds the upload's bytes (GET .../image can answer)."""
        return self.content is not None if self.stored is None else self.stored


@dataclass(frozen=True)
class Feedback:
    """A person's correction of a prediction: the right digit, or None for "not a digit"."""

    digit: int | None
    created_at: datetime  # timezone-aware UTC, millisecond precision
    client_key: str | None = None  # the correcting client (params.client_key), for evidence caps


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
    # The stable key of the client that sent the request (params.client_key, the canary's
    # bucket) and whether it pinned its version or label: per-client evidence caps count them.
    client_key: str | None = None
    pinned: bool = False


@dataclass(frozen=True)
class Page:
    """One page of the history, newest first, and the cursor of the next one (None: the end).

    Its records never carry upload bytes (`upload.content` is None): a page never reads
    the uploads table."""

    records: list[Record]
    next: uuid.UUID | None


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


def order_key(record_id: uuid.UUID) -> tuple[int, bytes]:
    """Cassandra's timeuuid order: the time, then the other 8 bytes compared as signed
    bytes; the order of a partition's rows, so pages merged across shards keep it."""
    return record_id.time, bytes(b ^ 0x80 for b in record_id.bytes[8:])


def without_upload(record: Record) -> Record:
    """The record as a history page carries it: the upload's digest and size, no bytes."""
    return replace(record, upload=replace(record.upload, content=None, stored=record.upload.kept))


def first_id_of(moment: datetime) -> uuid.UUID:
    """The first timeuuid of `moment`'s millisecond in Cassandra's order (its minTimeuuid):
    every id of that millisecond or later sorts at or after it."""
    ticks = (moment - _UUID_EPOCH) // timedelta(milliseconds=1) * 10_000
    fields = (ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, (ticks >> 48) & 0x0FFF | 0x1000)
    return uuid.UUID(fields=(*fields, 0x80, 0x80, 0x808080808080))


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

    def get(self, record_id: uuid.UUID, *, upload: bool = True) -> Record | None:
        """The record with this id, or None; `upload=False` leaves the upload's bytes unread."""

    def recent(self, limit: int) -> list[Record]:
        """Up to `limit` most recent records, newest first, uploads included."""

    def page(self, limit: int, before: uuid.UUID | None = None) -> Page:
        """Up to `limit` records older than `before` (the newest without it), newest first,
        without upload bytes; the work is bounded by `limit`, not by the depth."""

    def delete(self, record_id: uuid.UUID) -> bool:
        """Erase the record, its upload and its correction from every table; False when
        there was no such record."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
