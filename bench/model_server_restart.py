"""Kill the development model server under steady load, start it again on the same port.

What clients of the function see meanwhile: how many requests failed and with which
status (503 or 504 JSON errors are the contract; a 500 or a body that is not a JSON
error is a bug), for how long, and how soon after the model server is ready again the
function answers 200, without restarting the function. tests/e2e/test_recovery.py runs
the same scenario and asserts on it.

    .venv/bin/python -m bench.model_server_restart [--rate 10] [--before 3] [--down 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import stack
from recognizer import contract

ROOT = Path(__file__).resolve().parent.parent
IMAGE = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()
LABEL_URL = (
    f"/v1/models/{contract.MODEL_NAME}/labels/stable/metadata"  # answers once `stable` is AVAILABLE
)
CONTRACT_FAILURES = frozenset({503, 504})


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic seconds
    answered: float
    status: int  # 0 when no HTTP answer came at all
    error_code: str | None  # the JSON error's code; None for a 200 or a malformed failure
    prediction_id: str | None


@dataclass(frozen=True)
class Outcome:
    """Every answer of the run and the moments the model server was killed, started, ready."""

    answers: list[Answer]
    killed: float
    restarted: float
    ready: float
    unreadable_records: int  # 200s whose prediction cannot be read back: must be 0

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    @property
    def by_status(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)

    @property
    def malformed(self) -> list[Answer]:
        """Failures outside the contract: not a 503/504 with a JSON error body."""
        return [
            a for a in self.failures if a.status not in CONTRACT_FAILURES or a.error_code is None
        ]

    @property
    def outage_seconds(self) -> float:
        """From the first failed request being sent to the last failure being answered."""
        if not self.failures:
            return 0.0
        return max(a.answered for a in self.failures) - min(a.sent for a in self.failures)

    @property
    def ready_to_first_200(self) -> float | None:
        """Seconds from the model server being ready again to the function's next 200."""
        after = [a.answered for a in self.answers if a.status == 200 and a.answered >= self.ready]
        return min(after) - self.ready if after else None

    @property
    def failures_after_recovery(self) -> list[Answer]:
        """Failures of requests sent after that first 200: recovered means stays recovered."""
        if self.ready_to_first_200 is None:
            return []
        recovered = self.ready + self.ready_to_first_200
        return [a for a in self.failures if a.sent > recovered]

    def report(self) -> str:
        statuses = ", ".join(f"{status}: {n}" for status, n in sorted(self.by_status.items()))
        failures = Counter(a.status for a in self.failures)
        first_200 = self.ready_to_first_200
        return "\n".join(
            [
                f"requests sent: {len(self.answers)}",
                f"answers by status: {statuses}",
                f"failures by status: {dict(sorted(failures.items()))}",
                f"failures outside the 503/504 JSON contract: {len(self.malformed)}",
                f"model server down (kill -> ready again): {self.ready - self.killed:.2f} s "
                f"(restarted {self.restarted - self.killed:.2f} s after the kill)",
                f"outage window (first failed request sent -> last failure answered): "
                f"{self.outage_seconds:.2f} s",
                "model server ready -> first 200: "
                + ("never" if first_200 is None else f"{first_200:.2f} s"),
                f"failures after recovery: {len(self.failures_after_recovery)}",
                f"200s whose record cannot be read back: {self.unreadable_records}",
            ]
        )


