"""Slow clients (issue 12): partial requests must not stop the function answering others.

gunicorn's gthread workers give a connection a thread as soon as its first bytes arrive
and keep it until the request has been read, with no timeout: WORKERS x THREADS clients
that send part of a request and then nothing stop the function. Compose and Kubernetes
put infra/proxy/nginx.conf in front of it; these tests run that very file (only the
upstream and listen addresses rewritten to free ports) with Debian's nginx, against the
function under gunicorn as the demo and Compose run it (2 workers x 4 threads).

Without nginx (`apt-get install nginx-light`, `make nginx`) they skip with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import ROOT, free_port, wait_until
from tests.support.demo import ctrl_c, started_demo
from tests.support.function_server import running_function

PROXY_CONF = ROOT / "infra" / "proxy" / "nginx.conf"
UPSTREAM_LINE = "server function:8080;"
LISTEN_LINE = "listen 8080;"
SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
ARTIFACT = ROOT / "test-artifacts" / "slow-clients.json"
# The function as `make demo` and Compose run it: 8 request threads in all.
SERVER = {"WORKERS": "2", "THREADS": "4"}
# Each kind of stalled client, this many times (the issue: 8 were enough once, 64 always).
PER_KIND = 80
WITHOUT_PROXY = 64
DEADLINE_SECONDS = 1.0
NORMAL_REQUESTS = 30
MiB = 1024 * 1024


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        pytest.skip("nginx is not installed: `make nginx` (apt-get install nginx-light)")
    return found


def config_seconds(directive: str) -> float:
    """A timeout from the shipped config, e.g. `client_header_timeout 10s;` -> 10."""
    match = re.search(rf"^\s*{directive}\s+(\d+)s;", PROXY_CONF.read_text(), re.MULTILINE)
    assert match, f"{directive} is not set in {PROXY_CONF}"
    return float(match.group(1))


def render(upstream_port: int, listen_port: int, **changes: str) -> str:
    """The shipped config, with only the function's address and the listen port changed
    (and, to show what a line is for, `changes`: old line -> new line)."""
    text = PROXY_CONF.read_text()
    changes = {
        UPSTREAM_LINE: f"server 127.0.0.1:{upstream_port};",
        LISTEN_LINE: f"listen 127.0.0.1:{listen_port};",
        **changes,
    }
    for old, new in changes.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@contextmanager
def running_proxy(function_url: str, **changes: str) -> Iterator[str]:
    """nginx with infra/proxy/nginx.conf in front of `function_url`; the proxy's URL."""
    binary = nginx_binary()
    port = free_port()
    # Not under pytest's tmp_path (mode 0700): run as root, nginx's workers are `nobody`
    # and must reach the temp directories for bodies over client_body_buffer_size.
    prefix = Path(tempfile.mkdtemp(prefix="nginx-proxy-"))
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(render(urlsplit(function_url).port, port, **changes))
    command = [binary, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        # Any answer will do: the function behind it may be down on purpose.
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=2).status_code > 0, "nginx", 30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def function_url(model_server, tmp_path_factory) -> Iterator[str]:
    """A function of its own: these tests exhaust its threads on purpose."""
    sqlite_path = tmp_path_factory.mktemp("slow") / "predictions.sqlite3"
    with running_function(model_server, sqlite_path, **SERVER) as url:
        yield url


@pytest.fixture(scope="module")
def proxy_url(function_url) -> Iterator[str]:
    with running_proxy(function_url) as url:
        yield url


# What each kind of slow client sends, and then nothing more.
STALLED = {
    "connects only": b"",
    "part of the headers": b"POST /predict HTTP/1.1\r\nHost: slow\r\nContent-Type: image/png\r\n",
    "headers, part of the body": (
        b"POST /predict HTTP/1.1\r\nHost: slow\r\nContent-Type: image/png\r\n"
        b"Content-Length: 65536\r\n\r\n" + SEVEN[:100]
    ),
}


def stall(
    url: str, kinds: dict[str, bytes], per_kind: int, stack: ExitStack
) -> list[socket.socket]:
    """Open `per_kind` connections of each kind, send their part, and keep them open."""
    parts = urlsplit(url)
    sockets = []
    for _ in range(per_kind):
        for payload in kinds.values():
            connection = socket.create_connection((parts.hostname, parts.port), timeout=5)
            stack.callback(connection.close)
            if payload:
                connection.sendall(payload)
            sockets.append(connection)
    return sockets


