"""The development model server (`python -m serving`, TensorFlow) as a test starts it.

One way to start it for every suite: on a free REST port, gRPC on a free port too (side
by side servers do not fight over 8500), labels allowed before their version loads (as
TF Serving needs to start with labels), and, given a models.config and a models tree of
the test's own, polling that config every 0.2 s so that a rollout's edits take effect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
CONFIG_POLL_SECONDS = "0.2"


def label_available(url: str, label: str = "stable") -> bool:
    """TF Serving answers a label's metadata only once its version is AVAILABLE."""
    return requests.get(f"{url}/v1/models/mnist/labels/{label}/metadata", timeout=2).ok


@contextmanager
def dev_model_server(
    config: Path | None = None,
    models_dir: Path | None = None,
    *,
    label: str = "stable",
    log: Path | None = None,
    flags: Sequence[str] = (),
    config_poll_seconds: str = CONFIG_POLL_SECONDS,
) -> Iterator[str]:
    """Its URL once `label` is AVAILABLE; stopped on leaving. Without `config`, the shipped
    serving/models.config over models/; output to `log` if given, else inherited."""
    from tests.conftest import free_port, wait_until  # here: tests.conftest imports this module

    port = free_port()
    command = [sys.executable, "-m", "serving", "--rest_api_port", str(port), "--port", "0",
               "--allow_version_labels_for_unavailable_models", *flags]  # fmt: skip
    if models_dir is not None:
        command += ["--models_dir", str(models_dir)]
    if config is not None:
        command += ["--model_config_file", str(config),
                    "--model_config_file_poll_wait_seconds", config_poll_seconds]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        output = None if log is None else stack.enter_context(log.open("w"))
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=output, stderr=None if output is None else subprocess.STDOUT,
        )  # fmt: skip
        try:

            def serving() -> bool:  # fail at once, not at the deadline, if it exits
                if process.poll() is not None:
                    raise RuntimeError(f"the development model server exited: {process.returncode}")
                return label_available(url, label)

            wait_until(serving, f"the development model server's {label!r} label")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
