"""Build valid `Record`s for the store tests, with the values the function records.

The model server answers decimal JSON, so a record's confidence and probabilities are
short decimals such as 0.92 or 0.0031: Cassandra keeps them as 32-bit floats and reads
back the shortest decimal of that float32, which is the same number. (A float32 widened
to a double, 0.9200000166893005, would not come back as it went in.)
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime

from cassandra.util import uuid_from_time

from recognizer.config import Settings
from recognizer.records import Record, Upload, new_record_id, time_of
from recognizer.verdict import Verdict

UPLOAD = b"\x89PNG\r\n\x1a\n a small upload"
UPLOAD_CAP = Settings().upload_store_max_bytes  # larger uploads are recorded without content
CONFIDENCE = 0.92
# What the model gives the nine other digits: distinct, so a reordering would show.
OTHERS = (0.0011, 0.0023, 0.0034, 0.0046, 0.0057, 0.0068, 0.0079, 0.0081, 0.0092, 0.0103)


def make_record(
    digit: int = 7,
    upload: bytes | None = UPLOAD,
    version: int = 2,
    *,
    at: datetime | None = None,
    **changes: object,
) -> Record:
    """A record as the function makes it; `upload=None` is an upload over the storage cap.

    Its id is a version-1 UUID for now, or for the time `at` (a random node and clock
    sequence either way); `created_at` is the id's time to the millisecond. `changes`
    replace any other field.
    """
    record_id = new_record_id() if at is None else uuid_from_time(at)
    original = b"\x89PNG" + b"x" * (UPLOAD_CAP - 3) if upload is None else upload  # 1 byte over
    record = Record(
        id=record_id,
        created_at=time_of(record_id),
        digit=digit,
        confidence=CONFIDENCE,
        probabilities=tuple(CONFIDENCE if d == digit else p for d, p in enumerate(OTHERS)),
        model_name="mnist",
        model_version=version,
        model_label="stable",
        input_image=bytes(range(256)) * 3 + bytes(16),
        upload=Upload(
            content=upload,
            content_type="image/png",
            sha256=hashlib.sha256(original).hexdigest(),
            size=len(original),
        ),
        latency_ms=12.625,
        verdict=Verdict("digit", (digit,), ()),
    )
    return replace(record, **changes)
