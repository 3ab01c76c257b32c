"""Paths and tool lookups shared by the deployment checks.

The tools (hadolint, docker-compose) come from PyPI packages pinned in
requirements-dev.txt. A missing tool fails the check instead of skipping it: a skip
would hide a lost linter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "infra" / "k8s"
PROFILE_SETS: tuple[tuple[str, ...], ...] = ((), ("cluster",), ("train",), ("cluster", "train"))


def tool(name: str, package: str) -> Path:
    """An executable from the virtualenv running the tests, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: pip install {package} (requirements-dev.txt)")
    return Path(found)


def clean_env() -> dict[str, str]:
    """An environment without the user's overrides, so Compose applies the file's defaults."""
    return {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}


def compose_config(
    binary: Path, profiles: tuple[str, ...], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`docker compose config` as JSON: Compose's own loader, validator and interpolation."""
    argv = [str(binary), "--file", str(COMPOSE_FILE), "--project-directory", str(ROOT)]
    for profile in profiles:
        argv += ["--profile", profile]
    result = subprocess.run(
        [*argv, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**clean_env(), **(env or {})},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def function_venv() -> Path:
    """A virtualenv holding only function/requirements.txt, like the function image.

    Same cache key as tests/function/test_deployable.py, so the two share one install.
    """
    requirements = ROOT / "function" / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    home = ROOT / ".cache" / f"function-venv-{digest}"
    if not (home / ".complete").exists():
        venv.create(home, clear=True, with_pip=True)
        python = str(home / "bin" / "python")
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True
        )
        (home / ".complete").touch()
    return home
