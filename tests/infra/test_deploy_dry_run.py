"""`python -m infra.deploy`: the exact commands, secrets by reference, clear refusals."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from infra.deploy.__main__ import main, plan
from infra.deploy.commands import Step, gcloud_map
from infra.deploy.settings import FUNCTION_PASSTHROUGH
from recognizer.env import SettingsError
from tests.infra.function_env import variables_read_by_function
from tests.infra.support import ROOT
from tests.support.environ import RecordingEnv

BASE = {
    "GCP_PROJECT": "digits-prod-42",
    "GCP_REGION": "europe-west1",
    "MODEL_SERVER_URL": "https://tf-serving.internal.example:8501/",
    "CASSANDRA_CONTACT_POINTS": "10.0.0.5",
}
REGISTRY = "europe-west1-docker.pkg.dev/digits-prod-42/digit-recognizer"
ENV_VARS = (
    "--set-env-vars=MODEL_SERVER_URL=https://tf-serving.internal.example:8501,"
    "PREDICTION_STORE=cassandra,CASSANDRA_CONTACT_POINTS=10.0.0.5,"
    "GOOGLE_CLOUD_PROJECT=digits-prod-42,WORKERS=1,THREADS=8,"
    "MEMORY_LIMIT_MIB=512"
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
DIGEST = "sha256:" + "0123456789abcdef" * 4


def argvs(steps: list[Step]) -> list[list[str]]:
    """The plain commands of a plan (none of these plans has a conditional step)."""
    assert all(step.unless is None for step in steps), steps
    return [step.argv for step in steps]


def refusal(target: str, environ: dict[str, str], *, build: bool = False) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        plan(target, environ, build=build)
    return caught.value.problems


def test_cloud_functions_command() -> None:
    assert argvs(plan("function", BASE)) == [
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
    repository = ["--project=digits-prod-42", "--location=europe-west1"]
    assert steps[0] == Step(
        [
            "gcloud",
            "artifacts",
            "repositories",
            "create",
            "digit-recognizer",
            *repository,
            "--repository-format=docker",
            "--description=digit-recognizer images",
        ],
        unless=[
            "gcloud",
            "artifacts",
            "repositories",
            "describe",
            "digit-recognizer",
            *repository,
            "--format=value(name)",
        ],
    )
    assert argvs(steps[1:]) == [
        ["gcloud", "auth", "configure-docker", "europe-west1-docker.pkg.dev", "--quiet"],
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
    assert argvs(plan("run-serving", environ)) == [
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
            "--no-allow-unauthenticated",
            "--no-cpu-throttling",
        ]
    ]


def test_the_model_server_lets_in_only_the_function_as_invoker(capsys) -> None:
    """TF Serving has no authentication: Cloud Run's IAM check is its door (#23)."""
    environ = {
        **BASE,
        "IMAGE_TAG": "v2",
        "SERVING_INVOKER": "fn-runner@digits-prod-42.iam.gserviceaccount.com",
    }
    deploy, grant = argvs(plan("run-serving", environ))
    assert "--no-allow-unauthenticated" in deploy and "--allow-unauthenticated" not in deploy
    assert grant == [
        "gcloud", "run", "services", "add-iam-policy-binding", "tf-serving",
        f"--project={BASE['GCP_PROJECT']}", f"--region={BASE['GCP_REGION']}",
        "--member=serviceAccount:fn-runner@digits-prod-42.iam.gserviceaccount.com",
        "--role=roles/run.invoker",
    ]  # fmt: skip
    with pytest.raises(SettingsError, match="SERVING_INVOKER must be"):
        plan("run-serving", {**environ, "SERVING_INVOKER": "allUsers"})
    assert main(["run-serving", "--dry-run"], environ={**BASE, "IMAGE_TAG": "v2"}) == 0
    assert "SERVING_INVOKER is unset" in capsys.readouterr().err


