"""Every entry of the hostile-input corpus (tests/data/hostile) through the real function.

Broken, malicious and awkward uploads each get the status and error code the contract
promises, as a JSON error with a message for a person: never a 500, never a traceback,
and nothing recorded. Valid images in awkward formats are recognised. The corpus runs on
both stores: SQLite, and a keyspace of the session's live Cassandra node.
"""

from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import functions_framework
import pytest
from urllib3 import encode_multipart_formdata

from tests.conftest import ROOT
from tests.data.hostile import corpus
from tests.support.cassandra_function import function_app

ENTRIES = corpus.entries()
BY_NAME = {entry.name: entry for entry in ENTRIES}
MiB = 1024 * 1024
# A refused request holds the body (under 100 KiB here) and Flask's request objects: the
# peak grew by at most 1.8 MiB when measured. Decoding is far above: the smallest image
# here is 40 MB of one-byte pixels (the peak grew 76 MiB when it was allowed), the WebP
# 164 MB of RGBA (627 MiB), the bombs 400 MB to 13 GB. 20 MiB separates the two cleanly.
REFUSED_GROWTH_BOUND = 20 * MiB
OVERSIZED = [entry for entry in ENTRIES if entry.code == "image_too_large"]


@pytest.fixture(scope="module")
def hostile_keyspace(cassandra) -> str:
    """One keyspace for the corpus: each test compares the history before and after."""
    return cassandra.keyspace("hostile")


@pytest.fixture(params=["sqlite", "cassandra"])
def store_client(request, client, function_env, monkeypatch):
    """The real app on SQLite (a fresh file), or on the Cassandra node's corpus keyspace."""
    if request.param == "sqlite":
        yield client
        return
    cassandra = request.getfixturevalue("cassandra")
    env = cassandra.env(request.getfixturevalue("hostile_keyspace"))
    with function_app(monkeypatch, **env) as app:
        yield app.test_client()
    assert not function_env.exists(), "the app wrote to SQLite, not to Cassandra"


def history_ids(client) -> list[str]:
    """The newest 100 records' ids, newest first."""
    response = client.get("/predictions?limit=100")
    assert response.status_code == 200, response.get_data(as_text=True)
    return [record["id"] for record in response.get_json()["predictions"]]


def send(client, entry: corpus.Entry):
    return client.open(entry.url, method=entry.method, headers=entry.headers, data=entry.body)


def record_one(client) -> dict:
    """Record a real prediction, so a test can check that a later request leaves it alone."""
    seven = BY_NAME["multipart-valid"]
    (prediction,) = send(client, seven).get_json()["predictions"]
    return client.get(f"/predictions/{prediction['id']}").get_json()


def test_the_corpus_covers_every_kind_of_bad_input():
    assert len(ENTRIES) >= 40
    codes = {entry.code for entry in ENTRIES}
    assert {"empty_body", "not_an_image", "blank_image", "image_too_large"} <= codes
    assert {"unsupported_media_type", "missing_image", "too_many_images"} <= codes
    assert {"invalid_json", "invalid_base64", "invalid_parameter", "unknown_model_version"} <= codes
    assert sum(entry.status == 200 for entry in ENTRIES) >= 10


def test_the_manifest_names_exactly_the_files_in_the_corpus():
    on_disk = {
        path.name
        for path in corpus.HERE.iterdir()
        if path.is_file() and path.suffix != ".py" and path != corpus.MANIFEST
    }
    assert corpus.referenced_files() == on_disk
    assert all((corpus.HERE / name).stat().st_size < 100 * 1024 for name in on_disk)


@pytest.mark.parametrize(
    "entry",
    [  # an answer's digit is the real model's; a refusal needs no model
        pytest.param(entry, id=entry.name, marks=[] if entry.rejected else [pytest.mark.real_model])
        for entry in ENTRIES
    ],
)
def test_each_hostile_input_gets_its_contracted_answer(store_client, entry):
    client = store_client
    earlier = record_one(client)
    before = history_ids(client)
    assert before[0] == earlier["id"]
    response = send(client, entry)
    text = response.get_data(as_text=True)
    assert response.status_code == entry.status, f"{entry.why}: {text[:300]}"
    assert response.mimetype == "application/json"
    assert "Traceback" not in text and 'File "' not in text
    after = history_ids(client)
    if entry.rejected:
        body = response.get_json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == entry.code, body
        assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 10
        assert after == before, "nothing new recorded"
    else:
        predictions = response.get_json()["predictions"]
        assert [p["digit"] for p in predictions] == [entry.digit], entry.why
        assert after[:1] == [predictions[0]["id"]], "the prediction is recorded, newest"
        assert after[1:] == before[: len(after) - 1], "and nothing else"
    assert client.get(f"/predictions/{earlier['id']}").get_json() == earlier


