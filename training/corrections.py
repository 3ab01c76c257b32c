"""What users corrected, read from the prediction store: the training data of `--from-store`.

A correction is a person's claim about an upload (README, "Corrections"): the 28x28 input
the model saw, and the digit it really was, or None for "not a digit". Read from SQLite
(the file, read-only) or Cassandra (its corrections table, over a window of days).
The same 28x28 input counts once, with its latest correction, however many uploads carried
it (other trailing bytes, another encoding): one person cannot outweigh the rest by
sending an image again and again.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import numpy as np

FIELD = 28
CORRECTIONS_PER_CLIENT = 20  # examples one correcting client may give a training run (#23)


@dataclass(frozen=True)
class Correction:
    upload_sha256: str
    image: np.ndarray  # uint8 [28, 28], the input the model saw
    digit: int | None  # None: "not a digit"
    corrected_at: datetime
    predicted: int  # what the model said, for the report
    client: str | None = None  # who corrected it (None: from before clients were kept)


def from_sqlite(path: Path) -> list[Correction]:
    """Every corrected record of the function's SQLite log."""
    if not path.is_file():
        raise FileNotFoundError(f"no prediction store at {path}")
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}
        if "feedback_at_ms" not in columns:
            return []  # a log from before corrections existed
        unexpired = " AND expires_at_ms > ?" if "expires_at_ms" in columns else ""
        rows = connection.execute(
            "SELECT upload_sha256, input_image, feedback_digit, feedback_at_ms, digit, "
            + ("feedback_client " if "feedback_client" in columns else "NULL ")
            + f"FROM predictions WHERE feedback_at_ms IS NOT NULL{unexpired}",
            (int(datetime.now(UTC).timestamp() * 1000),) if unexpired else (),
        ).fetchall()
    finally:
        connection.close()
    return [
        _correction(sha, image, digit, datetime.fromtimestamp(at / 1000, UTC), predicted, client)
        for sha, image, digit, at, predicted, client in rows
    ]


def from_cassandra(days: int, now: datetime | None = None) -> list[Correction]:
    """Corrections of the records of the last `days` UTC days, through the function's
    CassandraStore (CASSANDRA_* settings): the corrections table, one partition per day,
    then each corrected record by its id. The reads follow the corrections, never the
    records' volume; an erased record has no correction left to read."""
    from recognizer.cassandra_store import CassandraStore

    store = CassandraStore.from_env()
    try:
        today = (now or datetime.now(UTC)).astimezone(UTC)
        since = datetime.combine(today.date() - timedelta(days=days - 1), time(), UTC)
        found = []
        for row in store.corrections(since):
            record = store.get(row["id"], upload=False)
            if record is None or record.feedback is None:
                continue  # expired or erased since
            found.append(
                _correction(
                    record.upload.sha256,
                    record.input_image,
                    record.feedback.digit,
                    record.feedback.created_at,
                    record.digit,
                    record.feedback.client_key,
                )
            )
        return found
    finally:
        store.close()


def _correction(
    sha256: str,
    image: bytes,
    digit: int | None,
    at: datetime,
    predicted: int,
    client: str | None = None,
) -> Correction:
    pixels = np.frombuffer(bytes(image), dtype=np.uint8).reshape(FIELD, FIELD)
    return Correction(sha256, pixels, digit, at, predicted, client)


def input_digest(correction: Correction) -> str:
    """The SHA-256 of the 28x28 input the model saw: what an example is, for training."""
    return hashlib.sha256(np.ascontiguousarray(correction.image, np.uint8).tobytes()).hexdigest()


def deduplicated(corrections: Iterable[Correction]) -> list[Correction]:
    """One correction per decoded 28x28 input: the latest. Not per upload: the same PNG with
    other trailing bytes (or re-encoded) is another upload but the same example, and the
    issue's flood sent one input 400 times as 400 "distinct" uploads, all labelled 3."""
    latest: dict[str, Correction] = {}
    for correction in corrections:
        key = input_digest(correction)
        kept = latest.get(key)
        if kept is None or correction.corrected_at > kept.corrected_at:
            latest[key] = correction
    return sorted(latest.values(), key=input_digest)


def capped(corrections: Iterable[Correction], per_client: int) -> list[Correction]:
    """At most `per_client` examples of one correcting client (its latest), so no client's
    share of the training set is more than that; corrections without a client (from
    before clients were kept) count as a client each."""
    by_client: dict[str, list[Correction]] = {}
    kept = []
    for correction in corrections:
        if correction.client is None:
            kept.append(correction)
        else:
            by_client.setdefault(correction.client, []).append(correction)
    for group in by_client.values():
        kept += sorted(group, key=lambda c: c.corrected_at, reverse=True)[:per_client]
    return sorted(kept, key=input_digest)


def distribution(corrections: Iterable[Correction]) -> dict[str, int]:
    """How many examples of each digit (and of "not a digit") there are, for the report."""
    counts = Counter("not a digit" if c.digit is None else str(c.digit) for c in corrections)
    return dict(sorted(counts.items()))


def held_out(correction: Correction, share: float, seed: int) -> bool:
    """Whether an input belongs to the held-out split: decided by its 28x28 pixels and the
    seed alone, so an input stays on its side however the store grows (and however many
    uploads carried it)."""
    digest = hashlib.sha256(f"{seed}:{input_digest(correction)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share
