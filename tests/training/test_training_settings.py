"""`python -m training --from-store` reads the function's PREDICTION_STORE and SQLITE_PATH
with the function's reader: a malformed one is refused, naming it, before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recognizer.env import SettingsError
from tests.conftest import ROOT
from training.__main__ import store_defaults


def test_unset_means_sqlite_with_no_file() -> None:
    assert store_defaults({}) == ("sqlite", None)


def test_the_store_and_the_file_come_from_the_environment(tmp_path: Path) -> None:
    env = {"PREDICTION_STORE": "cassandra", "SQLITE_PATH": str(tmp_path / "log.sqlite3")}
    assert store_defaults(env) == ("cassandra", tmp_path / "log.sqlite3")


def test_every_malformed_setting_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        store_defaults({"PREDICTION_STORE": "oracle", "SQLITE_PATH": str(tmp_path)})
    assert [problem.split()[0] for problem in raised.value.problems] == [
        "PREDICTION_STORE",
        "SQLITE_PATH",
    ]


def test_the_command_refuses_a_malformed_store_before_training() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training", "--from-store", "--version", "99"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PREDICTION_STORE": "oracle"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "PREDICTION_STORE must be one of sqlite, cassandra, not 'oracle'" in done.stderr
    assert "Traceback" not in done.stderr
