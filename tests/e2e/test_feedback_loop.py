"""The loop, end to end, with real processes: people's corrections in the log -> a new
version trained from the log -> canary -> analyze -> promote, while traffic never fails.

The development model server serves a temporary tree (v2 stable, the canary label on it
too); the function runs under gunicorn with FEEDBACK_SECRET and half of the clients on
the canary label. Training uses a small, fast configuration (one epoch over 3,000 MNIST
digits and the corrected ones) and a tolerance of half a point on MNIST test: it shows
the mechanics; the recipe's full run is `make train`'s.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import requests
from PIL import Image

from infra.rollout.served import Served, parse, render, served_of, with_served
from tests.conftest import PYTHON, ROOT, SHELL_SETTINGS, wait_until
from tests.e2e.test_rollout_analyze import rollout
from tests.support.dev_model_server import dev_model_server
from tests.support.function_server import running_function

SECRET = "loop" * 16
# Margins a few hundred corrections can meet (the defaults want thousands), and latency
# left out of the decision: on a shared 2-core machine it says more about the neighbours.
ANALYZE = (
    "--accuracy-margin", "0.1", "--low-confidence-margin", "0.2", "--verdict-margin", "0.5",
    "--min-requests", "20", "--latency-increase", "100", "--latency-slack-ms", "10000",
    "--window-hours", "1",
)  # fmt: skip


def png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Traffic(threading.Thread):
    """Other clients, all the while: every answer must be a 200."""

    def __init__(self, url: str, images: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.url, self.images, self.statuses = url, images, []
        self.stopped = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            for n in itertools.count():
                if self.stopped.is_set():
                    return
                try:
                    response = session.post(
                        f"{self.url}/predict",
                        data=self.images[n % len(self.images)],
                        headers={"Content-Type": "image/png", "X-Client-Id": f"other-{n}"},
                        timeout=30,
                    )
                    self.statuses.append(response.status_code)
                except requests.RequestException as error:
                    self.statuses.append(repr(error))


def people_correct(url: str, mnist, start: int, count: int) -> None:
    """`count` people each send a digit and say what it really is."""
    with requests.Session() as session:
        for n in range(start, start + count):
            answer = session.post(
                f"{url}/predict",
                data=png(mnist.x_test[n]),
                headers={"Content-Type": "image/png", "X-Client-Id": f"person-{n}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            (prediction,) = answer.json()["predictions"]
            correction = {"digit": int(mnist.y_test[n]), "token": prediction["feedback_token"]}
            put = session.put(
                f"{url}/predictions/{prediction['id']}/feedback",
                json=correction,
                headers={"X-Client-Id": f"person-{n}"},  # the same person corrects it
                timeout=30,
            )
            assert put.status_code == 200, put.text


def test_corrections_become_a_version_that_is_canaried_and_promoted(tmp_path, mnist):
    models_dir = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "mnist" / "2", models_dir / "mnist" / "2")
    shipped = (ROOT / "serving" / "models.config").read_text()
    config = tmp_path / "models.config"
    served = Served(frozenset({2}), {"stable": 2, "canary": 2})
    config.write_text(render(with_served(parse(shipped), "mnist", served), shipped))
    log = tmp_path / "predictions.sqlite3"
    server_log = tmp_path / "model_server.log"
    with dev_model_server(config, models_dir, label="canary", log=server_log) as model_server:
        settings = {"FEEDBACK_SECRET": SECRET, "CANARY_PERCENT": "50",
                    "MODEL_LABEL_CACHE_SECONDS": "0.5"}  # fmt: skip
        with running_function(model_server, log, **settings) as url:
            traffic = Traffic(url, [png(mnist.x_test[n]) for n in range(5000, 5050)])
            traffic.start()
            try:
                loop(url, model_server, config, models_dir, log, mnist)
            finally:
                traffic.stopped.set()
                traffic.join(timeout=60)
        failed = [status for status in traffic.statuses if status != 200]
        print(f"other clients: {len(traffic.statuses)} requests, {len(failed)} not 200")
        assert len(traffic.statuses) > 50 and not failed, failed[:5]


def loop(url: str, model_server: str, config: Path, models_dir: Path, log: Path, mnist) -> None:
    env = {"PREDICTION_STORE": "sqlite", "SQLITE_PATH": str(log)}

    people_correct(url, mnist, start=0, count=150)
    base = {k: v for k, v in os.environ.items() if k not in SHELL_SETTINGS}
    trained = subprocess.run(
        [PYTHON, "-m", "training", "--from-store", "--sqlite", str(log), "--version", "3",
         "--models-dir", str(models_dir), "--config", str(config), "--epochs", "1",
         "--mnist-images", "3000", "--outliers-per-kind", "10", "--max-drop", "0.005"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**base, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    print(trained.stdout[-3000:])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (models_dir / "mnist" / "3" / "saved_model.pb").is_file()

    canary = rollout("canary", "3", env=env, config=config, models_dir=models_dir,
                     server=model_server)  # fmt: skip
    assert canary.returncode == 0, canary.stderr[-2000:]
    wait_until(lambda: label_version(model_server, "canary") == 3, "the canary on v3")

    people_correct(url, mnist, start=1000, count=300)  # half of them on the canary
    status = rollout("status", "--json", env=env, config=config, models_dir=models_dir)
    versions = {v["version"]: v for v in json.loads(status.stdout)["versions"]}
    assert versions[3]["feedback"] > 50 and versions[2]["feedback"] > 150

    decided = rollout("analyze", *ANALYZE, "--apply", env=env, config=config,
                      models_dir=models_dir, server=model_server)  # fmt: skip
    assert decided.returncode == 0, decided.stdout + decided.stderr[-2000:]
    assert served_of(parse(config.read_text()), "mnist").labels["stable"] == 3
    wait_until(lambda: label_version(model_server, "stable") == 3, "stable on v3")


def label_version(model_server: str, label: str) -> int | None:
    response = requests.get(f"{model_server}/v1/models/mnist/labels/{label}/metadata", timeout=5)
    if not response.ok:
        return None
    return int(response.json()["model_spec"]["version"])
