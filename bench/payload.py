"""Bytes per image of the model server's predict request, as the function really sends it.

A recording proxy sits between the in-process function and the dev model server and
counts the body of every :predict request. For comparison: what the same images cost as
float32 inputs scaled to [0, 1] (what a seed-style client that scales before sending
would put in a REST request).

    .venv/bin/python -m bench.payload
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests

from bench import images, stack


@contextmanager
def _recording_proxy(upstream: str) -> Iterator[tuple[str, list[int]]]:
    """A forwarding proxy on a free port; yields its URL and the sizes of :predict bodies."""
    sizes: list[int] = []
    session = requests.Session()

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.endswith(":predict"):
                sizes.append(len(body))
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            answer = session.request(
                self.command, upstream + self.path, data=body or None, headers=headers
            )
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = _relay

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sizes
    finally:
        server.shutdown()
        server.server_close()
        session.close()


def payload_sizes(model_url: str, source: Path = stack.FUNCTION_SOURCE) -> dict:
    """Bytes per image of the function's predict request for 1 and 64 images, and alternatives."""
    png = images.mnist_png()
    results: dict[str, float] = {}
    with (
        _recording_proxy(model_url) as (proxy_url, sizes),
        stack.in_process_client(proxy_url, source) as client,
    ):
        for count in (1, 64):
            body, content_type = images.multipart([png] * count)
            sizes.clear()
            response = client.post("/predict", data=body, content_type=content_type)
            assert response.status_code == 200, response.get_data(as_text=True)
            results[f"function, {count} image(s)"] = sizes[-1] / count
    pixels = images.digit()
    scaled = (pixels.astype(np.float32) / 255.0).tolist()
    results["float32 [0,1] inputs"] = len(_predict_json([scaled]))
    return results


def _predict_json(batch: list) -> bytes:
    """Serialised the way requests' json= does (json.dumps with default separators)."""
    # Imported here, after in_process_client loaded the function: BENCH_FUNCTION_SOURCE's.
    from recognizer import contract

    doc = {"signature_name": contract.SIGNATURE, "inputs": {contract.IMAGE: batch}}
    return json.dumps(doc).encode()


def main() -> None:
    with stack.model_server() as server:
        for name, size in payload_sizes(server.url).items():
            print(f"{name:<45} {size:9,.0f} bytes per image")


if __name__ == "__main__":
    main()
