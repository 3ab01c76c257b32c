"""A day of made-up traffic for the status page: v5 as stable all day, a worse v1 as the
canary for the last twelve hours (far less sure, often 'not a digit'), some corrections."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta

from recognizer.records import Feedback, PredictionStore, Record
from recognizer.verdict import Verdict
from tests.function.records_factory import make_record


def history(now: datetime, seed: int = 26) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for minute in range(0, 24 * 60, 3):
        at = now - timedelta(minutes=24 * 60 - minute - 1)
        digit = rng.randrange(10)
        records.append(answer(at, 5, "stable", digit, 0.999, "digit", rng))
        if minute >= 12 * 60:  # the canary's last 12 hours
            confident = rng.random() < 0.55
            kind = "digit" if confident else rng.choice(("unsure", "not_a_digit"))
            confidence = rng.uniform(0.9, 0.99) if confident else rng.uniform(0.3, 0.6)
            records.append(answer(at, 1, "canary", digit, confidence, kind, rng))
    return records


def answer(
    at: datetime, version: int, label: str, digit: int, confidence: float, kind: str, rng
) -> Record:
    record = make_record(digit, version=version, at=at)
    verdict = Verdict(kind, (digit,), () if kind == "digit" else ("low_confidence",))
    latency = rng.uniform(8, 20) + (40 if rng.random() < 0.02 else 0)
    feedback = None
    if rng.random() < 0.05:  # a correction: right for v5 mostly, for v1 half the time
        right = rng.random() < (0.9 if version == 5 else 0.5)
        feedback = Feedback(digit if right else (digit + 1) % 10, at)
    return replace(
        record,
        confidence=round(confidence, 4),
        model_label=label,
        verdict=verdict,
        latency_ms=round(latency, 3),
        feedback=feedback,
    )


def seed(store: PredictionStore, records: list[Record]) -> None:
    """Save the records as the function does, then their corrections as PUT .../feedback."""
    store.save([replace(r, feedback=None) for r in records])
    for record in records:
        if record.feedback is not None:
            assert store.correct(record.id, record.feedback)
