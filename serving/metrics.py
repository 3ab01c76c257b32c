"""Prometheus text exposition of request counts, latencies and version states.

As TF Serving's own page (tensorflow_serving/util/prometheus_exporter.cc, the metrics of
servables/tensorflow/util.cc, recorded by model_servers/http_server.cc), so dashboards and
alerts built on the real server work on this one:

- :tensorflow:serving:request_count{model_name, status}: every REST API call and every
  gRPC Predict, Classify and Regress, status the canonical code name (OK, NOT_FOUND, ...);
- :tensorflow:serving:request_latency{model_name, API, entrypoint}: microseconds,
  successful calls only; over REST, API is the POST verb (predict, classify, regress), empty
  for GET (metadata, status), as http_rest_api_handler.cc leaves it; over gRPC the method
  (Predict, Classify, Regress) and entrypoint GRPC; buckets
  Buckets::Exponential(10, 1.8, 33) with TF's "below the limit" rule;
- dev_model_server_model_version_state: the development server's alone.

One addition: a # HELP line per family, which TF's exporter leaves out and
`promtool check metrics` asks for.
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
# monitoring::Buckets::Exponential(10, 1.8, 33): 10 * 1.8**i microseconds, i < 33 (about
# 20 minutes), then DBL_MAX, exposed as +Inf.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))  # as TF: each limit 1.8 times the last
# The API label of a REST call: TF Serving's handler names only the POST verbs (a GET's is
# empty); gRPC's are the method names (prediction_service_impl.cc: Predict, ...).
API_OF = {
    "predict": "predict",
    "classify": "classify",
    "regress": "regress",
    **{name: name for name in ("Predict", "Classify", "Regress")},
}


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_US) + 1))
    total: float = 0.0


def _number(value: float) -> str:
    """absl::StrCat of a double: six significant digits ("10", "104.976", "1.44209e+09")."""
    return f"{value:.6g}"


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in pairs) + "}"


class Metrics:
    """Thread-safe request counters and latency histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._latency: dict[tuple[str, str, str], _Histogram] = {}

    def observe(
        self, model: str, api: str, status: str, seconds: float, entrypoint: str = "REST"
    ) -> None:
        """Record one API call (model '' when it named none), as http_server.cc and
        prediction_service_impl.cc do: counted always, its latency only when it succeeded."""
        with self._lock:
            key = (model, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            if status != "OK":
                return
            latency_key = (model, API_OF.get(api, ""), entrypoint)
            histogram = self._latency.setdefault(latency_key, _Histogram())
            # tensorflow::histogram::Histogram::Add: the first bucket whose limit is above.
            histogram.buckets[bisect.bisect_right(LATENCY_BUCKETS_US, seconds * 1e6)] += 1
            histogram.total += seconds * 1e6

    def render(self, states: Mapping[str, Iterable[VersionStatus]]) -> str:
        """The Prometheus text page (format 0.0.4)."""
        with self._lock:
            counts = dict(self._counts)
            latency = {k: _Histogram(list(h.buckets), h.total) for k, h in self._latency.items()}
        lines = [
            f"# HELP {REQUEST_COUNT} The total number of requests.",
            f"# TYPE {REQUEST_COUNT} counter",
        ]
        for (model, status), value in sorted(counts.items()):
            lines.append(
                f"{REQUEST_COUNT}{_labels([('model_name', model), ('status', status)])} {value}"
            )
        lines += [
            f"# HELP {REQUEST_LATENCY} Distribution of wall time (in microseconds) for "
            "Tensorflow Serving request.",
            f"# TYPE {REQUEST_LATENCY} histogram",
        ]
        for (model, api, entrypoint), histogram in sorted(latency.items()):
            base = [("model_name", model), ("API", api), ("entrypoint", entrypoint)]
            cumulative = 0
            bounds = [_number(b) for b in LATENCY_BUCKETS_US] + ["+Inf"]
            for bound, count in zip(bounds, histogram.buckets, strict=True):
                cumulative += count
                lines.append(
                    f"{REQUEST_LATENCY}_bucket{_labels([*base, ('le', bound)])} {cumulative}"
                )
            lines.append(f"{REQUEST_LATENCY}_sum{_labels(base)} {_number(histogram.total)}")
            lines.append(f"{REQUEST_LATENCY}_count{_labels(base)} {cumulative}")
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
