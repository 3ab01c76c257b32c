"""Corrections through HTTP, on SQLite and on a live Cassandra node: who may correct a
prediction, what a correction must say, and that nothing changes when it is refused."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import functions_framework
import pytest
from PIL import Image

from recognizer import feedback
from recognizer.config import Settings
from recognizer.records import new_record_id
from tests.conftest import ROOT
from tests.support.cassandra_function import function_app

SECRET = "f" * 64
API_TOKEN = "the-api-token"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@contextmanager
def app_on(store: str, request: pytest.FixtureRequest, monkeypatch, **env: str) -> Iterator:
    """The real app on `store` ("sqlite": the test's file; "cassandra": a fresh keyspace)."""
    if store == "sqlite":
        request.getfixturevalue("function_env")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
        return
    request.getfixturevalue("function_env")
    cassandra = request.getfixturevalue("cassandra")
    keyspace = getattr(request.node, "_feedback_keyspace", None) or cassandra.keyspace("fb")
    request.node._feedback_keyspace = keyspace  # a second app in one test shares the store
    with function_app(monkeypatch, **cassandra.env(keyspace), **env) as app:
        yield app


@pytest.fixture(params=["sqlite", "cassandra"])
def store(request) -> str:
    return request.param


@pytest.fixture
def client(store, request, monkeypatch):
    with app_on(store, request, monkeypatch, FEEDBACK_SECRET=SECRET, API_TOKEN=API_TOKEN) as app:
        yield app.test_client()


@pytest.fixture
def predicted(client, mnist) -> dict:
    """One recorded prediction of an MNIST test digit, as POST /predict answered it."""
    buffer = io.BytesIO()
    Image.fromarray(mnist.x_test[0]).save(buffer, format="PNG")
    response = client.post("/predict", data=buffer.getvalue(), content_type="image/png")
    assert response.status_code == 200, response.get_data(as_text=True)
    (prediction,) = response.get_json()["predictions"]
    return prediction


def correct(client, prediction_id: str, body: object, **headers: str):
    return client.put(f"/predictions/{prediction_id}/feedback", json=body, headers=headers)


def stored_feedback(client, prediction_id: str) -> object:
    response = client.get(f"/predictions/{prediction_id}", headers=BEARER)
    assert response.status_code == 200
    return response.get_json()["feedback"]


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == code


def test_every_prediction_carries_the_token_that_can_correct_it(client, predicted):
    assert predicted["feedback"] is None
    assert predicted["feedback_token"] == feedback.token_for(
        SECRET.encode(), uuid.UUID(predicted["id"])
    )
    response = correct(client, predicted["id"], {"digit": 1, "token": predicted["feedback_token"]})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["id"] == predicted["id"] and body["feedback"]["digit"] == 1
    assert "feedback_token" not in body  # shown once, in the answer to the upload
    assert stored_feedback(client, predicted["id"]) == body["feedback"]
    (latest,) = client.get("/predictions?limit=1", headers=BEARER).get_json()["predictions"]
    assert latest["feedback"] == body["feedback"]


def test_the_last_correction_wins_and_null_means_not_a_digit(client, predicted):
    token = predicted["feedback_token"]
    first = correct(client, predicted["id"], {"digit": 3, "token": token}).get_json()["feedback"]
    second = correct(client, predicted["id"], {"digit": None, "token": token}).get_json()
    assert second["feedback"]["digit"] is None
    assert second["feedback"]["created_at"] >= first["created_at"]
    assert stored_feedback(client, predicted["id"]) == second["feedback"]


def test_the_api_token_may_correct_any_record(client, predicted):
    response = correct(client, predicted["id"], {"digit": 9}, **BEARER)
    assert response.status_code == 200
    assert stored_feedback(client, predicted["id"])["digit"] == 9


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ({"digit": 2}, {}, 401, "unauthorized"),
        ({"digit": 2, "token": "x" * 43}, {}, 403, "forbidden"),
        ({"digit": 2}, {"Authorization": "Bearer not-the-token"}, 403, "forbidden"),
        ({"digit": 10, "token": "any"}, {}, 400, "invalid_feedback"),
        ({"digit": -1}, BEARER, 400, "invalid_feedback"),
        ({"digit": "3"}, BEARER, 400, "invalid_feedback"),
        ({"digit": True}, BEARER, 400, "invalid_feedback"),
        ({"digit": 2.0}, BEARER, 400, "invalid_feedback"),
        ({"token": "any"}, BEARER, 400, "invalid_feedback"),
        ([2], BEARER, 400, "invalid_feedback"),
        ({"digit": 2, "token": 7}, {}, 400, "invalid_feedback"),
    ],
)
def test_a_refused_correction_changes_nothing(client, predicted, body, headers, status, code):
    assert_error(correct(client, predicted["id"], body, **headers), status, code)
    assert stored_feedback(client, predicted["id"]) is None


