"""Issue 24's table, measured: each hostile client against the live stack, with a probe.

One function instance as production runs it (function/serve.py: 1 gunicorn worker x 8
threads, MEMORY_LIMIT_MIB=512, API_TOKEN and PREDICT_REQUIRES_TOKEN set) in front of the
development model server. For each attack, 8 hostile clients (one client key: their
address) run for --seconds while a probe posts a normal 28x28 PNG every 0.25 s (with the
token, as a client of its own); printed per attack: the probe's p50 and max latency (and
any probe that was not a 200), the function worker's peak memory (VmHWM, reset before
each attack; the largest over any worker that served it) and the model server's, the
hostile answers by status, and the records the attack
left in the store beside the 200s it was given.

    .venv/bin/python -m bench.hostile_load [--seconds 4] [--only NAME ...]
    BENCH_FUNCTION_SOURCE=/tmp/before/function BENCH_SERVING_SOURCE=/tmp/before \
        .venv/bin/python -m bench.hostile_load      # the same table for another copy

The machine it runs on is shared: figures from a loaded machine are slower, not wrong.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import io
import json
import os
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from bench import stack

TOKEN = "hostile-load-token-0123456789abcdef"
MiB = 1024 * 1024
PROBE_EVERY = 0.25
PROBE_LIMIT = 1.0
SERVING_SOURCE = Path(os.environ.get("BENCH_SERVING_SOURCE", stack.ROOT))
HOSTILE = 8


def png(side: int = 28, seed: int = 0, noise: bool = False) -> bytes:
    pixels = np.zeros((side, side), dtype=np.uint8)
    pixels[side // 4 : 3 * side // 4, side // 2 - side // 10 : side // 2 + side // 10] = 255
    if noise:
        pixels ^= np.random.default_rng(seed).integers(0, 40, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PROBE_IMAGE = png()
# The probe is a client of its own (its client key); the hostile clients send none, so they
# are one client, their address, as 8 connections from one attacker's machine are.
PROBE_CLIENT = "normal-client-probe"


# ------------------------------------------------------------------ the bodies
def pad_body(size: int, head: bytes) -> bytes:
    """`{head,"pad":[{},{},...]}` of about `size` bytes."""
    count = (size - len(head) - 16) // 3
    return b"{" + head + b',"pad":[' + b"{}," * count + b"{}]}"


def spaced_base64(size: int) -> bytes:
    """A JSON image whose base64 has a space every 2 characters, about `size` bytes."""
    image = png(64)
    image = image * (size * 2 // 3 // 3 // len(image) + 1)
    text = base64.b64encode(image).decode()[: size * 2 // 3 // 4 * 4]
    spaced = " ".join(text[i : i + 2] for i in range(0, len(text), 2))
    return json.dumps({"image": spaced}).encode()


def rle_bmp(side: int = 1500) -> bytes:
    """An RLE8 BMP of one-pixel runs (about 2 bytes a pixel: 4.5 MB at 1500x1500)."""
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    row = b"".join(bytes([1, (x * 37) & 255]) for x in range(side)) + b"\x00\x00"
    runs = row * side + b"\x00\x01"
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + info + palette + runs


def batch_json(images: int = 64) -> bytes:
    pngs = [base64.b64encode(png(56, seed, noise=True)).decode() for seed in range(images)]
    return json.dumps({"images": pngs}).encode()


def model_json(instances: int) -> bytes:
    row = "[" + ",".join(["0.5"] * 784) + "]"
    return ('{"instances":[' + ",".join([row] * instances) + "]}").encode()


# ------------------------------------------------------------------ HTTP by hand
def raw_request(port: int, data: bytes, timeout: float = 30) -> int:
    """Send `data` as it is on a fresh connection; the status answered, 0 if none."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError:
            pass
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def post(url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None,
         method: str = "POST", timeout: float = 60) -> int:  # fmt: skip
    try:
        return requests.request(
            method, url, data=body, timeout=timeout,
            headers={"Content-Type": content_type, **(headers or {})},
        ).status_code  # fmt: skip
    except requests.RequestException:
        return 0


