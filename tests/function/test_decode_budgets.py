"""Work and memory budgets for decoding (issue 12, item 1).

Limits read from a file's structure before it is decoded (PNG chunks, JPEG markers, scans
and refinement bits, TIFF strips and tiles), a decoded-memory estimate per image that
knows the pixel mode, a per-process budget that bounds what concurrent requests hold at
once, and a CPU-time budget for each request's decoding. The acceptance figures (each
corpus entry at most 2 s of CPU and 150 MB over the worker's idle memory; no worker
above 450 MB across the corpus, with the default threads) are measured here too.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import functions_framework
import numpy as np
import pytest
import requests
from PIL import Image

from recognizer import budget, preprocess
from recognizer.config import Settings
from tests.conftest import ROOT, SHELL_SETTINGS
from tests.data.hostile import corpus
from tests.support.function_server import running_function

MiB = 1024 * 1024
MB = 1000 * 1000
ENTRIES = corpus.entries()
BY_NAME = {entry.name: entry for entry in ENTRIES}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The real app; its model server is a closed port (nothing here reaches the model)."""

    def make(**env: str):
        monkeypatch.setenv("MODEL_SERVER_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("MODEL_SERVER_TIMEOUT_SECONDS", "0.5")
        monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "predictions.sqlite3"))
        for name in SHELL_SETTINGS:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
        return app.test_client()

    return make


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def digit_png(side: int = 28) -> bytes:
    pixels = np.zeros((side, side), dtype=np.uint8)
    pixels[side // 4 : side // 2, side // 4 : 3 * side // 4] = 255
    return encode(Image.fromarray(pixels), "PNG")


def error_of(response, status: int, code: str) -> dict:
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:500]
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


# --- settings ---------------------------------------------------------------------------------


def test_the_budgets_derive_from_the_instance_memory():
    assert Settings().memory_limit_mib == 512
    assert Settings().decode_budget_bytes == 128 * MiB  # a quarter of 512 MiB, one worker
    settings = Settings.from_env({"MEMORY_LIMIT_MIB": "2048", "WORKERS": "2"})
    assert settings.decode_budget_bytes == 256 * MiB
    assert Settings.from_env({"DECODE_CPU_SECONDS": "0.25"}).decode_cpu_seconds == 0.25


@pytest.mark.parametrize(
    "env, named",
    [
        ({"MEMORY_LIMIT_MIB": "64"}, "MEMORY_LIMIT_MIB"),
        ({"MEMORY_LIMIT_MIB": "lots"}, "MEMORY_LIMIT_MIB"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"DECODE_CPU_SECONDS": "0"}, "DECODE_CPU_SECONDS"),
        ({"DECODE_CPU_SECONDS": "inf"}, "DECODE_CPU_SECONDS"),
    ],
)
def test_a_bad_budget_setting_stops_start_up_naming_it(env, named):
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)


# --- structure, before decoding ---------------------------------------------------------------


def test_a_png_of_many_empty_chunks_is_refused_before_it_is_parsed(offline):
    """300,000 empty chunks took seconds, parsed once for the header and again to decode."""
    chunk = b"\x00\x00\x00\x00prIv\x00\x00\x00\x00"
    image = digit_png()
    body = image[:33] + chunk * 300_000 + image[33:]  # 3.6 MB
    started = time.thread_time()
    response = offline().post("/predict", data=body, content_type="image/png")
    assert time.thread_time() - started < 0.5
    error = error_of(response, 413, "image_too_complex")
    assert f"{preprocess.MAX_PNG_CHUNKS:,} chunks" in error["message"]


def test_a_progressive_jpeg_with_thousands_of_empty_scans_is_refused_from_its_markers(offline):
    entry = BY_NAME["jpeg-progressive-2000-empty-scans"]
    started = time.thread_time()
    response = offline().post("/predict", data=entry.body, content_type="image/jpeg")
    assert time.thread_time() - started < 0.5
    error = error_of(response, 413, "image_too_complex")
    assert f"{preprocess.MAX_JPEG_SCANS} scans" in error["message"]


def test_a_gif_of_many_comment_blocks_is_refused_before_it_is_parsed(offline):
    """A million one-byte comments before the first frame: 1.2 s of CPU in Pillow's loop."""
    gif = encode(Image.new("P", (16, 16)), "GIF")
    first_frame = 13 + (3 << ((gif[10] & 0x07) + 1) if gif[10] & 0x80 else 0)
    assert gif[first_frame] == 0x2C  # the image descriptor
    body = gif[:first_frame] + b"\x21\xfe\x01A\x00" * 1_000_000 + gif[first_frame:]
    started = time.thread_time()
    response = offline().post("/predict", data=body, content_type="image/gif")
    assert time.thread_time() - started < 0.5
    error = error_of(response, 413, "image_too_complex")
    assert f"{preprocess.MAX_GIF_BLOCKS:,} blocks" in error["message"]


