"""The function image's commands, run for real in the image's layout (no Docker needed).

With no Docker engine the image cannot be built here, so this lays out what the image
holds (only function/ under /app/function, only function/requirements.txt installed)
and runs its CMD and HEALTHCHECK exactly as written in Dockerfile.function, plus the
compose `schema` service's command the same way. The non-root user is not reproduced.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port, wait_until
from tests.infra.dockerfiles import env_of, only, parse
from tests.infra.support import ROOT

DOCKERFILE = ROOT / "Dockerfile.function"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/app as the image has it, plus infra/ where the compose schema service mounts it."""
    app = tmp_path_factory.mktemp("app")
    shutil.copytree(ROOT / "function", app / "function", ignore=IGNORE)
    shutil.copytree(ROOT / "infra", app / "infra", ignore=IGNORE)
    return app


def image_env(function_only_venv: Path, **extra: str) -> dict[str, str]:
    """The Dockerfile's ENV, the venv first on PATH (as pip's scripts are in the image)."""
    env = env_of(parse(DOCKERFILE))
    env["PATH"] = f"{function_only_venv / 'bin'}:{os.environ['PATH']}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def container(image_root: Path, function_only_venv: Path) -> Iterator[dict[str, str]]:
    """The image's CMD, started as Docker would start it."""
    (cmd,) = only(parse(DOCKERFILE), "CMD")
    port = str(free_port())
    env = image_env(
        function_only_venv, PORT=port, SQLITE_PATH=str(image_root / "predictions.sqlite3")
    )
    process = subprocess.Popen(cmd.exec_form(), cwd=image_root / "function", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=2).ok, "the function", 60)
        yield {"url": url, "pid": str(process.pid), **env}
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def test_cmd_serves_healthz_through_gunicorn(container: dict[str, str]) -> None:
    response = requests.get(f"{container['url']}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.headers.get("Server", "").startswith("gunicorn")


def test_healthcheck_command_passes_against_the_running_function(
    container: dict[str, str], image_root: Path
) -> None:
    (check,) = only(parse(DOCKERFILE), "HEALTHCHECK")
    env = {k: v for k, v in container.items() if k not in ("url", "pid")}
    result = subprocess.run(
        check.exec_form(), cwd=image_root / "function", env=env, timeout=10, capture_output=True
    )
    assert result.returncode == 0, result.stderr


def test_healthcheck_command_fails_when_nothing_listens(
    image_root: Path, function_only_venv: Path
) -> None:
    (check,) = only(parse(DOCKERFILE), "HEALTHCHECK")
    env = image_env(function_only_venv, PORT=str(free_port()))
    result = subprocess.run(
        check.exec_form(), cwd=image_root / "function", env=env, timeout=10, capture_output=True
    )
    assert result.returncode != 0


def test_sigterm_stops_gunicorn_cleanly(image_root: Path, function_only_venv: Path) -> None:
    """`exec` makes gunicorn the process Docker signals; it must stop within the grace period."""
    (cmd,) = only(parse(DOCKERFILE), "CMD")
    port = str(free_port())
    env = image_env(function_only_venv, PORT=port, SQLITE_PATH=str(image_root / "stop.sqlite3"))
    process = subprocess.Popen(cmd.exec_form(), cwd=image_root / "function", env=env)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, "up")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_compose_schema_command_runs_with_only_the_function_dependencies(
    image_root: Path, function_only_venv: Path, compose_all: dict
) -> None:
    """The `schema` service imports apply_schema in the function image; prove it can."""
    service = compose_all["services"]["schema"]
    assert service["working_dir"] == "/app"
    command = [*service["command"], "--dry-run"]
    assert command[0] == "python"
    env = image_env(function_only_venv, **service["environment"])
    result = subprocess.run(
        command, cwd=image_root, env=env, timeout=60, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE KEYSPACE IF NOT EXISTS mnist" in result.stdout
    assert "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}" in result.stdout
