"""Faults through the real app: a model server down, slow or talking nonsense, a store gone.

The client always gets a JSON error it can act on: 503 with Retry-After (try again soon)
or 504 (the model server did not answer in MODEL_SERVER_TIMEOUT_SECONDS); /readyz names
the failing part; and nothing is recorded for a prediction that did not happen. The
model server is the in-process stand-in (tests/support/model_stand_in.py), which can be
made slow, broken or killed on demand.
"""

from __future__ import annotations

import json
import shutil
import time

import functions_framework
import pytest

from tests.conftest import ROOT, free_port, shipped_stand_in
from tests.support.model_stand_in import Fault, answer

SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
TIMEOUT_SECONDS = 1.0
RETRIES = 2


def one_probability_short(status: int, body: bytes) -> tuple[int, bytes]:
    """The model's answer with nine probabilities per image instead of ten."""
    answer = json.loads(body)
    outputs = answer["outputs"]
    outputs["probabilities"] = [row[:-1] for row in outputs["probabilities"]]
    return status, json.dumps(answer).encode()


NOT_JSON = Fault(answer=lambda status, body: (200, b"<html><body>Bad Gateway</body></html>"))
NOT_AN_OBJECT = Fault(answer=lambda status, body: (200, b"[]"))
WRONG_SHAPE = Fault(answer=one_probability_short)
INTERNAL_ERROR = Fault(answer=lambda status, body: (500, b'{"error": "Internal: kernel failed"}'))
UNAVAILABLE = Fault(answer=lambda status, body: (503, b'{"error": "Servable not available"}'))


def app_for(model_server_url: str, monkeypatch: pytest.MonkeyPatch):
    """The real functions-framework app, pointed at `model_server_url`."""
    monkeypatch.setenv("MODEL_SERVER_URL", model_server_url)
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT_SECONDS", str(TIMEOUT_SECONDS))
    monkeypatch.setenv("MODEL_SERVER_RETRIES", str(RETRIES))
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    return app.test_client()


def predict(client):
    return client.post("/predict", data=SEVEN, content_type="image/png")


