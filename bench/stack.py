"""The local stack as real processes, the load generator, memory readings: shared by every bench.

Every server is a child process on a free port (never 8080/8501), stopped when its
with-block ends; its output goes to a log file in the temp directory. `hey` (Debian
package `hey`) is the HTTP load generator: a native program, so the client side is not
throttled by a Python interpreter, and it reports status codes and errors as well as
latencies. BENCH_FUNCTION_SOURCE points every bench at another copy of function/, to
measure a change before making it.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import functions_framework
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FUNCTION_SOURCE = Path(os.environ.get("BENCH_FUNCTION_SOURCE", ROOT / "function"))
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(
    port: int, path: str, body: bytes | None = None, content_type: str = "", timeout: float = 5
) -> int:
    """One request on a fresh connection; 0 when nothing answers (yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request("GET" if body is None else "POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def wait_for(
    server: Server,
    path: str,
    body: bytes | None = None,
    content_type: str = "",
    timeout: float = 180,
    interval: float = 0.005,
) -> float:
    """Poll until `path` answers 200; returns the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(server.port, path, body, content_type, timeout=5) == 200:
            return time.monotonic()
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited ({server.process.returncode}): see {server.log}"
            )
        time.sleep(interval)
    raise TimeoutError(f"{server.name} did not answer 200 on {path} within {timeout:.0f} s")


@dataclass
class Server:
    """A started server process: its port, its URL and the process (gunicorn's master)."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    started: float  # monotonic time just before the process was spawned
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """How the benchmarked stack runs: the same flags, and defaults, for every benchmark."""
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--no-batching", dest="batching", action="store_false", help="plain model server"
    )


@contextmanager
def _running(name: str, argv: list[str], port: int, env: dict[str, str]) -> Iterator[Server]:
    started = time.monotonic()
    log_path = Path(tempfile.gettempdir()) / f"bench-{name}-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        argv, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield Server(name, port, process, started, log_path)
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as a platform stops an instance; SIGKILL only if it has not exited in 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def model_server(batching: bool = False, wait: bool = True) -> Iterator[Server]:
    """`python -m serving` on the committed models, optionally with serving/batching.config."""
    port = free_port()
    argv = [
        sys.executable, "-m", "serving", "--rest_api_port", str(port), "--port", "0",
        "--allow_version_labels_for_unavailable_models",
    ]  # fmt: skip
    if batching:
        argv += ["--enable_batching", "--batching_parameters_file", "serving/batching.config"]
    with _running("model-server", argv, port, QUIET_TF) as server:
        if wait:
            wait_for(server, "/v1/models/mnist/labels/stable/metadata", interval=0.2)
        yield server


@contextmanager
def in_process_client(model_url: str, source: Path = FUNCTION_SOURCE) -> Iterator[FlaskClient]:
    """The function's own Flask app in this process, on a fresh SQLite file.

    Its request log lines go to /dev/null: still written (their cost counts), unseen.
    """
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.dict(
            os.environ,
            MODEL_SERVER_URL=model_url,
            SQLITE_PATH=str(Path(tmp) / "predictions.sqlite3"),
            PREDICTION_STORE="sqlite",
        ),
        open(os.devnull, "w") as quiet,
        redirect_stdout(quiet),
        # First, before the venv's own function/ (its .pth): `recognizer` is the source's.
        mock.patch.object(sys, "path", [str(source), *sys.path]),
    ):
        yield functions_framework.create_app("recognize", str(source / "main.py")).test_client()