@contextmanager
def _process(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env})
    try:
        yield process
    finally:
        stack.stop(process)


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> float:
    """Poll `url` until it answers 200; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")


def _model_server(port: int) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable, "-m", "serving", "--rest_api_port", str(port),
        "--allow_version_labels_for_unavailable_models",
    ]  # fmt: skip
    return argv, {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _function(port: int, model_url: str, sqlite_path: Path) -> tuple[list[str], dict[str, str]]:
    """`functions-framework --target recognize`, as tests/e2e/conftest.py starts it."""
    argv = [
        str(Path(sys.executable).with_name("functions-framework")),
        "--source", str(ROOT / "function" / "main.py"), "--target", "recognize",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {"MODEL_SERVER_URL": model_url, "SQLITE_PATH": str(sqlite_path)}
    return argv, {**env, "PREDICTION_STORE": "sqlite"}


class SteadyLoad:
    """`rate` POST /predict a second, each from a worker thread, each answer timestamped."""

    def __init__(self, function_url: str, rate: float, workers: int = 32) -> None:
        self._url = f"{function_url}/predict"
        self._interval = 1 / rate
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._stop = threading.Event()
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._dispatcher = threading.Thread(target=self._dispatch, daemon=True)

    def start(self) -> None:
        self._dispatcher.start()

    def stop(self) -> list[Answer]:
        """Stop sending, wait for the requests in flight, and return every answer."""
        self._stop.set()
        self._dispatcher.join()
        self._pool.shutdown(wait=True)
        return sorted(self._answers, key=lambda a: a.sent)

    def first_200_since(self, moment: float) -> float | None:
        """When the first 200 answered at or after `moment` came, if one did."""
        with self._lock:
            times = [a.answered for a in self._answers if a.status == 200 and a.answered >= moment]
        return min(times, default=None)

    def _dispatch(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one)
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _one(self) -> None:
        sent = time.monotonic()
        status, code, prediction_id = 0, None, None
        try:
            response = requests.post(
                self._url, data=IMAGE, headers={"Content-Type": "image/png"}, timeout=30
            )
            status = response.status_code
            if response.headers.get("Content-Type", "").startswith("application/json"):
                body = response.json()
                if status == 200:
                    prediction_id = body["predictions"][0]["id"]
                elif isinstance(body.get("error"), dict):
                    code = body["error"].get("code")
        except (requests.RequestException, ValueError, KeyError, AttributeError):
            pass  # counted as what it is: no answer, or a failure outside the contract
        with self._lock:
            self._answers.append(Answer(sent, time.monotonic(), status, code, prediction_id))


def restart_under_load(
    rate: float = 10, before: float = 3, down: float = 3, after: float = 3, limit: float = 60
) -> Outcome:
    """Load the function, kill its model server, start it again `down` s later on the same
    port, and go on until `after` s past the first 200 once it is ready (at most `limit` s)."""
    model_port, function_port = stack.free_port(), stack.free_port()
    model_url = f"http://127.0.0.1:{model_port}"
    function_url = f"http://127.0.0.1:{function_port}"
    with tempfile.TemporaryDirectory() as tmp:
        argv, env = _model_server(model_port)
        with _process(argv, env) as first_model:
            _wait_for(model_url + LABEL_URL, first_model)
            argv_f, env_f = _function(function_port, model_url, Path(tmp) / "log.sqlite3")
            with _process(argv_f, env_f) as function:
                _wait_for(f"{function_url}/readyz", function)
                load = SteadyLoad(function_url, rate)
                load.start()
                time.sleep(before)
                killed = time.monotonic()
                first_model.kill()
                first_model.wait()
                time.sleep(down)
                restarted = time.monotonic()
                with _process(argv, env) as second_model:
                    ready = _wait_for(model_url + LABEL_URL, second_model)
                    _until_recovered(load, ready, after, limit)
                    answers = load.stop()
                    unreadable = _unreadable(function_url, answers)
    return Outcome(answers, killed, restarted, ready, unreadable)


def _until_recovered(load: SteadyLoad, ready: float, after: float, limit: float) -> None:
    deadline = ready + limit
    while time.monotonic() < deadline:
        recovered = load.first_200_since(ready)
        if recovered is not None and time.monotonic() >= recovered + after:
            return
        time.sleep(0.1)


def _unreadable(function_url: str, answers: list[Answer]) -> int:
    """A 200 promises a durable record: read every one back."""
    ids = [a.prediction_id for a in answers if a.status == 200]
    return sum(
        requests.get(f"{function_url}/predictions/{i}", timeout=10).status_code != 200 for i in ids
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10, help="requests a second (10)")
    parser.add_argument("--before", type=float, default=3, help="seconds of load first (3)")
    parser.add_argument("--down", type=float, default=3, help="seconds the server stays dead (3)")
    parser.add_argument("--after", type=float, default=3, help="seconds of load after recovery")
    args = parser.parse_args(argv)
    outcome = restart_under_load(args.rate, args.before, args.down, args.after)
    print(outcome.report())
    return 0 if not outcome.malformed and outcome.ready_to_first_200 is not None else 1


if __name__ == "__main__":
    sys.exit(main())
