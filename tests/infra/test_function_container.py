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


def image_env(function_only_venv: Path, container_tmp: Path, **extra: str) -> dict[str, str]:
    """The Dockerfile's ENV, the venv first on PATH (as pip's scripts are in the image).

    Paths under the image's /tmp (XDG_RUNTIME_DIR, gunicorn's control socket) point into
    `container_tmp` instead, which stands in for the container's own empty /tmp.
    """
    env = {
        name: str(container_tmp) + value.removeprefix("/tmp")
        if value == "/tmp" or value.startswith("/tmp/")
        else value
        for name, value in env_of(parse(DOCKERFILE)).items()
    }
    env["PATH"] = f"{function_only_venv / 'bin'}:{os.environ['PATH']}"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def container(
    image_root: Path, function_only_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The image's CMD, started as Docker would start it."""
    (cmd,) = only(parse(DOCKERFILE), "CMD")
    port = str(free_port())
    env = image_env(
        function_only_venv,
        tmp_path_factory.mktemp("tmp"),
        PORT=port,
        SQLITE_PATH=str(image_root / "predictions.sqlite3"),
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
    image_root: Path, function_only_venv: Path, tmp_path: Path
) -> None:
    (check,) = only(parse(DOCKERFILE), "HEALTHCHECK")
    env = image_env(function_only_venv, tmp_path, PORT=str(free_port()))
    result = subprocess.run(
        check.exec_form(), cwd=image_root / "function", env=env, timeout=10, capture_output=True
    )
    assert result.returncode != 0


def test_sigterm_stops_gunicorn_cleanly(
    image_root: Path, function_only_venv: Path, tmp_path: Path
) -> None:
    """`exec` makes gunicorn the process Docker signals; it must stop within the grace period."""
    (cmd,) = only(parse(DOCKERFILE), "CMD")
    port = str(free_port())
    env = image_env(
        function_only_venv, tmp_path, PORT=port, SQLITE_PATH=str(image_root / "stop.sqlite3")
    )
    process = subprocess.Popen(cmd.exec_form(), cwd=image_root / "function", env=env)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, "up")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_gunicorn_starts_without_a_writable_home(
    image_root: Path, function_only_venv: Path, tmp_path: Path
) -> None:
    """The image's user has HOME=/nonexistent. gunicorn (25.1+) opens a control socket at
    start, under $HOME unless XDG_RUNTIME_DIR names a directory, and logs an error on every
    start when it cannot: the image's settings must give it a place it can write."""
    (cmd,) = only(parse(DOCKERFILE), "CMD")
    container_tmp = tmp_path / "tmp"
    container_tmp.mkdir()
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    port = str(free_port())
    env = image_env(
        function_only_venv,
        container_tmp,
        PORT=port,
        HOME=str(not_a_directory / "nonexistent"),  # uncreatable, even for root
        SQLITE_PATH=str(container_tmp / "predictions.sqlite3"),
    )
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            cmd.exec_form(), cwd=image_root / "function", env=env, stderr=stderr
        )
        try:
            wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok, "up")
            control_socket = Path(env.get("XDG_RUNTIME_DIR", "/nonexistent")) / "gunicorn.ctl"
            wait_until(control_socket.exists, "gunicorn's control socket", 10)
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert "control" not in log.read_text().lower(), log.read_text()


def test_compose_schema_command_runs_with_only_the_function_dependencies(
    image_root: Path, function_only_venv: Path, compose_all: dict, tmp_path: Path
) -> None:
    """The `schema` service imports apply_schema in the function image; prove it can."""
    service = compose_all["services"]["schema"]
    assert service["working_dir"] == "/app"
    command = [*service["command"], "--dry-run"]
    assert command[0] == "python"
    environment = dict(service["environment"])
    # The image's /app is image_root here: the package path the service names must be in it.
    assert environment["PYTHONPATH"] == "/app/function"
    environment["PYTHONPATH"] = str(image_root / "function")
    env = image_env(function_only_venv, tmp_path, **environment)
    result = subprocess.run(
        command, cwd=image_root, env=env, timeout=60, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE KEYSPACE IF NOT EXISTS mnist" in result.stdout
    assert "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}" in result.stdout