def test_a_broken_file_in_a_batch_is_named_by_its_position(client):
    error = send(client, BY_NAME["multipart-batch-with-one-broken-file"]).get_json()["error"]
    assert error["message"].startswith("image 2:")


@pytest.mark.parametrize("name", ["bomb-gif-65535x65535", "pixel-limit-png-8000x5001"])
def test_an_oversized_image_is_told_the_pixel_limit(client, name):
    """Whether Pillow's bomb check or ours fires first, the message names our limit."""
    message = send(client, BY_NAME[name]).get_json()["error"]["message"]
    assert "40,000,000 pixels" in message


def _peak_growth(urls_bodies: list[tuple[str, dict[str, str], bytes]]) -> list[tuple[int, int]]:
    """In a fresh process: each request's status and how far it raised peak memory (bytes).

    Peak resident memory, not tracemalloc: Pillow allocates pixels with C malloc, which
    tracemalloc never sees. Linux resets the peak (VmHWM) when "5" is written to
    /proc/self/clear_refs, so each request is measured from its own starting point.
    """
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    client = app.test_client()
    record_one(client)  # imports, connections and caches are made before measuring
    results = []
    for url, headers, body in urls_bodies:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_bytes("VmRSS")
        status = client.post(url, headers=headers, data=body).status_code
        results.append((status, _status_bytes("VmHWM") - before))
    return results


def _status_bytes(field: str) -> int:
    kib = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(kib.group(1)) * 1024


def measure_in_fresh_process(entries: list[corpus.Entry]) -> list[tuple[int, int]]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        requests = [(entry.url, entry.headers, entry.body) for entry in entries]
        return pool.submit(_peak_growth, requests).result(timeout=120)


def test_bombs_and_oversized_images_are_refused_before_decoding(function_env):
    """Refusal comes from the header: peak memory barely moves, whatever the image claims."""
    for entry, (status, growth) in zip(OVERSIZED, measure_in_fresh_process(OVERSIZED), strict=True):
        assert status == 413, entry.name
        assert growth < REFUSED_GROWTH_BOUND, f"{entry.name}: peak grew {growth / MiB:.0f} MiB"


def test_the_memory_probe_does_see_a_decode(function_env, monkeypatch):
    """Control: with the pixel limit raised, the same 2 KB WebP is decoded and the probe
    sees it (164 MB of RGBA pixels; the peak grew 627 MiB when measured). The decode budgets
    are raised too: at the defaults (128 MiB, 1 s of CPU) the header refuses the image, or
    its decoding (0.8 s here) runs past the CPU budget on a busy machine."""
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "50000000")
    monkeypatch.setenv("MAX_REQUEST_PIXELS", "50000000")
    monkeypatch.setenv("MEMORY_LIMIT_MIB", "4096")
    monkeypatch.setenv("DECODE_CPU_SECONDS", "60")
    webp = BY_NAME["pixel-limit-webp-6400x6400"]
    ((status, growth),) = measure_in_fresh_process([webp])
    assert status == 400  # decoded, and found blank (it is fully transparent)
    assert growth > 150 * MiB


@pytest.mark.parametrize("form", ["raw", "json", "multipart"])
def test_a_chunked_body_over_the_limit_is_refused_not_cut_short(client, form):
    """Without a Content-Length, Werkzeug stops reading at the limit and says nothing.

    A valid PNG followed by 11 MiB of padding would then be recognised from its first
    10 MiB and recorded; it is refused instead, as a sized body of that length is.
    """
    seven = (corpus.HERE / "digit-7.png").read_bytes()
    padding = bytes(11 * MiB)
    if form == "raw":
        body, content_type = seven + padding, "image/png"
    elif form == "json":
        body = b'{"image": "' + base64.b64encode(seven) + b'", "padding": "' + padding
        content_type = "application/json"
    else:
        fields = [("image", ("seven.png", seven)), ("padding", ("padding.bin", padding))]
        body, content_type = encode_multipart_formdata(fields)
    response = client.post(
        "/predict",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets for chunked
    )
    assert response.status_code == 413, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"]["code"] == "request_too_large"
    assert client.get("/predictions").get_json()["predictions"] == []