def test_a_function_calling_a_cloud_run_model_server_sends_an_id_token() -> None:
    environ = {**BASE, "MODEL_SERVER_URL": "https://tf-serving-abc-ew.a.run.app"}
    (argv,) = argvs(plan("function", environ))
    assert "MODEL_SERVER_ID_TOKEN=true" in next(a for a in argv if a.startswith("--set-env-vars"))
    (argv,) = argvs(plan("function", {**environ, "MODEL_SERVER_ID_TOKEN": "false"}))
    assert "MODEL_SERVER_ID_TOKEN=false" in next(a for a in argv if a.startswith("--set-env-vars"))


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
    (argv,) = argvs(plan("function", environ))
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
        "@CASSANDRA_CONSISTENCY=LOCAL_QUORUM@GOOGLE_CLOUD_PROJECT=digits-prod-42"
        "@WORKERS=1@THREADS=16"
        "@MEMORY_LIMIT_MIB=512"
    )
    (run,) = argvs(plan("run-function", {**environ, "IMAGE_TAG": "abc"}))
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
        "FEEDBACK_SECRET_SECRET": "feedback-key:2",
        "IMAGE_TAG": "abc",
    }
    (functions,) = argvs(plan("function", environ))
    assert functions[-1] == (
        "--set-secrets=CASSANDRA_PASSWORD=cassandra-password:3,API_TOKEN=history-token:latest,"
        "FEEDBACK_SECRET=feedback-key:2,"
        "/etc/secrets/cassandra-ca:/ca.pem=projects/digits-prod-42/secrets/cassandra-ca:1"
    )
    (run,) = argvs(plan("run-function", environ))
    assert run[-1] == (
        "--set-secrets=CASSANDRA_PASSWORD=cassandra-password:3,API_TOKEN=history-token:latest,"
        "FEEDBACK_SECRET=feedback-key:2,"
        "/etc/secrets/cassandra-ca/ca.pem=projects/digits-prod-42/secrets/cassandra-ca:1"
    )
    for argv in (functions, run):
        env_flag = next(a for a in argv if a.startswith("--set-env-vars="))
        assert "CASSANDRA_SSL_CA_FILE=/etc/secrets/cassandra-ca/ca.pem" in env_flag
        assert "CASSANDRA_USERNAME=recognizer" in env_flag
        assert "CASSANDRA_PASSWORD=" not in env_flag


