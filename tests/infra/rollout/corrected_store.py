"""Prediction logs with people's corrections, written through the function's own stores."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from recognizer.records import Feedback, PredictionStore, Record, Upload, new_record_id, time_of
from recognizer.verdict import Verdict

Traffic = list[tuple[Record, Feedback | None]]


def record(
    version: int,
    label: str | None,
    confidence: float,
    at: datetime,
    verdict: str = "digit",
    digit: int = 0,
    latency_ms: float = 12.0,
) -> Record:
    probabilities = (confidence,) + (0.0,) * 9
    return Record(
        id=new_record_id(),
        created_at=at,
        digit=digit,
        confidence=confidence,
        probabilities=probabilities,
        model_name="mnist",
        model_version=version,
        model_label=label,
        input_image=bytes(784),
        upload=Upload(b"x", "image/png", hashlib.sha256(b"x").hexdigest(), 1),
        latency_ms=latency_ms,
        verdict=Verdict(verdict, (digit,) if verdict != "not_a_digit" else (), ()),
    )


def traffic(
    version: int, label: str, requests: int, corrected: int, right: int, low_confidence: int = 0
) -> Traffic:
    """`requests` sevens answered by `version` at 5 to 14 ms, the first `low_confidence` of
    them at confidence 0.6; the first `corrected` corrected, `right` of them to a 7."""
    now = time_of(new_record_id())
    return [
        (
            record(
                version,
                label,
                0.6 if n < low_confidence else 0.99,
                now,
                digit=7,
                latency_ms=5.0 + n % 10,
            ),
            None if n >= corrected else Feedback(7 if n < right else 1, now + timedelta(seconds=1)),
        )
        for n in range(requests)
    ]


def write(log: PredictionStore, *batches: Traffic) -> None:
    """Record the predictions, then the corrections, as the function does."""
    for batch in batches:
        log.save([prediction for prediction, _ in batch])
        for prediction, feedback in batch:
            if feedback is not None:
                assert log.correct(prediction.id, feedback)
