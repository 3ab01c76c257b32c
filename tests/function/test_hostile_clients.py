"""Issue 12, "Hostile clients": each finding tried against `make demo`, as a test.

Most of these need no model server: the request is refused, or fails, before the model
is asked. The app is functions-framework's own, on a fresh SQLite file, with the model
server's URL pointing at a closed port.
"""

from __future__ import annotations

import base64
import errno
import io
import struct
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import functions_framework
import numpy as np
import pytest
from PIL import Image
from urllib3 import encode_multipart_formdata

from recognizer import uploads
from tests.conftest import ROOT, SHELL_SETTINGS

LONG = 20_000


@pytest.fixture
def sqlite_path(tmp_path) -> Path:
    return tmp_path / "store" / "predictions.sqlite3"


@pytest.fixture
def offline(sqlite_path, monkeypatch):
    """The real app; its model server is a closed port (nothing here reaches the model)."""
    monkeypatch.setenv("MODEL_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MODEL_SERVER_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("SQLITE_PATH", str(sqlite_path))
    for name in SHELL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    return app.test_client()


def png(side: int = 28) -> bytes:
    pixels = np.zeros((side, side), dtype=np.uint8)
    pixels[side // 4 : side // 2, side // 4 : 3 * side // 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def error_of(response, status: int, code: str) -> dict:
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:500]
    assert response.mimetype == "application/json", text[:500]
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


# --- parameters parse ASCII digits only ------------------------------------------------------


@pytest.mark.parametrize("value", ["\u00b2", "\u2460", "\u0663", "1\u00b2", "\uff11"])
def test_a_history_limit_in_unicode_digits_is_a_400(offline, value):
    """Superscripts and circled digits pass str.isdigit() and then fail int(): a 500."""
    error_of(offline.get(f"/predictions?limit={value}"), 400, "invalid_parameter")


@pytest.mark.parametrize("value", ["\u00b2", "\u2460", "\u0663"])
def test_a_version_in_unicode_digits_is_a_400(offline, value):
    response = offline.post(f"/predict?version={value}", data=png(), content_type="image/png")
    error_of(response, 400, "invalid_parameter")


# --- odd paths: a 404 in the error shape, never a redirect without a Location ----------------


@pytest.mark.parametrize(
    "path", ["/predictions//{id}", "/predictions//{id}/image", "/predictions/{id}//image"]
)
def test_a_doubled_slash_is_a_404_naming_no_internal_url(offline, path):
    # PATH_INFO as a server sets it for `GET //predictions HTTP/1.1` (the test client would
    # read a leading // as a host name).
    response = offline.get("/", environ_overrides={"PATH_INFO": path.format(id=uuid.uuid4())})
    error = error_of(response, 404, "not_found")
    assert "Location" not in response.headers
    assert "function" not in error["message"] and "http" not in error["message"]


@pytest.mark.parametrize("path", ["/predictions/a%0Ab", "/predictions/%0A/image", "/robots.txt"])
def test_paths_functions_framework_keeps_get_the_json_404(offline, path):
    """A newline in a segment does not match functions-framework's /<path:path>, and it
    answers /robots.txt and /favicon.ico itself: Flask's HTML 404, with no request id."""
    response = offline.get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:200]
    assert response.get_json()["error"]["code"] in {"not_found", "unknown_prediction"}
    assert response.headers.get("X-Request-Id")


def test_leading_slashes_are_the_path_without_them(offline):
    """Werkzeug strips them from request.path: no redirect, the same answer."""
    response = offline.get("/", environ_overrides={"PATH_INFO": "//predictions"})
    assert response.status_code == 200 and response.get_json() == {"predictions": [], "next": None}


# --- echoed values are cut short -------------------------------------------------------------


@pytest.mark.parametrize(
    "method, url, headers",
    [
        ("GET", "/predictions/" + "x" * LONG, {}),
        ("GET", "/predictions/" + "x" * LONG + "/image", {}),
        ("GET", "/predictions?limit=" + "x" * LONG, {}),
        ("POST", "/predict?version=" + "x" * LONG, {"Content-Type": "image/png"}),
        ("POST", "/predict?include=" + "x" * LONG, {"Content-Type": "image/png"}),
        ("POST", "/predict", {"Content-Type": "text/" + "x" * LONG}),
    ],
)
def test_a_long_value_is_not_echoed_whole(offline, method, url, headers):
    response = offline.open(url, method=method, headers=headers, data=png())
    assert 400 <= response.status_code < 500
    message = response.get_json()["error"]["message"]
    assert len(message) < 300, message[:300]


