"""The reverse proxy (infra/proxy/nginx.conf) and how Compose and Kubernetes put it in front.

Offline: what the config promises (buffering, timeouts, limits), that both deployments run
that very file with the official image, and that nothing reaches the function around it.
tests/e2e/test_slow_clients.py runs the file for real with Debian's nginx.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from recognizer.config import Settings
from tests.infra.support import K8S_DIR, ROOT

PROXY_DIR = ROOT / "infra" / "proxy"
PROXY_CONF = PROXY_DIR / "nginx.conf"
COMPOSE_UPSTREAM = "server function:8080;"
POD_UPSTREAM = "server 127.0.0.1:8081;"
OFFICIAL_IMAGE = re.compile(r"nginx:\d+\.\d+\.\d+(-alpine)?(@sha256:[0-9a-f]{64})?")
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def directives(text: str) -> dict[str, list[str]]:
    """Every `name value...;` of the config (comments dropped), each name's values in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([a-z_]+)\s+(.+);", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


CONF = directives(PROXY_CONF.read_text())


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * UNITS[unit]


# --- the config -----------------------------------------------------------------------------


def test_requests_are_buffered_whole_before_the_function_sees_them() -> None:
    assert CONF["proxy_request_buffering"] == ["on"]
    assert CONF["proxy_buffering"] == ["on"]
    assert CONF["proxy_pass"] == ["http://function"]
    # A request that reached the function is never sent again (POST /predict records).
    assert CONF["proxy_next_upstream"] == ["off"]


@pytest.mark.parametrize(
    "directive, most",
    [("client_header_timeout", 30), ("client_body_timeout", 30), ("send_timeout", 60)],
)
def test_stalled_clients_are_dropped(directive: str, most: float) -> None:
    (value,) = CONF[directive]
    assert 0 < seconds(value) <= most


def test_connections_are_limited() -> None:
    (zone,) = CONF["limit_conn_zone"]
    assert zone.startswith("$binary_remote_addr zone=per_address:")
    (limit,) = CONF["limit_conn"]
    name, count = limit.split()
    assert name == "per_address" and 0 < int(count) < int(CONF["worker_connections"][0])
    assert CONF["limit_conn_status"] == ["429"]
    assert CONF["reset_timedout_connection"] == ["on"]


def test_the_body_limit_is_the_function_s() -> None:
    """Smaller, and nginx would refuse what the function accepts; larger, and it would
    buffer what the function then refuses."""
    (value,) = CONF["client_max_body_size"]
    assert size(value) == Settings().max_request_bytes


def test_proxy_refusals_use_the_function_s_error_format() -> None:
    text = PROXY_CONF.read_text()
    pages = re.findall(r"error_page ([\d ]+?) (?:=\d+ )?(/\.proxy/\d+);", text)
    covered = {int(code) for codes, _ in pages for code in codes.split()}
    assert {413, 429, 502, 503, 504} <= covered
    for _, location in pages:
        body = re.search(rf"location = {re.escape(location)} \{{(.*?)\n        \}}", text, re.S)
        assert body, location
        assert "internal;" in body.group(1) and "default_type application/json;" in body.group(1)
        assert re.search(
            r"""return \d{3} '\{"error":\{"code":"[a-z_]+","message":""", body.group(1)
        )


def test_it_runs_unprivileged_on_a_read_only_filesystem() -> None:
    """No `user` (it runs as the container's user) and every path under -p (/tmp/)."""
    assert "user" not in CONF
    assert CONF["daemon"] == ["off"]
    for name in ("pid", *[n for n in CONF if n.endswith("_temp_path")]):
        for value in CONF[name]:
            assert not value.startswith("/"), f"{name} {value} must be relative to -p"
    assert {n for n in CONF if n.endswith("_temp_path")} == {
        "client_body_temp_path",
        "proxy_temp_path",
        "fastcgi_temp_path",
        "uwsgi_temp_path",
        "scgi_temp_path",
    }
    assert CONF["error_log"] == ["stderr warn"]


