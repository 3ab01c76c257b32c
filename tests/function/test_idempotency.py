"""Idempotency keys: a retried request never records twice and gets the same answer.

The use case runs against the real SQLite log and the in-process model stand-in (the
real development model server where the digits themselves are checked); the log that
fails one save is there to retry after a failure at the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import functions_framework
import pytest

from recognizer.canary import Route
from recognizer.model_client import ModelClient
from recognizer.records import Record, StoreUnavailable
from recognizer.service import (
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    Recognition,
    Recognizer,
)
from recognizer.sqlite_store import SqliteStore
from tests.conftest import ROOT, free_port

SAMPLES = ROOT / "tests" / "data" / "samples"
SEVEN = (SAMPLES / "seven.png").read_bytes()
THREE = (SAMPLES / "three-photo.jpg").read_bytes()
STABLE = Route("stable")


@pytest.fixture
def log(tmp_path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "log" / "predictions.sqlite3")
    yield store
    store.close()


def recognizer_for(model_url: str, log: object) -> Recognizer:
    model = ModelClient(model_url, "mnist", timeout_seconds=30, label_cache_seconds=5)
    return Recognizer(model, log, "mnist", 40_000_000, 40_000_000, 256 * 1024)  # type: ignore[arg-type]


@pytest.fixture
def recognizer(model_url, log) -> Recognizer:
    return recognizer_for(model_url, log)


def ids(recognition: Recognition) -> list:
    return [record.id for record in recognition.records]


@pytest.mark.real_model
def test_a_retry_with_the_same_key_records_nothing_new_and_gets_the_same_records(recognizer, log):
    first = recognizer.recognize([SEVEN, THREE], STABLE, "order-17")
    retry = recognizer.recognize([SEVEN, THREE], STABLE, "order-17")
    assert not first.replayed and retry.replayed
    assert retry.records == first.records  # same ids, digits, versions, in request order
    assert [r.digit for r in first.records] == [7, 3]
    assert sorted(r.id for r in log.recent(10)) == sorted(ids(first))


def test_without_a_key_every_request_records(recognizer, log):
    recognizer.recognize([SEVEN], STABLE)
    recognizer.recognize([SEVEN], STABLE)
    assert len(log.recent(10)) == 2


def test_a_replay_needs_no_model_server(recognizer, log):
    first = recognizer.recognize([SEVEN], STABLE, "order-18")
    model_gone = recognizer_for(f"http://127.0.0.1:{free_port()}", log)
    retry = model_gone.recognize([SEVEN], STABLE, "order-18")
    assert retry.replayed and ids(retry) == ids(first)
    assert "model" not in retry.timings_ms


@pytest.mark.parametrize(
    ("images", "route"),
    [([THREE], STABLE), ([SEVEN, SEVEN], STABLE), ([SEVEN], Route("stable", version=1))],
    ids=["other image", "more images", "other pin"],
)
def test_the_same_key_for_a_different_request_is_refused(recognizer, log, images, route):
    first = recognizer.recognize([SEVEN], STABLE, "order-19")
    with pytest.raises(IdempotencyKeyReused):
        recognizer.recognize(images, route, "order-19")
    assert [r.id for r in log.recent(10)] == ids(first)


def test_a_retry_that_lands_in_the_canary_is_still_the_same_request(recognizer):
    """Whether an unpinned client is in the canary is the server's choice, not the client's."""
    first = recognizer.recognize([SEVEN], STABLE, "order-20")
    retry = recognizer.recognize([SEVEN], Route("canary", fallback="stable"), "order-20")
    assert retry.replayed and ids(retry) == ids(first)


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\there", "line\nbreak"])
def test_a_malformed_key_is_refused_before_anything_is_recorded(recognizer, log, key):
    with pytest.raises(InvalidIdempotencyKey):
        recognizer.recognize([SEVEN], STABLE, key)
    assert log.recent(10) == []


def test_keys_of_255_printable_characters_are_accepted(recognizer):
    key = "".join(chr(32 + n % 95) for n in range(255))
    assert recognizer.recognize([SEVEN], STABLE, key).records


def test_the_log_keeps_a_digest_of_the_key_never_the_key(recognizer, log, tmp_path):
    recognizer.recognize([SEVEN], STABLE, "secret-looking-key-0123456789")
    log.close()
    stored = b"".join(path.read_bytes() for path in (tmp_path / "log").iterdir())
    assert b"secret-looking-key-0123456789" not in stored


def test_racing_retries_with_one_key_record_exactly_once(recognizer, log):
    start = threading.Barrier(8)
    results: list[Recognition] = []
    errors: list[Exception] = []

    def attempt() -> None:
        start.wait()
        try:
            results.append(recognizer.recognize([SEVEN], STABLE, "order-21"))
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({tuple(ids(result)) for result in results}) == 1
    assert [r.id for r in log.recent(10)] == ids(results[0])


class FailsFirstSave:
    """The real log, except that its first save fails as an unreachable store would."""

    def __init__(self, log: SqliteStore) -> None:
        self.log = log
        self.refused: list[Record] = []

    def save(self, records: Sequence[Record]) -> None:
        if not self.refused:
            self.refused.extend(records)
            raise StoreUnavailable("the store went away mid-request")
        self.log.save(records)

    def __getattr__(self, name: str) -> object:
        return getattr(self.log, name)


def test_a_key_whose_attempt_failed_at_the_store_can_be_retried_and_records_once(model_url, log):
    flaky = FailsFirstSave(log)
    recognizer = recognizer_for(model_url, flaky)
    with pytest.raises(StoreUnavailable):
        recognizer.recognize([SEVEN], STABLE, "order-22")
    assert log.recent(10) == []
    retry = recognizer.recognize([SEVEN], STABLE, "order-22")
    assert not retry.replayed  # nothing was recorded before: this attempt asked the model
    assert ids(retry) == [r.id for r in flaky.refused]  # into the ids claimed the first time
    again = recognizer.recognize([SEVEN], STABLE, "order-22")
    assert again.replayed and again.records == retry.records
    assert [r.id for r in log.recent(10)] == ids(retry)


def test_a_key_is_forgotten_after_the_idempotency_window(model_url, tmp_path):
    """Keys are kept for records.IDEMPOTENCY_WINDOW_SECONDS (a day); here for a moment."""
    log = SqliteStore(tmp_path / "predictions.sqlite3", idempotency_window_seconds=0.5)
    recognizer = recognizer_for(model_url, log)
    first = recognizer.recognize([SEVEN], STABLE, "order-23")
    time.sleep(0.6)
    later = recognizer.recognize([THREE], STABLE, "order-23")  # no longer "reused"
    assert not later.replayed and ids(later) != ids(first)
    assert len(log.recent(10)) == 2
    log.close()


# -- through HTTP: the Idempotency-Key header ------------------------------------------


@pytest.fixture
def app_client(function_env):
    return functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))


def test_a_retried_post_with_the_same_key_answers_the_same_and_records_once(app_client):
    client = app_client.test_client()
    headers = {"Idempotency-Key": "upload-5f1c"}
    first = client.post("/predict", data=SEVEN, content_type="image/png", headers=headers)
    retry = client.post("/predict", data=SEVEN, content_type="image/png", headers=headers)
    assert first.status_code == retry.status_code == 200
    assert retry.get_json()["predictions"] == first.get_json()["predictions"]
    assert len(client.get("/predictions").get_json()["predictions"]) == 1


def test_a_key_reused_for_other_images_is_422(app_client):
    client = app_client.test_client()
    headers = {"Idempotency-Key": "upload-5f1d"}
    client.post("/predict", data=SEVEN, content_type="image/png", headers=headers)
    other = client.post("/predict", data=THREE, content_type="image/jpeg", headers=headers)
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/predictions").get_json()["predictions"]) == 1


def test_a_malformed_key_is_400(app_client):
    client = app_client.test_client()
    response = client.post(
        "/predict", data=SEVEN, content_type="image/png", headers={"Idempotency-Key": "x" * 256}
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert client.get("/predictions").get_json()["predictions"] == []
