"""TF Serving health probes, run against a server speaking TF Serving's REST API.

The real tensorflow/serving image cannot run here, so the probes run against the
development model server (same REST API, same models.config); the bash /dev/tcp probe
itself is exactly the string in docker-compose.yml and Dockerfile.serving.
"""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit

import requests
import yaml

from tests.conftest import free_port
from tests.infra.dockerfiles import only, parse
from tests.infra.support import COMPOSE_FILE, K8S_DIR, ROOT

COMPOSE_PROBE = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["tf-serving"]["healthcheck"]
(SERVING_CHECK,) = only(parse(ROOT / "Dockerfile.serving"), "HEALTHCHECK")


def run_compose_probe(port: int, label: str = "stable") -> int:
    test = COMPOSE_PROBE["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3].replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}")
    script = script.replace("/labels/stable/", f"/labels/{label}/")
    return subprocess.run(["bash", "-c", script], timeout=10, capture_output=True).returncode


def test_compose_probe_passes_once_the_stable_label_is_available(model_server: str) -> None:
    assert run_compose_probe(urlsplit(model_server).port) == 0


def test_compose_probe_fails_for_a_label_that_does_not_resolve(model_server: str) -> None:
    assert run_compose_probe(urlsplit(model_server).port, label="no-such-label") != 0


def test_compose_probe_fails_when_nothing_listens() -> None:
    assert run_compose_probe(free_port()) != 0


def test_serving_image_probe_uses_port_and_passes(model_server: str) -> None:
    argv = SERVING_CHECK.exec_form()
    port = str(urlsplit(model_server).port)
    result = subprocess.run(argv, env={"PORT": port, "PATH": "/usr/bin:/bin"}, timeout=10)
    assert result.returncode == 0


def test_kubernetes_readiness_path_answers_only_when_available(model_server: str) -> None:
    manifests = list(yaml.safe_load_all((K8S_DIR / "tf-serving.yaml").read_text()))
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    path = container["readinessProbe"]["httpGet"]["path"]
    assert requests.get(model_server + path, timeout=5).status_code == 200
    missing = path.replace("/labels/stable/", "/labels/no-such-label/")
    assert requests.get(model_server + missing, timeout=5).status_code != 200
    # The liveness path is the one that answers while loading, never the readiness one.
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/models/mnist"


def test_the_same_readiness_path_everywhere() -> None:
    paths = {
        COMPOSE_PROBE["test"][3].split("GET ")[1].split(" ")[0],
        SERVING_CHECK.exec_form()[2].split("GET ")[1].split(" ")[0],
    }
    assert paths == {"/v1/models/mnist/labels/stable/metadata"}
