"""GET /metrics: the function's counters, histograms and process figures (prometheus_client).

What an operator watches: requests by endpoint and status, predictions by the model
version and label that answered and by verdict, latency histograms per request and per
stage, corrections received, and the processes' memory, CPU and open files.

gunicorn runs WORKERS processes and a scrape reaches one of them, so every figure must be
the instance's, not a worker's. prometheus_client's multiprocess mode does that: with
PROMETHEUS_MULTIPROC_DIR set (serve.py prepares it before the workers fork), each
worker writes its values to memory-mapped files there and a scrape sums every worker's
files, with no pid label. Counters of a worker that died stay counted (its requests
happened); its process gauges leave with it, because serve.py's child_exit hook marks it
dead. Without the directory (tests in one process, a platform running one worker) the
values stay in the process, which is the instance.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from recognizer import drift as drift_signals

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics", "mark_process_dead"]

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Seconds; the stages of a one-image request take from about 0.1 ms to the model's timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A worker refreshes its process figures this often, and whenever it answers a scrape.
PROCESS_SAMPLE_SECONDS = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# The *_created series exist in one process only (multiprocess mode has none): the same
# families either way.
disable_created_metrics()


def multiprocess_dir() -> str | None:
    """The shared directory when the workers share their metrics, else None."""
    return os.environ.get(MULTIPROC_DIR) or None


def mark_process_dead(pid: int) -> None:
    """gunicorn's child_exit: drop a dead worker's live gauges (its counters stay)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


class Metrics:
    """The function's metric families and its exposition; `count`/`observe` from any thread."""

    def __init__(self) -> None:
        # A registry of its own: each Api (tests make many in one process) counts apart.
        self._registry = CollectorRegistry(auto_describe=True)
        registry = self._registry
        self.requests = Counter(
            "digit_http_requests",
            "HTTP requests answered, by endpoint, status and outcome (ok, or errors.py's name "
            "for what failed: store_unavailable, model_unavailable, ...).",
            ["endpoint", "status", "outcome"],
            registry=registry,
        )
        self.predictions = Counter(
            "digit_predictions",
            "Images predicted and recorded, by answering model version and label, and verdict.",
            ["model_version", "model_label", "verdict"],
            registry=registry,
        )
        self.feedback = Counter(
            "digit_feedback", "Corrections recorded (PUT .../feedback).", registry=registry
        )
        self.request_seconds = Histogram(
            "digit_request_duration_seconds",
            "Time to answer a request, by endpoint.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "digit_stage_duration_seconds",
            "Time in each stage of POST /predict: decode, preprocess, claim, model, store.",
            ["stage"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.drift_observations = Counter(
            "digit_drift_observations",
            "Predictions by version and label, per drift signal and bin (recognizer/drift.py).",
            ["model_version", "model_label", "signal", "bin"],
            registry=registry,
        )
        self.reference_share = Gauge(
            "digit_drift_reference_share",
            "The reference profile of the version stable serves: each signal's share per bin.",
            ["signal", "bin"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._seen: set[tuple[str, str]] = set()
        self._reference: int | None = None
        self._process = _ProcessFigures(registry)

    def request(self, endpoint: str, status: int, outcome: str, seconds: float) -> None:
        """One answered request (and, on a worker's first, its process figures start)."""
        self._process.ensure()
        self.requests.labels(endpoint=endpoint, status=str(status), outcome=outcome).inc()
        self.request_seconds.labels(endpoint=endpoint).observe(seconds)

    def drift(self, version: str, label: str, binned: Iterable[Mapping[str, str]]) -> None:
        """Count predictions' drift bins; a version's first prediction makes all its bins
        (at 0), so that a share computed in Prometheus sees the bins never hit."""
        if (version, label) not in self._seen:
            self._seen.add((version, label))
            for signal in drift_signals.SIGNALS:
                for name in drift_signals.bins(signal):
                    self.drift_observations.labels(version, label, signal, name)
        for bins_ in binned:
            for signal, name in bins_.items():
                self.drift_observations.labels(version, label, signal, name).inc()

    def reference(self, version: int) -> None:
        """Export `version`'s reference profile (stable's), when it is new here."""
        if self._reference == version:
            return
        profile = drift_signals.load_profile(version)
        if profile is None:
            return
        self._reference = version
        for signal, shares in profile.items():
            for name, share in shares.items():
                self.reference_share.labels(signal, name).set(share)

    def render(self) -> bytes:
        """The exposition: every worker's values summed when they share a directory."""
        self._process.sample()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self._registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=directory)
        return generate_latest(merged)


class _ProcessFigures:
    """process_* figures of the whole instance: each worker samples its own /proc entry,
    summed over the live workers. Made at the first scrape in a worker, after gunicorn's
    fork: made in the master (which imports main.py), its zeros would count as a worker."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._cpu_seen = 0.0
        self._gauges: dict[str, Gauge] = {}
        self._cpu: Counter | None = None

    def _make(self) -> None:
        def gauge(name: str, text: str, mode: str) -> Gauge:
            return Gauge(name, text, registry=self._registry, multiprocess_mode=mode)

        self._gauges = {
            "memory": gauge(
                "process_resident_memory_bytes",
                "Resident memory of the live worker processes, summed.",
                "livesum",
            ),
            "fds": gauge(
                "process_open_fds",
                "Open file descriptors of the live worker processes, summed.",
                "livesum",
            ),
            "workers": gauge("process_workers", "Live worker processes.", "livesum"),
            "start": gauge(
                "process_start_time_seconds",
                "Start time of the oldest live worker, seconds since the epoch.",
                "livemin",
            ),
        }
        self._cpu = Counter(
            "process_cpu_seconds",
            "User and system CPU time of the worker processes, dead ones included.",
            registry=self._registry,
        )

    def ensure(self) -> None:
        """Start sampling in this process unless it has (cheap once started)."""
        if self._pid != os.getpid():
            self.sample()

    def sample(self) -> None:
        """Refresh this worker's figures; the first call in a process starts its sampler."""
        with self._lock:
            if self._cpu is None:
                self._make()
            if self._pid != os.getpid():  # a new process (after fork): start over
                self._pid, self._cpu_seen = os.getpid(), 0.0
                self._gauges["workers"].set(1)
                self._gauges["start"].set(_start_time())
                threading.Thread(target=self._loop, name="metrics-sampler", daemon=True).start()
            assert self._cpu is not None
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            self._cpu.inc(max(0.0, cpu - self._cpu_seen))
            self._cpu_seen = cpu
            self._gauges["memory"].set(_resident_bytes())
            self._gauges["fds"].set(len(os.listdir("/proc/self/fd")))

    def _loop(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            time.sleep(PROCESS_SAMPLE_SECONDS)
            self.sample()


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


def _start_time() -> float:
    """Seconds since the epoch at which this process started (/proc/self/stat field 22)."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat", encoding="ascii") as stat:
        boot = next(int(x.split()[1]) for x in stat if x.startswith("btime "))
    return boot + started_ticks / _CLOCK_TICKS
