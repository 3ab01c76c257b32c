"""Corrections as training data: read from the function's own SQLite log, one per 28x28 input."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from recognizer.records import Feedback, Upload
from recognizer.sqlite_store import SqliteStore
from tests.conftest import ROOT
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
    image, another = np.zeros((28, 28), np.uint8), np.full((28, 28), 9, np.uint8)
    first = corrections.Correction("x" * 64, image, 3, NOW, 3)
    later = corrections.Correction("x" * 64, image, 8, NOW + timedelta(minutes=1), 3)
    other = corrections.Correction("y" * 64, another, 1, NOW, 1)
    kept = corrections.deduplicated([later, other, first])
    assert sorted((c.upload_sha256[0], c.digit) for c in kept) == [("x", 8), ("y", 1)]


def test_the_trailing_byte_flood_trains_on_its_one_input_once(tmp_path):
    """#23: the same PNG with other trailing bytes each time, corrected to 3, 400 times: 400
    uploads (400 SHA-256s) in the real log, one 28x28 input, so one example."""
    png = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L").resize((28, 28)), np.uint8)
    log = SqliteStore(tmp_path / "log.sqlite3")
    flood = [
        record_of(pixels, hashlib.sha256(png + n.to_bytes(2, "big")).hexdigest(), 7)
        for n in range(400)
    ]
    honest = record_of(np.full((28, 28), 200, np.uint8), "h" * 64, 1)
    log.save([*flood, honest])
    for record in flood:
        log.correct(record.id, Feedback(3, NOW))
    log.correct(honest.id, Feedback(4, NOW))
    log.close()
    found = corrections.from_sqlite(tmp_path / "log.sqlite3")
    assert len({c.upload_sha256 for c in found}) == 401
    kept = corrections.deduplicated(found)
    assert len(kept) == 2
    assert corrections.distribution(kept) == {"3": 1, "4": 1}


def test_the_held_out_split_depends_on_the_input_alone():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2000, 28, 28), np.uint8)
    uploads = [
        corrections.Correction(f"{n:064x}", image, n % 10, NOW, 0) for n, image in enumerate(images)
    ]
    held = [corrections.held_out(c, 0.2, seed=42) for c in uploads]
    assert 0.17 < np.mean(held) < 0.23
    again = [corrections.held_out(replace(c, digit=0), 0.2, seed=42) for c in uploads]
    assert held == again  # the same upload stays on its side, whatever its correction
    assert held != [corrections.held_out(c, 0.2, seed=7) for c in uploads]
    resent = [replace(c, upload_sha256="f" * 64) for c in uploads]  # other bytes, same input
    assert held == [corrections.held_out(c, 0.2, seed=42) for c in resent]


def test_no_client_gives_more_than_its_cap_of_examples():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 28, 28), np.uint8)
    flooder = [
        corrections.Correction(f"{n:064x}", image, 3, NOW + timedelta(seconds=n), 3, "id:flood")
        for n, image in enumerate(images[:50])
    ]
    others = [
        corrections.Correction(f"o{n:063x}", image, 4, NOW, 4, f"id:person-{n}")
        for n, image in enumerate(images[50:])
    ]
    legacy = corrections.Correction("l" * 64, np.zeros((28, 28), np.uint8), 5, NOW, 5)
    kept = corrections.capped([*flooder, *others, legacy], per_client=20)
    from_flooder = [c for c in kept if c.client == "id:flood"]
    assert len(from_flooder) == 20  # the latest 20 of its 50
    assert min(c.corrected_at for c in from_flooder) == NOW + timedelta(seconds=30)
    assert len(kept) == 20 + 10 + 1
    assert corrections.distribution(kept) == {"3": 20, "4": 10, "5": 1}


def test_the_correcting_client_is_read_from_the_log(tmp_path):
    log = SqliteStore(tmp_path / "log.sqlite3")
    record = record_of(np.full((28, 28), 7, np.uint8), "z" * 64, 1)
    log.save([record])
    log.correct(record.id, Feedback(2, NOW, "id:someone"))
    log.close()
    (found,) = corrections.from_sqlite(tmp_path / "log.sqlite3")
    assert found.client == "id:someone"