def normal_requests(url: str, count: int, timeout: float) -> list[tuple[str, int, float]]:
    """Requests as any client sends them, one after another: (what, status, seconds)."""
    with requests.Session() as session:
        calls = [
            ("GET /healthz", lambda: session.get(f"{url}/healthz", timeout=timeout)),
            (
                "POST /predict",
                lambda: session.post(
                    f"{url}/predict",
                    data=SEVEN,
                    headers={"Content-Type": "image/png"},
                    timeout=timeout,
                ),
            ),
            (
                "GET /predictions",
                lambda: session.get(f"{url}/predictions?limit=5", timeout=timeout),
            ),
        ]
        results = []
        for index in range(count):
            what, call = calls[index % len(calls)]
            started = time.perf_counter()
            try:
                status = call().status_code
            except requests.RequestException:
                status = 0  # no answer within `timeout`
            results.append((what, status, time.perf_counter() - started))
        return results


def closed_by_peer(connection: socket.socket) -> bool:
    """Whether the other end has closed (after a 408 or nothing); False if it is still open."""
    connection.settimeout(0)
    try:
        while True:
            data = connection.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset: closed all the same
        return True


def record(figures: dict[str, object]) -> None:
    ARTIFACT.parent.mkdir(exist_ok=True)
    existing = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    ARTIFACT.write_text(json.dumps({**existing, **figures}, indent=2) + "\n")


