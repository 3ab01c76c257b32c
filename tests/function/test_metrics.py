"""GET /metrics: what the function did, in Prometheus' text format, guarded like the history."""

from __future__ import annotations

import io
import os
import re

import functions_framework
import numpy as np
import pytest
from PIL import Image

from recognizer import drift
from recognizer.metrics import BUCKETS, Metrics
from tests.conftest import ROOT, STABLE_VERSION

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of every sample; each family must be declared first."""
    declared, samples = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in declared or name in declared, line
        samples[name, frozenset(LABEL.findall(labels or ""))] = float(value)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= set(ls)]
    return sum(found)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(function_env, monkeypatch):
    monkeypatch.setenv("FEEDBACK_SECRET", "s" * 32)
    return functions_framework.create_app(
        "recognize", str(ROOT / "function" / "main.py")
    ).test_client()


@pytest.mark.real_model
def test_requests_predictions_stages_and_corrections_are_counted(client, mnist):
    pair = np.zeros((28, 56), dtype=np.uint8)
    pair[:, :28], pair[:, 28:] = mnist.x_test[2], mnist.x_test[1]  # a 1 beside a 2
    files = [(io.BytesIO(png(mnist.x_test[0])), "a.png"), (io.BytesIO(png(pair)), "b.png")]
    answer = client.post("/predict", data={"image": files})
    assert answer.status_code == 200
    replay = {"Idempotency-Key": "same-request"}
    for _ in range(2):  # the retry answers from the log: nothing is predicted twice
        retried = client.post(
            "/predict", data=png(mnist.x_test[3]), content_type="image/png", headers=replay
        )
        assert retried.status_code == 200
    assert client.get("/predictions/not-an-id").status_code == 404
    wrong = answer.get_json()["predictions"][1]
    correction = {"digit": None, "token": wrong["feedback_token"]}
    assert client.put(f"/predictions/{wrong['id']}/feedback", json=correction).status_code == 200

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=1.0.0; charset=utf-8"
    samples = parse(response.get_data(as_text=True))
    assert value(samples, "digit_http_requests_total", endpoint="predict", status="200") == 3
    assert value(samples, "digit_http_requests_total", endpoint="prediction", status="404") == 1
    assert value(samples, "digit_http_requests_total", outcome="unknown_prediction") == 1
    stable = {"model_version": str(STABLE_VERSION), "model_label": "stable"}
    assert value(samples, "digit_predictions_total", verdict="digit", **stable) == 2
    assert value(samples, "digit_predictions_total", verdict="not_a_digit", **stable) == 1
    assert value(samples, "digit_stage_duration_seconds_count", stage="model") == 2
    assert value(samples, "digit_request_duration_seconds_count", endpoint="predict") == 3
    assert value(samples, "digit_feedback_total") == 1
    # Drift: each prediction once per signal, every bin present (zeros too), and the
    # reference is the profile of the version stable serves.
    drift_counts = {
        signal: [v for (n, ls), v in samples.items()
                 if n == "digit_drift_observations_total" and ("signal", signal) in ls]
        for signal in drift.SIGNALS
    }  # fmt: skip
    for signal, counts in drift_counts.items():
        assert sum(counts) == 3 and len(counts) == len(drift.bins(signal)), signal
    reference = drift.load_profile(STABLE_VERSION)
    assert value(
        samples, "digit_drift_reference_share", signal="confidence", bin=">=0.99"
    ) == pytest.approx(reference["confidence"][">=0.99"])


def test_histograms_are_cumulative_and_end_in_their_count():
    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.003, 0.2, 30.0):
        metrics.stage_seconds.labels(stage="model").observe(seconds)
    samples = parse(metrics.render().decode())
    buckets = [
        value(samples, "digit_stage_duration_seconds_bucket", stage="model", le=repr(bound))
        for bound in BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[0] == 1 and buckets[3] == 3
    total = value(samples, "digit_stage_duration_seconds_bucket", stage="model", le="+Inf")
    assert total == value(samples, "digit_stage_duration_seconds_count", stage="model") == 5
    assert value(samples, "digit_stage_duration_seconds_sum", stage="model") == pytest.approx(
        30.2064
    )


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.request('a"b\\c\nd', 200, "ok", 0.001)
    (line,) = [x for x in metrics.render().decode().splitlines() if x.startswith("digit_http_")]
    assert 'endpoint="a\\"b\\\\c\\nd"' in line


def test_process_figures_are_the_process_own():
    metrics = Metrics()
    metrics.request("health", 200, "ok", 0.001)
    samples = parse(metrics.render().decode())
    assert value(samples, "process_workers") == 1
    assert value(samples, "process_resident_memory_bytes") > 10_000_000  # Python and numpy
    assert value(samples, "process_open_fds") >= 3
    assert abs(value(samples, "process_start_time_seconds") - psutil_free_start()) < 2
    assert value(samples, "process_cpu_seconds_total") > 0


def psutil_free_start() -> float:
    """This process's start from ps, beside /proc's arithmetic in metrics.py."""
    import subprocess
    from datetime import datetime

    text = subprocess.run(
        ["ps", "-o", "lstart=", "-p", str(os.getpid())], capture_output=True, text=True
    ).stdout
    return datetime.strptime(text.strip(), "%a %b %d %H:%M:%S %Y").timestamp()


def test_with_an_api_token_the_metrics_need_it(function_env, monkeypatch):
    monkeypatch.setenv("API_TOKEN", "scrape-me")
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
