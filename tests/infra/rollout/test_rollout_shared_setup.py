"""Every replica polls one config, as the image, the manifests and the README set it up.

Static checks of Dockerfile.serving, infra/k8s/ and the READMEs against each other and
against the rollout tool's own spellings (the ConfigMap's name and key, the headless
Service's DNS name). The Cloud Run bucket is checked in tests/infra/test_deploy_dry_run.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

import yaml

from infra.rollout.fleet import replicas_setting
from infra.rollout.shared import ConfigMap, shared_config
from tests.infra.dockerfiles import env_of, only, parse
from tests.infra.support import K8S_DIR, ROOT

SERVING = ROOT / "Dockerfile.serving"
NAMESPACE = "digit-recognizer"
CONFIGMAP = f"configmap:{NAMESPACE}/tf-serving-config"
REPLICAS = f"dns://tf-serving-replicas.{NAMESPACE}.svc.cluster.local:8501"


def documents() -> list[dict]:
    return [
        doc
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and path.name != "kustomization.yaml"
    ]


def find(kind: str, name: str) -> dict:
    (found,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_the_image_polls_the_config_file_its_environment_names() -> None:
    instructions = parse(SERVING)
    env = env_of(instructions)
    assert env["MODEL_CONFIG_FILE"] == "/config/models.config"  # the baked default
    assert float(env["MODEL_CONFIG_POLL_SECONDS"]) > 0
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    flags = shlex.split(entrypoint.exec_form()[2])
    assert "--model_config_file=$MODEL_CONFIG_FILE" in flags
    assert "--model_config_file_poll_wait_seconds=$MODEL_CONFIG_POLL_SECONDS" in flags


def test_every_tf_serving_pod_polls_the_configmap_the_rollout_tool_writes() -> None:
    pod = find("Deployment", "tf-serving")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    config_file = PurePosixPath(env["MODEL_CONFIG_FILE"])
    assert float(env["MODEL_CONFIG_POLL_SECONDS"]) > 0
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_file.parent)]
    assert "subPath" not in mount, "a subPath mount never sees the ConfigMap change"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    target = shared_config(CONFIGMAP)
    assert isinstance(target, ConfigMap)
    assert (volume["configMap"]["name"], target.key) == (target.name, config_file.name)
    assert "items" not in volume["configMap"]  # every key, under its own name


def test_the_headless_service_lists_every_tf_serving_pod_for_the_rollout_tool() -> None:
    service = find("Service", "tf-serving-replicas")
    deployment = find("Deployment", "tf-serving")
    assert service["spec"]["clusterIP"] == "None"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]
             ["containers"][0]["ports"]}  # fmt: skip
    assert ports[port["targetPort"]] == port["port"] == 8501  # a pod's IP: the container port
    assert replicas_setting({"MODEL_SERVER_REPLICAS": REPLICAS}) == REPLICAS
    host = REPLICAS.removeprefix("dns://").split(":")[0]
    assert host.split(".")[:2] == [service["metadata"]["name"], NAMESPACE]


def test_the_rollout_identity_may_replace_that_configmap_and_nothing_else() -> None:
    (rule,) = find("Role", "digit-recognizer-rollout")["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["tf-serving-config"],
        "verbs": ["get", "update"],  # kubectl get, kubectl replace
    }
    binding = find("RoleBinding", "digit-recognizer-rollout")
    assert binding["roleRef"]["name"] == "digit-recognizer-rollout"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "digit-recognizer-rollout", "namespace": NAMESPACE}
    ]
    find("ServiceAccount", "digit-recognizer-rollout")


def test_the_first_deployment_creates_the_configmap_once_from_the_shipped_config() -> None:
    text = (K8S_DIR / "README.md").read_text().replace("\\\n", " ")
    (command,) = re.findall(r"^kubectl .*create configmap tf-serving-config.*$", text, re.M)
    argv = shlex.split(command)
    assert argv[argv.index("-n") + 1] == NAMESPACE
    (source,) = [a for a in argv if a.startswith("--from-file=")]
    key, path = source.removeprefix("--from-file=").split("=")
    assert key == "models.config" and (K8S_DIR / path).resolve() == ROOT / "serving/models.config"
    assert "apply" not in argv, "an apply would undo the rollouts made since"
    assert f"--config {CONFIGMAP}" in text and f"--replicas {REPLICAS}" in text
