"""infra/k8s/ against Kubernetes' schemas (offline, kubernetes-validate) and each other.

Built-in kinds are validated strictly (no unknown fields) against the oldest and newest
Kubernetes versions we claim. The Knative Service has no published schema: it is
validated against tests/infra/schemas/knative-service-v1.json, and its container
against the core/v1 Container schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.cassandra.apply_schema import SCHEMA, render, replication_map, split_statements
from tests.infra.function_env import SERVER_VARIABLES, parse, variables_read_by_function
from tests.infra.support import COMPOSE_FILE, K8S_DIR

KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # autoscaling/v2, policy/v1, batch/v1 are GA in both
KNATIVE_SCHEMA = json.loads(
    (Path(__file__).with_name("schemas") / "knative-service-v1.json").read_text()
)
MANIFEST_FILES = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def load_all() -> list[dict[str, Any]]:
    return [doc for path in MANIFEST_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCUMENTS = load_all()


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in DOCUMENTS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def is_knative(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].startswith("serving.knative.dev/")


def label(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template, with Knative's revision spec among them."""
    specs = []
    for doc in DOCUMENTS:
        template = doc.get("spec", {}).get("template")
        if template:
            specs.append((label(doc), template["spec"]))
    return specs


# --- schemas ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFEST_FILES]
    assert kustomization["namespace"] == find("Namespace")["metadata"]["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if not is_knative(d)], ids=lambda d: label(d))
def test_builtin_kinds_are_valid_strictly(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check can fail: a misspelt probe field is reported."""
    deployment = json.loads(json.dumps(find("Deployment", "tf-serving")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_knative_service_matches_the_fields_knative_accepts() -> None:
    service = find("Service", "digit-recognizer")
    jsonschema.Draft202012Validator.check_schema(KNATIVE_SCHEMA)
    problems = [
        e.message for e in jsonschema.Draft202012Validator(KNATIVE_SCHEMA).iter_errors(service)
    ]
    assert problems == []


def test_knative_schema_rejects_what_knative_would() -> None:
    service = json.loads(json.dumps(find("Service", "digit-recognizer")))
    spec = service["spec"]["template"]["spec"]
    spec["initContainers"] = [{"image": "busybox:1.36"}]  # behind a feature flag
    function = next(c for c in spec["containers"] if c["name"] == "function")
    function["env"].append({"name": "PORT", "value": "9000"})  # reserved
    errors = list(jsonschema.Draft202012Validator(KNATIVE_SCHEMA).iter_errors(service))
    assert len(errors) == 2


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_knative_containers_are_valid_kubernetes_containers(version: str) -> None:
    spec = find("Service", "digit-recognizer")["spec"]["template"]["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "knative-revision"},
        "spec": {"containers": spec["containers"], "volumes": spec.get("volumes", [])},
    }
    kubernetes_validate.validate(pod, version, strict=True)


def serving_container(spec: dict[str, Any]) -> dict[str, Any]:
    """The one container of a Knative revision with a port: the one it routes to."""
    (container,) = [c for c in spec["containers"] if c.get("ports")]
    return container


def knative_container(name: str) -> dict[str, Any]:
    spec = find("Service", "digit-recognizer")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == name]
    return container


def test_knative_probes_use_the_container_port_and_its_scale_bounds_hold() -> None:
    template = find("Service", "digit-recognizer")["spec"]["template"]
    container = serving_container(template["spec"])
    port = container["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port  # Knative requires this
    annotations = template["metadata"]["annotations"]
    low = int(annotations["autoscaling.knative.dev/min-scale"])
    high = int(annotations["autoscaling.knative.dev/max-scale"])
    assert 0 <= low <= high
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


# --- security ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, spec", pod_specs(), ids=[n for n, _ in pod_specs()])
def test_pods_meet_the_restricted_pod_security_standard(name: str, spec: dict[str, Any]) -> None:
    pod = spec.get("securityContext", {})
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert not any("hostPath" in volume for volume in spec.get("volumes", []))
    for container in spec["containers"]:
        own = container.get("securityContext", {})
        effective = {**pod, **own}
        assert effective.get("runAsNonRoot") is True, name
        assert effective.get("runAsUser", 1) != 0, name
        assert own.get("allowPrivilegeEscalation") is False, name
        assert "ALL" in own.get("capabilities", {}).get("drop", []), name
        assert not own.get("privileged"), name
        seccomp = own.get("seccompProfile") or pod.get("seccompProfile") or {}
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), name


def test_namespace_enforces_restricted() -> None:
    labels = find("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def stated_knative_minimum(text: str) -> tuple[int, int]:
    found = re.findall(r"Knative Serving \**(\d+)\.(\d+)\** or newer", text)
    assert found, "the README must state the minimum Knative Serving version"
    return min((int(major), int(minor)) for major, minor in found)


def test_readme_states_the_knative_minimum_the_restricted_namespace_needs() -> None:
    """Knative 1.9 to 1.11 start queue-proxy without a seccomp profile, which the restricted
    standard rejects: under `enforce: restricted` the stated minimum must be 1.12."""
    readme = (K8S_DIR / "README.md").read_text()
    labels = find("Namespace")["metadata"]["labels"]
    if labels["pod-security.kubernetes.io/enforce"] == "restricted":
        assert stated_knative_minimum(readme) >= (1, 12)
    assert "app.kubernetes.io/version" in readme  # how to check the installed version
    assert stated_knative_minimum("needs Knative Serving 1.9 or newer") < (1, 12)


def test_the_readme_first_apply_leaves_out_exactly_the_function() -> None:
    """Step 4 applies everything but the function by label, so the label must mark
    exactly function.yaml's objects."""
    readme = (K8S_DIR / "README.md").read_text()
    (selector,) = re.findall(r"kubectl apply -k \. -l '([^']+)'", readme)
    key, _, value = selector.partition("!=")
    marked = {label(d) for d in DOCUMENTS if d["metadata"].get("labels", {}).get(key) == value}
    function_file = yaml.safe_load_all((K8S_DIR / "function.yaml").read_text())
    assert marked == {label(d) for d in function_file if d}


def test_images_are_pinned_and_match_compose() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, spec in pod_specs():
        for container in spec["containers"]:
            image = container["image"]
            pinned = r"[a-z0-9./-]+:\d+\.\d+\.\d+(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?"
            assert re.fullmatch(pinned, image), f"{name}: {image}"
            if image.startswith("cassandra:"):
                assert image == compose["cassandra"]["image"], name


# --- wiring -----------------------------------------------------------------------------


def test_tf_serving_is_autoscaled_on_cpu_with_requests_set() -> None:
    deployment = find("Deployment", "tf-serving")
    hpa = find("HorizontalPodAutoscaler", "tf-serving")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tf-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]  # utilization needs a request
    service = find("Service", "tf-serving")
    assert service["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def autoscaled_workloads_that_set_replicas(documents: list[dict[str, Any]]) -> list[str]:
    """Workloads an HPA scales that still set spec.replicas (`kubectl apply` resets them)."""
    targets = {
        (target["kind"], target["name"])
        for doc in documents
        if doc["kind"] == "HorizontalPodAutoscaler"
        for target in [doc["spec"]["scaleTargetRef"]]
    }
    return [
        label(doc)
        for doc in documents
        if (doc["kind"], doc["metadata"]["name"]) in targets and "replicas" in doc["spec"]
    ]


def test_no_autoscaled_workload_sets_replicas() -> None:
    hpas = [d for d in DOCUMENTS if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpas, "expected the TF Serving autoscaler"
    for hpa in hpas:  # every target exists, so the check below sees it
        target = hpa["spec"]["scaleTargetRef"]
        find(target["kind"], target["name"])
    assert autoscaled_workloads_that_set_replicas(DOCUMENTS) == []


def test_the_replicas_check_can_fail() -> None:
    documents = json.loads(json.dumps(DOCUMENTS))
    deployment = next(d for d in documents if label(d) == "Deployment/tf-serving")
    deployment["spec"]["replicas"] = 2
    assert autoscaled_workloads_that_set_replicas(documents) == ["Deployment/tf-serving"]


def test_function_config_is_what_the_function_reads_and_points_at_the_services() -> None:
    config = find("ConfigMap", "digit-recognizer-function")["data"]
    unknown = set(config) - (variables_read_by_function() | SERVER_VARIABLES)
    assert not unknown, f"variables the function never reads: {unknown}"
    assert "PORT" not in config, "Knative sets PORT itself"
    settings, cassandra = parse(config)
    assert cassandra is not None

    tf_service = find("Service", "tf-serving")
    host, _, port = settings.model_server_url.removeprefix("http://").partition(":")
    assert host == tf_service["metadata"]["name"]
    assert int(port) in [p["port"] for p in tf_service["spec"]["ports"]]

    statefulset = find("StatefulSet", "cassandra")
    pods = {
        f"{statefulset['metadata']['name']}-{i}.{statefulset['spec']['serviceName']}"
        for i in range(statefulset["spec"]["replicas"])
    }
    assert {point for point, _ in cassandra.contact_points} == pods
    (node,) = statefulset["spec"]["template"]["spec"]["containers"]
    node_env = {item["name"]: item["value"] for item in node["env"]}
    assert cassandra.local_dc == node_env["CASSANDRA_DC"]
    assert node_env["MAX_HEAP_SIZE"]
    assert "HEAP_NEWSIZE" not in node_env, "G1 (Java 17) ignores it: cassandra-env.sh, CMS only"

    knative = find("Service", "digit-recognizer")["spec"]["template"]["spec"]
    assert int(config["THREADS"]) == knative["containerConcurrency"]


def test_cassandra_password_comes_from_a_secret_reference() -> None:
    container = knative_container("function")
    env = {item["name"]: item for item in container["env"]}
    for name in ("CASSANDRA_USERNAME", "CASSANDRA_PASSWORD"):
        assert "value" not in env[name], f"{name} must not be written in the manifest"
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "cassandra-credentials"
    assert not [d for d in DOCUMENTS if d["kind"] == "Secret"], "no Secret values in the repo"


def test_cassandra_statefulset_has_a_headless_service_and_serial_bootstrap() -> None:
    statefulset = find("StatefulSet", "cassandra")
    service = find("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert statefulset["spec"]["podManagementPolicy"] == "OrderedReady"
    (node,) = statefulset["spec"]["template"]["spec"]["containers"]
    seeds = next(item["value"] for item in node["env"] if item["name"] == "CASSANDRA_SEEDS")
    assert seeds == f"cassandra-0.{service['metadata']['name']}"


def test_schema_job_applies_the_repository_schema_with_three_replicas() -> None:
    """The ConfigMap copy of schema.cql must not drift from infra/cassandra/schema.cql."""
    statefulset = find("StatefulSet", "cassandra")
    (node,) = statefulset["spec"]["template"]["spec"]["containers"]
    dc = next(item["value"] for item in node["env"] if item["name"] == "CASSANDRA_DC")
    replicas = statefulset["spec"]["replicas"]
    expected = render(
        split_statements(SCHEMA.read_text(encoding="utf-8")),
        replication=replication_map(f"{{'class': 'NetworkTopologyStrategy', '{dc}': {replicas}}}"),
    )
    shipped = find("ConfigMap", "cassandra-schema")["data"]["schema.cql"]
    assert shipped.strip() == "\n\n".join(f"{s};" for s in expected)
    job = find("Job", "cassandra-schema")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "schema", "configMap": {"name": "cassandra-schema"}} in volumes
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "-f /schema/schema.cql" in container["command"][-1]


# --- network policies (#23) -------------------------------------------------------------


def pod_labels(workload: str) -> dict[str, str]:
    """The labels of the pods a workload (Deployment, StatefulSet, Job, Knative Service) makes."""
    (doc,) = [
        d
        for d in DOCUMENTS
        if d["metadata"]["name"] == workload and "template" in d.get("spec", {})
    ]
    return doc["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def allowed(source: dict[str, str], target: dict[str, str], port: int) -> bool:
    """NetworkPolicy semantics for pods of one namespace: a pod no policy selects takes
    everything; a selected pod takes what some rule of a selecting policy allows."""
    policies = [
        d
        for d in DOCUMENTS
        if d["kind"] == "NetworkPolicy" and selects(d["spec"]["podSelector"], target)
    ]
    if not policies:
        return True
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            peers = [p["podSelector"] for p in rule.get("from", []) if "podSelector" in p]
            if port in ports and any(selects(peer, source) for peer in peers):
                return True
    return False


ROLLOUT_POD = {"app.kubernetes.io/name": "digit-recognizer-rollout"}


@pytest.mark.parametrize(
    ("source", "target", "port", "expected"),
    [
        ("digit-recognizer", "tf-serving", 8501, True),  # the function's predictions (REST)
        ("digit-recognizer", "tf-serving", 8500, False),  # gRPC carries ModelService reloads
        ("cassandra", "tf-serving", 8500, False),
        ("cassandra-schema", "tf-serving", 8501, False),
        (ROLLOUT_POD, "tf-serving", 8500, True),
        (ROLLOUT_POD, "tf-serving", 8501, True),
        ({}, "tf-serving", 8500, False),  # any other pod in the namespace
        ("digit-recognizer", "cassandra", 9042, True),
        ("cassandra-schema", "cassandra", 9042, True),
        ("cassandra", "cassandra", 7000, True),
        ("tf-serving", "cassandra", 9042, False),
        ("digit-recognizer", "cassandra", 7000, False),
    ],
)
def test_network_policies_let_only_the_talking_pods_in(source, target, port, expected) -> None:
    source_labels = source if isinstance(source, dict) else pod_labels(source)
    assert allowed(source_labels, pod_labels(target), port) is expected


def test_network_policy_ports_are_the_containers_ports() -> None:
    """A policy names the pod's port (8500/8501, not the Service's): they must exist."""
    for policy in (d for d in DOCUMENTS if d["kind"] == "NetworkPolicy"):
        (workload,) = [
            d
            for d in DOCUMENTS
            if d["kind"] in ("Deployment", "StatefulSet")
            and selects(policy["spec"]["podSelector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        container_ports = {
            p["containerPort"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= container_ports, label(policy)
