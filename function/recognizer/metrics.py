"""GET /metrics: the function's counters in Prometheus' text format, with no dependency.

What an operator watches: requests by endpoint and status, predictions by the model
version and label that answered and by verdict, latency histograms per request and per
stage, corrections received. Counts live in the process: each worker process (WORKERS)
keeps its own and answers a scrape with them, labelled with its `worker` (the pid), so
every series only ever grows; sum over `worker` for the instance. A restart starts
from zero, which Prometheus' rate() expects.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import defaultdict
from collections.abc import Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; the stages of a one-image request take from about 0.1 ms to the model's timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HELP = {
    "digit_http_requests_total": ("counter", "HTTP requests answered, by endpoint and status."),
    "digit_predictions_total": (
        "counter",
        "Images predicted and recorded, by answering model version and label, and verdict.",
    ),
    "digit_feedback_total": ("counter", "Corrections recorded (PUT .../feedback)."),
    "digit_request_duration_seconds": ("histogram", "Time to answer a request, by endpoint."),
    "digit_stage_duration_seconds": (
        "histogram",
        "Time in each stage of POST /predict: decode, preprocess, claim, model, store.",
    ),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Thread-safe counters and histograms; `render` is the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """One observation: per-bucket counts (not cumulative here), then sum and count."""
        key = tuple(sorted(labels.items()))
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            values = self._histograms[name].setdefault(key, [0.0] * (len(BUCKETS) + 3))
            values[slot] += 1
            values[-2] += seconds
            values[-1] += 1

    def render(self) -> str:
        worker = (("worker", str(os.getpid())),)
        with self._lock:
            counters = {n: dict(series) for n, series in self._counters.items()}
            histograms = {
                n: {k: list(v) for k, v in s.items()} for n, s in self._histograms.items()
            }
        lines: list[str] = []
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                for key, value in sorted(counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(key + worker)} {_number(value)}")
                continue
            for key, values in sorted(histograms.get(name, {}).items()):
                lines += _histogram_lines(name, key + worker, values)
        return "\n".join(lines) + "\n"


def _histogram_lines(name: str, key: Labels, values: list[float]) -> list[str]:
    lines, running = [], 0.0
    for bound, count in zip((*BUCKETS, float("inf")), values[:-2], strict=True):
        running += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        lines.append(f"{name}_bucket{_labels((*key, ('le', le)))} {_number(running)}")
    lines.append(f"{name}_sum{_labels(key)} {values[-2]!r}")
    lines.append(f"{name}_count{_labels(key)} {_number(values[-1])}")
    return lines


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
