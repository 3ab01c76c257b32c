"""The embedded SQLite prediction log keeps every field, newest first, and fails loudly."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from dataclasses import replace

import pytest

from recognizer.records import IdempotencyClaim, StoreUnavailable, Upload, new_record_id
from recognizer.sqlite_log import SqliteLog
from tests.function.records_factory import make_record


@pytest.fixture
def log(tmp_path):
    store = SqliteLog(tmp_path / "log" / "predictions.sqlite3")
    yield store
    store.close()


def test_a_saved_record_reads_back_field_for_field(log):
    record = make_record(digit=3)
    log.save([record])
    assert log.get(record.id) == record


def test_an_upload_over_the_cap_keeps_its_digest_but_not_its_bytes(log):
    record = make_record(upload=None)
    log.save([record])
    stored = log.get(record.id)
    assert stored.upload.content is None
    assert stored.upload.sha256 == record.upload.sha256 and stored.upload.size == 1000


def test_unknown_ids_are_none(log):
    assert log.get(make_record().id) is None


def test_recent_is_newest_first_and_limited(log):
    records = [make_record(digit=n % 10) for n in range(7)]
    for record in records:
        log.save([record])
    assert [r.id for r in log.recent(5)] == [r.id for r in reversed(records)][:5]


def test_a_batch_is_saved_in_one_transaction(log):
    records = [make_record(digit=n) for n in range(3)]
    log.save(records)
    refused = replace(make_record(), upload=Upload(b"png", None, "00", 3))  # type: ignore[arg-type]
    failing_batch = [make_record(), refused]  # the database refuses the second row (NOT NULL)
    with pytest.raises(StoreUnavailable):
        log.save(failing_batch)
    assert log.get(failing_batch[0].id) is None  # nothing of the failed batch was kept
    assert len(log.recent(10)) == 3


def test_saving_an_id_again_keeps_the_first_record_and_adds_none(log):
    first = make_record(digit=3)
    log.save([first])
    log.save([replace(first, digit=5), make_record(digit=4)])  # a retry, plus one new record
    assert log.get(first.id) == first
    assert sorted(r.digit for r in log.recent(10)) == [3, 4]


# -- idempotency claims -------------------------------------------------------------------


def claim_for(request: str, count: int = 1) -> IdempotencyClaim:
    return IdempotencyClaim(request, tuple(new_record_id() for _ in range(count)))


def test_the_first_claim_of_a_key_wins(log):
    first, second = claim_for("request-a", 2), claim_for("request-b", 2)
    assert log.claim("key-1", first) == first
    assert log.claim("key-1", second) == first
    assert log.claim("key-2", second) == second


def test_claims_survive_reopening_the_file(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    first = SqliteLog(path)
    claim = claim_for("request-a")
    first.claim("key", claim)
    first.close()
    second = SqliteLog(path)
    assert second.claim("key", claim_for("request-b")) == claim
    second.close()


def test_a_claim_is_forgotten_after_the_idempotency_window(tmp_path):
    log = SqliteLog(tmp_path / "predictions.sqlite3", idempotency_window_seconds=0.2)
    old, new = claim_for("request-a"), claim_for("request-b")
    log.claim("key", old)
    assert log.claim("key", new) == old
    time.sleep(0.3)
    assert log.claim("key", new) == new
    log.close()


def test_records_survive_reopening_the_file(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    first = SqliteLog(path)
    record = make_record()
    first.save([record])
    first.close()
    second = SqliteLog(path)
    assert second.get(record.id) == record
    second.close()


def test_many_threads_write_without_losing_a_record(log):
    saved = []
    lock = threading.Lock()

    def write(count: int) -> None:
        for _ in range(count):
            record = make_record()
            log.save([record])
            with lock:
                saved.append(record.id)

    threads = [threading.Thread(target=write, args=(25,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(saved) == 200
    assert {r.id for r in log.recent(200)} == set(saved)


def test_setting_up_waits_for_another_process_writing_the_new_file(tmp_path):
    """Worker processes open the same new file together; SQLite refuses the switch to WAL
    at once, without waiting, while another connection holds the write lock."""
    path = tmp_path / "predictions.sqlite3"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other_process_setup (x)")
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, other.execute, args=("COMMIT",)).start()
    log = SqliteLog(path)
    record = make_record()
    log.save([record])
    assert log.get(record.id) == record
    log.close()
    other.close()


def test_an_unusable_path_is_store_unavailable_not_a_crash(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    log = SqliteLog(blocker / "predictions.sqlite3")
    with pytest.raises(StoreUnavailable):
        log.ping()
    with pytest.raises(StoreUnavailable):
        log.save([make_record()])


def test_ping_answers_on_a_working_store(log):
    log.ping()


def test_a_deleted_file_fails_the_write_then_a_new_file_takes_over(tmp_path):
    """SQLite would go on writing to the deleted file: a record nobody could ever read."""
    folder = tmp_path / "log"
    log = SqliteLog(folder / "predictions.sqlite3")
    log.save([make_record()])
    shutil.rmtree(folder)
    lost = make_record()
    with pytest.raises(StoreUnavailable, match="deleted or replaced"):
        log.save([lost])
    recorded = make_record()
    log.save([recorded])  # a new, empty file at the same path
    assert [r.id for r in log.recent(10)] == [recorded.id]
    assert [r.id for r in SqliteLog(folder / "predictions.sqlite3").recent(10)] == [recorded.id]
    log.close()


def test_a_moved_file_fails_ping_and_claims(tmp_path):
    path = tmp_path / "predictions.sqlite3"
    log = SqliteLog(path)
    log.ping()
    path.rename(tmp_path / "moved-away.sqlite3")
    with pytest.raises(StoreUnavailable):
        log.ping()
    log.ping()  # recovered on a new file
    path.rename(tmp_path / "moved-again.sqlite3")
    with pytest.raises(StoreUnavailable):
        log.claim("key", claim_for("request"))
    log.close()
