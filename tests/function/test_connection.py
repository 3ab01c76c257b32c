"""Connections under gunicorn (issue 24): framing errors and clients that do not read.
Real functions-framework processes: the test client has no socket.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.function.test_security import png
from tests.support.function_server import running_function


@pytest.fixture
def function_url(model_stand_in, tmp_path) -> Iterator[str]:
    with running_function(
        model_stand_in.url, tmp_path / "predictions.sqlite3", WORKERS="1", THREADS="4"
    ) as url:
        yield url


def port_of(url: str) -> int:
    return urlsplit(url).port or 80


def status_of(port: int, data: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or not complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def complete(answer: bytes) -> bool:
    """The whole answer is in: its body as long as its Content-Length says."""
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


@pytest.mark.parametrize("size", [b"0x5", b"zz", b"-1"])
@pytest.mark.parametrize(
    "method, path", [("POST", "/predict"), ("PUT", "/predictions/{}/feedback")]
)
def test_a_malformed_chunk_size_is_a_400(function_url, method, path, size):
    """gunicorn raises its parser's InvalidChunkSize out of the body stream: it was a 500
    with a traceback logged at ERROR."""
    head = (
        f"{method} {path.format(uuid.uuid1())} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, answer = status_of(
        port_of(function_url), head.encode() + size + b"\r\nhello\r\n0\r\n\r\n"
    )
    assert status == 400, answer[:300]
    assert b'"malformed_body"' in answer


def test_a_client_that_never_reads_holds_no_thread(function_url):
    """Eight connections pipelining 100 page requests each, never reading: with four
    threads, no probe was answered while they were held. Each is cut off once its unread
    answers pass CLIENT_MAX_UNREAD_BYTES, before a thread blocks writing to it."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    held = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", port_of(function_url)), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            held.append(sock)
        time.sleep(1.0)
        for _ in range(5):
            started = time.monotonic()
            answer = requests.post(
                function_url + "/predict",
                data=png(),
                headers={"Content-Type": "image/png"},
                timeout=10,
            )
            assert answer.status_code == 200
            assert time.monotonic() - started < 2.0
    finally:
        for sock in held:
            sock.close()


def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_request_deadline(model_stand_in, tmp_path):
    """Each byte arrives well within the per-read timeout, so only a deadline on the whole
    request frees the thread: two such clients held both threads for as long as they liked."""
    with running_function(
        model_stand_in.url,
        tmp_path / "predictions.sqlite3",
        WORKERS="1",
        THREADS="2",
        CLIENT_REQUEST_SECONDS="2",
    ) as url:
        head = (
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        slow = [socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) for _ in range(2)]
        try:
            for sock in slow:
                sock.sendall(head)
            started = time.monotonic()
            cut = set()
            while len(cut) < len(slow) and time.monotonic() - started < 8:
                for sock in slow:
                    try:
                        sock.sendall(b"\x89")
                    except OSError:
                        cut.add(sock)
                time.sleep(0.3)
            assert len(cut) == len(slow)
            assert time.monotonic() - started < 5
            answer = requests.post(
                url + "/predict", data=png(), headers={"Content-Type": "image/png"}, timeout=5
            )
            assert answer.status_code == 200
        finally:
            for sock in slow:
                sock.close()
