"""The function over HTTP on a live Cassandra node: the SQLite contract, on the other store.

The HTTP tests of test_api.py and test_idempotency.py that write or read the prediction
log run here again as they are: `client` and `app_client` are overridden below to be the
real app recording into a fresh keyspace of the session's Cassandra node (and the SQLite
file the shared fixtures name must never appear). The tests after them add what only a
real store shows: each answer is a row in Cassandra, read with the driver; the records
and keys outlive the process; racing retries are settled by Cassandra's lightweight
transaction across two gunicorn workers.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from recognizer.request_log import client_hash
from tests.conftest import ROOT, STABLE_VERSION
from tests.function.test_api import (  # the SQLite suite's HTTP tests, run again on Cassandra
    samples,
    test_a_bad_image_in_a_batch_names_it_and_records_nothing,
    test_a_raw_png_upload_is_recognized_and_recorded,
    test_every_prediction_in_a_200_can_be_read_back,
    test_health_and_readiness,
    test_history_is_newest_first_and_limited,
    test_include_input_adds_the_28x28_the_model_saw_and_matches_the_record,
    test_json_base64_single_and_batch,
    test_multipart_with_several_image_fields_answers_in_request_order,
    test_pinning_a_version_or_a_label,
    test_the_default_answer_stays_lean_without_input_png,
    test_unknown_includes_are_400_before_anything_is_recorded,
    test_unknown_prediction_ids_are_404,
    test_unknown_version_or_label_is_404,
)
from tests.function.test_idempotency import (  # and its Idempotency-Key tests over HTTP
    test_a_key_reused_for_other_images_is_422,
    test_a_malformed_key_is_400,
    test_a_retried_post_with_the_same_key_answers_the_same_and_records_once,
)
from tests.support.cassandra_function import function_app, stored, stored_keys
from tests.support.function_server import running_function

__all__ = [  # collected here again, with this module's `client` and `app_client`
    "samples",
    "test_a_bad_image_in_a_batch_names_it_and_records_nothing",
    "test_a_key_reused_for_other_images_is_422",
    "test_a_malformed_key_is_400",
    "test_a_raw_png_upload_is_recognized_and_recorded",
    "test_a_retried_post_with_the_same_key_answers_the_same_and_records_once",
    "test_every_prediction_in_a_200_can_be_read_back",
    "test_health_and_readiness",
    "test_history_is_newest_first_and_limited",
    "test_include_input_adds_the_28x28_the_model_saw_and_matches_the_record",
    "test_json_base64_single_and_batch",
    "test_multipart_with_several_image_fields_answers_in_request_order",
    "test_pinning_a_version_or_a_label",
    "test_the_default_answer_stays_lean_without_input_png",
    "test_unknown_includes_are_400_before_anything_is_recorded",
    "test_unknown_prediction_ids_are_404",
    "test_unknown_version_or_label_is_404",
]

SAMPLES = ROOT / "tests" / "data" / "samples"
UPLOADS = {  # real photos and drawings, with the digit each shows and its media type
    "seven.png": (7, "image/png"),
    "five-marker.png": (5, "image/png"),
    "three-photo.jpg": (3, "image/jpeg"),
    "two-sideways.jpg": (2, "image/jpeg"),
}


@pytest.fixture
def keyspace(cassandra) -> str:
    return cassandra.keyspace("http")


@pytest.fixture
def app_client(function_env, cassandra, keyspace, monkeypatch):
    """The real app recording into a fresh keyspace; SQLite is never opened."""
    with function_app(monkeypatch, **cassandra.env(keyspace)) as app:
        yield app
    assert not function_env.exists(), "the app wrote to SQLite, not to Cassandra"


@pytest.fixture
def client(app_client):
    return app_client.test_client()


def upload(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def multipart(names: list[str]) -> dict:
    return {"image": [(io.BytesIO(upload(name)), name) for name in names]}


def test_the_session_node_is_the_store_readiness_checks(client):
    ready = client.get("/readyz").get_json()
    assert ready["checks"]["prediction_store"] == "ok: cassandra"


@pytest.mark.real_model
def test_every_answer_of_a_batch_is_a_row_in_cassandra(client, cassandra, keyspace):
    names = list(UPLOADS)
    response = client.post("/predict", data=multipart(names), content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    assert [p["digit"] for p in predictions] == [UPLOADS[name][0] for name in names]
    rows = {row.id: row for row in stored(cassandra, keyspace)}
    assert sorted(rows) == sorted(p["id"] for p in predictions)
    for name, prediction in zip(names, predictions, strict=True):
        row = rows[prediction["id"]]
        assert row.upload_sha256 == hashlib.sha256(upload(name)).hexdigest()
        assert (row.model_version, row.model_label) == (STABLE_VERSION, "stable")


@pytest.mark.real_model
@pytest.mark.parametrize("name", list(UPLOADS))
def test_the_stored_image_is_the_upload_byte_for_byte(client, name):
    digit, media_type = UPLOADS[name]
    prediction = client.post("/predict", data=upload(name), content_type=media_type).get_json()
    (answer,) = prediction["predictions"]
    assert answer["digit"] == digit
    record = client.get(f"/predictions/{answer['id']}").get_json()
    assert record["upload"] == {
        "content_type": media_type,
        "size": len(upload(name)),
        "sha256": hashlib.sha256(upload(name)).hexdigest(),
        "stored": True,
    }
    image = client.get(f"/predictions/{answer['id']}/image")
    assert image.status_code == 200 and image.mimetype == media_type
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert image.data == upload(name)


def test_an_upload_over_the_cap_keeps_only_its_digest(
    function_env, cassandra, keyspace, monkeypatch
):
    env = {**cassandra.env(keyspace), "UPLOAD_STORE_MAX_BYTES": "2000"}
    with function_app(monkeypatch, **env) as app:
        client = app.test_client()
        big, small = upload("three-photo.jpg"), upload("seven.png")  # 38 KB and 1.5 KB
        ids = [
            client.post("/predict", data=image, content_type=kind).get_json()["predictions"][0][
                "id"
            ]
            for image, kind in ((big, "image/jpeg"), (small, "image/png"))
        ]
        big_record = client.get(f"/predictions/{ids[0]}").get_json()
        assert big_record["upload"]["stored"] is False
        assert big_record["upload"]["sha256"] == hashlib.sha256(big).hexdigest()
        refused = client.get(f"/predictions/{ids[0]}/image")
        assert refused.status_code == 404
        assert refused.get_json()["error"]["code"] == "upload_not_stored"
        assert client.get(f"/predictions/{ids[1]}/image").data == small


def test_records_and_keys_outlive_the_process_that_wrote_them(
    function_env, cassandra, keyspace, monkeypatch
):
    """A second app (a restarted function) finds the records, and a retry is a replay."""
    headers = {"Idempotency-Key": "outlives-1"}
    with function_app(monkeypatch, **cassandra.env(keyspace)) as app:
        first = app.test_client().post(
            "/predict",
            data=multipart(["seven.png", "three-photo.jpg"]),
            headers=headers,
            content_type="multipart/form-data",
        )
        assert first.status_code == 200
    with function_app(monkeypatch, **cassandra.env(keyspace)) as app:
        client = app.test_client()
        history = client.get("/predictions").get_json()["predictions"]
        assert sorted(p["id"] for p in history) == sorted(
            p["id"] for p in first.get_json()["predictions"]
        )
        retry = client.post(
            "/predict",
            data=multipart(["seven.png", "three-photo.jpg"]),
            headers=headers,
            content_type="multipart/form-data",
        )
        assert retry.status_code == 200
        assert retry.get_json() == first.get_json()
    assert len(stored(cassandra, keyspace)) == 2


def test_the_key_is_kept_as_a_digest_with_the_ids_it_stands_for(client, cassandra, keyspace):
    key = "secret-looking-key-0123456789"
    response = client.post(
        "/predict",
        data=multipart(["seven.png", "five-marker.png"]),
        headers={"Idempotency-Key": key},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    (row,) = stored_keys(cassandra, keyspace)
    # Scoped to the caller (#23): the test client's address, as it sends no X-Client-Id.
    caller = f"client:{client_hash('addr:127.0.0.1')}".encode()
    scoped = hashlib.sha256(caller + b"\0" + key.encode()).hexdigest()
    assert row["key_sha256"] == scoped
    assert [str(i) for i in row["record_ids"]] == [
        p["id"] for p in response.get_json()["predictions"]
    ]
    assert key not in repr(row)


def test_racing_retries_on_two_workers_record_exactly_once(
    model_stand_in, cassandra, keyspace, tmp_path: Path
):
    """Eight simultaneous attempts with one key, through gunicorn with two worker processes:
    one claim wins Cassandra's IF NOT EXISTS, every attempt answers with its record ids."""
    image = upload("two-sideways.jpg")
    env = {**cassandra.env(keyspace), "WORKERS": "2", "THREADS": "4"}
    with running_function(model_stand_in.url, tmp_path / "unused.sqlite3", **env) as url:

        def attempt(_: int) -> requests.Response:
            return requests.post(
                f"{url}/predict",
                data=image,
                timeout=60,
                headers={"Content-Type": "image/jpeg", "Idempotency-Key": "race-1"},
            )

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(attempt, range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    answers = {tuple(p["id"] for p in r.json()["predictions"]) for r in responses}
    assert len(answers) == 1
    assert [row.id for row in stored(cassandra, keyspace)] == list(answers.pop())
    assert len(stored_keys(cassandra, keyspace)) == 1
    assert not (tmp_path / "unused.sqlite3").exists()