def test_a_jpeg_scan_refining_past_bit_13_is_refused():
    jpeg = encode(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    last = jpeg.rindex(b"\xff\xda")
    length = int.from_bytes(jpeg[last + 2 : last + 4], "big")
    forged = bytearray(jpeg)
    forged[last + 1 + length] = 0xE0  # Ah = 14
    with pytest.raises(preprocess.ImageTooComplex, match="bit 14"):
        preprocess.open_image(bytes(forged), 10**9)


def test_markers_inside_segments_are_skipped_by_length():
    """An EXIF or ICC payload full of 0xFF bytes holds no markers: they are not counted."""
    jpeg = encode(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    payload = b"\xff\xda\x00\x08" * 4_000  # 16 KB that would look like 4,000 scans
    segment = b"\xff\xe2" + (len(payload) + 2).to_bytes(2, "big") + payload
    preprocess.open_image(jpeg[:2] + segment + jpeg[2:], 10**9)


def test_normal_files_pass_the_structure_checks():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (900, 700), np.uint8))
    for fmt, options in [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True})]:
        preprocess.open_image(encode(image, fmt, **options), 10**9)
    for name in ("digit-9-progressive.jpg", "digit-6-exif-180.jpg", "digit-3-then-9.tif"):
        preprocess.decode((corpus.HERE / name).read_bytes(), 10**9)


# --- decoded memory, mode-aware ----------------------------------------------------------------


def cost(image: Image.Image, fmt: str, **options: object) -> int:
    return preprocess.open_image(encode(image, fmt, **options), 10**9).decode_bytes


def test_the_decode_cost_knows_the_mode_not_only_the_pixels():
    side = 1000
    gray = cost(Image.new("L", (side, side)), "PNG")
    assert gray == pytest.approx(side * side * 1.1 + preprocess.COST_FLOOR_BYTES, rel=0.01)
    assert cost(Image.new("I;16", (side, side)), "PNG") > 1.9 * (gray - 4 * MiB)
    assert cost(Image.new("RGB", (side, side)), "PNG") > 3.9 * (gray - 4 * MiB)
    assert cost(Image.new("RGBA", (side, side)), "PNG") > 7.9 * (gray - 4 * MiB)
    assert cost(Image.new("CMYK", (side, side)), "TIFF") > 3.9 * (gray - 4 * MiB)
    assert cost(Image.new("F", (side, side)), "TIFF") > 3.9 * (gray - 4 * MiB)
    webp = cost(Image.new("RGBA", (side, side)), "WEBP", lossless=True)
    assert webp > 15.9 * (gray - 4 * MiB)
    baseline = cost(Image.new("L", (4000, 4000)), "JPEG")  # decoded at 1/8 scale
    progressive = cost(Image.new("L", (4000, 4000)), "JPEG", progressive=True)
    assert baseline < 5 * MiB and progressive > 32 * MB  # two bytes per coefficient


def test_a_tiff_tile_larger_than_the_image_is_counted():
    tiff = encode(Image.new("L", (16, 16)), "TIFF")
    image = Image.open(io.BytesIO(tiff))
    image.tag_v2[322] = 65_536  # TileWidth
    image.tag_v2[323] = 65_536  # TileLength
    assert preprocess.decode_cost(image) > 4 * 1024 * MiB


def test_one_image_over_the_budget_is_a_413_before_decoding(offline):
    entry = BY_NAME["webp-lossless-6300x6300"]
    response = offline().post("/predict", data=entry.body, content_type="image/webp")
    error = error_of(response, 413, "image_too_large")
    assert "MiB" in error["message"] and "128 MiB" in error["message"]


def test_a_bigger_instance_decodes_what_a_small_one_refuses(offline):
    entry = BY_NAME["rgba-png-4500x4500"]
    small = offline().post("/predict", data=entry.body, content_type="image/png")
    error_of(small, 413, "image_too_large")
    big = offline(MEMORY_LIMIT_MIB="2048").post(
        "/predict", data=entry.body, content_type="image/png"
    )
    error_of(big, 400, "blank_image")  # decoded: it is fully transparent


