"""The function's settings: every variable checked at start-up, every problem named at once."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recognizer.config import CassandraSettings, Settings
from recognizer.env import Reader, SettingsError
from tests.support.environ import RecordingEnv

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_FRAMEWORK = Path(sys.executable).with_name("functions-framework")
CASSANDRA = {"PREDICTION_STORE": "cassandra", "CASSANDRA_CONTACT_POINTS": "127.0.0.1"}

# One malformed value for each variable the function reads (CASSANDRA_* with the store
# set to Cassandra). A variable added to the settings without a line here fails below.
MALFORMED = {
    "MODEL_SERVER_URL": "tf-serving:8501",
    "MODEL_NAME": "mnist v2",
    "MODEL_LABEL": "stable/2",
    "CANARY_LABEL": "a b",
    "CANARY_PERCENT": "250",
    "MODEL_SERVER_TIMEOUT_SECONDS": "0",
    "MODEL_SERVER_RETRIES": "2.7",
    "MODEL_SERVER_RETRY_BACKOFF_SECONDS": "-0.5",
    "MODEL_LABEL_CACHE_SECONDS": "soon",
    "PREDICTION_STORE": "postgres",
    "SQLITE_PATH": str(ROOT),  # a directory
    "MAX_REQUEST_BYTES": "0",
    "MAX_IMAGE_PIXELS": "lots",
    "MAX_REQUEST_PIXELS": "1.5",
    "MAX_BATCH_IMAGES": "nan",
    "UPLOAD_STORE_MAX_BYTES": "-1",
    "HISTORY_MAX_LIMIT": "1e400",
    "RETENTION_DAYS": "0",
    "UPLOAD_RETENTION_DAYS": "forever",
    "MEMORY_LIMIT_MIB": "64",
    "WORKERS": "two",
    "DECODE_CPU_SECONDS": "inf",
    "LOG_LEVEL": "loud",
    "GOOGLE_CLOUD_PROJECT": "My Project",
    "CLIENT_TIMEOUT_SECONDS": "0",
    "CLIENT_REQUEST_SECONDS": "-5",
    "CLIENT_MAX_UNREAD_BYTES": "0",
    "CLIENT_HEADER_SECONDS": "0",
    "WORKER_RECYCLE_MIB": "-1",
    "ADMISSION_IMAGES": "many",
    "ADMISSION_WAIT_SECONDS": "-1",
    "ADMISSION_CLIENT_SHARE": "1.5",
    "ADMISSION_BYTES_PER_IMAGE": "0",
    "COALESCE_WINDOW_MS": "-0.5",
    "VERDICT_MIN_CONFIDENCE": "1.5",
    "VERDICT_MIN_CANDIDATE": "nan",
    "VERDICT_MIN_UNSURE_MASS": "-0.1",
    "VERDICT_MIN_INK_EXTENT": "some",
    "VERDICT_MAX_ASPECT": "0",
    "VERDICT_EDGE_MARGIN": "2",
    "VERDICT_MIN_CONFIDENCE_BY_VERSION": "3=high",
    "API_TOKEN": " padded-token",
    "PREDICT_REQUIRES_TOKEN": "maybe",
    "PIN_REQUIRES_TOKEN": "maybe",
    "MODEL_SERVER_ID_TOKEN": "maybe",
    "CORRECTIONS_PER_CLIENT_PER_HOUR": "-1",
    "UPLOADS_PER_CLIENT_PER_HOUR": "many",
    "CORRECTIONS_PER_RECORD_PER_HOUR": "many",
    "CORS_ALLOWED_ORIGINS": "example.org",
    "FEEDBACK_SECRET": "short",
    "FEEDBACK_SECRET_PREVIOUS": "short",
    "CASSANDRA_CONTACT_POINTS": "a,,b",
    "CASSANDRA_PORT": "nine",
    "CASSANDRA_KEYSPACE": "my-keyspace",
    "CASSANDRA_LOCAL_DC": "eu west",
    "CASSANDRA_CONSISTENCY": "SERIAL",
    "CASSANDRA_USERNAME": "recognizer",  # without a password
    "CASSANDRA_PASSWORD": "pw",  # without a user name
    "CASSANDRA_SSL_CA_FILE": "/no/such/ca.pem",
    "CASSANDRA_SSL_VERIFY_HOSTNAME": "perhaps",
    "CASSANDRA_PROTOCOL_VERSION": "3",
    "CASSANDRA_REQUEST_TIMEOUT_SECONDS": "0",
    "CASSANDRA_CONNECT_TIMEOUT_SECONDS": "3601",
    "CASSANDRA_RECENT_LOOKBACK_DAYS": "0",
}
SECRETS = ("API_TOKEN", "FEEDBACK_SECRET", "CASSANDRA_PASSWORD")


def variables_read() -> set[str]:
    env = RecordingEnv(CASSANDRA)
    Settings.from_env(env)
    return env.asked


def refusal(env: dict[str, str]) -> SettingsError:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    return refused.value


def test_every_variable_read_has_a_malformed_case() -> None:
    assert variables_read() == set(MALFORMED)


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_value_is_refused_naming_its_variable(name: str) -> None:
    env = {**CASSANDRA, name: MALFORMED[name]}
    if name == "PREDICTION_STORE":
        env.pop("CASSANDRA_CONTACT_POINTS")
    error = refusal(env)
    assert len(error.problems) == 1, error.problems
    assert name in error.problems[0]
    if name in SECRETS:
        assert MALFORMED[name] not in str(error)


def test_every_malformed_value_at_once_is_named_in_one_error() -> None:
    """The user name without a password is one problem naming both."""
    env = {
        k: v for k, v in MALFORMED.items() if k not in {"PREDICTION_STORE", "CASSANDRA_PASSWORD"}
    }
    error = refusal(env)
    assert len(error.problems) == len(env)
    for name in set(MALFORMED) - {"PREDICTION_STORE"}:
        assert any(name in problem for problem in error.problems), name
    assert str(error).splitlines() == [
        f"{len(env)} settings are malformed:",
        *(f"  - {problem}" for problem in error.problems),
    ]
    for name in SECRETS:
        assert MALFORMED[name] not in str(error)


def test_a_malformed_store_and_other_values_are_all_named() -> None:
    error = refusal({"PREDICTION_STORE": "postgres", "CANARY_PERCENT": "250", "WORKERS": "0"})
    assert [problem.split()[0] for problem in error.problems] == [
        "PREDICTION_STORE",
        "CANARY_PERCENT",
        "WORKERS",
    ]


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MODEL_SERVER_TIMEOUT_SECONDS", "0", "must be a number above 0, not '0'"),
        ("MODEL_SERVER_TIMEOUT_SECONDS", "nan", "must be a number above 0, not 'nan'"),
        ("MODEL_SERVER_TIMEOUT_SECONDS", "-inf", "must be a number above 0, not '-inf'"),
        ("MODEL_SERVER_RETRIES", "2.7", "must be a whole number of at least 0, not '2.7'"),
        ("MODEL_SERVER_RETRIES", "-1", "must be a whole number of at least 0, not '-1'"),
        ("CANARY_PERCENT", "250", "must be between 0 and 100, not '250'"),
    ],
)
def test_the_issues_examples_are_refused(name: str, value: str, message: str) -> None:
    assert refusal({name: value}).problems == [f"{name} {message}"]


def test_the_defaults_and_accepted_spellings() -> None:
    assert Settings.from_env({}) == Settings()
    settings = Settings.from_env(
        {
            "MODEL_SERVER_URL": "https://tf-serving.example:8501/",
            "MODEL_SERVER_RETRIES": "0",
            "MAX_BATCH_IMAGES": "64.0",
            "MAX_IMAGE_PIXELS": "1e6",
            "MODEL_SERVER_TIMEOUT_SECONDS": " 2.5 ",
            "PREDICT_REQUIRES_TOKEN": "On",
            "API_TOKEN": "t0ken",
            "CANARY_PERCENT": "",  # empty means unset
        }
    )
    assert settings.model_server_url == "https://tf-serving.example:8501"
    assert (settings.model_retries, settings.max_batch_images) == (0, 64)
    assert settings.max_image_pixels == 1_000_000 and settings.model_timeout_seconds == 2.5
    assert settings.predict_requires_token is True and settings.canary_percent == 0
    assert settings.cassandra is None


def test_the_cassandra_settings_are_read_with_the_rest() -> None:
    settings = Settings.from_env({"CASSANDRA_CONTACT_POINTS": "db1:9043, db2"})
    assert settings.prediction_store == "cassandra"
    assert settings.cassandra == CassandraSettings(contact_points=(("db1", 9043), ("db2", 9042)))
    assert settings.cassandra == CassandraSettings.from_env(
        {"CASSANDRA_CONTACT_POINTS": "db1:9043, db2"}
    )
    # SQLite named explicitly: CASSANDRA_* are not read, so not checked.
    sqlite = Settings.from_env({"PREDICTION_STORE": "sqlite", "CASSANDRA_PORT": "nine"})
    assert sqlite.cassandra is None


@pytest.mark.parametrize("spelling", ["true", "TRUE", "1", "yes", "Yes", "on", "ON"])
def test_one_vocabulary_of_flags_true(spelling: str) -> None:
    assert Reader({"F": spelling}).flag("F", False) is True


@pytest.mark.parametrize("spelling", ["false", "False", "0", "no", "NO", "off", "Off"])
def test_one_vocabulary_of_flags_false(spelling: str) -> None:
    assert Reader({"F": spelling}).flag("F", True) is False


def test_the_reader_collects_instead_of_raising() -> None:
    read = Reader({"A": "x", "B": "1.5", "C": "inf", "D": "7"})
    assert read.number("A", 1.0) == 1.0 and read.whole("B", 2) == 2
    assert read.number("C", 3.0) == 3.0 and read.whole("D", 0, 1, 5) == 0
    assert [problem.split()[0] for problem in read.problems] == ["A", "B", "C", "D"]
    with pytest.raises(SettingsError) as refused:
        read.check()
    assert refused.value.problems == read.problems
    assert isinstance(refused.value, ValueError)
    assert math.isfinite(Reader({"N": "1e308"}).number("N", 0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_function_does_not_start_with_a_malformed_cassandra_port() -> None:
    """A real start-up: functions-framework stops before serving, naming the variable."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CASSANDRA_", "PREDICTION"))},
        **CASSANDRA,
        "CASSANDRA_PORT": "nine",
        "MODEL_SERVER_RETRIES": "2.7",
    }
    port = free_port()
    result = subprocess.run(
        [
            *(str(FUNCTIONS_FRAMEWORK), "--target", "recognize", "--source", "function/main.py"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "CASSANDRA_PORT must be a whole number from 1 to 65535, not 'nine'" in output
    assert "MODEL_SERVER_RETRIES must be a whole number of at least 0, not '2.7'" in output
    assert "Listening at" not in output
    assert "Traceback" not in output, "the problems are said plainly, not as a crash"


def test_the_readme_documents_every_variable_the_settings_read() -> None:
    """The Configuration section names each variable the function and the dev model
    server read (their malformed-value tables above and in test_serving_settings)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    configuration = readme[readme.index("## Configuration\n") :]
    serving = {"MODEL_SERVER_PORT", "MODELS_DIR"}  # tests/serving/test_serving_settings.py
    undocumented = {n for n in set(MALFORMED) | serving if f"`{n}`" not in configuration}
    assert undocumented == set()
