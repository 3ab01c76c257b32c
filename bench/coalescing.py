"""The stack against the recording monolith, coalescing off and on, in one run (issue 28).

One development model server (server-side batching, as `make demo`), the function
(2 workers x 4 threads, as `make demo`) with COALESCE_WINDOW_MS=0 (off) and at its
default (on), on SQLite (WAL, synchronous=FULL) and on one real Cassandra node (fsync
before each acknowledged write), and the monolith (bench/baseline/app.py: Flask and
TensorFlow in-process under gunicorn 2 x 4, recording to SQLite with WAL and
synchronous=FULL). Each takes the 28x28 PNG from `hey` for `--seconds` at each
concurrency, after 200 requests to warm up; CPU time per request of each process group
comes from /proc (the function's workers, the model server, the Cassandra node, the
monolith's workers). Then the 64-image ratio: one request of 64 against 64 of one, on
SQLite, coalescing off and on.

    .venv/bin/python -m bench.coalescing [--seconds 6] [--no-cassandra] [--concurrency 1 8 32]

Prints the table and adds it to docs/perf/results.json and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from bench import images, report, stack, throughput
from bench.profile_stack import hey_with_cpu, process_cpu_s
from bench.stores import cassandra_node

CONCURRENCY = (1, 8, 32)
WARM_UP_REQUESTS = 200
OFF, ON = "0", None  # COALESCE_WINDOW_MS: off, and the function's default


def _window_env(window: str | None) -> dict[str, str]:
    return {} if window is None else {"COALESCE_WINDOW_MS": window}


def _cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(process_cpu_s(pid) for pid in pids) for name, pids in groups.items()}


def measure(
    url: str, groups: Callable[[], dict[str, list[int]]], seconds: float, concurrency: tuple
) -> dict:
    """hey at each concurrency, with CPU ms per request of each process group and of hey."""
    png = images.mnist_png()
    warm_up = stack.hey(url, 8, png, images.PNG, requests=WARM_UP_REQUESTS)
    result: dict = {"warm_up_failures": warm_up.failures, "load": {}}
    for c in concurrency:
        processes = groups()
        before = _cpu(processes)
        load, hey_cpu = hey_with_cpu(url, png, images.PNG, c, seconds)
        after = _cpu(processes)
        cpu_ms = {name: (after[name] - before[name]) / load.requests * 1000 for name in after}
        cpu_ms["hey (load generator)"] = hey_cpu / load.requests * 1000
        result["load"][str(c)] = asdict(load) | {
            "failures": load.failures,
            "cpu_ms_per_request": cpu_ms,
        }
    return result


@contextmanager
def _cassandra_env(root: Path, enabled: bool) -> Iterator[tuple[dict[str, str], list[int]]]:
    if not enabled:
        yield {}, []
        return
    with cassandra_node(root) as node:
        env = {
            "PREDICTION_STORE": "cassandra",
            "CASSANDRA_CONTACT_POINTS": node.contact_points,
            "CASSANDRA_KEYSPACE": "mnist",
        }
        yield env, [node.node(1).process.pid]


def compare(
    model: stack.Server,
    seconds: float,
    concurrency: tuple[int, ...],
    cassandra: bool = True,
    batch_rounds: int = 20,
) -> dict:
    """Every system's figures, one after another in this one run."""
    load_at_start = os.getloadavg()[0]
    started = time.monotonic()
    model_pids = stack.process_tree(model.process.pid)
    results: dict = {"systems": {}, "batches": {}}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stop:
        db = Path(tmp)
        systems: list[tuple[str, str | None, bool]] = [
            ("stack, SQLite, coalescing off", OFF, False),
            ("stack, SQLite, coalescing on", ON, False),
        ]
        if cassandra:
            systems += [
                ("stack, Cassandra, coalescing off", OFF, True),
                ("stack, Cassandra, coalescing on", ON, True),
            ]
        node_env, node_pids = stop.enter_context(_cassandra_env(db / "cassandra", cassandra))
        with stack.baseline_server(db / "monolith.sqlite3", 2, 4) as monolith:
            results["systems"]["monolith, SQLite"] = measure(
                f"{monolith.url}/predict",
                lambda: {
                    "monolith (gunicorn, its workers)": stack.process_tree(monolith.process.pid)
                },
                seconds,
                concurrency,
            )
        for n, (name, window, on_cassandra) in enumerate(systems):
            env = _window_env(window) | (node_env if on_cassandra else {})
            server_cm: AbstractContextManager[stack.Server] = stack.function_server(
                model.url, db / f"stack{n}.sqlite3", 2, 4, store_env=env
            )
            with server_cm as server:

                def groups(server: stack.Server = server, on: bool = on_cassandra) -> dict:
                    found = {
                        "function (gunicorn, its workers)": stack.process_tree(server.process.pid),
                        "model server": model_pids,
                    }
                    if on:
                        found["Cassandra node"] = node_pids
                    return found

                results["systems"][name] = measure(
                    f"{server.url}/predict", groups, seconds, concurrency
                )
                if not on_cassandra:
                    results["batches"][name] = throughput.batches(server.url, batch_rounds)
    results["seconds"] = seconds
    results["elapsed_s"] = time.monotonic() - started
    results["load_average"] = [load_at_start, os.getloadavg()[0]]
    return results


def print_table(result: dict) -> None:
    for name, system in result["systems"].items():
        print(name)
        for c, load in system["load"].items():
            cpu = " ".join(
                f"{k.split(' ')[0]} {v:.2f}" for k, v in load["cpu_ms_per_request"].items()
            )
            print(
                f"  c={c:<3} {load['rps']:7.1f} req/s  p50 {load['p50_ms']:6.1f} ms  "
                f"p99 {load['p99_ms']:6.1f} ms  failures {load['failures']}  CPU ms/req: {cpu}"
            )
    for name, batch in result["batches"].items():
        print(f"{name}: 64 images in one request {batch['ratio']:.1f}x the images/s of single ones")
    print("load average {:.1f} at the start, {:.1f} at the end".format(*result["load_average"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--no-cassandra", dest="cassandra", action="store_false")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only")
    args = parser.parse_args()
    with stack.model_server(batching=True) as model:
        result = compare(model, args.seconds, tuple(args.concurrency), args.cassandra)
    print_table(result)
    if args.write:
        results = json.loads(report.RESULTS.read_text())  # the last full run's, with this one's
        results["coalescing"] = result
        report.RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        report.write(results)


if __name__ == "__main__":
    main()
