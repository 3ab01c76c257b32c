"""recognizer/worker.py under the real function process (function/serve.py, gunicorn):
request heads read without a thread, and a worker recycled past its memory mark."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from recognizer import worker
from tests.function.test_connection import port_of
from tests.function.test_security import png
from tests.support.function_server import running_function


def predict(url: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(
        url + "/predict", data=png(), headers={"Content-Type": "image/png"}, timeout=10
    )


def test_headers_sent_a_byte_at_a_time_hold_no_thread(model_stand_in, tmp_path):
    """Eight clients sending their headers a byte every 0.3 s to a worker of two threads,
    and eight sending nothing: gunicorn's gthread gave each a thread blocked on its
    headers, and no one else was answered. Now the probe is answered meanwhile and each
    is closed at its deadline."""
    with running_function(
        model_stand_in.url,
        tmp_path / "predictions.sqlite3",
        WORKERS="1",
        THREADS="2",
        CLIENT_HEADER_SECONDS="3",
    ) as url:
        head = (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-Pad: " + b"a" * 200
        )
        slow = [socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) for _ in range(8)]
        # and eight that send nothing: gthread gave each a thread for 5 s, waiting for it
        silent = [socket.create_connection(("127.0.0.1", port_of(url))) for _ in range(8)]
        cut: set[socket.socket] = set()
        stop = threading.Event()

        def trickle() -> None:
            for i in range(len(head)):
                for sock in slow:
                    if sock not in cut:
                        try:
                            sock.sendall(head[i : i + 1])
                        except OSError:
                            cut.add(sock)
                if stop.wait(0.3):
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            time.sleep(1.0)
            for _ in range(4):
                asked = time.monotonic()
                assert predict(url).status_code == 200
                assert time.monotonic() - asked < 2.0
            # Closed by the worker: a read gives end of file (or a reset) once the deadline is past.
            for sock in slow:
                sock.settimeout(max(0.1, started + 8 - time.monotonic()))
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(100) == b""
            assert time.monotonic() - started < 8
        finally:
            stop.set()
            sender.join(5)
            for sock in slow + silent:
                sock.close()


def test_a_head_that_arrives_in_pieces_and_pipelined_requests_are_answered(
    model_stand_in, tmp_path
):
    """The poller's read of a head is handed to gunicorn's parser whole: a head in pieces,
    two requests in one write, a kept-alive connection's next request, and a head ended by
    bare line feeds are all answered."""
    with running_function(
        model_stand_in.url, tmp_path / "predictions.sqlite3", WORKERS="1", THREADS="2"
    ) as url:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as sock:
            for piece in (b"GET /heal", b"thz HTTP/1.1\r\nHo", b"st: x\r\n", b"\r\n"):
                sock.sendall(piece)
                time.sleep(0.2)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            answers = b""
            while answers.count(b"HTTP/1.1 200") < 3:
                chunk = sock.recv(65536)
                assert chunk, answers
                answers += chunk
        with requests.Session() as session:
            assert [predict(url, session).status_code for _ in range(3)] == [200] * 3
        # Bare line feeds are not HTTP: gunicorn's parser says so at once, not a deadline.
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\nHost: x\n\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 ")


def test_a_head_larger_than_any_gunicorn_takes_is_refused(model_stand_in, tmp_path):
    """Gunicorn's parser would take an unlimited request line (functions-framework's
    setting) from a head the poller kept reading: past 128 KiB it is a JSON 431."""
    with (
        running_function(
            model_stand_in.url, tmp_path / "predictions.sqlite3", WORKERS="1", THREADS="2"
        ) as url,
        socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * (worker.MAX_HEAD_BYTES + 1))
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "request_head_too_large"


def serving_pids(port: int) -> set[int]:
    """gunicorn's master and workers serving `port` (their command line names it)."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"--port\0{port}\0".encode() in cmdline.read_bytes():
                pids.add(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_a_worker_past_its_memory_mark_is_recycled_without_losing_a_request(
    model_stand_in, tmp_path
):
    """WORKER_RECYCLE_MIB=1: every worker is over it after its first request, so each
    answers and leaves; requests sent meanwhile, on kept-alive connections and new ones,
    from four clients at once, are all answered by the workers that follow."""
    with running_function(
        model_stand_in.url,
        tmp_path / "predictions.sqlite3",
        WORKERS="1",
        THREADS="4",
        WORKER_RECYCLE_MIB="1",
    ) as url:
        port = port_of(url)
        seen = set(serving_pids(port))
        statuses: list[int] = []
        lock = threading.Lock()

        def client() -> None:
            with requests.Session() as session:
                for _ in range(4):
                    status = predict(url, session).status_code
                    with lock:
                        statuses.append(status)
                        seen.update(serving_pids(port))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        assert statuses == [200] * 16
        assert len(seen) >= 3  # the master and at least two workers, one after another


@pytest.mark.parametrize("value, expected", [("0", 384), ("200", 200)])
def test_the_recycling_mark(value, expected):
    from recognizer.config import Settings

    settings = Settings.from_env({"WORKER_RECYCLE_MIB": value, "MEMORY_LIMIT_MIB": "512"})
    assert settings.recycle_bytes == expected * 1024 * 1024