@pytest.mark.parametrize("variable", ["CASSANDRA_PASSWORD", "API_TOKEN", "FEEDBACK_SECRET"])
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
        ({"GCP_REGION": "Europe West"}, "GCP_REGION must be like europe-west1, not 'Europe West'"),
        ({"MIN_INSTANCES": "20"}, "MIN_INSTANCES must not exceed MAX_INSTANCES"),
        ({"CONCURRENCY": "many"}, "CONCURRENCY must be a whole number from 1 to 1000, not 'many'"),
        ({"MODEL_SERVER_URL": "tf-serving:8501"}, "must be an http(s) URL"),
        ({"VPC_EGRESS": "all-traffic"}, "VPC_EGRESS needs VPC_CONNECTOR"),
    ],
)
def test_malformed_values_are_refused(changes: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        plan("function", {**BASE, **changes})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


# One malformed value for each function setting the tool passes through: refused at deploy
# time, as the function itself would refuse it at start-up.
MALFORMED_PASSTHROUGH = {
    "MODEL_NAME": "mnist v2",
    "MODEL_LABEL": "stable/2",
    "CANARY_LABEL": "a b",
    "CANARY_PERCENT": "250",
    "MODEL_SERVER_TIMEOUT_SECONDS": "0",
    "MODEL_SERVER_RETRIES": "2.7",
    "MODEL_SERVER_RETRY_BACKOFF_SECONDS": "-1",
    "MODEL_LABEL_CACHE_SECONDS": "soon",
    "MAX_REQUEST_BYTES": "0",
    "MAX_IMAGE_PIXELS": "lots",
    "MAX_REQUEST_PIXELS": "1.5",
    "MAX_BATCH_IMAGES": "nan",
    "DECODE_CPU_SECONDS": "inf",
    "UPLOAD_STORE_MAX_BYTES": "-1",
    "HISTORY_MAX_LIMIT": "0",
    "PREDICT_REQUIRES_TOKEN": "maybe",
    "MODEL_SERVER_ID_TOKEN": "maybe",
    "PIN_REQUIRES_TOKEN": "maybe",
    "CORRECTIONS_PER_CLIENT_PER_HOUR": "-1",
    "CORRECTIONS_PER_RECORD_PER_HOUR": "many",
    "CORS_ALLOWED_ORIGINS": "example.org",
    "VERDICT_MIN_CONFIDENCE": "1.5",
    "VERDICT_MIN_CANDIDATE": "nan",
    "VERDICT_MIN_UNSURE_MASS": "-0.1",
    "VERDICT_MIN_INK_EXTENT": "some",
    "VERDICT_MAX_ASPECT": "0",
    "VERDICT_EDGE_MARGIN": "2",
    "VERDICT_MIN_CONFIDENCE_BY_VERSION": "3=high",
    "CASSANDRA_PORT": "nine",
    "CASSANDRA_KEYSPACE": "my-keyspace",
    "CASSANDRA_LOCAL_DC": "eu west",
    "CASSANDRA_CONSISTENCY": "SERIAL",
    "CASSANDRA_USERNAME": "",  # only malformed as a pair: the tool's own check, below
    "CASSANDRA_SSL_VERIFY_HOSTNAME": "perhaps",
    "CASSANDRA_PROTOCOL_VERSION": "3",
    "CASSANDRA_REQUEST_TIMEOUT_SECONDS": "0",
    "CASSANDRA_CONNECT_TIMEOUT_SECONDS": "soon",
    "CASSANDRA_RECENT_LOOKBACK_DAYS": "0",
    "RETENTION_DAYS": "0",
    "UPLOAD_RETENTION_DAYS": "forever",
    "UPLOADS_PER_CLIENT_PER_HOUR": "-1",
    "ADMISSION_IMAGES": "0",
    "ADMISSION_WAIT_SECONDS": "-1",
    "ADMISSION_BYTES_PER_IMAGE": "0",
    "ADMISSION_CLIENT_SHARE": "2",
    "CLIENT_HEADER_SECONDS": "0",
    "CLIENT_TIMEOUT_SECONDS": "soon",
    "CLIENT_REQUEST_SECONDS": "0",
    "CLIENT_MAX_UNREAD_BYTES": "lots",
    "WORKER_RECYCLE_MIB": "-5",
    "COALESCE_WINDOW_MS": "5000",
    "LOG_LEVEL": "LOUD",
}
PAIRED = {"CASSANDRA_USERNAME"}


def test_every_passthrough_setting_has_a_malformed_case() -> None:
    assert set(MALFORMED_PASSTHROUGH) == set(FUNCTION_PASSTHROUGH)


@pytest.mark.parametrize("name", sorted(set(FUNCTION_PASSTHROUGH) - PAIRED))
def test_a_malformed_function_setting_is_refused_at_deploy_time(name: str) -> None:
    for target in ("function", "run-function"):
        environ = {**BASE, "IMAGE_TAG": "v1", name: MALFORMED_PASSTHROUGH[name]}
        problems = refusal(target, environ)
        assert [p for p in problems if p.startswith(f"{name} ")] == problems, problems


def test_the_function_settings_are_all_named_at_once(capsys) -> None:
    environ = {
        **BASE,
        "CASSANDRA_CONTACT_POINTS": "",
        **{k: v for k, v in MALFORMED_PASSTHROUGH.items() if k not in PAIRED},
    }
    status = main(["function", "--dry-run"], environ=environ, run=lambda argv: 0)
    assert status == 2
    err = capsys.readouterr().err
    for name in set(FUNCTION_PASSTHROUGH) - PAIRED | {"CASSANDRA_CONTACT_POINTS"}:
        assert f"  - {name} " in err, name
    assert err.count("CASSANDRA_CONTACT_POINTS is required") == 1


def test_secrets_by_reference_satisfy_the_function_checks() -> None:
    """PREDICT_REQUIRES_TOKEN needs API_TOKEN: given by reference, that is enough."""
    problems = refusal("function", {**BASE, "PREDICT_REQUIRES_TOKEN": "true"})
    assert problems == ["PREDICT_REQUIRES_TOKEN is true but API_TOKEN is unset: set API_TOKEN"]
    environ = {**BASE, "PREDICT_REQUIRES_TOKEN": "yes", "API_TOKEN_SECRET": "token:1"}
    environ |= {"FEEDBACK_SECRET_SECRET": "key:2", "CASSANDRA_SSL_CA_SECRET": "ca:1"}
    environ |= {"CASSANDRA_USERNAME": "u", "CASSANDRA_PASSWORD_SECRET": "pw:3"}
    (argv,) = argvs(plan("function", environ))
    assert "PREDICT_REQUIRES_TOKEN=yes" in next(a for a in argv if "--set-env-vars" in a)
    (problem,) = refusal("function", {**BASE, "CASSANDRA_USERNAME": "u"})
    assert problem == "set CASSANDRA_USERNAME and CASSANDRA_PASSWORD_SECRET together"


def test_the_flag_vocabulary_is_the_functions() -> None:
    for spelling in ("on", "YES", "1", "True"):
        (argv,) = argvs(plan("function", {**BASE, "ALLOW_UNAUTHENTICATED": spelling}))
        assert "--allow-unauthenticated" in argv
    for spelling in ("off", "No", "0", "false", ""):
        (argv,) = argvs(plan("function", {**BASE, "ALLOW_UNAUTHENTICATED": spelling}))
        assert "--no-allow-unauthenticated" in argv
    (problem,) = refusal("function", {**BASE, "ALLOW_UNAUTHENTICATED": "sure"})
    assert problem.startswith("ALLOW_UNAUTHENTICATED must be true or false")


def test_a_malformed_secret_reference_is_not_echoed() -> None:
    """Someone pasting the password itself into *_SECRET must not see it in CI logs."""
    with pytest.raises(SettingsError) as caught:
        plan(
            "function",
            {**BASE, "CASSANDRA_USERNAME": "u", "CASSANDRA_PASSWORD_SECRET": "p@ss w0rd"},
        )
    assert "p@ss w0rd" not in str(caught.value)


def test_public_unauthenticated_tf_serving_is_refused() -> None:
    environ = {**BASE, "IMAGE_TAG": "v2", "SERVING_INGRESS": "all"}
    with pytest.raises(SettingsError, match="internet without authentication"):
        plan("run-serving", environ)


def test_images_need_a_version_tag() -> None:
    with pytest.raises(SettingsError, match="IMAGE_TAG is required"):
        plan("run-function", BASE)
    with pytest.raises(SettingsError, match="not latest"):
        plan("run-function", {**BASE, "IMAGE_TAG": "latest"})
    with pytest.raises(SettingsError, match="FUNCTION_IMAGE"):
        plan("run-function", {**BASE, "FUNCTION_IMAGE": "gcr.io/p/fn:latest"})
    (argv,) = argvs(plan("run-function", {**BASE, "FUNCTION_IMAGE": "gcr.io/p/fn:1.2.3"}))
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
    assert lines[1:] == [step.shell() for step in expected]
    # The repository is created only when describing it fails, in the printed line too.
    check, separator, create = lines[1].partition(" >/dev/null 2>&1 || ")
    assert separator
    assert shlex.split(check) == expected[0].unless
    assert shlex.split(create) == expected[0].argv
    assert shlex.split(create)[:4] == ["gcloud", "artifacts", "repositories", "create"]
    assert [shlex.split(line) for line in lines[2:]] == argvs(expected[1:])


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "exists"])
def test_the_printed_repository_line_creates_only_a_missing_repository(
    tmp_path: Path, exists: bool
) -> None:
    """Run the dry run's line in a shell against a stand-in gcloud."""
    calls = tmp_path / "calls"
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(calls))}\n'
        f'if [ "$3" = describe ]; then exit {0 if exists else 1}; fi\n'
        "exit 0\n"
    )
    gcloud.chmod(0o755)
    (step, *_) = plan("run-serving", {**BASE, "IMAGE_TAG": "v2"}, build=True)
    result = subprocess.run(
        ["sh", "-c", step.shell()],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    verbs = [line.split()[2] for line in calls.read_text().splitlines()]
    assert verbs == (["describe"] if exists else ["describe", "create"])


def test_build_pushes_elsewhere_without_artifact_registry_steps() -> None:
    steps = plan("run-function", {**BASE, "FUNCTION_IMAGE": "ghcr.io/me/fn:1.0"}, build=True)
    assert [argv[:2] for argv in argvs(steps)] == [
        ["docker", "build"],
        ["docker", "push"],
        ["gcloud", "run"],
    ]


def test_an_explicit_artifact_registry_image_gets_its_own_repository_checked() -> None:
    image = "us-central1-docker.pkg.dev/other-proj/images/fn:1.0"
    (create, login, *_) = plan("run-function", {**BASE, "FUNCTION_IMAGE": image}, build=True)
    assert create.argv[4:7] == ["images", "--project=other-proj", "--location=us-central1"]
    assert create.unless is not None and create.unless[3:5] == ["describe", "images"]
    assert login.argv == [
        "gcloud",
        "auth",
        "configure-docker",
        "us-central1-docker.pkg.dev",
        "--quiet",
    ]


def test_run_executes_in_order_and_stops_at_the_first_failure() -> None:
    ran: list[str] = []

    def fake(argv: list[str]) -> int:
        ran.append(" ".join(argv[:4]))
        return 1 if argv[1] == "push" else 0  # the repository exists

    environ = {**BASE, "IMAGE_TAG": "abc"}
    assert main(["run-function", "--build"], environ=environ, run=fake) == 1
    assert ran == [
        "gcloud artifacts repositories describe",
        "gcloud auth configure-docker europe-west1-docker.pkg.dev",
        "docker build --platform=linux/amd64 --file=Dockerfile.function",
        f"docker push {REGISTRY}/digit-recognizer-function:abc",
    ]


def test_run_creates_the_repository_when_it_is_missing() -> None:
    ran: list[str] = []

    def fake(argv: list[str]) -> int:
        ran.append(" ".join(argv[:4]))
        return 1 if argv[3:4] == ["describe"] else 0

    environ = {**BASE, "IMAGE_TAG": "abc"}
    assert main(["run-serving", "--build"], environ=environ, run=fake) == 0
    assert ran[:3] == [
        "gcloud artifacts repositories describe",
        "gcloud artifacts repositories create",
        "gcloud auth configure-docker europe-west1-docker.pkg.dev",
    ]
    assert ran[-1].startswith("gcloud run deploy tf-serving")


def test_build_makes_no_sense_for_a_source_deploy() -> None:
    with pytest.raises(SettingsError, match="deploys source"):
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
        "FEEDBACK_SECRET",  # FEEDBACK_SECRET_SECRET
        "FEEDBACK_SECRET_PREVIOUS",  # FEEDBACK_SECRET_PREVIOUS_SECRET
        "CASSANDRA_SSL_CA_FILE",  # CASSANDRA_SSL_CA_SECRET, mounted
        "SQLITE_PATH",  # local only
        "WORKERS",  # read by the tool, 1 to 16
        "MEMORY_LIMIT_MIB",  # MEMORY, in MiB
        "GOOGLE_CLOUD_PROJECT",  # GCP_PROJECT, so trace ids name the project
    }
    assert variables_read_by_function() == set(FUNCTION_PASSTHROUGH) | handled


