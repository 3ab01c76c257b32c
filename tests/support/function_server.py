"""Start the function under functions-framework's production server (gunicorn), for real."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.conftest import ROOT, SHELL_SETTINGS, free_port, wait_until


@contextmanager
def running_function(model_server: str, sqlite_path: Path, **settings: str) -> Iterator[str]:
    """function/serve.py (functions-framework's gunicorn, metrics shared by its workers) on
    a free port with these settings; its URL."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in SHELL_SETTINGS}
    env.update(MODEL_SERVER_URL=model_server, SQLITE_PATH=str(sqlite_path), **settings)
    command = [sys.executable, "function/serve.py", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "the function")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
