"""The local stack for real: the function under functions-framework's production server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, SHELL_SETTINGS, free_port, wait_until


@pytest.fixture(scope="session")
def function_url(model_server, tmp_path_factory) -> Iterator[str]:
    """`functions-framework --target recognize` on a free port, wired to the model server."""
    port = free_port()
    env = {
        **os.environ,
        "MODEL_SERVER_URL": model_server,
        "SQLITE_PATH": str(tmp_path_factory.mktemp("log") / "predictions.sqlite3"),
    }
    for name in SHELL_SETTINGS:
        env.pop(name, None)
    executable = Path(os.sys.executable).with_name("functions-framework")
    process = subprocess.Popen(
        [
            str(executable),
            "--source",
            "function/main.py",
            "--target",
            "recognize",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "the function")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
