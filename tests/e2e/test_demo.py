"""`make demo STORE=cassandra` as a user runs it: record, read back with cqlsh, Ctrl-C, again.

bin/demo is started in its own process group, as a terminal would run it, and stopped with
SIGINT to the whole group, as Ctrl-C does. Its data lives in a VAR_DIR of the test's own.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra.cassandra.local import free_ports, port_free
from tests.conftest import ROOT
from tests.support.cassandra import start_test_node
from tests.support.demo import ctrl_c, started_demo

SEVEN = ROOT / "tests" / "data" / "samples" / "seven.png"


@pytest.fixture(scope="module")
def java_and_maven(tmp_path_factory) -> None:
    """Skip (fail under CI) where Cassandra cannot run, as the live store tests do."""
    start_test_node(tmp_path_factory.mktemp("probe")).stop()


def run_demo(var_dir: Path, ports: dict[str, int]) -> tuple[subprocess.Popen, str]:
    """Start bin/demo on Cassandra and wait for its banner; the process and what it printed."""
    env = {
        **os.environ,
        "STORE": "cassandra",
        "VAR_DIR": str(var_dir),
        "PORT": str(ports["http"]),
        "MODEL_SERVER_PORT": str(ports["model"]),
        "CASSANDRA_NATIVE_PORT": str(ports["cql"]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return started_demo(var_dir / f"demo-{time.monotonic_ns()}.log", env)


def listening(port: int) -> bool:
    """Whether anything accepts connections on 127.0.0.1:port (TIME_WAIT does not count)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return False
    return True


@pytest.fixture
def demo_ports(java_and_maven) -> Iterator[dict[str, int]]:
    http, model, cql = free_ports(3, ["127.0.0.1"])
    for port in (7000, 7199):  # the demo node's storage and JMX ports
        if not port_free("127.0.0.1", port):
            pytest.skip(f"port {port} is taken on this machine: the demo's node needs it")
    yield {"http": http, "model": model, "cql": cql}


def test_the_cassandra_demo_records_shows_it_with_cqlsh_stops_and_keeps_it(
    demo_ports, tmp_path
) -> None:
    demo, banner = run_demo(tmp_path, demo_ports)
    try:
        answer = requests.post(
            f"http://127.0.0.1:{demo_ports['http']}/predict",
            data=SEVEN.read_bytes(),
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        record_id = answer.json()["predictions"][0]["id"]
        cqlsh = re.search(r"(\.venv/bin/cqlsh .*)$", banner, re.MULTILINE)
        assert cqlsh, banner
        shown = subprocess.run(
            cqlsh[1], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert record_id in shown.stdout, shown.stdout + shown.stderr
    finally:
        stopped_in = ctrl_c(demo)
    assert stopped_in < 60
    assert not listening(demo_ports["cql"]), "something still listens on the CQL port"
    assert not listening(demo_ports["http"])

    demo, _ = run_demo(tmp_path, demo_ports)
    try:
        again = requests.get(
            f"http://127.0.0.1:{demo_ports['http']}/predictions/{record_id}", timeout=30
        )
        assert again.status_code == 200, again.text
        assert again.json()["digit"] == 7
    finally:
        ctrl_c(demo)
