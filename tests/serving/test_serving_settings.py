"""`python -m serving`'s environment: a malformed variable is a usage error naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recognizer.env import SettingsError
from serving.settings import EnvDefaults
from tests.support.environ import RecordingEnv

ROOT = Path(__file__).resolve().parents[2]
# One malformed value for each variable the development model server reads.
MALFORMED = {
    "MODEL_SERVER_PORT": "eighty",
    "MODELS_DIR": str(ROOT / "serving" / "models.config"),  # a file, not a directory
}


def test_every_variable_read_has_a_malformed_case() -> None:
    env = RecordingEnv()
    assert EnvDefaults.from_env(env) == EnvDefaults()
    assert env.asked == set(MALFORMED)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_value_is_refused_naming_its_variable(name: str) -> None:
    with pytest.raises(SettingsError) as refused:
        EnvDefaults.from_env({name: MALFORMED[name]})
    (problem,) = refused.value.problems
    assert problem.startswith(f"{name} must be ") and repr(MALFORMED[name]) in problem


@pytest.mark.parametrize("port", ["-1", "65536", "8501.5", "nan"])
def test_a_port_out_of_range_is_refused(port: str) -> None:
    with pytest.raises(SettingsError, match="MODEL_SERVER_PORT"):
        EnvDefaults.from_env({"MODEL_SERVER_PORT": port})


def test_both_at_once_are_named_and_good_values_are_read() -> None:
    with pytest.raises(SettingsError) as refused:
        EnvDefaults.from_env(MALFORMED)
    assert [p.split()[0] for p in refused.value.problems] == ["MODEL_SERVER_PORT", "MODELS_DIR"]
    good = EnvDefaults.from_env({"MODEL_SERVER_PORT": "0", "MODELS_DIR": "/srv/models"})
    assert good == EnvDefaults(rest_api_port=0, models_dir=Path("/srv/models"))


def test_the_server_does_not_start_with_a_malformed_port() -> None:
    """A real start: exit 2 with one line naming the variable, before TensorFlow loads."""
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "MODEL_SERVER_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "python -m serving: error: MODEL_SERVER_PORT must be a whole number from 0 to 65535, "
        "not 'eighty'"
    ]