# --- image references -------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        f"gcr.io/p/fn@{DIGEST}",
        f"gcr.io/p/fn:1.2.3@{DIGEST}",
        f"{REGISTRY}/digit-recognizer-function@{DIGEST}",
        f"localhost:5000/team/fn_x:v2@{DIGEST}",
        "gcr.io/p/fn:1.2.3",
    ],
)
def test_image_references_by_digest_or_tag_are_accepted(image: str) -> None:
    (argv,) = argvs(plan("run-function", {**BASE, "FUNCTION_IMAGE": image}))
    assert f"--image={image}" in argv
    (serving,) = argvs(plan("run-serving", {**BASE, "SERVING_IMAGE": image}))
    assert f"--image={image}" in serving


@pytest.mark.parametrize(
    "image",
    [
        "gcr.io/p/fn",  # neither tag nor digest
        "gcr.io/p/fn:latest",
        "gcr.io/p/fn@sha256:0123abcd",  # digest too short
        "gcr.io/p/fn@sha256:" + "0123456789ABCDEF" * 4,  # upper-case hex
        "gcr.io/p/fn@md5:" + "0" * 32,
        f"gcr.io/p/fn:@{DIGEST}",  # empty tag
        f"gcr.io/p/fn@{DIGEST}@{DIGEST}",
        "gcr.io/p/fn:1.0@",
        f"gcr.io/p/fn:1.0@sha256:{DIGEST}",  # the algorithm twice
        "gcr.io//fn:1.0",
        "gcr.io/p/fn/:1.0",
        "fn:1.0",  # no registry
        "gcr.io/p/Fn:1.0",  # upper case in the path
        "gcr.io/p/fn:1.0 --port=1",
    ],
)
def test_malformed_image_references_are_refused(image: str) -> None:
    problems = refusal("run-function", {**BASE, "FUNCTION_IMAGE": image})
    assert any(p.startswith(f"FUNCTION_IMAGE={image!r}") for p in problems), problems