def test_a_token_for_another_prediction_is_wrong(client, predicted, mnist):
    other = client.post("/predict", data=predicted_png(mnist, 1), content_type="image/png")
    (other,) = other.get_json()["predictions"]
    stolen = {"digit": 4, "token": other["feedback_token"]}
    assert_error(correct(client, predicted["id"], stolen), 403, "forbidden")
    assert stored_feedback(client, predicted["id"]) is None


def test_a_body_that_is_not_json_is_400(client, predicted):
    response = client.put(
        f"/predictions/{predicted['id']}/feedback", data=b"\xff{", content_type="application/json"
    )
    assert_error(response, 400, "invalid_feedback")


def test_unknown_ids_are_404_and_no_record_is_made(client):
    never_recorded = str(new_record_id())
    assert_error(correct(client, never_recorded, {"digit": 1}, **BEARER), 404, "unknown_prediction")
    assert_error(
        client.get(f"/predictions/{never_recorded}", headers=BEARER), 404, "unknown_prediction"
    )
    assert_error(correct(client, "not-an-id", {"digit": 1}, **BEARER), 404, "unknown_prediction")
    assert_error(
        correct(client, str(uuid.uuid4()), {"digit": 1}, **BEARER), 404, "unknown_prediction"
    )


def test_another_instance_with_the_same_secret_takes_the_token(
    store, request, monkeypatch, client, predicted
):
    with app_on(store, request, monkeypatch, FEEDBACK_SECRET=SECRET) as other:
        response = correct(
            other.test_client(), predicted["id"], {"digit": 5, "token": predicted["feedback_token"]}
        )
        assert response.status_code == 200, response.get_data(as_text=True)
    assert stored_feedback(client, predicted["id"])["digit"] == 5


def test_without_a_secret_there_are_no_tokens_and_only_the_api_token_corrects(
    request, monkeypatch, mnist
):
    with app_on("sqlite", request, monkeypatch, API_TOKEN=API_TOKEN) as app:
        client = app.test_client()
        response = client.post("/predict", data=predicted_png(mnist, 0), content_type="image/png")
        (prediction,) = response.get_json()["predictions"]
        assert "feedback_token" not in prediction
        forged = {
            "digit": 1,
            "token": feedback.token_for(SECRET.encode(), uuid.UUID(prediction["id"])),
        }
        assert_error(correct(client, prediction["id"], forged), 403, "forbidden")
        assert correct(client, prediction["id"], {"digit": 1}, **BEARER).status_code == 200


def predicted_png(mnist, index: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mnist.x_test[index]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_secret_is_checked_at_start_up_and_never_shown():
    with pytest.raises(ValueError, match="FEEDBACK_SECRET must be at least 32 bytes"):
        Settings.from_env({"FEEDBACK_SECRET": "short"})
    settings = Settings.from_env({"FEEDBACK_SECRET": SECRET})
    assert settings.feedback_secret == SECRET.encode() and SECRET not in repr(settings)


def test_a_token_is_bound_to_one_id_and_one_secret():
    record_id = new_record_id()
    token = feedback.token_for(SECRET.encode(), record_id)
    assert len(token) == 43 and feedback.token_matches(SECRET.encode(), record_id, token)
    assert not feedback.token_matches(SECRET.encode(), new_record_id(), token)
    assert not feedback.token_matches(b"g" * 64, record_id, token)
