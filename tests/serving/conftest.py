"""Fixtures for the development model server: real SavedModels, real servers, real HTTP."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving_testlib import Deployment, build_model_store

from serving import ModelServer


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SavedModels built once per session; tests copy them into their own deployments."""
    return build_model_store(tmp_path_factory.mktemp("model_store"))


@pytest.fixture
def deployment(tmp_path: Path, model_store: dict[str, Path]) -> Deployment:
    return Deployment(tmp_path, model_store)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ModelServer]]:
    """Start ModelServers for a deployment (fast polling, free port); all stopped afterwards."""
    servers: list[ModelServer] = []

    def start(deployment: Deployment, **overrides: Any) -> ModelServer:
        server = ModelServer(**deployment.server_options(**overrides))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_store: dict[str, Path]
) -> Iterator[ModelServer]:
    """A read-only server: version 1 (bucket), 2 (flipped); stable -> 1, canary -> 2."""
    deployment = Deployment(tmp_path_factory.mktemp("served"), model_store)
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config(labels={"stable": 1, "canary": 2})
    options = deployment.server_options(allow_version_labels_for_unavailable_models=True)
    with ModelServer(**options) as server:
        yield server
