"""The prediction store at scale: the released layout beside the new one, in one run (#22).

One local Cassandra node (test speed: no fsync). Into one keyspace per layout, the same
simulated UTC day of records is written through each layout's own store code (the
released CassandraStore from git 474e2e1, this release's CassandraStore), at full speed
(4 threads, 64 records a save), each with a 300-byte upload. Then, per layout: the
partition sizes of the records table from `nodetool tablehistograms` (after a flush), the
largest partition from `nodetool tablestats`, a 20-record history page at depth 0 and at
depth 10,000 (p50/p99 of 20 reads), `rollout status`'s read, and an erasure.

    .venv/bin/python -m bench.store_scale [--records 1000000]

Prints the table and writes it to docs/perf/store-scale.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.cassandra.apply_schema import SCHEMA, apply, render, split_statements
from infra.cassandra.local import on_free_ports
from infra.rollout import figures
from recognizer.cassandra_store import CassandraSettings, CassandraStore
from recognizer.records import Record, Upload, new_record_id
from recognizer.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "perf" / "store-scale.json"
RELEASED = "474e2e1"
UPLOAD = b"\x89PNG\r\n\x1a\n" + bytes(292)  # a small PNG's size
PAGE = 20
DEPTH = 10_000
READS = 20


def git_show(path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{RELEASED}:{path}"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout


def released_store_class() -> Any:
    path = Path(tempfile.mkdtemp()) / "released_cassandra_store.py"
    path.write_text(git_show("function/recognizer/cassandra_store.py"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("released_cassandra_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.CassandraStore


def record_at(moment: datetime, n: int) -> Record:
    """A record as the function makes it, with its id's time at `moment`."""
    base = new_record_id()
    ticks = int((moment - datetime(1582, 10, 15, tzinfo=UTC)).total_seconds() * 10**7)
    record_id = base.__class__(
        fields=(
            ticks & 0xFFFFFFFF,
            (ticks >> 32) & 0xFFFF,
            (ticks >> 48) & 0x0FFF | 0x1000,
            base.clock_seq_hi_variant,
            base.clock_seq_low,
            base.node,
        )
    )
    digit = n % 10
    probabilities = tuple(0.91 if d == digit else 0.01 for d in range(10))
    return Record(
        id=record_id,
        created_at=moment.replace(microsecond=moment.microsecond // 1000 * 1000),
        digit=digit,
        confidence=0.91,
        probabilities=probabilities,
        model_name="mnist",
        model_version=5 if n % 100 else 6,  # a 1% canary
        model_label="stable" if n % 100 else "canary",
        input_image=bytes(range(256)) * 3 + bytes(16),
        upload=Upload(UPLOAD, "image/png", "ab" * 32, len(UPLOAD)),
        latency_ms=20.0 + n % 50,
        verdict=Verdict("digit", (digit,), ()),
        client_key=f"id:client-{n % 5000}",
    )


def write_day(store: Any, day: datetime, count: int) -> tuple[list[Record], float]:
    step = timedelta(days=1) / count
    records = [record_at(day + step * n, n) for n in range(count)]
    batches = [records[i : i + 64] for i in range(0, count, 64)]
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store.save, batches))
    return records, time.perf_counter() - started


def timed(call: Callable[[], object], reads: int = READS) -> dict[str, float]:
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(times[min(len(times) - 1, round(0.99 * (len(times) - 1)))], 1),
    }


def histograms(cluster: Any, keyspace: str, table: str) -> dict[str, object]:
    cluster.nodetool(1, "flush", keyspace)
    text = cluster.nodetool(1, "tablehistograms", keyspace, table)
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("50%", "75%", "95%", "99%", "Max"):
            rows[parts[0]] = {"partition_bytes": parts[-2], "cells": parts[-1]}
    stats = cluster.nodetool(1, "tablestats", f"{keyspace}.{table}")
    largest = re.search(r"Compacted partition maximum bytes: (\d+)", stats)
    partitions = re.search(r"Number of partitions \(estimate\): (\d+)", stats)
    live = re.search(r"Space used \(live\): (\d+)", stats)
    return {
        "percentiles": rows,
        "largest_partition_bytes": int(largest[1]) if largest else None,
        "partitions": int(partitions[1]) if partitions else None,
        "space_used_live_bytes": int(live[1]) if live else None,
    }


def old_layout(cluster: Any, settings: CassandraSettings, day: datetime, count: int) -> dict:
    store = released_store_class()(settings, clock=lambda: day + timedelta(hours=23, minutes=59))
    _, seconds = write_day(store, day, count)
    result: dict[str, object] = {"write_seconds": round(seconds, 1)}
    result["records_table"] = histograms(cluster, settings.keyspace, "predictions")
    result["page_depth_0"] = timed(lambda: store.recent(PAGE))
    # No cursor: a client reaching depth 10,000 has to read the 10,020 newest at once.
    result["page_depth_10000"] = timed(lambda: store.recent(DEPTH + PAGE), reads=5)
    since = day

    def status() -> object:
        # What the released `rollout status` did: the newest 10,000 records, blobs included.
        rows = [
            figures.Row(r.model_version, r.model_label, r.confidence, r.latency_ms, "digit")
            for r in store.recent(10_000)
            if r.created_at >= since
        ]
        return figures.summarize(rows, 0.5)

    result["status"] = timed(status, reads=3)
    result["status_counts"] = {f.version: f.requests for f in status()}
    result["erase"] = "no erasure in the released code"
    store.close()
    return result


def new_layout(cluster: Any, settings: CassandraSettings, day: datetime, count: int) -> dict:
    clock = lambda: day + timedelta(hours=23, minutes=59)  # noqa: E731
    store = CassandraStore(settings, clock=clock)
    records, seconds = write_day(store, day, count)
    store.close()  # flushes its per-version counts
    store = CassandraStore(settings, clock=clock)
    result: dict[str, object] = {"write_seconds": round(seconds, 1)}
    result["records_table"] = histograms(cluster, settings.keyspace, "records")
    result["page_depth_0"] = timed(lambda: store.page(PAGE))
    cursor = None
    for _ in range(DEPTH // 100):
        cursor = store.page(100, cursor).next
    result["page_depth_10000"] = timed(lambda: store.page(PAGE, cursor))
    since = day

    def status() -> object:
        return figures.store_figures(store, since, 0.5)

    result["status"] = timed(status, reads=3)
    result["status_counts"] = {f.version: f.requests for f in status()}
    victims = iter(records[:: max(1, count // 50)])
    result["erase"] = timed(lambda: store.delete(next(victims).id))
    store.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    root = Path(tempfile.mkdtemp(prefix="store-scale-"))
    cluster = on_free_ports(root, durable=False, report=print)
    results: dict[str, object] = {"records": args.records, "day": day.date().isoformat()}
    with cluster:
        first = cluster.members[0]
        point = ((first.address, first.native_port),)
        for name, schema, run in (
            ("released", git_show("infra/cassandra/schema.cql"), old_layout),
            ("new", SCHEMA.read_text(encoding="utf-8"), new_layout),
        ):
            keyspace = f"scale_{name}"
            settings = CassandraSettings(contact_points=point, keyspace=keyspace)
            apply(render(split_statements(schema), keyspace=keyspace), settings, report=print)
            print(f"writing {args.records:,} records into the {name} layout ...", flush=True)
            results[name] = run(cluster, settings, day, args.records)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            print(json.dumps(results[name], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
