"""The tests' Compose override runs the development model server as tf-serving: in step
with docker-compose.yml (no Docker needed to check it)."""

from __future__ import annotations

import yaml

from serving.__main__ import build_parser
from tests.conftest import ROOT

OVERRIDE = ROOT / "tests" / "integration" / "dev-model-server.yml"
# TF Serving flags the development server does not have.
NOT_IN_THE_DEV_SERVER = ("--grpc_socket_path",)


def _services(path):
    return yaml.safe_load(path.read_text())["services"]


def test_the_override_keeps_every_flag_of_the_compose_file_the_dev_server_has() -> None:
    shipped = _services(ROOT / "docker-compose.yml")["tf-serving"]["command"]
    override = _services(OVERRIDE)["tf-serving"]["command"]
    assert override == [
        flag for flag in shipped if flag.split("=", 1)[0] not in NOT_IN_THE_DEV_SERVER
    ]


def test_the_dev_server_accepts_the_overrides_entrypoint_and_command() -> None:
    service = _services(OVERRIDE)["tf-serving"]
    assert service["entrypoint"][:3] == ["python", "-m", "serving"]
    build_parser({}).parse_args([*service["entrypoint"][3:], *service["command"]])


def test_the_override_mounts_what_the_compose_file_mounts_plus_the_code() -> None:
    shipped = _services(ROOT / "docker-compose.yml")["tf-serving"]
    override = _services(OVERRIDE)["tf-serving"]
    targets = {volume.split(":")[1] for volume in override["volumes"]}
    assert targets.isdisjoint(volume.split(":")[1] for volume in shipped["volumes"])
    assert "healthcheck" not in override and "ports" not in override
