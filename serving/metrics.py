"""Prometheus text exposition of request counts, latencies and version states.

Families are named after TF Serving's (:tensorflow:serving:request_count and
request_latency, microseconds) so dashboards built on the real server keep
working; they carry model_version and API labels on top. The version-state
gauge exists only in the development server, hence its dev_ prefix.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from serving.repository import State, VersionStatus

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
VERSION_STATE = "dev_model_server_model_version_state"
# Microseconds, like TF Serving's request_latency.
LATENCY_BUCKETS_US = (
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
)  # fmt: skip


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_US))
    total: float = 0.0
    count: int = 0


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in pairs) + "}"


class Metrics:
    """Thread-safe request counters and latency histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str, str], int] = {}
        self._latency: dict[tuple[str, str, str, str], _Histogram] = {}

    def observe(self, model: str, version: str, api: str, status: str, seconds: float) -> None:
        """Record one API call; version is '' when none was resolved."""
        key = (model, version, api, status)
        micros = seconds * 1e6
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            histogram = self._latency.setdefault(key, _Histogram())
            index = bisect.bisect_left(LATENCY_BUCKETS_US, micros)
            if index < len(LATENCY_BUCKETS_US):
                histogram.buckets[index] += 1
            histogram.total += micros
            histogram.count += 1

    def render(self, states: Mapping[str, Iterable[VersionStatus]]) -> str:
        """The Prometheus text page (format 0.0.4)."""
        with self._lock:
            counts = dict(self._counts)
            latency = {
                key: _Histogram(list(h.buckets), h.total, h.count)
                for key, h in self._latency.items()
            }
        lines = [
            f"# HELP {REQUEST_COUNT} The total number of requests.",
            f"# TYPE {REQUEST_COUNT} counter",
        ]
        names = ("model_name", "model_version", "API", "status")
        for key, value in sorted(counts.items()):
            lines.append(f"{REQUEST_COUNT}{_labels(zip(names, key, strict=True))} {value}")
        lines += [
            f"# HELP {REQUEST_LATENCY} Distribution of request latency in microseconds.",
            f"# TYPE {REQUEST_LATENCY} histogram",
        ]
        for key, histogram in sorted(latency.items()):
            base = [*zip(names, key, strict=True), ("entrypoint", "REST")]
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_US, histogram.buckets, strict=True):
                cumulative += count
                lines.append(
                    f"{REQUEST_LATENCY}_bucket{_labels([*base, ('le', str(bound))])} {cumulative}"
                )
            lines.append(
                f"{REQUEST_LATENCY}_bucket{_labels([*base, ('le', '+Inf')])} {histogram.count}"
            )
            lines.append(f"{REQUEST_LATENCY}_sum{_labels(base)} {histogram.total:.1f}")
            lines.append(f"{REQUEST_LATENCY}_count{_labels(base)} {histogram.count}")
        lines += [
            f"# HELP {VERSION_STATE} 1 for the current state of each model version.",
            f"# TYPE {VERSION_STATE} gauge",
        ]
        for model in sorted(states):
            for status in sorted(states[model], key=lambda s: s.version):
                for state in State:
                    labels = _labels(
                        [
                            ("model_name", model),
                            ("model_version", str(status.version)),
                            ("state", state.value),
                        ]
                    )
                    lines.append(f"{VERSION_STATE}{labels} {int(status.state is state)}")
        return "\n".join(lines) + "\n"