@contextmanager
def function_server(
    model_url: str,
    sqlite_path: Path,
    workers: int = 1,
    threads: int = 8,
    source: Path = FUNCTION_SOURCE,
    wait: bool = True,
    store_env: dict[str, str] | None = None,
    serve: bool = False,
) -> Iterator[Server]:
    """The function under functions-framework (gunicorn); on SQLite unless `store_env`
    points it elsewhere (PREDICTION_STORE=cassandra, CASSANDRA_*). With `serve`, through
    function/serve.py (its worker class and shared metrics) as bin/demo and the container
    start it."""
    port = free_port()
    argv = [
        str(VENV_BIN / "functions-framework"), "--source", str(source / "main.py"),
        "--target", "recognize", "--port", str(port), "--host", "127.0.0.1",
    ]  # fmt: skip
    if serve:
        argv = [
            sys.executable,
            str(source / "serve.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    env = {
        "MODEL_SERVER_URL": model_url,
        "SQLITE_PATH": str(sqlite_path),
        "PREDICTION_STORE": "sqlite",
        "WORKERS": str(workers),
        "THREADS": str(threads),
        # Before the venv's own function/ (its .pth): `recognizer` is the source's.
        "PYTHONPATH": str(source),
        **(store_env or {}),
    }
    with _running("function", argv, port, env) as server:
        if wait:
            wait_for(server, "/readyz", interval=0.1)
        yield server


@contextmanager
def baseline_server(
    sqlite_path: Path, workers: int = 1, threads: int = 8, wait: bool = True
) -> Iterator[Server]:
    """bench/baseline/app.py under gunicorn with the same workers and threads."""
    port = free_port()
    argv = [
        str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
        "--threads", str(threads), "--log-level", "error", "bench.baseline.app:app",
    ]  # fmt: skip
    env = {**QUIET_TF, "SQLITE_PATH": str(sqlite_path)}
    with _running("baseline", argv, port, env) as server:
        if wait:
            wait_for(server, "/healthz", interval=0.1)
        yield server


# ------------------------------------------------------------------ memory
def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (gunicorn's master and its workers)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            queue += [int(child) for child in task.read_text().split()]
    return pids


@dataclass(frozen=True)
class Memory:
    """RSS summed over a process tree (counts shared pages once per process) and PSS
    (shares them out, so the sum is what the tree really costs)."""

    rss_mb: float
    pss_mb: float
    processes: int


def memory(pid: int) -> Memory:
    rss = pss = 0
    pids = process_tree(pid)
    for each in pids:
        for line in Path(f"/proc/{each}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return Memory(rss / 1024, pss / 1024, len(pids))


# ------------------------------------------------------------- load generator
HEY = shutil.which("hey") or "/usr/bin/hey"


@dataclass
class Load:
    """What hey reports for one run."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        """Requests without a 2xx: transport errors plus non-2xx answers."""
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad + sum(self.errors.values())


def hey(
    url: str,
    concurrency: int,
    body: bytes | None = None,
    content_type: str = "",
    requests: int | None = None,
    seconds: float | None = None,
) -> Load:
    """Run hey with a fixed request count or for a duration; POST when there is a body."""
    argv = [HEY, "-c", str(concurrency), "-t", "30"]
    argv += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
    with tempfile.NamedTemporaryFile(suffix=".body") as payload:
        if body is not None:
            payload.write(body)
            payload.flush()
            argv += ["-m", "POST", "-D", payload.name, "-T", content_type]
        output = subprocess.run(
            [*argv, url], capture_output=True, text=True, check=True, timeout=900
        ).stdout
    return parse_hey(output)


def parse_hey(output: str) -> Load:
    def number(label: str) -> float:
        match = re.search(rf"{label}:\s+([0-9.]+)", output)
        return float(match.group(1)) if match else float("nan")

    def percentile(p: int) -> float:
        match = re.search(rf"\b{p}%% in ([0-9.]+) secs", output.replace("%", "%%"))
        return float(match.group(1)) * 1000 if match else float("nan")

    statuses = {
        int(code): int(count) for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", output)
    }
    errors_text = output.partition("Error distribution:")[2]
    errors = {
        message.strip(): int(count)
        for count, message in re.findall(r"\[(\d+)\]\s+(.+)", errors_text)
    }
    total = sum(statuses.values()) + sum(errors.values())
    return Load(
        requests=total,
        seconds=number("Total"),
        rps=number("Requests/sec"),
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        statuses=statuses,
        errors=errors,
    )
