"""Per-request overhead of the function itself, in-process, by stage.

The real Flask app (functions_framework.create_app, the test client) against the real
dev model server and a real SQLite file. Stages come from Recognition.timings_ms
(decode, preprocess, model, store); `handle` is the time inside Api.handle (routing,
reading the body, the recognition, the JSON answer), so `read+respond` is handle minus
the recognition stages and `overhead` is handle minus the model call. `in-process` adds
functions-framework's and Flask's dispatch (the test client's time).

    .venv/bin/python -m bench.overhead [--requests 300]
    .venv/bin/python -m bench.overhead --baseline DIR [--rounds 5]

With `--baseline`, a copy of function/ from an earlier commit (`git archive <commit>
function | tar -x -C /tmp/base`, then DIR=/tmp/base/function) is measured in the same run,
against the same model server, in alternating rounds (each in a fresh process, so the two
`recognizer` packages never meet), and the medians of the rounds' p50s are printed side by
side: on a shared machine, alternating is what makes the two comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def loaded_package() -> str:
    """Where the `recognizer` package measured in this process came from."""
    return str(Path(sys.modules["recognizer"].__file__).parent)


def print_table(results: dict) -> None:
    for name, result in results.items():
        print(f"{name} ({result['bytes']:,} bytes)")
        for stage, values in result["stages"].items():
            print(f"  {stage:<13} p50 {values['p50']:7.2f} ms   p99 {values['p99']:7.2f} ms")


def _measured_in_a_process(model_url: str, requests: int, source: Path) -> dict:
    """`measure` of `source` in a fresh interpreter: one `recognizer` package per process."""
    argv = [sys.executable, "-m", "bench.overhead", "--requests", str(requests)]
    argv += ["--model-url", model_url, "--json"]
    env = {**os.environ, "BENCH_FUNCTION_SOURCE": str(source)}
    done = subprocess.run(argv, cwd=stack.ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measuring {source} failed:\n{done.stderr[-2000:]}")
    measured = json.loads(done.stdout.splitlines()[-1])
    if Path(measured["package"]) != source / "recognizer":
        raise SystemExit(f"asked to measure {source}, measured {measured['package']}")
    return measured["uploads"]


def compare(model_url: str, baseline: Path, requests: int, rounds: int) -> None:
    """Baseline and current in alternating rounds; the median of each side's p50s."""
    sides: dict[str, list[dict]] = {"baseline": [], "current": []}
    for _ in range(rounds):
        for side, source in (("baseline", baseline), ("current", stack.FUNCTION_SOURCE)):
            sides[side].append(_measured_in_a_process(model_url, requests, source))
    print(f"p50 in ms, median of {rounds} alternating rounds of {requests} requests")
    for name in sides["current"][0]:
        print(f"{name:<14} {'baseline':>9} {'current':>9} {'change':>8}")
        for stage in (*STAGES, "in-process"):
            base, now = (
                float(np.median([run[name]["stages"][stage]["p50"] for run in runs]))
                for runs in (sides["baseline"], sides["current"])
            )
            print(f"  {stage:<12} {base:9.2f} {now:9.2f} {(now / base - 1) * 100:+7.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--baseline", type=Path, help="an earlier function/ to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-url", help="a running model server (default: start one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.model_url is not None:  # one side of a comparison, or a server of your own
        results = measure(args.model_url, args.requests)
        if args.json:
            print(json.dumps({"package": loaded_package(), "uploads": results}))
        else:
            print_table(results)
        return
    with stack.model_server() as server:
        if args.baseline is not None:
            compare(server.url, args.baseline.resolve(), args.requests, args.rounds)
        else:
            print_table(measure(server.url, args.requests))


if __name__ == "__main__":
    main()