def test_build_refuses_a_digest_it_cannot_produce() -> None:
    image = f"gcr.io/p/fn:1.2.3@{DIGEST}"
    problems = refusal("run-function", {**BASE, "FUNCTION_IMAGE": image}, build=True)
    assert any("--build with FUNCTION_IMAGE=" in p and "digest" in p for p in problems)


# --- CPU and memory together -----------------------------------------------------------


@pytest.mark.parametrize(
    "cpu, memory",
    [
        ("1", "128Mi"),
        ("1", "4Gi"),
        ("2", "8Gi"),
        ("4", "2Gi"),
        ("4", "16Gi"),
        ("6", "4Gi"),
        ("6", "24Gi"),
        ("8", "4096Mi"),
        ("8", "32Gi"),
    ],
)
def test_cpu_and_memory_combinations_cloud_run_accepts(cpu: str, memory: str) -> None:
    for target, prefix in (("function", ""), ("run-serving", "SERVING_")):
        environ = {**BASE, "IMAGE_TAG": "v1", f"{prefix}CPU": cpu, f"{prefix}MEMORY": memory}
        (argv,) = argvs(plan(target, environ))
        assert f"--cpu={cpu}" in argv and f"--memory={memory}" in argv


@pytest.mark.parametrize(
    "cpu, memory, message",
    [
        ("4", "1Gi", "Cloud Run allows 2Gi to 16Gi of memory with 4 CPU; set MEMORY=2Gi or more"),
        ("6", "2Gi", "allows 4Gi to 24Gi of memory with 6 CPU"),
        ("8", "3Gi", "allows 4Gi to 32Gi of memory with 8 CPU"),
        ("1", "5Gi", "set CPU=2 or more, or MEMORY=4Gi or less"),
        ("2", "9Gi", "set CPU=4 or more, or MEMORY=8Gi or less"),
        ("4", "17Gi", "set CPU=6 or more"),
        ("6", "25Gi", "set CPU=8 or more"),
        ("8", "40Gi", "Cloud Run's largest is 32Gi"),
        ("1", "64Mi", "set MEMORY=128Mi or more"),
    ],
)
def test_cpu_and_memory_that_do_not_fit_are_refused_naming_both(
    cpu: str, memory: str, message: str
) -> None:
    for target, prefix in (("function", ""), ("run-serving", "SERVING_")):
        environ = {**BASE, "IMAGE_TAG": "v1", f"{prefix}CPU": cpu, f"{prefix}MEMORY": memory}
        (problem,) = refusal(target, environ)
        assert problem.startswith(f"{prefix}CPU={cpu} with {prefix}MEMORY={memory} does not fit")
        assert (
            message.replace("CPU=", f"{prefix}CPU=").replace("MEMORY=", f"{prefix}MEMORY=")
            in problem
        ), problem


