"""Cold start and import time: the function against the in-process-TensorFlow baseline.

Cold start is process spawn to the first 200 from /healthz, and to the first successful
POST /predict. For the function the model server is already running (it is a separate,
long-lived service); for the baseline, loading TensorFlow and the model is its cold start.
Import time is `python -X importtime` of function/main.py.

    .venv/bin/python -m bench.cold_start [--repeats 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from bench import images, stack

ServerFactory = Callable[[Path], AbstractContextManager[stack.Server]]


def _once(start: ServerFactory) -> tuple[float, float]:
    """(seconds to first /healthz 200, seconds to first /predict 200) for one fresh process."""
    with tempfile.TemporaryDirectory() as tmp, start(Path(tmp) / "cold.sqlite3") as server:
        healthy = stack.wait_for(server, "/healthz", interval=0.005)
        predicted = stack.wait_for(server, "/predict", images.mnist_png(), images.PNG)
        return healthy - server.started, predicted - server.started


def cold_starts(model_url: str, repeats: int = 5, source: Path = stack.FUNCTION_SOURCE) -> dict:
    """Median (and every run's) cold start of the function and of the baseline, in seconds."""
    starters: dict[str, ServerFactory] = {
        "function": lambda db: stack.function_server(model_url, db, source=source, wait=False),
        "baseline": lambda db: stack.baseline_server(db, wait=False),
    }
    results = {}
    for name, start in starters.items():
        runs = [_once(start) for _ in range(repeats)]
        results[name] = {
            "healthz_s": statistics.median(run[0] for run in runs),
            "predict_s": statistics.median(run[1] for run in runs),
            "runs": runs,
        }
    return results


_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| \s*(\S+)")


def import_time(source: Path = stack.FUNCTION_SOURCE, repeats: int = 3, top: int = 8) -> dict:
    """Total import time of main.py (median of `repeats`) and its biggest top-level packages."""
    totals, packages = [], {}
    for _ in range(repeats):
        stderr = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import main"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        first_seen: dict[str, float] = {}
        for cumulative_us, name in _LINE.findall(stderr):
            if name == "main":
                totals.append(int(cumulative_us) / 1000)
            elif "." not in name and not name.startswith("_") and name != "site":
                # Each top-level package appears once: where it was first imported.
                first_seen.setdefault(name, int(cumulative_us) / 1000)
        for name, ms in first_seen.items():
            packages.setdefault(name, []).append(ms)
    medians = {name: statistics.median(values) for name, values in packages.items()}
    biggest = sorted(medians.items(), key=lambda item: -item[1])[:top]
    return {"total_ms": statistics.median(totals), "top": biggest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    imports = import_time()
    print(f"import main.py: {imports['total_ms']:.0f} ms; biggest top-level packages:")
    for name, ms in imports["top"]:
        print(f"  {name:<24} {ms:7.1f} ms")
    with stack.model_server() as server:
        for name, result in cold_starts(server.url, args.repeats).items():
            print(
                f"{name}: first /healthz 200 after {result['healthz_s']:.2f} s, first prediction "
                f"after {result['predict_s']:.2f} s (median of {args.repeats})"
            )


if __name__ == "__main__":
    main()
