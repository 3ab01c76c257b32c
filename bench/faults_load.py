"""Issue 12's figures: the worker's peak memory over the hostile corpus, and load with faults.

1. Peak memory: one gunicorn worker with functions-framework's default threads, the whole
   corpus (tests/data/hostile) sent once a request at a time, then twice 8 at a time; the
   worker's VmHWM (reset through /proc/<pid>/clear_refs before each part) over its idle RSS.
2. Load with faults: 32 client threads, each sending the 28x28 PNG as fast as it is
   answered, while the model server is frozen (SIGSTOP) and resumed, and then the store is
   made unavailable and comes back: on SQLite its directory is moved away (a file put in
   its place, so nothing can be made there) and back, on
   Cassandra (--store cassandra) the node is frozen (SIGSTOP) and resumed. Prints answers
   by status and error code per phase, answers outside the JSON contract, and reads every
   200's prediction back afterwards: acknowledged predictions lost must be 0.

    .venv/bin/python -m bench.faults_load [--store sqlite|cassandra] [--phase 6]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import stack
from tests.data.hostile import corpus

ROOT = Path(__file__).resolve().parent.parent
IMAGE = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
CONTRACT = frozenset({200, 503, 504})
MiB = 1024 * 1024
# Past MODEL_SERVER_TIMEOUT_SECONDS (5 s): requests sent to the frozen server time out (504).
FREEZE_SECONDS = 8.0


def vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def worker_of(server: stack.Server) -> int:
    (worker,) = stack.process_tree(server.process.pid)[1:]
    return worker


def send(url: str, entry: corpus.Entry) -> int:
    response = requests.request(
        entry.method, url + entry.url, headers=entry.headers, data=entry.body, timeout=60
    )
    return response.status_code


def corpus_memory(model_url: str) -> dict[str, float]:
    """Idle RSS, and the peak over the corpus alone and at concurrency 8, in MiB."""
    entries = corpus.entries()
    with (
        tempfile.TemporaryDirectory() as tmp,
        stack.function_server(model_url, Path(tmp) / "c.sqlite3", workers=1, threads=8) as server,
    ):
        worker = worker_of(server)
        requests.get(server.url + "/readyz", timeout=10)
        idle = vm(worker, "VmRSS")
        reset_peak(worker)
        statuses = Counter(send(server.url, entry) for entry in entries)
        alone = vm(worker, "VmHWM")
        reset_peak(worker)
        with ThreadPoolExecutor(8) as pool:
            statuses += Counter(pool.map(lambda e: send(server.url, e), entries * 2))
        concurrent = vm(worker, "VmHWM")
    return {
        "entries": len(entries),
        "idle_mib": idle / MiB,
        "peak_alone_mib": alone / MiB,
        "peak_concurrent_mib": concurrent / MiB,
        "statuses": dict(sorted(statuses.items())),
    }


class ClosedLoad:
    """`threads` clients, each posting as soon as its last answer came; answers by phase."""

    def __init__(self, url: str, threads: int) -> None:
        self._url = url
        self._stop = threading.Event()
        self.phase = "before"
        self.answers: list[tuple[str, int, str | None, str | None]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            phase, status, code, prediction = self.phase, 0, None, None
            try:
                response = session.post(
                    self._url + "/predict",
                    data=IMAGE,
                    headers={"Content-Type": "image/png"},
                    timeout=30,
                )
                status = response.status_code
                body = response.json()
                if status == 200:
                    prediction = body["predictions"][0]["id"]
                else:
                    code = body["error"]["code"]
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass  # no answer, or not the JSON contract: counted as such
            with self._lock:
                self.answers.append((phase, status, code, prediction))


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def faults_under_load(
    model: stack.Server, store: str, phase_seconds: float, concurrency: int
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        store_env, cluster, node = None, None, None
        if store == "cassandra":
            cluster, store_env = start_cassandra(Path(tmp) / "cassandra")
            node = cluster.node(1)
        try:
            with stack.function_server(
                model.url, data / "log.sqlite3", workers=2, threads=4, store_env=store_env
            ) as server:
                load = ClosedLoad(server.url, concurrency)
                load.start()
                time.sleep(phase_seconds)
                load.phase = "model server frozen"
                freeze(model.process.pid)
                time.sleep(max(phase_seconds, FREEZE_SECONDS))
                thaw(model.process.pid)
                load.phase = "model server resumed"
                time.sleep(phase_seconds)
                load.phase = "store unavailable"
                if node is None:  # root writes through chmod: a file where the directory was
                    data.rename(Path(tmp) / "moved")
                    data.write_bytes(b"")
                else:
                    freeze(node.process.pid)
                time.sleep(phase_seconds)
                if node is None:
                    data.unlink()
                    (Path(tmp) / "moved").rename(data)
                else:
                    thaw(node.process.pid)
                load.phase = "store back"
                time.sleep(2 * phase_seconds)
                load.stop()  # each answer counts in the phase its request was sent in
                acknowledged = [a[3] for a in load.answers if a[1] == 200]
                with ThreadPoolExecutor(8) as pool:
                    lost = sum(
                        pool.map(
                            lambda i: (
                                requests.get(
                                    f"{server.url}/predictions/{i}", timeout=30
                                ).status_code
                                != 200
                            ),
                            acknowledged,
                        )
                    )
        finally:
            if cluster is not None:
                cluster.stop(grace=20)
    phases: dict[str, Counter] = {}
    for phase, status, code, _ in load.answers:
        phases.setdefault(phase, Counter())[f"{status} {code}" if code else str(status)] += 1
    return {
        "store": store,
        "concurrency": concurrency,
        "requests": len(load.answers),
        "by_phase": {p: dict(sorted(c.items())) for p, c in phases.items()},
        "by_status": dict(sorted(Counter(a[1] for a in load.answers).items())),
        "outside_contract": sum(
            a[1] not in CONTRACT or (a[1] != 200 and a[2] is None) for a in load.answers
        ),
        "acknowledged": len(acknowledged),
        "lost": lost,
    }


def start_cassandra(root: Path):
    """A one-node Cassandra with the schema applied; (the cluster, the function's env)."""
    from infra.cassandra.__main__ import schema_statements
    from infra.cassandra.apply_schema import apply
    from infra.cassandra.local import LocalCluster, free_ports
    from recognizer.cassandra_store import CassandraSettings

    native, storage, jmx = free_ports(3, ["127.0.0.1"])
    cluster = LocalCluster(
        root, nodes=1, native_port=native, storage_port=storage, jmx_port=jmx,
        durable=False, report=lambda line: None,
    ).start()  # fmt: skip
    first = cluster.members[0]
    settings = CassandraSettings(contact_points=((first.address, first.native_port),))
    apply(schema_statements("mnist", cluster.nodes), settings, report=lambda _: None)
    env = {
        "PREDICTION_STORE": "cassandra",
        "CASSANDRA_CONTACT_POINTS": cluster.contact_points,
        "CASSANDRA_KEYSPACE": "mnist",
        "CASSANDRA_REQUEST_TIMEOUT_SECONDS": "2",
    }
    return cluster, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "cassandra"], default="sqlite")
    parser.add_argument("--phase", type=float, default=6, help="seconds per phase (6)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    with stack.model_server() as model:
        if not args.skip_memory:
            memory = corpus_memory(model.url)
            print(
                f"corpus ({memory['entries']} entries), one worker, 8 threads: idle "
                f"{memory['idle_mib']:.0f} MiB, peak alone {memory['peak_alone_mib']:.0f} MiB, "
                f"peak at concurrency 8 (corpus twice) {memory['peak_concurrent_mib']:.0f} MiB; "
                f"statuses {memory['statuses']}"
            )
        result = faults_under_load(model, args.store, args.phase, args.concurrency)
    print(f"load with faults ({result['store']}, concurrency {result['concurrency']}):")
    print(f"  requests {result['requests']:,}, by status {result['by_status']}")
    for phase, counts in result["by_phase"].items():
        print(f"  {phase}: {counts}")
    print(f"  answers outside the JSON contract (not 200/503/504, or no error code): "
          f"{result['outside_contract']}")  # fmt: skip
    print(f"  acknowledged (200) {result['acknowledged']:,}, lost {result['lost']}")
    return 1 if result["lost"] or result["outside_contract"] else 0


if __name__ == "__main__":
    sys.exit(main())