def test_the_upstream_and_listen_lines_the_deployments_rewrite_appear_once() -> None:
    text = PROXY_CONF.read_text()
    assert text.count(COMPOSE_UPSTREAM) == 1
    assert CONF["server"] == ["function:8080"]
    assert CONF["listen"] == ["8080"]


# --- Docker Compose ------------------------------------------------------------------------


def command_paths(argv: list[str]) -> tuple[str, str]:
    """(-p prefix, -c config) of an nginx command line."""
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    return options["-p"], options["-c"]


def test_compose_runs_the_repository_config_with_the_official_image(compose_all) -> None:
    proxy = compose_all["services"]["proxy"]
    assert OFFICIAL_IMAGE.fullmatch(proxy["image"]), proxy["image"]
    assert proxy["entrypoint"] == ["nginx"]
    prefix, config = command_paths(proxy["command"])
    (mount,) = [v for v in proxy["volumes"] if v["type"] == "bind"]
    assert Path(mount["source"]) == PROXY_DIR and mount["read_only"] is True
    assert PurePosixPath(config) == PurePosixPath(mount["target"]) / PROXY_CONF.name
    assert prefix == "/tmp/" and "/tmp" in proxy["tmpfs"] and proxy["read_only"] is True
    assert proxy["user"] == "101:101" and proxy["cap_drop"] == ["ALL"]


def test_compose_reaches_the_function_only_through_the_proxy(compose_all) -> None:
    services = compose_all["services"]
    function = services["function"]
    assert "ports" not in function, "a published function port would bypass the proxy"
    host, _, port = CONF["server"][0].partition(":")
    assert host == "function" and port == "8080"  # Dockerfile.function's PORT
    assert services["proxy"]["depends_on"]["function"]["condition"] == "service_healthy"
    (published,) = services["proxy"]["ports"]
    assert published["target"] == int(CONF["listen"][0])
    assert published["host_ip"] == "127.0.0.1"


# --- Kubernetes ----------------------------------------------------------------------------


def knative() -> dict[str, Any]:
    documents = yaml.safe_load_all((K8S_DIR / "function.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents if d}


def containers() -> dict[str, dict[str, Any]]:
    spec = knative()["Service/digit-recognizer"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def test_the_pod_s_copy_of_the_config_differs_only_in_the_function_s_address() -> None:
    shipped = knative()["ConfigMap/digit-recognizer-proxy"]["data"]["nginx.conf"]
    assert shipped == PROXY_CONF.read_text().replace(COMPOSE_UPSTREAM, POD_UPSTREAM)


def test_knative_routes_to_the_proxy_and_the_function_listens_where_it_points() -> None:
    pod = containers()
    assert set(pod) == {"proxy", "function"}
    proxy, function = pod["proxy"], pod["function"]
    assert proxy["ports"][0]["containerPort"] == int(CONF["listen"][0])
    assert "ports" not in function, "Knative routes to the container with a port"
    argv = shlex.split(" ".join([*function["command"], *function["args"]]))
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    host, _, port = POD_UPSTREAM.removeprefix("server ").removesuffix(";").partition(":")
    assert (options["--host"], options["--port"]) == (host, port)
    assert argv[0] == "functions-framework" and options["--target"] == "recognize"


def test_knative_runs_the_config_from_its_configmap_with_the_compose_image(compose_all) -> None:
    proxy = containers()["proxy"]
    assert proxy["image"] == compose_all["services"]["proxy"]["image"]
    assert proxy["command"] == ["nginx"]
    prefix, config = command_paths(proxy["args"])
    spec = knative()["Service/digit-recognizer"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    config_mount = mounts[str(PurePosixPath(config).parent)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "digit-recognizer-proxy"
    assert PurePosixPath(config).name == "nginx.conf" and config_mount["readOnly"] is True
    assert "emptyDir" in volumes[mounts[prefix.rstrip("/")]["name"]]
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
