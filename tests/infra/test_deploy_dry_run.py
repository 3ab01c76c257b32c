"""`python -m infra.deploy`: the exact commands, secrets by reference, clear refusals."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from infra.deploy.__main__ import main, plan
from infra.deploy.commands import gcloud_map
from infra.deploy.settings import FUNCTION_PASSTHROUGH, ConfigError
from tests.infra.function_env import variables_read_by_function
from tests.infra.support import ROOT

BASE = {
    "GCP_PROJECT": "digits-prod-42",
    "GCP_REGION": "europe-west1",
    "MODEL_SERVER_URL": "https://tf-serving.internal.example:8501/",
    "CASSANDRA_CONTACT_POINTS": "10.0.0.5",
}
REGISTRY = "europe-west1-docker.pkg.dev/digits-prod-42/digit-recognizer"
ENV_VARS = (
    "--set-env-vars=MODEL_SERVER_URL=https://tf-serving.internal.example:8501,"
    "PREDICTION_STORE=cassandra,CASSANDRA_CONTACT_POINTS=10.0.0.5,WORKERS=1,THREADS=8"
)
SCALING = [
    "--project=digits-prod-42",
    "--region=europe-west1",
    "--cpu=1",
    "--memory=512Mi",
    "--concurrency=8",
    "--min-instances=0",
    "--max-instances=10",
]


def test_cloud_functions_command() -> None:
    assert plan("function", BASE) == [
        [
            "gcloud",
            "functions",
            "deploy",
            "digit-recognizer",
            "--gen2",
            "--runtime=python311",
            "--source=function",
            "--entry-point=recognize",
            "--trigger-http",
            *SCALING,
            "--timeout=60s",
            "--no-allow-unauthenticated",
            ENV_VARS,
        ]
    ]
    assert (ROOT / "function" / "main.py").is_file()  # --source is relative to the root


def test_cloud_run_function_command_with_build() -> None:
    image = f"{REGISTRY}/digit-recognizer-function:3f2a9c1"
    steps = plan("run-function", {**BASE, "IMAGE_TAG": "3f2a9c1"}, build=True)
    assert steps == [
        [
            "docker",
            "build",
            "--platform=linux/amd64",
            "--file=Dockerfile.function",
            f"--tag={image}",
            ".",
        ],
        ["docker", "push", image],
        [
            "gcloud",
            "run",
            "deploy",
            "digit-recognizer",
            f"--image={image}",
            "--port=8080",
            *SCALING,
            "--timeout=60",
            "--no-allow-unauthenticated",
            ENV_VARS,
        ],
    ]
    assert (ROOT / "Dockerfile.function").is_file()


def test_cloud_run_serving_command() -> None:
    environ = {"GCP_PROJECT": "digits-prod-42", "GCP_REGION": "europe-west1", "IMAGE_TAG": "v2"}
    assert plan("run-serving", environ) == [
        [
            "gcloud",
            "run",
            "deploy",
            "tf-serving",
            f"--image={REGISTRY}/digit-recognizer-serving:v2",
            "--port=8501",
            "--project=digits-prod-42",
            "--region=europe-west1",
            "--cpu=2",
            "--memory=2Gi",
            "--concurrency=32",
            "--min-instances=1",
            "--max-instances=5",
            "--timeout=60",
            "--ingress=internal",
            "--allow-unauthenticated",
            "--no-cpu-throttling",
        ]
    ]


def test_options_and_passthrough_settings() -> None:
    environ = {
        **BASE,
        "CASSANDRA_CONTACT_POINTS": "10.0.0.5,10.0.0.6:9142",
        "CASSANDRA_LOCAL_DC": "europe-west1",
        "CASSANDRA_CONSISTENCY": "LOCAL_QUORUM",
        "MODEL_LABEL": "canary",
        "MIN_INSTANCES": "2",
        "CONCURRENCY": "16",
        "SERVICE_ACCOUNT": "recognizer@digits-prod-42.iam.gserviceaccount.com",
        "VPC_CONNECTOR": "cassandra-vpc",
        "VPC_EGRESS": "all-traffic",
        "ALLOW_UNAUTHENTICATED": "true",
        "FUNCTION_NAME": "digits",
        "SQLITE_PATH": "/tmp/x.sqlite3",  # not a cloud setting: never passed
        "PORT": "9999",  # the platform's to set: never passed
    }
    (argv,) = plan("function", environ)
    assert argv[3] == "digits"
    assert "--min-instances=2" in argv and "--concurrency=16" in argv
    assert "--allow-unauthenticated" in argv
    assert argv[-3:] == [
        "--service-account=recognizer@digits-prod-42.iam.gserviceaccount.com",
        "--vpc-connector=cassandra-vpc",
        "--egress-settings=all",  # Cloud Functions' spelling of all-traffic
    ]
    env_flag = next(a for a in argv if a.startswith("--set-env-vars="))
    assert env_flag == (
        "--set-env-vars=^@^MODEL_SERVER_URL=https://tf-serving.internal.example:8501"
        "@PREDICTION_STORE=cassandra@CASSANDRA_CONTACT_POINTS=10.0.0.5,10.0.0.6:9142"
        "@MODEL_LABEL=canary@CASSANDRA_LOCAL_DC=europe-west1"
        "@CASSANDRA_CONSISTENCY=LOCAL_QUORUM@WORKERS=1@THREADS=16"
    )
    (run,) = plan("run-function", {**environ, "IMAGE_TAG": "abc"})
    assert "--vpc-egress=all-traffic" in run


def test_gcloud_map_switches_delimiter_only_when_needed() -> None:
    assert gcloud_map({"A": "1", "B": "2"}) == "A=1,B=2"
    assert gcloud_map({"A": "x,y", "B": "2"}) == "^@^A=x,y@B=2"
    assert gcloud_map({"A": "x,y@z"}) == "^|^A=x,y@z"


# --- secrets ----------------------------------------------------------------------------


def test_secrets_go_by_reference() -> None:
    environ = {
        **BASE,
        "CASSANDRA_USERNAME": "recognizer",
        "CASSANDRA_PASSWORD_SECRET": "cassandra-password:3",
        "CASSANDRA_SSL_CA_SECRET": "projects/digits-prod-42/secrets/cassandra-ca:1",
        "API_TOKEN_SECRET": "history-token:latest",
        "IMAGE_TAG": "abc",
    }
    (functions,) = plan("function", environ)
    assert functions[-1] == (
        "--set-secrets=CASSANDRA_PASSWORD=cassandra-password:3,API_TOKEN=history-token:latest,"
        "/etc/secrets/cassandra-ca:/ca.pem=projects/digits-prod-42/secrets/cassandra-ca:1"
    )
    (run,) = plan("run-function", environ)
    assert run[-1] == (
        "--set-secrets=CASSANDRA_PASSWORD=cassandra-password:3,API_TOKEN=history-token:latest,"
        "/etc/secrets/cassandra-ca/ca.pem=projects/digits-prod-42/secrets/cassandra-ca:1"
    )
    for argv in (functions, run):
        env_flag = next(a for a in argv if a.startswith("--set-env-vars="))
        assert "CASSANDRA_SSL_CA_FILE=/etc/secrets/cassandra-ca/ca.pem" in env_flag
        assert "CASSANDRA_USERNAME=recognizer" in env_flag
        assert "CASSANDRA_PASSWORD=" not in env_flag


@pytest.mark.parametrize("variable", ["CASSANDRA_PASSWORD", "API_TOKEN"])
def test_a_secret_by_value_is_refused_and_never_printed(variable: str) -> None:
    secret = "hunter2-do-not-print"
    result = subprocess.run(
        [sys.executable, "-m", "infra.deploy", "function", "--dry-run"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **BASE, variable: secret},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{variable}_SECRET=name:version" in result.stderr
    assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"CASSANDRA_PASSWORD_SECRET": "hunter2"}, "not a Secret Manager reference"),
        ({"CASSANDRA_PASSWORD_SECRET": "pw:3"}, "CASSANDRA_USERNAME and CASSANDRA_PASSWORD_SECRET"),
        ({"GCP_REGION": "Europe West"}, "GCP_REGION='Europe West' is malformed"),
        ({"MIN_INSTANCES": "20"}, "MIN_INSTANCES must not exceed MAX_INSTANCES"),
        ({"CONCURRENCY": "many"}, "CONCURRENCY='many' must be a whole number"),
        ({"MODEL_SERVER_URL": "tf-serving:8501"}, "must be an http(s) URL"),
        ({"VPC_EGRESS": "all-traffic"}, "VPC_EGRESS needs VPC_CONNECTOR"),
    ],
)
def test_malformed_values_are_refused(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plan("function", {**BASE, **changes})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_a_malformed_secret_reference_is_not_echoed() -> None:
    """Someone pasting the password itself into *_SECRET must not see it in CI logs."""
    with pytest.raises(ConfigError) as caught:
        plan(
            "function",
            {**BASE, "CASSANDRA_USERNAME": "u", "CASSANDRA_PASSWORD_SECRET": "p@ss w0rd"},
        )
    assert "p@ss w0rd" not in str(caught.value)


def test_public_unauthenticated_tf_serving_is_refused() -> None:
    environ = {**BASE, "IMAGE_TAG": "v2", "SERVING_INGRESS": "all"}
    with pytest.raises(ConfigError, match="internet without authentication"):
        plan("run-serving", environ)


def test_images_need_a_version_tag() -> None:
    with pytest.raises(ConfigError, match="IMAGE_TAG is required"):
        plan("run-function", BASE)
    with pytest.raises(ConfigError, match="not latest"):
        plan("run-function", {**BASE, "IMAGE_TAG": "latest"})
    with pytest.raises(ConfigError, match="FUNCTION_IMAGE"):
        plan("run-function", {**BASE, "FUNCTION_IMAGE": "gcr.io/p/fn:latest"})
    (argv,) = plan("run-function", {**BASE, "FUNCTION_IMAGE": "gcr.io/p/fn:1.2.3"})
    assert "--image=gcr.io/p/fn:1.2.3" in argv


# --- the command line -------------------------------------------------------------------


def test_missing_variables_are_all_named_and_nothing_runs(capsys) -> None:
    ran: list[list[str]] = []
    status = main(["run-function"], environ={}, run=lambda argv: ran.append(argv) or 0)
    assert status == 2 and ran == []
    err = capsys.readouterr().err
    for name in ("GCP_PROJECT", "GCP_REGION", "MODEL_SERVER_URL", "CASSANDRA_CONTACT_POINTS"):
        assert f"{name} is required" in err
    assert "IMAGE_TAG is required" in err


def test_dry_run_prints_the_exact_commands_and_runs_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra.deploy", "run-function", "--build", "--dry-run"],
        cwd=ROOT,
        env={"PATH": "/nonexistent", **BASE, "IMAGE_TAG": "3f2a9c1"},  # no docker, no gcloud
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"# run from {ROOT}"
    expected = plan("run-function", {**BASE, "IMAGE_TAG": "3f2a9c1"}, build=True)
    assert [shlex.split(line) for line in lines[1:]] == expected


def test_run_executes_in_order_and_stops_at_the_first_failure() -> None:
    ran: list[str] = []

    def fake(argv: list[str]) -> int:
        ran.append(argv[0] + " " + argv[1])
        return 1 if argv[1] == "push" else 0

    environ = {**BASE, "IMAGE_TAG": "abc"}
    assert main(["run-function", "--build"], environ=environ, run=fake) == 1
    assert ran == ["docker build", "docker push"]


def test_build_makes_no_sense_for_a_source_deploy() -> None:
    with pytest.raises(ConfigError, match="deploys source"):
        plan("function", BASE, build=True)


def test_warns_when_an_internal_tf_serving_is_unreachable(capsys) -> None:
    environ = {**BASE, "MODEL_SERVER_URL": "https://tf-serving-abc-ew.a.run.app"}
    assert main(["function", "--dry-run"], environ=environ) == 0
    assert "VPC_EGRESS=all-traffic" in capsys.readouterr().err


def test_every_function_setting_is_deployable() -> None:
    """A setting added to the function must be passed through, or excluded here on purpose."""
    handled = {
        "MODEL_SERVER_URL",  # required
        "CASSANDRA_CONTACT_POINTS",  # required
        "PREDICTION_STORE",  # always cassandra in the cloud
        "CASSANDRA_PASSWORD",  # CASSANDRA_PASSWORD_SECRET
        "API_TOKEN",  # API_TOKEN_SECRET
        "CASSANDRA_SSL_CA_FILE",  # CASSANDRA_SSL_CA_SECRET, mounted
        "SQLITE_PATH",  # local only
    }
    assert variables_read_by_function() == set(FUNCTION_PASSTHROUGH) | handled
