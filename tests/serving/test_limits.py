"""The model server is not a bomb target (issue 24): bodies, gzip, nesting, values and
connections are bounded, and each refusal is a 400 or 413 with TF Serving's error body.

TF Serving's own limit is the 100 MiB of an inflated gzip body (ZLib::kMaxUncompressedBytes,
tfs:util/net_http/compression/gzip_zlib.h); rapidjson parses any size and depth in C++.
This server parses JSON in Python, so it has limits of its own (serving.httpserver,
serving.rest), each checked before a body is parsed.
"""

from __future__ import annotations

import gzip
import resource
import socket
import time

from serving_testlib import GOOD, MNIST, error_of, post

from serving import ModelServer, httpserver, rest

MiB = 1024 * 1024


def peak_rss_growth(action) -> int:
    """How far the process's (the server runs in this process) peak RSS rose, in bytes."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    action()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def test_a_gzip_body_inflating_past_the_limit_is_413_uninflated(served: ModelServer):
    """102 KB of gzip inflating to 100 MiB took 2.1 GB and 6.6 s; now nothing is inflated."""
    body = gzip.compress(b" " * (100 * MiB - 64) + b'{"instances":[]}', 9)
    assert len(body) < 200 * 1024
    started = time.monotonic()
    holder = {}
    growth = peak_rss_growth(
        lambda: holder.update(
            response=post(served, f"{MNIST}:predict", body, headers={"Content-Encoding": "gzip"})
        )
    )
    response = holder["response"]
    assert response.status_code == 413, response.text[:200]
    assert growth < 50 * MiB
    assert time.monotonic() - started < 5


def test_a_plain_body_past_the_limit_is_413_unread(served: ModelServer):
    body = b'{"instances":[' + b"0," * (httpserver.MAX_BODY_BYTES // 2) + b"0]}"
    response = post(served, f"{MNIST}:predict", body)
    assert response.status_code == 413


def test_deep_nesting_is_a_400_not_a_500(served: ModelServer):
    depth = 200_000
    body = b'{"instances":' + b"[" * depth + b"0" + b"]" * depth + b"}"
    response = post(served, f"{MNIST}:predict", body)
    assert response.status_code == 400, response.text[:200]
    assert "nested deeper" in error_of(response)


def test_nesting_within_the_limit_reaches_the_parser(served: ModelServer):
    depth = rest.MAX_JSON_DEPTH - 1
    body = b'{"instances":' + b"[" * depth + b"0" + b"]" * depth + b"}"
    response = post(served, f"{MNIST}:predict", body)
    assert response.status_code in (200, 400) and "nested deeper" not in response.text


def test_too_many_values_are_a_400_before_parsing(served: ModelServer):
    body = b'{"instances":[' + b"0," * rest.MAX_TENSOR_ELEMENTS + b"0]}"
    started = time.monotonic()
    response = post(served, f"{MNIST}:predict", body)
    assert response.status_code == 400 and "values" in error_of(response)
    assert time.monotonic() - started < 5


def test_a_normal_request_still_answers(served: ModelServer):
    assert post(served, f"{MNIST}:predict", GOOD).status_code == 200


def test_idle_connections_cost_at_most_the_connection_limit_in_threads(
    served: ModelServer, monkeypatch
):
    """3,000 idle connections were 3,000 threads; past the limit the longest-idle ones
    are closed, and a new client is still answered."""
    monkeypatch.setattr(httpserver, "MAX_CONNECTIONS", 32)
    sockets = []
    try:
        for _ in range(200):
            sockets.append(socket.create_connection(("127.0.0.1", served.port), timeout=5))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and open_connections(served) > 32:
            time.sleep(0.05)
        assert open_connections(served) <= 32
        assert post(served, f"{MNIST}:predict", GOOD).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def open_connections(server: ModelServer) -> int:
    return len(server._http._connections)  # what the limit bounds