def test_concurrent_decodes_share_the_budget():
    shared = budget.DecodeBudget(100 * MiB, wait_seconds=0.2)
    with shared.hold(60 * MiB), pytest.raises(budget.DecodeBusy), shared.hold(60 * MiB):
        pass
    with shared.hold(60 * MiB):  # given back: room again
        assert shared.held_bytes == 60 * MiB
    assert shared.held_bytes == 0


def test_a_decode_waits_briefly_for_room():
    shared = budget.DecodeBudget(100 * MiB, wait_seconds=5)
    entered = threading.Event()

    def holder():
        with shared.hold(80 * MiB):
            entered.set()
            time.sleep(0.3)

    thread = threading.Thread(target=holder)
    thread.start()
    assert entered.wait(5)
    started = time.monotonic()
    with shared.hold(80 * MiB):
        assert time.monotonic() - started >= 0.1
    thread.join()


def test_no_room_in_the_budget_is_a_503_with_retry_after(offline, monkeypatch):
    def busy(self, nbytes):
        raise budget.DecodeBusy("no room")

    monkeypatch.setattr(budget.DecodeBudget, "hold", busy)
    response = offline().post("/predict", data=digit_png(), content_type="image/png")
    error_of(response, 503, "decode_busy")
    assert response.headers["Retry-After"]


# --- the CPU-time budget ----------------------------------------------------------------------


def test_past_the_cpu_budget_the_request_ends_with_a_clear_error(offline):
    noise = np.random.default_rng(4).integers(0, 256, (3000, 3000), dtype=np.uint8)
    body = encode(Image.fromarray(noise), "PNG", compress_level=1)
    client = offline(DECODE_CPU_SECONDS="0.01")
    started = time.monotonic()
    response = client.post("/predict", data=body, content_type="image/png")
    assert time.monotonic() - started < 5
    error = error_of(response, 413, "image_too_complex")
    assert "0.01 s of CPU time" in error["message"]


# --- the acceptance figures, over the whole corpus --------------------------------------------


def _status_bytes(field: str, pid: str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _each_entry_cost() -> list[tuple[str, int, int, float]]:
    """In a fresh process: each entry's status, peak growth over idle (bytes) and CPU (s)."""
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    client = app.test_client()
    warm = BY_NAME["multipart-valid"]
    client.open(warm.url, method=warm.method, headers=warm.headers, data=warm.body)
    results = []
    for entry in ENTRIES:
        Path("/proc/self/clear_refs").write_text("5")
        idle = _status_bytes("VmRSS")
        started = time.thread_time()
        response = client.open(entry.url, method=entry.method, headers=entry.headers,
                               data=entry.body)  # fmt: skip
        cpu = time.thread_time() - started
        results.append((entry.name, response.status_code, _status_bytes("VmHWM") - idle, cpu))
    return results


def test_no_corpus_entry_costs_more_than_2_s_of_cpu_or_150_mb(function_env):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        results = pool.submit(_each_entry_cost).result(timeout=600)
    for (name, status, growth, cpu), entry in zip(results, ENTRIES, strict=True):
        assert status == entry.status, name
        assert growth < 150 * MB, f"{name}: {growth / MiB:.0f} MiB"
        assert cpu < 2.0, f"{name}: {cpu:.2f} s"
    worst = max(results, key=lambda result: result[2])
    slowest = max(results, key=lambda result: result[3])
    print(f"most memory: {worst[0]} {worst[2] / MiB:.0f} MiB; most CPU: {slowest[0]} "
          f"{slowest[3]:.2f} s")  # fmt: skip


def _workers_of(sqlite_path: Path) -> list[str]:
    """The gunicorn workers serving `sqlite_path`: processes with it in their environment
    whose parent has it too (the master)."""
    marker = f"SQLITE_PATH={sqlite_path}".encode()
    mine = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                mine[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
    return [pid for pid, parent in mine.items() if parent in mine]


def test_no_worker_peaks_above_450_mb_across_the_corpus(model_stand_in, tmp_path):
    """A real gunicorn worker with functions-framework's default threads (4 per core), the
    corpus sent twice over, eight requests at a time."""
    sqlite_path = tmp_path / "predictions.sqlite3"
    with running_function(model_stand_in.url, sqlite_path) as url:
        (worker,) = _workers_of(sqlite_path)
        idle = _status_bytes("VmRSS", worker)

        def send(entry: corpus.Entry) -> int:
            return requests.request(entry.method, url + entry.url, headers=entry.headers,
                                    data=entry.body, timeout=60).status_code  # fmt: skip

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(send, ENTRIES * 2))
        peak = _status_bytes("VmHWM", worker)
    assert 500 not in statuses
    print(f"worker idle {idle / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB")
    assert peak < 450 * MB
