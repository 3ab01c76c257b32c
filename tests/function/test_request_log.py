"""One JSON line on stdout per request: its fields, its severity, and what it never holds.

The formatter on its own, then the function answering real requests (in process, and
under functions-framework's production server, whose stdout is what a platform reads).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import functions_framework
import numpy as np
import pytest
import requests
from PIL import Image

from recognizer import request_log
from tests.conftest import ROOT, STABLE_VERSION, free_port, wait_until

TOKEN = "s3cret-token-never-logged-0123456789"
CLIENT_ID = "client-id-never-logged"
STAGES = {"decode", "preprocess", "model", "store"}


def png() -> bytes:
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 12:16] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def json_lines(text: str) -> list[dict]:
    """The request-log lines in `text` (anything else written there is not ours to check)."""
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "status" in entry:  # other lines logged in a request carry its id too
                entries.append(entry)
    return entries


# --- the formatter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "severity"),
    [
        (200, "INFO"),
        (204, "INFO"),
        (304, "INFO"),
        (400, "WARNING"),
        (401, "WARNING"),
        (404, "WARNING"),
        (413, "WARNING"),
        (500, "ERROR"),
        (503, "ERROR"),
        (504, "ERROR"),
    ],
)
def test_severity_follows_the_status_class(status, severity):
    assert request_log.severity(status) == severity


def test_a_sane_request_id_is_kept_and_anything_else_replaced():
    assert request_log.request_id("abc-123_4.5:6") == "abc-123_4.5:6"
    fresh = {
        request_log.request_id(header)
        for header in (None, "", "x" * 65, "two words", "new\nline", "é", '{"a":1}')
    }
    assert len(fresh) == 7 and all(len(i) == 32 and int(i, 16) >= 0 for i in fresh)


def test_the_client_is_a_short_stable_hash():
    key = "addr:203.0.113.9"
    assert request_log.client_hash(key) == request_log.client_hash(key)
    assert request_log.client_hash(key) != request_log.client_hash("addr:203.0.113.10")
    assert len(request_log.client_hash(key)) == 16 and "203.0.113" not in request_log.client_hash(
        key
    )


def test_a_line_holds_the_request_its_answer_and_where_the_time_went():
    facts = request_log.Facts(
        images=2,
        model={"version": 2, "label": "stable"},
        timings_ms={"decode": 1.23456, "preprocess": 2.0, "model": 3.0, "store": 4.0},
        replayed=False,
    )
    line = request_log.line(
        request_id="r1",
        client="id:someone",
        method="POST",
        path="/predict",
        query_names=["version", "include", "bad name!"],
        status=200,
        outcome="ok",
        total_ms=12.3456789,
        facts=facts,
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "severity": "INFO",
        "message": "POST /predict 200",
        "request_id": "r1",
        "client": request_log.client_hash("id:someone"),
        "method": "POST",
        "path": "/predict",
        "query": ["include", "version"],
        "status": 200,
        "outcome": "ok",
        "images": 2,
        "model": {"version": 2, "label": "stable"},
        "latency_ms": {
            "total": 12.346,
            "decode": 1.235,
            "preprocess": 2.0,
            "model": 3.0,
            "store": 4.0,
        },
        "replayed": False,
    }


def test_a_line_without_a_prediction_has_only_the_total_latency():
    line = request_log.line(
        request_id="r2",
        client="addr:",
        method="GET",
        path="/nowhere/" + "x" * 1000 + "\n",
        query_names=[],
        status=404,
        outcome="not_found",
        total_ms=0.5,
        facts=request_log.Facts(),
    )
    entry = json.loads(line)
    assert entry["latency_ms"] == {"total": 0.5}
    assert not {"images", "model", "replayed", "query"} & set(entry)
    assert len(entry["path"]) == request_log.MAX_PATH_CHARS and "\n" not in line


# --- the function's lines -----------------------------------------------------------------


@pytest.fixture
def protected_client(function_env, monkeypatch):
    monkeypatch.setenv("API_TOKEN", TOKEN)
    monkeypatch.delenv("PREDICT_REQUIRES_TOKEN", raising=False)
    monkeypatch.setenv("PIN_REQUIRES_TOKEN", "false")  # the tests pin without the token
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    return app.test_client()


def test_a_prediction_logs_its_model_images_and_stage_timings(protected_client, capsys):
    capsys.readouterr()
    response = protected_client.post(
        "/predict?version=2",
        data=png(),
        content_type="image/png",
        headers={"X-Request-Id": "trace-42", "X-Client-Id": CLIENT_ID},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "trace-42"
    (entry,) = json_lines(capsys.readouterr().out)
    assert entry["request_id"] == "trace-42"
    assert entry["severity"] == "INFO" and entry["message"] == "POST /predict 200"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/predict", 200)
    assert entry["outcome"] == "ok" and entry["images"] == 1
    assert entry["query"] == ["version"]
    assert entry["model"] == {"version": 2, "label": None}
    assert entry["client"] == request_log.client_hash(f"id:{CLIENT_ID}")
    assert STAGES | {"total"} <= set(entry["latency_ms"])
    assert entry["latency_ms"]["total"] >= sum(entry["latency_ms"][s] for s in STAGES)
    assert entry["replayed"] is False


def test_every_request_gets_exactly_one_line_errors_included(protected_client, capsys):
    with_token = {"Authorization": f"Bearer {TOKEN}"}
    capsys.readouterr()
    answers = [
        protected_client.get("/healthz"),
        protected_client.get("/nowhere"),
        protected_client.get("/predict"),
        protected_client.get("/predictions"),
        protected_client.get("/predictions", headers=with_token),
        protected_client.post("/predict", data=b"junk", content_type="image/png"),
    ]
    entries = json_lines(capsys.readouterr().out)
    ids = [answer.headers["X-Request-Id"] for answer in answers]
    assert [e["request_id"] for e in entries] == ids and len(set(ids)) == len(ids)
    assert [(e["status"], e["outcome"], e["severity"]) for e in entries] == [
        (200, "ok", "INFO"),
        (404, "not_found", "WARNING"),
        (405, "method_not_allowed", "WARNING"),
        (401, "unauthorized", "WARNING"),
        (200, "ok", "INFO"),
        (400, "not_an_image", "WARNING"),
    ]
    assert entries[-1]["images"] == 1 and "model" not in entries[-1]


def test_no_token_client_id_address_query_value_or_image_ever_reaches_the_log(
    protected_client, capsys
):
    image = png()
    encoded = base64.b64encode(image).decode()
    capsys.readouterr()
    secret_headers = {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": CLIENT_ID}
    protected_client.post("/predict", json={"image": encoded}, headers=secret_headers)
    protected_client.post("/predict", data=image, content_type="image/png", headers=secret_headers)
    protected_client.get(f"/predictions?limit=5&api_key={TOKEN}", headers=secret_headers)
    protected_client.get("/predictions", headers={"Authorization": f"Bearer {TOKEN}x"})
    out = capsys.readouterr().out
    assert len(json_lines(out)) == 4
    for forbidden in (TOKEN, CLIENT_ID, "127.0.0.1", encoded[:24], "Bearer", "iVBOR"):
        assert forbidden not in out, forbidden
    assert "\\u0089PNG" not in out and "PNG\\r" not in out


# --- under functions-framework's production server ----------------------------------------


@pytest.fixture
def served_function(model_stand_in, tmp_path):
    """`functions-framework` (gunicorn, 2 threads) with its stdout captured to a file."""
    port = free_port()
    stdout = tmp_path / "stdout.log"
    env = {
        **os.environ,
        "MODEL_SERVER_URL": model_stand_in.url,
        "SQLITE_PATH": str(tmp_path / "predictions.sqlite3"),
        "API_TOKEN": TOKEN,
        "THREADS": "2",
    }
    env.pop("CASSANDRA_CONTACT_POINTS", None)
    env.pop("PREDICTION_STORE", None)
    executable = Path(os.sys.executable).with_name("functions-framework")
    command = [str(executable), "--source", "function/main.py", "--target", "recognize"]
    with stdout.open("wb") as sink:
        process = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env, stdout=sink)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(f"{url}/healthz", timeout=2).ok, "the function")
            yield url, stdout
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_the_production_server_writes_one_json_line_per_request_to_stdout(served_function):
    url, stdout = served_function
    image = png()
    answers = [
        requests.post(f"{url}/predict", data=image, headers={"Content-Type": "image/png"}),
        requests.get(f"{url}/predictions", headers={"Authorization": f"Bearer {TOKEN}"}),
        requests.get(f"{url}/predictions"),
        requests.get(f"{url}/nowhere", headers={"X-Request-Id": "from-the-caller"}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 401, 404]
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert ids[-1] == "from-the-caller"
    wait_until(lambda: len(json_lines(stdout.read_text())) >= 5, "the log lines", timeout=10)
    entries = [e for e in json_lines(stdout.read_text()) if e["path"] != "/healthz"]
    assert [e["request_id"] for e in entries] == ids  # the fixture's probes aside
    prediction = entries[0]
    assert prediction["model"] == {"version": STABLE_VERSION, "label": "stable"}
    assert set(prediction["latency_ms"]) >= STAGES
    assert [e["severity"] for e in entries] == ["INFO", "INFO", "WARNING", "WARNING"]
    assert TOKEN not in stdout.read_text()
