"""End-to-end throughput and latency over real HTTP (hey), memory after warm-up, batches.

- `end_to_end`: POST /predict of the 28x28 PNG at concurrency 1, 8 and 32, for the
  function (dev model server + SQLite) and for the baseline; RSS/PSS after 200 warm-up
  requests, summed over gunicorn's master and workers.
- `batches`: images per second for one request of 64 images against 64 requests of one.
- `model_server_batching`: the dev model server alone, one image per :predict, with and
  without --enable_batching (serving/batching.config), images per second by concurrency.

    .venv/bin/python -m bench.throughput [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench import images, stack
from recognizer import contract

CONCURRENCY = (1, 8, 32)
WARM_UP_REQUESTS = 200


def _measure(server: stack.Server, seconds: float, concurrency: tuple[int, ...]) -> dict:
    png = images.mnist_png()
    url = f"{server.url}/predict"
    warm_up = stack.hey(url, 8, png, images.PNG, requests=WARM_UP_REQUESTS)
    memory = stack.memory(server.process.pid)
    loads = {c: stack.hey(url, c, png, images.PNG, seconds=seconds) for c in concurrency}
    return {
        "memory": asdict(memory),
        "warm_up_failures": warm_up.failures,
        "load": {c: asdict(load) | {"failures": load.failures} for c, load in loads.items()},
    }


def end_to_end(
    model_url: str,
    seconds: float = 6,
    workers: int = 2,
    threads: int = 4,
    source: Path = stack.FUNCTION_SOURCE,
    concurrency: tuple[int, ...] = CONCURRENCY,
    baseline: bool = True,
) -> dict:
    """{"function": ..., "baseline": ...} each with memory and a hey result per concurrency."""
    systems: dict[str, AbstractContextManager[stack.Server]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp)
        systems["function"] = stack.function_server(
            model_url, db / "f.sqlite3", workers, threads, source
        )
        if baseline:
            systems["baseline"] = stack.baseline_server(db / "b.sqlite3", workers, threads)
        results = {}
        for name, system in systems.items():
            with system as server:
                results[name] = _measure(server, seconds, concurrency)
        return results


def batches(function_url: str, rounds: int = 20) -> dict:
    """Images/s sent one request of 64 at a time versus one image per request (concurrency 1)."""
    png = images.mnist_png()
    body, content_type = images.multipart([png] * 64)
    batched = stack.hey(f"{function_url}/predict", 1, body, content_type, requests=rounds)
    single = stack.hey(f"{function_url}/predict", 1, png, images.PNG, requests=64 * rounds // 4)
    result = {
        "batch_of_64": {"images_per_s": 64 * batched.rps, "failures": batched.failures},
        "single": {"images_per_s": single.rps, "failures": single.failures},
    }
    result["ratio"] = result["batch_of_64"]["images_per_s"] / result["single"]["images_per_s"]
    return result


@contextmanager
def _both_model_servers() -> Iterator[dict[str, stack.Server]]:
    with stack.model_server() as plain, stack.model_server(batching=True) as batched:
        yield {"without batching": plain, "with batching": batched}


def model_server_batching(
    seconds: float = 5, concurrency: tuple[int, ...] = CONCURRENCY
) -> dict[str, dict[int, dict]]:
    """Images/s, p50 and p99 of the dev model server alone, one image per :predict."""
    pixels = np.asarray(images.digit()).tolist()
    body = json.dumps({"signature_name": contract.SIGNATURE, "inputs": {contract.IMAGE: [pixels]}})
    results: dict[str, dict[int, dict]] = {}
    with _both_model_servers() as servers:
        for name, server in servers.items():
            url = f"{server.url}/v1/models/{contract.MODEL_NAME}/versions/2:predict"
            stack.hey(url, 8, body.encode(), "application/json", requests=200)  # warm-up
            results[name] = {
                c: asdict(stack.hey(url, c, body.encode(), "application/json", seconds=seconds))
                for c in concurrency
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6)
    stack.add_stack_arguments(parser)
    args = parser.parse_args()
    with stack.model_server(batching=args.batching) as server:
        results = end_to_end(server.url, args.seconds, args.workers, args.threads)
        for name, result in results.items():
            memory = result["memory"]
            print(
                f"{name}: after warm-up RSS {memory['rss_mb']:.0f} MB, PSS {memory['pss_mb']:.0f} "
                f"MB over {memory['processes']} processes"
            )
            for c, load in result["load"].items():
                print(
                    f"  c={c:<3} {load['rps']:7.1f} req/s  p50 {load['p50_ms']:6.1f} ms  "
                    f"p99 {load['p99_ms']:6.1f} ms  failures {load['failures']}"
                )
        with (
            tempfile.TemporaryDirectory() as tmp,
            stack.function_server(server.url, Path(tmp) / "f.sqlite3") as function,
        ):
            print("batches:", batches(function.url))
    for name, by_concurrency in model_server_batching(args.seconds).items():
        for c, load in by_concurrency.items():
            print(f"model server {name} c={c}: {load['rps']:.0f} images/s, p99 {load['p99_ms']} ms")


if __name__ == "__main__":
    main()
