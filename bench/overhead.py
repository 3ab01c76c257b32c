"""Per-request overhead of the function itself, in-process, by stage.

The real Flask app (functions_framework.create_app, the test client) against the real
dev model server and a real SQLite file. Stages come from Recognition.timings_ms
(decode, preprocess, model, store); `handle` is the time inside Api.handle (routing,
reading the body, the recognition, the JSON answer), so `read+respond` is handle minus
the recognition stages and `overhead` is handle minus the model call. `in-process` adds
functions-framework's and Flask's dispatch (the test client's time).

    .venv/bin/python -m bench.overhead [--requests 300]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import images, stack

STAGES = ("decode", "preprocess", "model", "store", "read+respond", "handle", "overhead")


def _instrument() -> list[dict[str, float]]:
    """Wrap Api.handle and Recognizer.recognize of the loaded function to record timings."""
    api = sys.modules["recognizer.api"].Api
    recognizer = sys.modules["recognizer.service"].Recognizer
    samples: list[dict[str, float]] = []
    current = threading.local()
    handle, recognize = api.handle, recognizer.recognize

    def timed_handle(self: Any, request: Any) -> Any:
        current.timings = {}
        started = time.perf_counter()
        response = handle(self, request)
        sample = {"handle": (time.perf_counter() - started) * 1000, **current.timings}
        samples.append(sample)
        return response

    def timed_recognize(self: Any, *args: Any, **kwargs: Any) -> Any:
        recognition = recognize(self, *args, **kwargs)
        current.timings = dict(recognition.timings_ms)
        return recognition

    api.handle, recognizer.recognize = timed_handle, timed_recognize
    return samples


def _percentiles(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    table = {}
    for stage in STAGES:
        values = np.array([sample[stage] for sample in samples])
        table[stage] = {
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
        }
    return table


def measure(model_url: str, requests: int = 300, source: Path = stack.FUNCTION_SOURCE) -> dict:
    """{upload name: {stage: {p50, p99}}} for the 28x28 PNG and the 640x480 JPEG."""
    with stack.in_process_client(model_url, source) as client:
        samples = _instrument()
        results = {}
        uploads = {
            "28x28 PNG": (images.mnist_png(), images.PNG),
            "640x480 JPEG": (images.photo_jpeg(), images.JPEG),
        }
        for name, (body, content_type) in uploads.items():
            for _ in range(20):  # warm-up: connections, label cache, SQLite file
                client.post("/predict", data=body, content_type=content_type)
            samples.clear()
            totals = []
            for _ in range(requests):
                started = time.perf_counter()
                response = client.post("/predict", data=body, content_type=content_type)
                totals.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.get_data(as_text=True)
            for sample, total in zip(samples, totals, strict=True):
                recognition = sum(sample[s] for s in ("decode", "preprocess", "model", "store"))
                sample["read+respond"] = sample["handle"] - recognition
                sample["overhead"] = sample["handle"] - sample["model"]
                sample["in-process"] = total
            table = _percentiles(samples)
            in_process = np.array([s["in-process"] for s in samples])
            table["in-process"] = {
                "p50": float(np.percentile(in_process, 50)),
                "p99": float(np.percentile(in_process, 99)),
            }
            results[name] = {"bytes": len(body), "stages": table}
        return results


def print_table(results: dict) -> None:
    for name, result in results.items():
        print(f"{name} ({result['bytes']:,} bytes)")
        for stage, values in result["stages"].items():
            print(f"  {stage:<13} p50 {values['p50']:7.2f} ms   p99 {values['p99']:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with stack.model_server() as server:
        print_table(measure(server.url, args.requests))


if __name__ == "__main__":
    main()
