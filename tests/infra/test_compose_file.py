"""docker-compose.yml against the Compose Specification and against the repository.

Two independent readings: the raw file validated with the Compose Specification JSON
schema (tests/infra/schemas/compose-spec.json, the copy embedded in the pinned Docker
Compose binary), and the model that binary itself loads (`docker compose config`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from tests.infra.function_env import SERVER_VARIABLES, parse, variables_read_by_function
from tests.infra.support import COMPOSE_FILE, ROOT, compose_config

SCHEMA_FILE = Path(__file__).with_name("schemas") / "compose-spec.json"
# A release tag, maybe with a variant (nginx:1.28.0-alpine), maybe with a digest.
VERSION_TAG = re.compile(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?")
ONE_SHOT_EXEMPT = {"train"}  # run with `docker compose run --rm`, never part of `up`
# Dockerfiles of this repository with a HEALTHCHECK instruction.
HEALTHCHECK_IMAGES = {
    path.name
    for path in ROOT.glob("Dockerfile.*")
    if re.search(r"^HEALTHCHECK\s", path.read_text(), re.MULTILINE)
}


def services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return model["services"]


def is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


# --- the specification ------------------------------------------------------------------


def test_vendored_schema_is_the_one_the_compose_binary_embeds(compose_binary: Path) -> None:
    """Keeps the vendored copy honest: it must equal what `docker compose` validates with."""
    data = compose_binary.read_bytes()
    marker = data.index(b'"$id": "compose_spec.json"')
    start = data.rindex(b"{", 0, marker)
    embedded, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", errors="replace"))
    assert json.loads(SCHEMA_FILE.read_text()) == embedded


def test_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]
    assert problems == []


def test_the_schema_check_rejects_an_invalid_file() -> None:
    """The check can fail: an unknown service key and a bad depends_on condition."""
    schema = json.loads(SCHEMA_FILE.read_text())
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    document["services"]["function"]["helthcheck"] = {"test": ["CMD", "true"]}
    document["services"]["function"]["depends_on"] = {"schema": {"condition": "service_done"}}
    assert len(list(jsonschema.Draft202012Validator(schema).iter_errors(document))) >= 1


def test_every_profile_combination_loads_in_docker_compose(compose_models) -> None:
    """`docker compose config` (the pinned binary) accepts each profile set."""
    assert set(services(compose_models[()])) == {
        "cassandra",
        "schema",
        "tf-serving",
        "function",
        "proxy",
    }
    assert set(services(compose_models[("cluster",)])) - set(services(compose_models[()])) == {
        "cassandra-2",
        "cassandra-3",
        "schema-cluster",
    }
    assert set(services(compose_models[("train",)])) - set(services(compose_models[()])) == {
        "train"
    }


def test_every_interpolation_has_a_default() -> None:
    """`docker compose up` must work with an empty environment: no ${VAR} without :-."""
    text = COMPOSE_FILE.read_text()
    references = re.findall(r"(?<!\$)\$\{([^}]*)\}", text)
    assert references, "expected ${VAR:-default} settings"
    bare = [ref for ref in references if ":-" not in ref and "-" not in ref.split(":")[0]]
    assert bare == []


def test_overrides_reach_the_services(compose_binary: Path) -> None:
    model = compose_config(
        compose_binary,
        (),
        {"FUNCTION_PORT": "9999", "FUNCTION_BIND_ADDRESS": "0.0.0.0", "WORKERS": "3"},
    )
    proxy = services(model)["proxy"]  # the function's port is the proxy's
    assert proxy["ports"][0]["published"] == "9999"
    assert proxy["ports"][0]["host_ip"] == "0.0.0.0"
    assert services(model)["function"]["environment"]["WORKERS"] == "3"


def published_ports(model: dict[str, Any]) -> dict[str, list[str]]:
    """The host address of every published port, per service ("" when Compose binds all)."""
    return {
        name: [port.get("host_ip", "") for port in service.get("ports", []) if "published" in port]
        for name, service in services(model).items()
        if service.get("ports")
    }


def test_every_published_port_is_loopback_by_default(compose_all) -> None:
    """No API_TOKEN by default, so a port on every interface would show the upload history
    to the whole network; FUNCTION_BIND_ADDRESS opens the function's (the proxy's) on purpose."""
    ports = published_ports(compose_all)
    assert "proxy" in ports
    assert {name: hosts for name, hosts in ports.items() if set(hosts) != {"127.0.0.1"}} == {}


def test_no_secret_values_in_the_file() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in document["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"(^|_)(PASSWORD|SECRET|TOKEN|KEY)(_|$)", key):
                assert re.fullmatch(r"\$\{\w+:-\}", str(value)), f"{name}.{key} must be ${{VAR:-}}"


# --- images and files -------------------------------------------------------------------


def test_every_image_is_pinned_to_a_version(compose_all) -> None:
    for name, service in services(compose_all).items():
        image = service["image"]
        assert not image.endswith(":latest") and ":" in image, f"{name}: {image}"
        if "build" not in service:  # pulled from a registry: a real version tag
            assert VERSION_TAG.fullmatch(image), f"{name}: {image} is not version-pinned"


def test_one_cassandra_image_everywhere(compose_all) -> None:
    images = {
        service["image"] for name, service in services(compose_all).items() if "cassandra" in name
    }
    assert len(images) == 1, images


def mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    return [
        (Path(volume["source"]), PurePosixPath(volume["target"]))
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]


def test_every_bind_mount_is_a_path_in_the_repository(compose_all) -> None:
    for name, service in services(compose_all).items():
        for source, _ in mounts(service):
            assert source.exists(), f"{name}: {source} does not exist"
            assert source.resolve().is_relative_to(ROOT), f"{name}: {source} is outside the repo"


def test_every_container_path_in_a_command_exists_on_the_host(compose_all) -> None:
    """E.g. --model_config_file=/config/models.config must be serving/models.config."""
    for name, service in services(compose_all).items():
        words = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        for source, target in mounts(service):
            for word in words:
                for path in re.findall(rf"({re.escape(str(target))}/[\w./-]+)", word):
                    host = source / PurePosixPath(path).relative_to(target)
                    assert host.exists(), f"{name}: {path} -> {host} is missing"


def test_builds_use_files_that_exist(compose_all) -> None:
    for service in services(compose_all).values():
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"]["dockerfile"]).is_file()


# --- wiring -----------------------------------------------------------------------------


def test_every_function_variable_is_known_and_the_function_starts_with_them(compose_all) -> None:
    known = variables_read_by_function() | SERVER_VARIABLES
    # The schema job runs a tool from /app, so it puts the function's package on the path.
    tool_paths = {"function": set(), "schema": {"PYTHONPATH"}}
    for name in ("function", "schema"):
        env = services(compose_all)[name]["environment"]
        unknown = set(env) - known - tool_paths[name]
        assert not unknown, f"{name} sets variables the function never reads: {unknown}"
        _, cassandra = parse(env)  # raises on a missing required or malformed value
        assert cassandra is not None, f"{name} must use Cassandra"


def test_function_variables_point_at_the_services(compose_all) -> None:
    all_services = services(compose_all)
    env = all_services["function"]["environment"]
    settings, cassandra = parse(env)
    host, _, port = settings.model_server_url.removeprefix("http://").partition(":")
    assert host in all_services and f"--rest_api_port={port}" in all_services[host]["command"]
    for point, _ in cassandra.contact_points:
        assert point in all_services
    node_env = all_services["cassandra"]["environment"]
    assert cassandra.local_dc == node_env["CASSANDRA_DC"]
    schema_env = all_services["schema"]["environment"]
    assert cassandra.keyspace == schema_env["CASSANDRA_KEYSPACE"]


def test_tf_serving_flags(compose_all) -> None:
    command = services(compose_all)["tf-serving"]["command"]
    flags = dict(word.removeprefix("--").split("=", 1) for word in command)
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    assert flags["enable_batching"] == "true"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    for key in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        assert flags[key].startswith("/config/")
    assert services(compose_all)["tf-serving"]["entrypoint"] == ["tensorflow_model_server"]


def test_the_model_servers_grpc_admin_api_is_on_no_network(compose_all) -> None:
    """gRPC's ModelService reloads what is served for anyone who reaches the port (#23), and
    a network cannot split it from Predict: TCP gRPC is off (TF Serving's --port=0), and
    gRPC listens on a socket inside the container only. The function uses REST."""
    service = services(compose_all)["tf-serving"]
    flags = dict(word.removeprefix("--").split("=", 1) for word in service["command"])
    assert flags["port"] == "0"
    assert PurePosixPath(flags["grpc_socket_path"]).parent == PurePosixPath("/tmp")
    published = {str(port.get("target")) for port in service.get("ports", [])}
    assert published == {"8501"} and not service.get("expose")


def networks_of(model: dict[str, Any]) -> dict[str, set[str]]:
    return {name: set(service.get("networks") or {}) for name, service in services(model).items()}


@pytest.mark.parametrize(
    ("one", "other", "talk"),
    [
        ("proxy", "function", True),
        ("function", "tf-serving", True),
        ("function", "cassandra", True),
        ("schema", "cassandra", True),
        ("proxy", "tf-serving", False),
        ("proxy", "cassandra", False),
        ("tf-serving", "cassandra", False),
        ("schema", "tf-serving", False),
    ],
)
def test_networks_join_only_the_services_that_talk(compose_all, one, other, talk) -> None:
    networks = networks_of(compose_all)
    assert bool(networks[one] & networks[other]) is talk, (one, other, networks)


def test_every_cassandra_node_and_job_is_on_the_store_network_only(compose_all) -> None:
    networks = networks_of(compose_all)
    for name in ("cassandra", "cassandra-2", "cassandra-3", "schema", "schema-cluster"):
        assert networks[name] == {"store"}, name


def test_cassandra_nodes_set_the_heap_and_share_cluster_and_dc(compose_all) -> None:
    nodes = {n: s for n, s in services(compose_all).items() if s["image"].startswith("cassandra")}
    nodes = {n: s for n, s in nodes.items() if "healthcheck" in s}
    assert set(nodes) == {"cassandra", "cassandra-2", "cassandra-3"}
    for name, service in nodes.items():
        env = service["environment"]
        assert env["MAX_HEAP_SIZE"], name
        # Cassandra 5.0 on Java 17 runs G1; cassandra-env.sh applies HEAP_NEWSIZE only
        # under CMS, so setting it would only suggest a knob that does nothing.
        assert "HEAP_NEWSIZE" not in env, name
        assert env["CASSANDRA_SEEDS"] in nodes, name
        assert service["healthcheck"]["test"] == ["CMD", "cqlsh", "-e", "describe keyspaces"]
    assert len({s["environment"]["CASSANDRA_CLUSTER_NAME"] for s in nodes.values()}) == 1
    assert len({s["environment"]["CASSANDRA_DC"] for s in nodes.values()}) == 1


def test_cluster_profile_replicates_three_times_in_the_nodes_dc(compose_models) -> None:
    cluster = services(compose_models[("cluster",)])
    nodes = [n for n in cluster if n.startswith("cassandra")]
    statement = cluster["schema-cluster"]["command"][-1]
    dc = cluster["cassandra"]["environment"]["CASSANDRA_DC"]
    assert f"'{dc}': {len(nodes)}" in statement and len(nodes) == 3
    assert cluster["function"]["environment"]["CASSANDRA_CONSISTENCY"] == "LOCAL_QUORUM"
    # Nodes join one at a time.
    assert "cassandra" in cluster["cassandra-2"]["depends_on"]
    assert "cassandra-2" in cluster["cassandra-3"]["depends_on"]


def test_single_node_keyspace_has_one_replica_in_the_nodes_dc(compose_models) -> None:
    single = services(compose_models[()])
    dc = single["cassandra"]["environment"]["CASSANDRA_DC"]
    assert f"'{dc}': 1" in " ".join(single["schema"]["command"])


@pytest.mark.parametrize("profiles", [(), ("cluster",)], ids=["default", "cluster"])
def test_up_wait_adopts_every_one_shot_service(compose_models, profiles) -> None:
    """`up --wait` fails on an exited container unless a running service depends on it
    with service_completed_successfully."""
    model = services(compose_models[profiles])
    adopted = {
        dependency
        for service in model.values()
        if not is_one_shot(service)
        for dependency, rule in (service.get("depends_on") or {}).items()
        if rule["condition"] == "service_completed_successfully"
    }
    one_shots = {name for name, s in model.items() if is_one_shot(s)} - ONE_SHOT_EXEMPT
    assert one_shots <= adopted, one_shots - adopted


def test_function_waits_for_a_ready_model_server_and_the_schema(compose_models) -> None:
    depends = services(compose_models[()])["function"]["depends_on"]
    assert depends["tf-serving"]["condition"] == "service_healthy"
    assert depends["schema"]["condition"] == "service_completed_successfully"
    assert services(compose_models[()])["schema"]["depends_on"]["cassandra"]["condition"] == (
        "service_healthy"
    )


def test_one_shot_services_do_not_inherit_the_function_image_healthcheck(compose_all) -> None:
    """The schema job runs in the function image, whose HEALTHCHECK probes a port the job
    never opens: inherited, it would mark the job unhealthy while it works."""
    checked = HEALTHCHECK_IMAGES & {
        service.get("build", {}).get("dockerfile") for service in services(compose_all).values()
    }
    assert checked == {"Dockerfile.function"}
    for name, service in services(compose_all).items():
        if is_one_shot(service) and service.get("build", {}).get("dockerfile") in checked:
            assert service.get("healthcheck") == {"disable": True}, name


def test_long_running_services_have_healthchecks(compose_all) -> None:
    for name, service in services(compose_all).items():
        if not is_one_shot(service) and name != "function":  # function: Dockerfile HEALTHCHECK
            assert service.get("healthcheck", {}).get("test"), name