def test_many_long_field_names_are_not_echoed_whole(offline):
    fields = [(f"{n}{'y' * 2_000}", "v") for n in range(50)]
    body, content_type = encode_multipart_formdata(fields)
    response = offline.post("/predict", data=body, content_type=content_type)
    message = error_of(response, 400, "missing_image")["message"]
    assert len(message) < 500, message[:500]
    assert "45 more" in message


# --- form parsing: its own codes, no temp files ----------------------------------------------


def test_thousands_of_empty_parts_have_their_own_code(offline):
    fields = [("f", "") for _ in range(3_000)]  # 300 KB: far below MAX_REQUEST_BYTES
    body, content_type = encode_multipart_formdata(fields)
    response = offline.post("/predict", data=body, content_type=content_type)
    message = error_of(response, 413, "too_many_form_parts")["message"]
    assert f"{uploads.MAX_FORM_PARTS:,} parts" in message


def test_a_large_text_field_has_its_own_code(offline):
    fields = [("comment", "z" * 600_000), ("image", ("d.png", png(), "image/png"))]
    body, content_type = encode_multipart_formdata(fields)
    response = offline.post("/predict", data=body, content_type=content_type)
    message = error_of(response, 413, "form_field_too_large")["message"]
    assert f"{uploads.MAX_FORM_FIELD_BYTES:,} bytes" in message


def test_a_chunked_multipart_body_over_the_limit_says_what_the_limit_is(offline):
    """Werkzeug's own words were "exceeds the capacity limit", whatever the limit was."""
    padding = bytes(11 * 1024 * 1024)
    body, content_type = encode_multipart_formdata([("image", ("pad.png", padding, "image/png"))])
    response = offline.post(
        "/predict",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets for chunked
    )
    message = error_of(response, 413, "request_too_large")["message"]
    assert "10,485,760 bytes" in message and "capacity" not in message


def test_a_large_part_needs_no_temp_directory(offline, monkeypatch):
    """Werkzeug spooled parts over 500 KB to the temp directory: a full disk was a 500."""

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", disk_full)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", disk_full)
    noise = np.random.default_rng(12).integers(0, 256, 600_000, dtype=np.uint8).tobytes()
    body, content_type = encode_multipart_formdata([("image", ("big.png", noise, "image/png"))])
    response = offline.post("/predict", data=body, content_type=content_type)
    error_of(response, 400, "not_an_image")  # read in memory, found not to be an image


def test_a_full_disk_anywhere_is_a_503(offline, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/secret/spool")

    monkeypatch.setattr(uploads, "read_images", disk_full)
    response = offline.post("/predict", data=png(), content_type="image/png")
    error = error_of(response, 503, "insufficient_storage")
    assert response.headers["Retry-After"]
    assert "/var" not in error["message"]


# --- issue 24: JSON padding, spaced-out base64, run-length BMPs ------------------------------


def test_a_predict_json_padded_with_empty_objects_is_refused_unparsed(offline):
    body = b'{"image":"AAAA","pad":[' + b"{}," * 1_000_000 + b"{}]}"
    response = offline.post("/predict", data=body, content_type="application/json")
    assert "objects, lists or members" in error_of(response, 400, "invalid_json")["message"]


def test_base64_with_a_space_every_two_characters_decodes_without_a_string_each():
    """split() and join() made five million strings of it: +285 MiB per 10 MiB body."""
    image = png()
    encoded = base64.b64encode(image * 2000).decode()
    spaced = " ".join(encoded[i : i + 2] for i in range(0, len(encoded), 2))
    tracemalloc.start()
    try:
        decoded = uploads._decode_base64(spaced, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == image * 2000
    assert peak < 4 * len(spaced)  # the ASCII copy, its compacted copy and the image


def test_a_run_length_bmp_is_refused_from_its_size_before_decoding(offline):
    width = height = 1500
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    row = b"".join(bytes([1, (x * 37) & 255]) for x in range(width)) + b"\x00\x00"
    runs = row * height + b"\x00\x01"  # one-pixel runs, end of line, end of bitmap
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    bmp = b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + info + palette + runs
    started = time.thread_time()
    response = offline.post("/predict", data=bmp, content_type="image/bmp")
    assert "run-length" in error_of(response, 413, "image_too_complex")["message"]
    assert time.thread_time() - started < 0.2  # decoding it took a second of CPU
