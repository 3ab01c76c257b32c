"""MEMORY_LIMIT_MIB, which sizes the function's decode budgets, is the memory each deploy
gives the function's instance: the deploy tool derives it from MEMORY, and the Kubernetes
ConfigMap states the function container's memory limit."""

from __future__ import annotations

import pytest
import yaml

from infra.deploy.__main__ import plan
from recognizer.config import Settings
from tests.infra.support import K8S_DIR

BASE = {
    "GCP_PROJECT": "digits-prod-42",
    "GCP_REGION": "europe-west1",
    "MODEL_SERVER_URL": "https://tf-serving.internal.example:8501/",
    "CASSANDRA_CONTACT_POINTS": "10.0.0.5",
    "IMAGE_TAG": "abc",
}
MEBIBYTES = {"Mi": 1, "Gi": 1024}


def env_of(argv: list[str]) -> dict[str, str]:
    flag = next(a for a in argv if a.startswith("--set-env-vars="))
    value = flag.removeprefix("--set-env-vars=")
    separator = ","
    if value.startswith("^"):
        separator, value = value[1], value[3:]
    return dict(item.split("=", 1) for item in value.split(separator))


@pytest.mark.parametrize("target", ["function", "run-function"])
@pytest.mark.parametrize(
    ("cpu", "memory", "mebibytes"), [(None, None, 512), ("1", "1Gi", 1024), ("2", "768Mi", 768)]
)
def test_the_deploy_tool_passes_the_instance_memory(target, cpu, memory, mebibytes) -> None:
    environ = dict(BASE)
    if memory:
        environ.update(CPU=cpu, MEMORY=memory)
    deploys = [
        step.argv for step in plan(target, environ) if "--set-env-vars" in " ".join(step.argv)
    ]
    (argv,) = deploys
    assert f"--memory={memory or '512Mi'}" in argv
    env = env_of(argv)
    assert env["MEMORY_LIMIT_MIB"] == str(mebibytes)
    assert Settings.from_env(env).memory_limit_mib == mebibytes


def test_the_k8s_config_states_the_function_containers_memory_limit() -> None:
    documents = list(yaml.safe_load_all((K8S_DIR / "function.yaml").read_text()))
    config = next(
        d for d in documents if d["kind"] == "ConfigMap" and "MEMORY_LIMIT_MIB" in d.get("data", {})
    )
    service = next(d for d in documents if d["kind"] == "Service")
    (function,) = [
        c for c in service["spec"]["template"]["spec"]["containers"] if c["name"] == "function"
    ]
    assert any(
        source.get("configMapRef", {}).get("name") == config["metadata"]["name"]
        for source in function["envFrom"]
    )
    limit = function["resources"]["limits"]["memory"]
    number, unit = int(limit[:-2]), limit[-2:]
    assert int(config["data"]["MEMORY_LIMIT_MIB"]) == number * MEBIBYTES[unit]