def assert_error(response, status: int, code: str) -> str:
    """The JSON error contract; returns the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    if status == 503:
        assert int(response.headers["Retry-After"]) > 0
    return error["message"]


def recorded(client) -> list[dict]:
    return client.get("/predictions?limit=100").get_json()["predictions"]


def assert_not_ready(client, failing: str) -> dict:
    ready = client.get("/readyz")
    assert_error(ready, 503, "not_ready")
    checks = ready.get_json()["checks"]
    assert failing in ready.get_json()["error"]["message"]
    assert checks[failing].startswith("failing")
    return checks


# -- the model server -----------------------------------------------------------------


def test_through_the_stand_in_without_a_fault_the_function_answers(
    model_stand_in, function_env, monkeypatch
):
    """The control for every fault below: the stand-in itself breaks nothing."""
    client = app_for(model_stand_in.url, monkeypatch)
    response = predict(client)
    assert response.status_code == 200
    [prediction] = response.get_json()["predictions"]
    [pixels] = model_stand_in.images  # what the function sent: the answer is the model's
    probabilities, digits = answer(pixels, prediction["model"]["version"])
    assert prediction["digit"] == digits[0]
    assert prediction["probabilities"] == pytest.approx(probabilities[0].tolist(), abs=1e-6)
    assert client.get("/readyz").status_code == 200
    assert len(recorded(client)) == 1


def test_a_model_server_that_is_not_there_is_503_and_not_ready(function_env, monkeypatch):
    client = app_for(f"http://127.0.0.1:{free_port()}", monkeypatch)
    assert "unreachable" in assert_error(predict(client), 503, "model_unavailable")
    assert recorded(client) == []
    checks = assert_not_ready(client, "model_server")
    assert checks["prediction_store"].startswith("ok")


def test_a_killed_model_server_is_503_and_not_ready(function_env, monkeypatch):
    with shipped_stand_in() as server:
        client = app_for(server.url, monkeypatch)
        assert predict(client).status_code == 200
        server.close()  # the port refuses and the kept-alive connection is cut
        assert_error(predict(client), 503, "model_unavailable")
        assert_not_ready(client, "model_server")
        assert len(recorded(client)) == 1  # the prediction before the kill, nothing after


def test_a_slow_prediction_is_504_after_the_timeout_and_asked_once(
    model_stand_in, function_env, monkeypatch
):
    client = app_for(model_stand_in.url, monkeypatch)
    model_stand_in.fault = Fault(delay=TIMEOUT_SECONDS + 3)
    started = time.monotonic()
    response = predict(client)
    elapsed = time.monotonic() - started
    assert "did not answer within 1 s" in assert_error(response, 504, "model_timeout")
    assert TIMEOUT_SECONDS <= elapsed < TIMEOUT_SECONDS + 1.5
    assert model_stand_in.predictions_asked == 1  # a timeout is not retried: the wait would double
    assert recorded(client) == []


@pytest.mark.parametrize(
    "fault",
    [NOT_JSON, NOT_AN_OBJECT, WRONG_SHAPE, INTERNAL_ERROR],
    ids=["not JSON", "not an object", "wrong shape", "500"],
)
def test_a_nonsense_prediction_is_503_asked_once_and_not_recorded(
    model_stand_in, function_env, monkeypatch, fault
):
    client = app_for(model_stand_in.url, monkeypatch)
    model_stand_in.fault = fault
    assert_error(predict(client), 503, "model_unavailable")
    assert model_stand_in.predictions_asked == 1  # the same question would get the same nonsense
    assert recorded(client) == []


def test_an_unavailable_model_server_is_retried_a_bounded_number_of_times(
    model_stand_in, function_env, monkeypatch
):
    client = app_for(model_stand_in.url, monkeypatch)
    model_stand_in.fault = UNAVAILABLE
    assert "503" in assert_error(predict(client), 503, "model_unavailable")
    assert model_stand_in.predictions_asked == 1 + RETRIES
    assert recorded(client) == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(everywhere=True, delay=TIMEOUT_SECONDS + 3),
        Fault(everywhere=True, answer=NOT_JSON.answer),
        Fault(everywhere=True, answer=INTERNAL_ERROR.answer),
        Fault(everywhere=True, answer=UNAVAILABLE.answer),
    ],
    ids=["slow", "not JSON", "500", "503"],
)
def test_readiness_names_a_model_server_that_answers_badly(
    model_stand_in, function_env, monkeypatch, fault
):
    client = app_for(model_stand_in.url, monkeypatch)
    model_stand_in.fault = fault
    checks = assert_not_ready(client, "model_server")
    assert checks["prediction_store"].startswith("ok")


def test_readiness_comes_back_with_the_model_server(model_stand_in, function_env, monkeypatch):
    client = app_for(model_stand_in.url, monkeypatch)
    model_stand_in.fault = Fault(everywhere=True, answer=UNAVAILABLE.answer)
    assert_not_ready(client, "model_server")
    model_stand_in.fault = None
    assert client.get("/readyz").status_code == 200
    assert predict(client).status_code == 200


# -- the prediction store -------------------------------------------------------------


def test_a_store_that_cannot_be_opened_is_503_and_not_ready(
    model_url, tmp_path, function_env, monkeypatch
):
    """Its directory cannot be made (a file is in the way); chmod would not stop root."""
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "not-a-directory" / "predictions.sqlite3"))
    client = app_for(model_url, monkeypatch)
    assert_error(predict(client), 503, "store_unavailable")
    checks = assert_not_ready(client, "prediction_store")
    assert checks["model_server"].startswith("ok")


def test_a_store_removed_while_serving_is_503_never_a_200_without_a_record(
    model_url, function_env, monkeypatch
):
    """SQLite would go on writing to the deleted file: the 200 would rest on nothing."""
    client = app_for(model_url, monkeypatch)
    assert predict(client).status_code == 200
    shutil.rmtree(function_env.parent)
    assert "deleted or replaced" in assert_error(predict(client), 503, "store_unavailable")
    after = predict(client)  # the store starts a new file at the configured path
    assert after.status_code == 200
    [record] = recorded(client)
    assert record["id"] == after.get_json()["predictions"][0]["id"]
