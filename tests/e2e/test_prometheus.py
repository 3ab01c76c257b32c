"""A real Prometheus (Debian's package) scraping the function's 2 workers and the model
server every 0.5 s, with infra/monitoring's config and rules: what an operator's sees.

The bug this guards: each worker answered a scrape with its own counts, so Prometheus saw
a sum that jumped between workers (95 of 200 predictions). Now every scrape is the
instance's: after N predictions the sum is N, scrape after scrape, and stays N when a
worker is killed and replaced.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from tests.conftest import ROOT, SHELL_SETTINGS, free_port, wait_until
from tests.support.dev_model_server import dev_model_server

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
MONITORING = ROOT / "infra" / "monitoring"
PREDICTIONS = 120  # spread over 8 threads, so both workers answer some
# TF Serving's own family names break promtool's naming lint: colons (its exporter maps
# "/tensorflow/serving/request_count" to ":tensorflow:serving:request_count"), a counter
# without _total, a counter ending in _count. The dev server keeps TF's names on purpose
# (serving/metrics.py), so these, and only these, are expected.
TF_SERVING_NAMING = re.compile(
    r":tensorflow:serving:\w+ (metric names should not contain ':'"
    r'|counter metrics should have "_total" suffix'
    r'|non-histogram and non-summary metrics should not have "_count" suffix)'
)

pytestmark = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
    reason="needs Debian's prometheus package (make prometheus installs it)",
)


@pytest.fixture(scope="module")
def model_server_with_metrics() -> Iterator[str]:
    flags = ["--monitoring_config_file", str(ROOT / "serving" / "monitoring.config")]
    with dev_model_server(flags=flags) as url:
        yield url


@pytest.fixture
def function(model_server_with_metrics, tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    """function/serve.py with 2 workers; its URL and its gunicorn master."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SHELL_SETTINGS}
    env.update(
        MODEL_SERVER_URL=model_server_with_metrics,
        SQLITE_PATH=str(tmp_path / "predictions.sqlite3"),
        WORKERS="2",
        THREADS="4",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        # Each prediction its own :predict, so the model server's count is known exactly:
        # by default (#28) a worker's concurrent requests share calls, as many as timing has.
        COALESCE_WINDOW_MS="0",
    )
    command = [sys.executable, "function/serve.py", "--host", "127.0.0.1", "--port", str(port)]
    master = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "the function")
        yield url, master
    finally:
        master.terminate()
        master.wait(timeout=30)


@pytest.fixture
def prometheus(function, model_server_with_metrics, tmp_path) -> Iterator[str]:
    """Prometheus with infra/monitoring/prometheus.yml, its targets and interval this test's."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "500ms", "evaluation_interval": "1s"}
    config["rule_files"] = [str(MONITORING / "alerts.yml")]
    targets = {"function": function[0], "model-server": model_server_with_metrics}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]].removeprefix("http://")]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, "Prometheus")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expression: str) -> float | None:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=5)
    answer.raise_for_status()
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def settled(prometheus: str, expression: str, expected: float, scrapes: int = 4) -> list:
    """The values seen until `expected` held over `scrapes` successive scrapes (or 60 s)."""
    seen: list[float | None] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(query(prometheus, expression))
        if seen[-scrapes:] == [expected] * scrapes:
            break
        time.sleep(0.6)
    return seen


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def worker_pids(master: subprocess.Popen) -> set[int]:
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def test_prometheus_counts_every_prediction_of_every_worker(function, prometheus, mnist):
    url, master = function
    uploads = [png(mnist.x_test[i]) for i in range(PREDICTIONS)]

    def predict(body: bytes) -> int:
        answer = requests.post(
            f"{url}/predict", data=body, headers={"Content-Type": "image/png"}, timeout=30
        )
        return answer.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(predict, uploads)) == {200}

    assert settled(prometheus, "sum(process_workers)", 2)[-1] == 2
    total = "sum(digit_predictions_total)"
    seen = settled(prometheus, total, PREDICTIONS)
    assert seen[-4:] == [PREDICTIONS] * 4, seen
    assert all(value is None or value <= PREDICTIONS for value in seen), seen
    ok = 'sum(digit_http_requests_total{endpoint="predict",status="200",outcome="ok"})'
    assert query(prometheus, ok) == PREDICTIONS
    # The model server answered each prediction once (coalescing off here), as TF Serving counts.
    model_calls = 'sum(:tensorflow:serving:request_latency_count{API="predict"})'
    assert settled(prometheus, model_calls, PREDICTIONS)[-1] == PREDICTIONS
    # No series names a worker: one series per label set, whichever worker answered.
    series = requests.get(
        f"{prometheus}/api/v1/series", params={"match[]": "digit_predictions_total"}, timeout=5
    ).json()["data"]
    assert series and all(set(s) <= {"__name__", "instance", "job", "model_version",
                                     "model_label", "verdict"} for s in series)  # fmt: skip

    # A worker killed and replaced: its counts stay, its process figures leave with it
    # (serve.py's child_exit hook), and the replacement's come in.
    victim = min(worker_pids(master))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(master) - {victim}) == 2, "a replacement worker", 60)
    for _ in range(4):  # the replacement may be the one a scrape reaches; nothing is lost
        assert predict(uploads[0]) == 200
    seen = settled(prometheus, total, PREDICTIONS + 4)
    assert seen[-4:] == [PREDICTIONS + 4] * 4, seen
    assert settled(prometheus, "sum(process_workers)", 2)[-1] == 2
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"]), rules


def test_promtool_finds_no_problem_in_either_exposition(function, model_server_with_metrics):
    url, _ = function
    assert requests.post(
        f"{url}/predict", data=(ROOT / "tests/data/samples/seven.png").read_bytes(),
        headers={"Content-Type": "image/png"}, timeout=30,
    ).status_code == 200  # fmt: skip
    for page, tf_names in (
        (f"{url}/metrics", False),
        (f"{model_server_with_metrics}/monitoring/prometheus/metrics", True),
    ):
        text = requests.get(page, timeout=5).text
        checked = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
        )
        problems = [line.strip() for line in checked.stderr.splitlines() if line.strip()]
        if tf_names:
            assert problems, "TF Serving's names are expected to break the naming lint"
            problems = [p for p in problems if not TF_SERVING_NAMING.fullmatch(p)]
        else:
            assert checked.returncode == 0, checked
        assert problems == [], (page, problems)
