"""Corrections as training data: read from the function's own SQLite log, one per upload."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np

from recognizer.records import Feedback, Upload
from recognizer.sqlite_store import SqliteStore
from tests.function.records_factory import make_record
from training import corrections

NOW = datetime.now(UTC).replace(microsecond=0)


def record_of(pixels: np.ndarray, sha256: str, predicted: int):
    record = make_record(digit=predicted, input_image=pixels.tobytes())
    return replace(record, upload=Upload(None, "image/png", sha256, 100))


def test_only_corrected_records_are_read_with_the_input_the_model_saw(tmp_path, mnist):
    log = SqliteStore(tmp_path / "log.sqlite3")
    seven, two, blank = mnist.x_test[0], mnist.x_test[1], np.zeros((28, 28), np.uint8)
    records = [
        record_of(seven, "a" * 64, 1),
        record_of(two, "b" * 64, 2),
        record_of(blank, "c" * 64, 0),
    ]
    log.save(records)
    log.correct(records[0].id, Feedback(7, NOW))
    log.correct(records[2].id, Feedback(None, NOW))  # "not a digit"
    log.close()
    found = sorted(corrections.from_sqlite(tmp_path / "log.sqlite3"), key=lambda c: c.upload_sha256)
    assert [(c.upload_sha256[0], c.digit, c.predicted) for c in found] == [
        ("a", 7, 1),
        ("c", None, 0),
    ]
    np.testing.assert_array_equal(found[0].image, seven)


def test_a_log_from_before_corrections_has_none(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "old.sqlite3") as db:
        db.execute("CREATE TABLE predictions (id TEXT, upload_sha256 TEXT)")
    assert corrections.from_sqlite(tmp_path / "old.sqlite3") == []


def test_an_upload_sent_again_counts_once_with_its_latest_correction():
    image = np.zeros((28, 28), np.uint8)
    first = corrections.Correction("x" * 64, image, 3, NOW, 3)
    later = corrections.Correction("x" * 64, image, 8, NOW + timedelta(minutes=1), 3)
    other = corrections.Correction("y" * 64, image, 1, NOW, 1)
    kept = corrections.deduplicated([later, other, first])
    assert [(c.upload_sha256[0], c.digit) for c in kept] == [("x", 8), ("y", 1)]


def test_the_held_out_split_depends_on_the_upload_alone():
    image = np.zeros((28, 28), np.uint8)
    uploads = [corrections.Correction(f"{n:064x}", image, n % 10, NOW, 0) for n in range(2000)]
    held = [corrections.held_out(c, 0.2, seed=42) for c in uploads]
    assert 0.17 < np.mean(held) < 0.23
    again = [corrections.held_out(replace(c, digit=0), 0.2, seed=42) for c in uploads]
    assert held == again  # the same upload stays on its side, whatever its correction
    assert held != [corrections.held_out(c, 0.2, seed=7) for c in uploads]