def test_less_than_one_cpu() -> None:
    small = {**BASE, "CPU": "0.5", "MEMORY": "1Gi", "CONCURRENCY": "1"}
    (argv,) = argvs(plan("function", small))
    assert "--cpu=0.5" in argv and "--concurrency=1" in argv and "--memory=1Gi" in argv
    (problem,) = refusal("function", {**small, "CPU": "0.25"})
    assert problem.startswith("CPU=0.25 with MEMORY=1Gi does not fit: below 1 CPU")
    (problem,) = refusal("function", {**small, "MEMORY": "2Gi"})
    assert "set CPU=1 or more, or MEMORY=1Gi or less" in problem
    (problem,) = refusal("function", {**small, "CONCURRENCY": "8"})
    assert problem.startswith("CPU=0.5 with CONCURRENCY=8 does not fit")
    assert "CPU='0.05' must be one of" in refusal("function", {**small, "CPU": "0.05"})[0]
    # TF Serving keeps its CPU allocated, which Cloud Run allows only with whole CPUs.
    serving = {**BASE, "IMAGE_TAG": "v1", "SERVING_CPU": "0.5", "SERVING_CONCURRENCY": "1"}
    (problem,) = refusal("run-serving", serving)
    assert problem == "SERVING_CPU='0.5' must be one of 1, 2, 4, 6, 8"