# ------------------------------------------------------------------ the probe
class Probe:
    """A normal client: the 28x28 PNG every 0.25 s, each on its own thread (so a slow
    answer does not delay the next probe), with the API token."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _one(self) -> None:
        started = time.monotonic()
        status = post(self._url + "/predict", PROBE_IMAGE, "image/png",
                      {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": PROBE_CLIENT},
                      timeout=10)  # fmt: skip
        with self._lock:
            self.samples.append((time.monotonic() - started, status))

    def run(self) -> None:
        while not self._stop.wait(PROBE_EVERY):
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)

    @contextmanager
    def running(self) -> Iterator[Probe]:
        loop = threading.Thread(target=self.run, daemon=True)
        loop.start()
        try:
            yield self
        finally:
            self._stop.set()
            loop.join()
            for thread in self._threads:
                thread.join(15)


# ------------------------------------------------------------------ the attacks
@dataclass
class Stack:
    function: stack.Server
    model: stack.Server
    sqlite_path: Path

    @property
    def url(self) -> str:
        return self.function.url


@dataclass
class Attack:
    name: str
    what: str
    run: Callable[[Stack, threading.Event], Counter]  # until the event is set


def looped(send: Callable[[Stack], int]) -> Callable[[Stack, threading.Event], Counter]:
    """8 clients each sending as soon as their last answer came, until told to stop."""

    def run(target: Stack, stop: threading.Event) -> Counter:
        counts: Counter = Counter()
        lock = threading.Lock()

        def client() -> None:
            while not stop.is_set():
                status = send(target)
                with lock:
                    counts[status] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(HOSTILE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        return counts

    return run


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def feedback_pad(target: Stack) -> int:
    body = BODIES["feedback_pad"]
    url = f"{target.url}/predictions/{uuid.uuid1()}/feedback"
    return post(url, body, "application/json", method="PUT")


def pipeline(target: Stack, stop: threading.Event) -> Counter:
    """8 connections, each 100 pipelined GET / never read; held until stop."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    sockets = []
    counts: Counter = Counter()
    for _ in range(HOSTILE):
        sock = socket.create_connection(("127.0.0.1", target.function.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        try:
            sock.sendall(request)
            counts["sent"] += 1
        except OSError:
            counts["refused"] += 1
        sockets.append(sock)
    stop.wait()
    for sock in sockets:
        sock.close()
    return counts


def slow_headers(target: Stack, stop: threading.Event) -> Counter:
    """8 connections sending a request's headers a byte every 0.5 s, reconnecting when cut;
    counted: the connections the function closed."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nX-Pad: " + b"a" * 4000
    counts: Counter = Counter()
    conns: list[list] = [[None, 0] for _ in range(HOSTILE)]
    while not stop.wait(0.5):
        for conn in conns:
            if conn[0] is None:
                conn[:] = [socket.create_connection(("127.0.0.1", target.function.port)), 0]
            try:
                conn[0].sendall(head[conn[1] : conn[1] + 1])
                conn[1] += 1
            except OSError:
                counts["closed by the function"] += 1
                conn[0].close()
                conn[0] = None
    for conn in conns:
        if conn[0] is not None:
            conn[0].close()
    return counts


def chunked(target: Stack, stop: threading.Event) -> Counter:
    counts: Counter = Counter()
    while not stop.is_set():
        for path, method in (
            ("/predict", "POST"),
            (f"/predictions/{uuid.uuid1()}/feedback", "PUT"),
        ):
            for size in (b"0x5", b"zz", b"-1"):
                head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                        "Content-Type: application/json\r\n"
                        f"Authorization: Bearer {TOKEN}\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
                data = head.encode() + size + b"\r\nhello\r\n0\r\n\r\n"
                counts[raw_request(target.function.port, data)] += 1
    return counts


def cross_site(target: Stack) -> int:
    """What fetch(..., {mode: "no-cors"}) of a multipart upload sends from another site.

    A no-cors request cannot carry an Authorization header; it is sent with the token here
    so the table shows the deployment that does not require one (PREDICT_REQUIRES_TOKEN
    off), where only the cross-site check stands in the way.
    """
    headers = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site",
               "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty", **bearer()}  # fmt: skip
    files = {"image": ("d.png", PROBE_IMAGE, "image/png")}
    try:
        response = requests.post(target.url + "/predict", files=files, headers=headers, timeout=30)
    except requests.RequestException:
        return 0
    return response.status_code


def framed(target: Stack, stop: threading.Event) -> Counter:
    """Whether another origin could frame the page: its answer's headers."""
    page = requests.get(target.url + "/", timeout=10)
    policy = page.headers.get("Content-Security-Policy", "")
    return Counter({
        f"{page.status_code} frame-ancestors 'none'": int("frame-ancestors 'none'" in policy),
        "X-Frame-Options": int("X-Frame-Options" in page.headers),
        "nosniff": int(page.headers.get("X-Content-Type-Options") == "nosniff"),
    })  # fmt: skip


def model_url(target: Stack) -> str:
    return f"{target.model.url}/v1/models/mnist/labels/stable:predict"


def model_gzip(target: Stack) -> int:
    return post(model_url(target), BODIES["model_gzip"], "application/json",
                {"Content-Encoding": "gzip"}, timeout=120)  # fmt: skip


def model_once(name: str) -> Callable[[Stack, threading.Event], Counter]:
    def run(target: Stack, stop: threading.Event) -> Counter:
        return Counter([post(model_url(target), BODIES[name], "application/json", timeout=120)])

    return run


def model_idle(target: Stack, stop: threading.Event) -> Counter:
    """Up to 3,000 idle connections to the model server (as many as open in the window),
    held until stop; its thread count before and at the end of the window."""
    sockets, counts = [], Counter()
    before = threads_of(target.model.process.pid)
    while len(sockets) < 3000 and not stop.is_set():
        try:
            sockets.append(socket.create_connection(("127.0.0.1", target.model.port), timeout=1))
        except OSError:
            counts["refused or timed out"] += 1
    stop.wait()
    counts[f"opened; threads {before} -> {threads_of(target.model.process.pid)}"] = len(sockets)
    for sock in sockets:
        sock.close()
    return counts


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


BODIES: dict[str, bytes] = {}


def make_bodies() -> None:
    BODIES["feedback_pad"] = pad_body(10 * MiB - 4096, b'"digit":1')
    BODIES["predict_pad"] = pad_body(
        10 * MiB - 4096, b'"image":"' + base64.b64encode(PROBE_IMAGE) + b'"'
    )
    BODIES["spaced_base64"] = spaced_base64(10 * MiB - 4096)
    BODIES["rle_bmp"] = rle_bmp()
    BODIES["batch64"] = batch_json()
    BODIES["upload_256k"] = png(1024, noise=True)[: 256 * 1024]
    BODIES["model_gzip"] = gzip.compress(b" " * (100 * MiB - 64) + b'{"instances":[]}', 9)
    BODIES["model_big"] = model_json(110 * MiB // (784 * 4))
    depth = 200_000
    BODIES["model_nested"] = b'{"instances":' + b"[" * depth + b"0" + b"]" * depth + b"}"


def upload_256k(target: Stack) -> int:
    image = png(700, seed=int(time.monotonic() * 1e6) % 2**31, noise=True)
    return post(target.url + "/predict", image, "image/png", bearer())


def predict_json(name: str) -> Callable[[Stack], int]:
    return lambda t: post(t.url + "/predict", BODIES[name], "application/json", bearer())


ATTACKS = [
    Attack("feedback_pad", "anonymous PUT …/feedback, 10 MiB of {} padding", looped(feedback_pad)),
    Attack("predict_pad", "POST /predict, 10 MiB of {} padding",
           looped(predict_json("predict_pad"))),
    Attack("spaced_base64", "POST /predict, 10 MiB base64 with a space every 2 characters",
           looped(predict_json("spaced_base64"))),
    Attack("pipeline", "8 connections x 100 pipelined GET /, never read", pipeline),
    Attack("slow_headers", "8 connections sending headers a byte every 0.5 s", slow_headers),
    Attack("chunked", "chunk sizes 0x5, zz, -1 on /predict and …/feedback", chunked),
    Attack("rle_bmp", "BMP RLE of 1-pixel runs (4.5 MB)",
           looped(lambda t: post(t.url + "/predict", BODIES["rle_bmp"], "image/bmp", bearer()))),
    Attack("batch64", "64-image JSON batch",
           looped(predict_json("batch64"))),
    Attack("uploads", "noisy 700x700 PNG uploads (~256 KiB kept each)", looped(upload_256k)),
    Attack("cross_site", "no-cors multipart POST from another origin", looped(cross_site)),
    Attack("framed", "the page's framing headers", framed),
    Attack("model_gzip", "model server: gzip body inflating to 100 MiB", looped(model_gzip)),
    Attack("model_big", "model server: a 110 MB JSON batch (once)", model_once("model_big")),
    Attack("model_nested", "model server: JSON nested 200,000 deep", model_once("model_nested")),
    Attack("model_idle", "model server: 3,000 idle connections", model_idle),
]  # fmt: skip


# ------------------------------------------------------------------ measuring
def vm(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> None:
    """VmHWM := VmRSS: a worker that kept its memory still shows it as its peak."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def workers(server: stack.Server) -> list[int]:
    return stack.process_tree(server.process.pid)[1:]


def records(path: Path) -> int:
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT count(*) FROM predictions").fetchone()[0]
        except sqlite3.Error:
            return -1


@dataclass
class Row:
    name: str
    probes: list[tuple[float, int]] = field(default_factory=list)
    worker_peak: int = 0
    model_peak: int = 0
    statuses: Counter = field(default_factory=Counter)
    records: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        times = [t for t, _ in self.probes] or [0.0]
        bad = Counter(s for _, s in self.probes if s != 200)
        late = sum(t > PROBE_LIMIT for t in times)
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=str))
        return (
            f"{self.name:<14} probe p50 {statistics.median(times):6.3f} s max {max(times):6.3f} s"
            f" ({len(times)} sent, {late} over 1 s{', not 200: ' + str(dict(bad)) if bad else ''})"
            f" | worker peak {self.worker_peak / MiB:6.0f} MiB | model server peak"
            f" {self.model_peak / MiB:6.0f} MiB | records {self.records:+d} | {statuses}"
        )


def measure(target: Stack, attack: Attack, seconds: float) -> Row:
    row = Row(attack.name)
    for pid in (*workers(target.function), target.model.process.pid):
        reset_peak(pid)
    before = records(target.sqlite_path)
    probe = Probe(target.url)
    stop = threading.Event()
    seen: set[int] = set(workers(target.function))
    started = time.monotonic()
    with probe.running():
        result: list[Counter] = []
        runner = threading.Thread(
            target=lambda: result.append(attack.run(target, stop)), daemon=True
        )
        runner.start()
        while time.monotonic() - started < seconds:
            time.sleep(0.05)
            current = workers(target.function)
            seen |= set(current)
            row.worker_peak = max([row.worker_peak, *(vm(pid, "VmHWM") for pid in current)])
        stop.set()
        runner.join(180)
        for pid in workers(target.function):
            row.worker_peak = max(row.worker_peak, vm(pid, "VmHWM"))
    row.seconds = time.monotonic() - started
    row.model_peak = vm(target.model.process.pid, "VmHWM")
    row.statuses = result[0] if result else Counter({"no result": 1})
    if len(seen) > 1:
        row.statuses[f"workers seen: {len(seen)}"] = 1
    row.probes = probe.samples
    # What the attack made: the store's new records less the probe's own.
    row.records = records(target.sqlite_path) - before - sum(s == 200 for _, s in row.probes)
    return row


@contextmanager
def model_server() -> Iterator[stack.Server]:
    port = stack.free_port()
    argv = [sys.executable, "-m", "serving", "--rest_api_port", str(port), "--port", "0",
            "--allow_version_labels_for_unavailable_models",
            "--models_dir", str(stack.ROOT / "models"),
            "--model_config_file", str(stack.ROOT / "serving" / "models.config")]  # fmt: skip
    env = {**os.environ, **stack.QUIET_TF,
           "PYTHONPATH": f"{SERVING_SOURCE}:{SERVING_SOURCE / 'function'}"}  # fmt: skip
    log_path = Path(tempfile.gettempdir()) / f"hostile-load-model-server-{port}.log"
    with log_path.open("wb") as log:
        # From the source's directory: `python -m serving` finds the package there first.
        process = subprocess.Popen(argv, cwd=SERVING_SOURCE, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
        server = stack.Server("model-server", port, process, time.monotonic(), log_path)
        try:
            stack.wait_for(server, "/v1/models/mnist/labels/stable/metadata", interval=0.2)
            yield server
        finally:
            stack.stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--only", nargs="*", help="attack names (default: all)")
    args = parser.parse_args(argv)
    chosen = [a for a in ATTACKS if not args.only or a.name in args.only]
    make_bodies()
    print(f"function: {stack.FUNCTION_SOURCE}  model server: {SERVING_SOURCE}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, model_server() as model:
        sqlite_path = Path(tmp) / "predictions.sqlite3"
        env = {"API_TOKEN": TOKEN, "PREDICT_REQUIRES_TOKEN": "true", "MEMORY_LIMIT_MIB": "512"}
        with function_with(model.url, sqlite_path, env) as function:
            target = Stack(function, model, sqlite_path)
            post(target.url + "/predict", PROBE_IMAGE, "image/png", bearer())  # warm up
            for pid in workers(function):
                print(f"worker {pid}: idle {vm(pid, 'VmRSS') / MiB:.0f} MiB", flush=True)
            for attack in chosen:
                row = measure(target, attack, args.seconds)
                print(f"{row.line()}  [{attack.what}]", flush=True)
                time.sleep(1.0)  # let the last answers drain before the next attack
            for pid in workers(function):
                print(f"worker {pid}: after {vm(pid, 'VmRSS') / MiB:.0f} MiB", flush=True)
    return 0


@contextmanager
def function_with(model: str, sqlite_path: Path, env: dict[str, str]) -> Iterator[stack.Server]:
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with stack.function_server(model, sqlite_path, workers=1, threads=8, serve=True) as server:
            yield server
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    sys.exit(main())
