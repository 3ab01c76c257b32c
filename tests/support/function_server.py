"""Start the function under functions-framework's production server (gunicorn), for real."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.conftest import ROOT, SHELL_SETTINGS, free_port, wait_until

FUNCTIONS_FRAMEWORK = Path(os.sys.executable).with_name("functions-framework")


@contextmanager
def running_function(model_server: str, sqlite_path: Path, **settings: str) -> Iterator[str]:
    """`functions-framework --target recognize` on a free port with these settings; its URL."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in SHELL_SETTINGS}
    env.update(MODEL_SERVER_URL=model_server, SQLITE_PATH=str(sqlite_path), **settings)
    command = [str(FUNCTIONS_FRAMEWORK), "--source", "function/main.py", "--target", "recognize"]
    process = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "the function")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