def test_a_size_that_does_not_fit_stops_before_the_build(capsys) -> None:
    ran: list[list[str]] = []
    environ = {**BASE, "IMAGE_TAG": "abc", "CPU": "4", "MEMORY": "1Gi"}
    status = main(["run-function", "--build", "--dry-run"], environ=environ, run=ran.append)
    assert status == 2 and ran == []
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "CPU=4 with MEMORY=1Gi does not fit" in captured.err


def test_every_variable_the_tool_reads_is_documented_in_the_readme_deploy_section() -> None:
    readme = (ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy\n") : readme.index("### Kubernetes\n")]
    environ = RecordingEnv({**BASE, "IMAGE_TAG": "v1"})
    for target in ("function", "run-function", "run-serving"):
        plan(target, environ)
    assert "SERVING_CPU" in environ.asked and "ARTIFACT_REPOSITORY" in environ.asked
    undocumented = {
        name
        for name in environ.asked - set(FUNCTION_PASSTHROUGH)
        if not re.search(rf"`{name}`|`{name}_SECRET`", deploy)
    }
    assert undocumented == set()
    # The one-time steps create the repository the derived image names use.
    assert REGISTRY.endswith("/digit-recognizer")  # what the plans above derive
    assert "gcloud artifacts repositories create digit-recognizer " in deploy
