"""`python -m serving` as a process: ready line, real requests, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from serving_testlib import Deployment, expected_digit, predict_digit
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving import ModelServer
from serving.__main__ import build_parser
from tests.support.signals import hammered, signal_other_thread

REPO_ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"Exporting HTTP/REST API at (http://\S+)")
GRPC_READY = re.compile(r"Running gRPC ModelServer at (\S+) \.\.\.")


class ServerProcess:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", *args],
            cwd=REPO_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if match := READY.search(line):
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def wait_closed(self, timeout: float = 10) -> None:
        """Until stderr is fully read (the process has exited)."""
        assert self._ready.wait(timeout)
        self._reader.join(timeout)

    def wait_ready(self, timeout: float = 60) -> str:
        assert self._ready.wait(timeout), "no ready line"
        assert self.url, "".join(self.lines)
        return self.url

    def log(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def processes(
    tmp_path_factory: pytest.TempPathFactory, model_store
) -> Iterator[dict[str, ServerProcess]]:
    """Three servers started at once (TensorFlow imports are slow): two to stop, one refused."""
    deployment = Deployment(tmp_path_factory.mktemp("cli"), model_store)
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(labels={"stable": 1, "canary": 2})
    args = [
        "--rest_api_port=0",
        f"--model_config_file={deployment.config_file}",
        f"--models_dir={deployment.models_dir}",
    ]
    flag = "--allow_version_labels_for_unavailable_models"
    started = {
        "SIGTERM": ServerProcess(*args, flag, "--port=0"),
        "SIGINT": ServerProcess(*args, f"{flag}=true"),
        "no flag": ServerProcess(*args),
    }
    yield started
    for server in started.values():
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_cli_serves_and_stops_cleanly(processes: dict[str, ServerProcess], name: str):
    server = processes[name]
    url = server.wait_ready()
    if name == "SIGTERM":  # --port=0: gRPC on a free port, next to REST
        address = GRPC_READY.search(server.log())
        assert address, server.log()
        with grpc.insecure_channel(address.group(1)) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "mnist"
            assert len(stub.GetModelStatus(request, timeout=10).model_version_status) == 2
    assert predict_digit(url, 255, "/labels/stable") == expected_digit(255, "bucket")
    assert predict_digit(url, 255) == expected_digit(255, "flipped")
    # An idle keep-alive connection must not hold up the shutdown.
    host, port = url.removeprefix("http://").rsplit(":", 1)
    idle = http.client.HTTPConnection(host, int(port), timeout=10)
    idle.request("GET", "/v1/models/mnist")
    assert json.loads(idle.getresponse().read())["model_version_status"]
    started = time.monotonic()
    server.process.send_signal(getattr(signal, name))
    assert server.process.wait(timeout=30) == 0, server.log()
    assert time.monotonic() - started < 10
    assert "Model server stopped" in server.log()
    assert "Traceback" not in server.log()
    idle.close()


def test_cli_refuses_labels_on_unloaded_versions_without_the_flag(
    processes: dict[str, ServerProcess],
):
    server = processes["no flag"]
    assert server.process.wait(timeout=60) == 1
    server.wait_closed()
    assert re.search(
        r"Failed to start server\. Error: FAILED_PRECONDITION: Request to assign label to "
        r"version [12] of model mnist, which is not currently available for inference",
        server.log(),
    ), server.log()


def test_in_process_stop_closes_the_port_despite_idle_connections(
    deployment: Deployment, start_server
):
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="latest {}")
    threads_before = set(threading.enumerate())
    server: ModelServer = start_server(deployment)
    port = server.port
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/v1/models/mnist")
    assert idle.getresponse().read()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/v1/models/mnist")
    leftover = [t.name for t in threading.enumerate() if t not in threads_before]
    assert leftover == []
    idle.close()


def test_grpc_port_in_use(deployment: Deployment, start_server, caplog: pytest.LogCaptureFixture):
    """TF Serving fails to start when --port cannot be bound; so does a port given here.
    The CLI's default port (8500, not given) is skipped with a warning instead, so several
    development servers can run side by side."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="latest {}")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError, match="Failed to bind the gRPC port"):
            start_server(deployment, port=port)
        server = start_server(deployment, port=port, grpc_port_required=False)
        assert "serving without gRPC" in caplog.text
        with pytest.raises(RuntimeError):
            server.grpc_port  # noqa: B018
        assert predict_digit(server.url, 255) == expected_digit(255, "bucket")
    finally:
        taken.close()


def test_cli_grpc_port_flag():
    args = build_parser().parse_args([])
    assert args.port is None  # TF Serving's 8500, best effort
    assert build_parser().parse_args(["--port=8600"]).port == 8600


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGINT and SIGTERM, hammered"])
def test_cli_stops_when_the_signal_reaches_another_thread_or_comes_twice(
    tmp_path: Path, model_store, how: str
):
    """A terminal's Ctrl-C or a platform's SIGTERM may reach any thread (gRPC's, TF's);
    with gRPC serving, the server once never stopped and `make demo` hung on Ctrl-C. And
    the demo's Ctrl-C is SIGINT to the group, then bash's SIGTERM: a stop handler that
    took a lock hung when the second landed inside the first (1 stop in 10 under load)."""
    deployment = Deployment(tmp_path, model_store)
    deployment.add_version(1, "bucket")
    deployment.write_config()
    server = ServerProcess(
        "--rest_api_port=0",
        "--port=0",
        f"--model_config_file={deployment.config_file}",
        f"--models_dir={deployment.models_dir}",
    )
    try:
        server.wait_ready()
        assert GRPC_READY.search(server.log()), server.log()
        clean = {0}
        if how in ("SIGTERM", "SIGINT"):
            signal_other_thread(server.process.pid, getattr(signal, how))
        else:
            hammered(server.process, 0.3)
            # A signal that lands after the stop, while Python exits, ends it by that signal.
            clean |= {-signal.SIGINT, -signal.SIGTERM}
        assert server.process.wait(timeout=30) in clean, server.log()
        assert "Model server stopped" in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.process.kill()
        server.process.wait()


def test_stop_signals_survive_a_second_signal_inside_the_handler():
    """`make demo`'s Ctrl-C is SIGINT to the group, then bash's SIGTERM to each child. A
    handler that took a lock (threading.Event.set) hung when the second one landed inside
    it; hammering makes that land on every run instead of 1 in 10."""
    program = (
        "import signal\n"
        "from serving.__main__ import StopSignals\n"
        "stopping = StopSignals()\n"
        "print('ready', flush=True)\n"
        "received = stopping.wait()\n"
        "for signum in (signal.SIGINT, signal.SIGTERM):\n"
        "    signal.signal(signum, signal.SIG_IGN)  # the hammering goes on until it exits\n"
        "print(received)\n"
    )
    for _ in range(10):
        waiter = subprocess.Popen(
            [sys.executable, "-c", program], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
        )
        assert waiter.stdout is not None
        assert waiter.stdout.readline() == "ready\n"
        hammered(waiter, 0.3)
        try:
            assert waiter.wait(timeout=5) == 0
        finally:
            waiter.kill()
            waiter.wait()
        assert int(waiter.stdout.read()) in (signal.SIGINT, signal.SIGTERM)
