"""Hostile requests against the real server: functions-framework's gunicorn, over HTTP.

The Flask test client skips gunicorn's own request parsing (functions-framework sets
`limit_request_line=0`, so only the worker's head budget bounds a URL, and headers keep
gunicorn's limits), chunked bodies, and the unread-body handling of a refused request. What gunicorn
itself refuses never reaches the function, so it cannot answer the contract's JSON:
those answers are pinned here as they are, to be noticed if they change.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.data.hostile import corpus
from tests.support.function_server import running_function

BY_NAME = {entry.name: entry for entry in corpus.entries()}
THROUGH_GUNICORN = [
    "empty-body",
    "long-label-100kb",
    "junk-params-100kb",
    "multipart-65-files",
    "bomb-png-20000x20000",
    "pixel-limit-webp-6400x6400",
    "json-deeply-nested",
    "png-without-content-type",
]
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def function_url(model_server, tmp_path_factory) -> Iterator[str]:
    """A server of its own: what these requests leave behind (half-read bodies, dropped
    connections, odd records) must not reach the suites that share the session's server."""
    sqlite_path = tmp_path_factory.mktemp("hostile") / "predictions.sqlite3"
    with running_function(model_server, sqlite_path) as url:
        yield url


def assert_json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize("name", THROUGH_GUNICORN)
def test_corpus_entries_get_the_same_answer_through_gunicorn(function_url, name):
    entry = BY_NAME[name]
    response = requests.request(
        entry.method, function_url + entry.url, headers=entry.headers, data=entry.body, timeout=30
    )
    assert response.status_code == entry.status, response.text[:300]
    if entry.rejected:
        assert_json_error(response, entry.status, entry.code)
    else:
        assert response.json()["predictions"][0]["digit"] == entry.digit


def test_a_1_mb_url_is_refused_as_json_before_the_function(function_url):
    """gunicorn has no request-line limit here, but the worker reads a head without a
    thread and only up to recognizer/worker.py's budget (#24): a 1 MB URL is a JSON 431
    before any thread or the function spends anything on it."""
    response = requests.post(
        f"{function_url}/predict?label={'a' * MiB}",
        data=BY_NAME["multipart-valid"].body,
        headers=BY_NAME["multipart-valid"].headers,
        timeout=30,
    )
    assert_json_error(response, 431, "request_head_too_large")


def test_a_body_over_the_limit_is_413_with_or_without_a_content_length(function_url):
    """A chunked body has no Content-Length to check up front; it is refused all the same.

    The body is a real PNG and 11 MiB of padding: cut off at the limit, it would still be
    recognised (and recorded) if the cut went unnoticed.
    """
    body = (corpus.HERE / "digit-7.png").read_bytes() + bytes(11 * MiB)
    headers = {"Content-Type": "image/png"}
    sized = requests.post(f"{function_url}/predict", data=body, headers=headers, timeout=30)
    assert_json_error(sized, 413, "request_too_large")
    chunks = (body[start : start + MiB] for start in range(0, len(body), MiB))
    chunked = requests.post(f"{function_url}/predict", data=chunks, headers=headers, timeout=30)
    assert_json_error(chunked, 413, "request_too_large")


def test_a_chunked_upload_of_a_real_image_is_recognised(function_url):
    entry = BY_NAME["multipart-valid"]
    response = requests.post(
        f"{function_url}/predict", data=iter([entry.body]), headers=entry.headers, timeout=30
    )
    assert response.json()["predictions"][0]["digit"] == entry.digit


@pytest.mark.parametrize(
    "headers",
    [{"X-Junk": "a" * 9000}, {f"X-Junk-{n}": "1" for n in range(101)}],
    ids=["one-9-kb-header", "101-headers"],
)
def test_oversized_headers_are_refused_by_gunicorn_with_its_own_html_431(function_url, headers):
    """gunicorn's limits (8190 bytes a header, 100 headers) answer before the function runs.

    Not the contract's JSON, and 431 is not among its statuses: functions-framework gives
    no way to configure gunicorn, so only a proxy in front could answer these in JSON.
    """
    response = requests.post(
        f"{function_url}/predict", data=b"x", headers={"Content-Type": "image/png", **headers}
    )
    assert response.status_code == 431
    assert response.headers["Content-Type"] == "text/html"


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["garbage-request-line", "non-numeric-content-length", "content-length-and-chunked"],
)
def test_malformed_http_is_refused_by_gunicorn_with_its_own_html_400(function_url, raw):
    """Broken HTTP framing (and request smuggling's CL+TE) never reaches the function."""
    address = urlsplit(function_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(raw)
        answer = connection.recv(4096)
    head = answer.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Content-Type: text/html" in head