@pytest.mark.skip(
    reason="its premise went with #24: recognizer/worker.py reads heads without a thread and "
    "the admission queue sends a client's excess away, so the bare function now answers some "
    "or all normal requests under these 64 stalled clients (1 of 3 and 3 of 3 in two runs); "
    "to be rewritten to assert the bare function's own budgets deterministically"
)
def test_without_the_proxy_64_stalled_clients_stop_the_function(function_url) -> None:
    """The failure the proxy exists for, shown on the bare function: the check can fail."""
    nginx_binary()  # the same skip as the proxy tests: this one only makes their case
    assert all(status == 200 for _, status, _ in normal_requests(function_url, 3, 5))
    kinds = {k: v for k, v in STALLED.items() if v}  # a bare connect costs gthread nothing
    with ExitStack() as stack:
        stall(function_url, kinds, WITHOUT_PROXY // len(kinds), stack)
        time.sleep(0.5)  # let the workers pick them up
        results = normal_requests(function_url, 3, timeout=3)
    answered = [r for r in results if r[1] == 200]
    record(
        {
            "without_proxy": {
                "stalled_clients": WITHOUT_PROXY,
                "normal_requests": len(results),
                "answered_within_3s": len(answered),
            }
        }
    )
    assert answered == [], f"the bare function answered under {WITHOUT_PROXY} stalled clients"
    # Closed, the stalled connections give their threads back.
    wait_until(lambda: requests.get(f"{function_url}/healthz", timeout=2).ok, "the function", 30)


def test_behind_the_proxy_240_stalled_clients_leave_everyone_else_answered(proxy_url) -> None:
    header_timeout = config_seconds("client_header_timeout")
    body_timeout = config_seconds("client_body_timeout")
    with ExitStack() as stack:
        stalled = stall(proxy_url, STALLED, PER_KIND, stack)
        assert len(stalled) >= 200
        time.sleep(0.5)
        opened = time.monotonic()
        assert not any(closed_by_peer(s) for s in stalled), "nginx dropped a client at once"
        results = normal_requests(proxy_url, NORMAL_REQUESTS, timeout=5)
        held = not any(closed_by_peer(s) for s in stalled)
        # Then nginx's timeouts drop every stalled client; the function never saw them.
        wait_until(
            lambda: all(closed_by_peer(s) for s in stalled),
            "nginx dropping the stalled clients",
            timeout=max(header_timeout, body_timeout) + 10,
        )
        dropped_after = time.monotonic() - opened
    latencies = sorted(seconds for _, _, seconds in results)
    record(
        {
            "behind_proxy": {
                "stalled_clients": len(stalled),
                "kinds": list(STALLED),
                "normal_requests": len(results),
                "answered_200": sum(status == 200 for _, status, _ in results),
                "median_seconds": round(latencies[len(latencies) // 2], 4),
                "max_seconds": round(latencies[-1], 4),
                "deadline_seconds": DEADLINE_SECONDS,
                "stalled_still_open_after_the_requests": held,
                "all_stalled_dropped_within_seconds": round(dropped_after + 0.5, 1),
                "client_header_timeout_s": header_timeout,
                "client_body_timeout_s": body_timeout,
            }
        }
    )
    slow_or_failed = [r for r in results if r[1] != 200 or r[2] > DEADLINE_SECONDS]
    assert slow_or_failed == [], slow_or_failed
    assert held, "the stalled clients were dropped before the normal requests were done"
    assert dropped_after < max(header_timeout, body_timeout) + 5


def answers(url: str, seconds: float) -> bool:
    """Whether the function itself (no proxy) answers /healthz within `seconds`."""
    try:
        return requests.get(f"{url}/healthz", timeout=seconds).ok
    except requests.RequestException:
        return False


def test_it_is_the_buffering_without_it_the_same_clients_stop_the_function(function_url) -> None:
    """The same proxy with `proxy_request_buffering off` passes each body on as it comes:
    the stalled bodies then hold the function's threads, and (nearly) nobody is answered."""
    wait_until(lambda: requests.get(f"{function_url}/healthz", timeout=2).ok, "the function", 30)
    unbuffered = {"proxy_request_buffering on;": "proxy_request_buffering off;"}
    with running_proxy(function_url, **unbuffered) as url, ExitStack() as stack:
        stall(url, {"body": STALLED["headers, part of the body"]}, WITHOUT_PROXY, stack)
        # Not a fixed pause: on a loaded machine nginx takes longer to pass them all on.
        wait_until(lambda: not answers(function_url, 1.0), "the stalled bodies holding it", 20)
        results = normal_requests(url, 3, timeout=3)
    # A stalled body that the function's read timeout ends frees one thread for a moment
    # (CI once saw 1 of the 3 answered); with buffering all 3 are, within 3 s each.
    assert len([status for _, status, _ in results if status == 200]) <= 1, results
    wait_until(lambda: requests.get(f"{function_url}/healthz", timeout=2).ok, "the function", 30)


def test_the_proxy_answers_its_own_refusals_in_the_function_s_error_format(proxy_url) -> None:
    """An 11 MiB body: 413 from nginx, as JSON; a 2 MiB one (buffered to disk) reaches the
    function, which answers it itself (its X-Request-Id says so)."""
    too_large = requests.post(
        f"{proxy_url}/predict",
        data=SEVEN + b"\0" * (11 * MiB),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert too_large.status_code == 413
    assert too_large.headers["Content-Type"] == "application/json"
    assert too_large.json()["error"]["code"] == "request_too_large"
    assert "X-Request-Id" not in too_large.headers
    buffered = requests.post(
        f"{proxy_url}/predict",
        data=b"not an image" * (2 * MiB // 12),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert buffered.status_code == 400, buffered.text[:300]
    assert buffered.json()["error"]["code"] == "not_an_image"
    assert buffered.headers["X-Request-Id"]


def test_a_function_that_is_down_is_503_as_json_from_the_proxy() -> None:
    with running_proxy(f"http://127.0.0.1:{free_port()}") as url:
        response = requests.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "function_unavailable"


# --- make demo: no proxy, so loopback only unless HOST says otherwise -------------------------


def listen_addresses(port: int) -> set[str]:
    """The IPv4 addresses something listens on at `port` (/proc/net/tcp, state 0A)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


@pytest.mark.parametrize(
    "host, expected, warned",
    [(None, {"127.0.0.1"}, False), ("0.0.0.0", {"0.0.0.0"}, True)],
    ids=["default", "HOST=0.0.0.0"],
)
def test_the_demo_listens_on_loopback_unless_host_says_otherwise(
    host, expected, warned, tmp_path
) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("reads listening sockets from /proc/net/tcp (Linux)")
    port, model_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "API_TOKEN")}
    env.update(PORT=str(port), MODEL_SERVER_PORT=str(model_port), VAR_DIR=str(tmp_path))
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **({"HOST": host} if host else {})})
    demo, printed = started_demo(tmp_path / "demo.log", env, timeout=240)
    try:
        assert listen_addresses(port) == expected, printed[-3000:]
        assert ("warning: HOST=" in printed and "no API_TOKEN" in printed) is warned, printed
    finally:
        ctrl_c(demo)
