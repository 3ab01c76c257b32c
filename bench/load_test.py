"""Issue 6's load test: 20,000 requests at concurrency 32 against the local stack, no errors.

The dev model server and the function (functions-framework, SQLite) as real processes,
hey as the load generator, the 28x28 PNG as the upload. Prints the error count, the
status histogram, throughput, p50/p99 and the function's memory before and after; exits
non-zero if any request failed.

    .venv/bin/python -m bench.load_test [--requests 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench import images, stack


def load_test(
    model_url: str,
    requests: int = 20_000,
    concurrency: int = 32,
    workers: int = 2,
    threads: int = 4,
    source: Path = stack.FUNCTION_SOURCE,
) -> dict:
    """The hey result, memory before and after, and how many records SQLite holds."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.sqlite3"
        with stack.function_server(model_url, db, workers, threads, source) as server:
            before = stack.memory(server.process.pid)
            load = stack.hey(
                f"{server.url}/predict", concurrency, images.mnist_png(), images.PNG, requests
            )
            after = stack.memory(server.process.pid)
        with sqlite3.connect(db) as connection:
            (recorded,) = connection.execute("SELECT count(*) FROM predictions").fetchone()
    return {
        "load": asdict(load) | {"failures": load.failures},
        "memory_before": asdict(before),
        "memory_after": asdict(after),
        "recorded": recorded,
        "workers": workers,
        "threads": threads,
    }


def print_result(result: dict) -> None:
    load = result["load"]
    print(f"requests {load['requests']:,}  failures {load['failures']}")
    print(f"status codes {load['statuses']}  transport errors {load['errors'] or 'none'}")
    print(
        f"throughput {load['rps']:.1f} req/s  p50 {load['p50_ms']:.1f} ms  "
        f"p99 {load['p99_ms']:.1f} ms  ({load['seconds']:.1f} s)"
    )
    for when in ("before", "after"):
        memory = result[f"memory_{when}"]
        print(
            f"function memory {when}: RSS {memory['rss_mb']:.0f} MB, PSS {memory['pss_mb']:.0f} MB "
            f"({memory['processes']} processes)"
        )
    print(f"records in SQLite: {result['recorded']:,}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    stack.add_stack_arguments(parser)
    args = parser.parse_args()
    with stack.model_server(batching=args.batching) as server:
        result = load_test(server.url, args.requests, args.concurrency, args.workers, args.threads)
    print_result(result)
    return 1 if result["load"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
