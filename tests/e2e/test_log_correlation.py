"""One request's lines, in the function's log and the model server's, share its id and trace.

The function (function/serve.py, 2 workers) with its stdout captured, the development
model server at DEBUG (its per-call access lines) writing its stderr to a file: a
prediction sent with a `traceparent` and an `X-Request-Id` is found in both logs under
that id and trace, every line of both is JSON (but TensorFlow's native runtime's own).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, SHELL_SETTINGS, free_port, wait_until
from tests.support.dev_model_server import dev_model_server

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


# TensorFlow's C++ runtime writes to stderr on its own (absl logging: "I0000 00:00:...
# port.cc:153] oneDNN ..."), not through Python's logging; only those lines are not JSON.
TENSORFLOW_NATIVE = re.compile(r"[IWEF]\d{4} |WARNING: All log messages before absl::")


def json_entries(path: Path) -> list[dict]:
    """Every line of the log, each one JSON object (TensorFlow's own native lines aside)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") or TENSORFLOW_NATIVE.match(line) for line in lines), lines
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.real_model
def test_a_request_is_traced_through_the_function_and_the_model_server(tmp_path):
    server_log = tmp_path / "model-server.log"
    with dev_model_server(log=server_log, flags=["--log_level", "DEBUG"]) as model_server:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in SHELL_SETTINGS}
        env.update(
            MODEL_SERVER_URL=model_server,
            SQLITE_PATH=str(tmp_path / "predictions.sqlite3"),
            WORKERS="2",
            GOOGLE_CLOUD_PROJECT="digits-prod",
        )
        stdout = tmp_path / "function.log"
        command = [sys.executable, "function/serve.py", "--host", "127.0.0.1"]
        with stdout.open("w") as sink:
            function = subprocess.Popen(
                [*command, "--port", str(port)], cwd=ROOT, env=env, stdout=sink
            )
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: requests.get(f"{url}/healthz", timeout=2).ok, "the function")
                answer = requests.post(
                    f"{url}/predict",
                    data=(ROOT / "tests/data/samples/seven.png").read_bytes(),
                    headers={
                        "Content-Type": "image/png",
                        "X-Request-Id": "corr-42",
                        "traceparent": f"00-{TRACE}-{SPAN}-01",
                    },
                    timeout=30,
                )
                assert answer.status_code == 200
                wait_until(lambda: "corr-42" in stdout.read_text(), "the request line", 10)
            finally:
                function.terminate()
                function.wait(timeout=30)
    (line,) = [e for e in json_entries(stdout) if e.get("request_id") == "corr-42"]
    assert line["logging.googleapis.com/trace"] == f"projects/digits-prod/traces/{TRACE}"
    assert line["logging.googleapis.com/spanId"] == SPAN
    served = [e for e in json_entries(server_log) if e.get("request_id") == "corr-42"]
    predict = [e for e in served if ":predict" in e["message"]]
    assert predict, served
    for entry in served:
        assert entry["component"] == "model-server"
        assert entry["logging.googleapis.com/trace"] == TRACE  # its project is not set
        assert entry["logging.googleapis.com/spanId"] != SPAN  # the function's call, a child
