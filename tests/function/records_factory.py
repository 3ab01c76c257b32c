"""Build valid `Record`s for store tests."""

from __future__ import annotations

import hashlib

import numpy as np

from recognizer.records import Record, Upload, new_record_id, time_of


def make_record(
    digit: int = 7, upload: bytes | None = b"\x89PNG fake upload", version: int = 2
) -> Record:
    record_id = new_record_id()
    probabilities = tuple(float(p) for p in np.eye(10, dtype=np.float32)[digit] * 0.91 + 0.01)
    content = upload or b"x" * 1000
    return Record(
        id=record_id,
        created_at=time_of(record_id),
        digit=digit,
        confidence=max(probabilities),
        probabilities=probabilities,
        model_name="mnist",
        model_version=version,
        model_label="stable",
        input_image=bytes(range(256)) * 3 + bytes(16),
        upload=Upload(upload, "image/png", hashlib.sha256(content).hexdigest(), len(content)),
        latency_ms=12.5,
    )
