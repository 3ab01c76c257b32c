"""The function on Cassandra beside the function on SQLite, in one run (issue 10).

One dev model server, one real Cassandra node with the demo's durable settings (fsync
before each acknowledged write) and one SQLite file with the function's own settings
(WAL, synchronous=FULL). For each store the same function (2 workers x 4 threads) takes
the same 28x28 PNG at concurrency 1 and 8 from `hey`; the store stage alone comes from
the function's own request log (`latency_ms.store`); the node's memory from /proc.

    .venv/bin/python -m bench.stores [--requests 2000]

Prints the table and adds it to docs/perf/results.json and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from bench import images, report, stack
from infra.cassandra.__main__ import apply_local_schema
from infra.cassandra.local import LocalCluster, on_free_ports

CONCURRENCY = (1, 8)


@contextmanager
def cassandra_node(root: Path) -> Iterator[LocalCluster]:
    cluster = on_free_ports(root, durable=True, report=lambda _: None)
    with cluster:
        apply_local_schema(cluster)
        yield cluster


def store_stage_ms(log: Path, skip: int) -> dict[str, float]:
    """p50/p99 of the store stage over the POST /predict lines after the first `skip`."""
    stages = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"POST /predict 200"' in line:
            stage = json.loads(line)["latency_ms"].get("store")
            if stage is not None:
                stages.append(stage)
    stages = stages[skip:]
    if len(stages) < 2:
        return {"p50": float("nan"), "p99": float("nan"), "samples": len(stages)}
    cuts = statistics.quantiles(stages, n=100)
    return {"p50": statistics.median(stages), "p99": cuts[98], "samples": len(stages)}


def measure(model_url: str, db: Path, store_env: dict[str, str], requests: int) -> dict:
    body = images.mnist_png()
    result: dict = {}
    with stack.function_server(model_url, db, 2, 4, store_env=store_env) as server:
        stack.hey(f"{server.url}/predict", 4, body, images.PNG, 200)  # warm-up
        done = 200
        for concurrency in CONCURRENCY:
            count = requests // 4 if concurrency == 1 else requests
            load = stack.hey(f"{server.url}/predict", concurrency, body, images.PNG, count)
            result[f"c{concurrency}"] = asdict(load) | {
                "failures": load.failures,
                "store_stage_ms": store_stage_ms(server.log, done),
            }
            done += count
        result["function_memory"] = asdict(stack.memory(server.process.pid))
    return result


def compare(model_url: str, requests: int = 2000) -> dict:
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = measure(model_url, Path(tmp) / "bench.sqlite3", {}, requests)
        with cassandra_node(Path(tmp) / "cassandra") as node:
            cassandra = measure(
                model_url,
                Path(tmp) / "unused.sqlite3",
                {
                    "PREDICTION_STORE": "cassandra",
                    "CASSANDRA_CONTACT_POINTS": node.contact_points,
                    "CASSANDRA_KEYSPACE": "mnist",
                },
                requests,
            )
            cassandra["node_memory"] = asdict(stack.memory(node.node(1).process.pid))
    return {
        "sqlite": sqlite,
        "cassandra": cassandra,
        "requests": requests,
        "load_average": [load_at_start, os.getloadavg()[0]],
    }


def print_table(result: dict) -> None:
    print(f"{'':<28}{'SQLite':>14}{'Cassandra':>14}")
    for concurrency in CONCURRENCY:
        key = f"c{concurrency}"
        rows = [
            (f"c={concurrency} req/s", "rps", "{:.0f}"),
            (f"c={concurrency} p50 ms", "p50_ms", "{:.1f}"),
            (f"c={concurrency} p99 ms", "p99_ms", "{:.1f}"),
            (f"c={concurrency} failures", "failures", "{}"),
        ]
        for label, field, fmt in rows:
            a, b = result["sqlite"][key][field], result["cassandra"][key][field]
            print(f"{label:<28}{fmt.format(a):>14}{fmt.format(b):>14}")
        for cut in ("p50", "p99"):
            a = result["sqlite"][key]["store_stage_ms"][cut]
            b = result["cassandra"][key]["store_stage_ms"][cut]
            print(f"{f'c={concurrency} store stage {cut} ms':<28}{a:>14.2f}{b:>14.2f}")
    node = result["cassandra"]["node_memory"]
    print(f"Cassandra node RSS {node['rss_mb']:.0f} MB (heap 512 MB)")
    print("load average at start and end: {:.1f}, {:.1f}".format(*result["load_average"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="at concurrency 8 (c=1: /4)")
    args = parser.parse_args()
    with stack.model_server(batching=True) as server:
        result = compare(server.url, args.requests)
    print_table(result)
    results = json.loads(report.RESULTS.read_text())  # the last full run's, with this one's
    results["stores"] = result
    report.RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    report.write(results)


if __name__ == "__main__":
    main()
