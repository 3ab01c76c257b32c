"""Every benchmark on the local stack, then docs/performance.md and its plots (`make bench`).

Runs in about 8 minutes on 2 cores, most of it the 20,000-request load test. The
function runs as configured here (WORKERS, THREADS, model server batching); the
baseline gets the same workers and threads.
Raw numbers go to docs/perf/results.json, so the report can be redrawn without
measuring again (`--report-only`).

    .venv/bin/python -m bench.run_all [--workers 2] [--threads 4] [--no-batching]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    cold_start,
    load_test,
    model_server_speed,
    overhead,
    payload,
    report,
    stack,
    stores,
    throughput,
)

LEVERS = [  # (workers, threads, model server batching) tried at concurrency 8 and 32
    (1, 8, False),  # functions-framework's defaults on 2 cores (THREADS = 4 x cores)
    (1, 4, False),
    (2, 4, False),
    (1, 4, True),
    (2, 4, True),
]


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": os.getloadavg()[0],
    }


def _step(name: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.0f} s] {name}", flush=True)


def run(workers: int, threads: int, batching: bool, load_requests: int) -> dict:
    started = time.monotonic()
    results: dict = {
        "machine": machine(),
        "config": {"workers": workers, "threads": threads, "model_server_batching": batching},
    }
    _step("import time", started)
    results["import_time"] = cold_start.import_time()
    with stack.model_server(batching=batching) as server:
        _step("cold start", started)
        results["cold_start"] = cold_start.cold_starts(server.url, repeats=3)
        _step("per-request overhead (in-process)", started)
        results["overhead"] = overhead.measure(server.url)
        _step("model server payload", started)
        results["payload"] = payload.payload_sizes(server.url)
        _step("end to end, function and baseline", started)
        results["end_to_end"] = throughput.end_to_end(server.url, 6, workers, threads)
        _step("batches", started)
        with (
            tempfile.TemporaryDirectory() as tmp,
            stack.function_server(
                server.url, Path(tmp) / "f.sqlite3", workers, threads
            ) as function,
        ):
            results["batches"] = throughput.batches(function.url)
        _step(f"load test ({load_requests:,} requests at concurrency 32)", started)
        results["load_test"] = load_test.load_test(server.url, load_requests, 32, workers, threads)
        _step("SQLite and Cassandra", started)
        results["stores"] = stores.compare(server.url)
    _step("model server speed: issue 15's targets side by side with the baseline", started)
    results["model_server_speed"] = model_server_speed.measure(6, workers, threads)
    _step("model server with and without batching", started)
    results["model_server_batching"] = throughput.model_server_batching()
    _step("levers: workers, threads, batching", started)
    results["levers"] = []
    for lever_workers, lever_threads, lever_batching in LEVERS:
        with stack.model_server(batching=lever_batching) as server:
            measured = throughput.end_to_end(
                server.url,
                4,
                lever_workers,
                lever_threads,
                concurrency=(8, 32),
                baseline=False,
            )["function"]
        results["levers"].append(
            {
                "workers": lever_workers,
                "threads": lever_threads,
                "batching": lever_batching,
                "load": measured["load"],
                "memory": measured["memory"],
            }
        )
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    results["machine"]["total_seconds"] = time.monotonic() - started
    _step("done", started)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stack.add_stack_arguments(parser)
    parser.add_argument("--load-requests", type=int, default=20_000)
    parser.add_argument("--report-only", action="store_true", help="redraw from results.json")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(report.RESULTS.read_text())
    else:
        results = run(args.workers, args.threads, args.batching, args.load_requests)
        report.RESULTS.parent.mkdir(parents=True, exist_ok=True)
        report.RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        results = json.loads(report.RESULTS.read_text())  # the report reads what was saved
    report.write(results)
    print(f"wrote {report.MARKDOWN.relative_to(stack.ROOT)} and docs/perf/*.png")


if __name__ == "__main__":
    main()
