"""function/ deploys as it is: its requirements.txt is complete, and it stays light."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, free_port, wait_until

FUNCTION = ROOT / "function"
REQUIREMENTS = FUNCTION / "requirements.txt"


@pytest.fixture(scope="module")
def function_only_venv() -> Path:
    """A fresh virtual environment holding only function/requirements.txt (cached by its hash)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    home = ROOT / ".cache" / f"function-venv-{digest}"
    python = home / "bin" / "python"
    if not (home / ".complete").exists():
        venv.create(home, clear=True, with_pip=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)], check=True
        )
        (home / ".complete").touch()
    return home


def test_importing_the_function_loads_no_tensorflow():
    probe = (
        "import sys; import main; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'tensorflow_serving', 'keras', 'cassandra'}); print(heavy)"
    )
    result = subprocess.run(  # from its own directory, as a function platform imports it
        [sys.executable, "-c", probe], cwd=FUNCTION, capture_output=True, text=True, check=True
    )
    # Cassandra's driver is imported only when the Cassandra store is configured.
    assert result.stdout.strip() == "[]"


def test_the_package_is_recognizer_or_nothing():
    """One import root: as function.recognizer each module would exist twice (two of each
    error class), so that name refuses to import; the tools' `recognizer` is function/'s."""
    probe = (
        "import recognizer.records; print(recognizer.records.__file__); import function.recognizer"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == str(FUNCTION / "recognizer" / "records.py")
    assert result.returncode == 1
    assert "ImportError: the function's package is imported as 'function.recognizer'" in (
        result.stderr
    )


def test_no_module_of_the_function_mentions_tensorflow():
    for source in FUNCTION.rglob("*.py"):
        text = source.read_text()
        assert "import tensorflow" not in text and "from tensorflow" not in text, source


def test_the_directory_serves_predictions_with_only_its_requirements(
    function_only_venv, model_server, tmp_path, mnist
):
    port = free_port()
    env = {
        "PATH": f"{function_only_venv / 'bin'}:{os.environ['PATH']}",
        "MODEL_SERVER_URL": model_server,
        "SQLITE_PATH": str(tmp_path / "predictions.sqlite3"),
    }
    process = subprocess.Popen(
        ["functions-framework", "--target", "recognize", "--port", str(port)],
        cwd=FUNCTION,  # as a function platform runs it: the source directory alone
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=2).ok, "the function", 60)
        image = io.BytesIO()
        Image.fromarray(mnist.x_test[0]).save(image, format="PNG")
        response = requests.post(
            f"{url}/predict", data=image.getvalue(), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200
        assert response.json()["predictions"][0]["digit"] == int(mnist.y_test[0])
        assert np.isclose(sum(response.json()["predictions"][0]["probabilities"]), 1, atol=1e-3)
    finally:
        process.terminate()
        process.wait(timeout=30)
