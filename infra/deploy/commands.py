"""The exact commands of a deployment, as argument lists (gcloud and docker).

Kept free of I/O so a dry run and a test see precisely what would run. Paths are
relative to the repository root, where the commands run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from infra.deploy.settings import CA_FILE_NAME, CA_MOUNT_DIR, FunctionSettings, ServingSettings

FUNCTION_SOURCE = "function"
FUNCTION_DOCKERFILE = "Dockerfile.function"
SERVING_DOCKERFILE = "Dockerfile.serving"
# gcloud's alternative list delimiters (`gcloud topic escaping`), tried in this order.
_DELIMITERS = "@|;#~"
# LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE...: an Artifact Registry image.
_ARTIFACT_REGISTRY = re.compile(
    r"(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>[^/]+)/.+"
)


@dataclass(frozen=True)
class Step:
    """One command of a deployment. With `unless`, a check: the command runs only when
    the check fails (exits non-zero), e.g. create a repository unless it exists."""

    argv: list[str]
    unless: list[str] | None = None

    def shell(self) -> str:
        """The step as one line of POSIX shell, as a dry run prints it."""
        if self.unless is None:
            return shlex.join(self.argv)
        return f"{shlex.join(self.unless)} >/dev/null 2>&1 || {shlex.join(self.argv)}"


def gcloud_map(items: Mapping[str, str]) -> str:
    """KEY=VALUE pairs for a gcloud map flag; switches delimiter when a value has a comma."""
    pairs = [f"{key}={value}" for key, value in items.items()]
    if not any("," in pair for pair in pairs):
        return ",".join(pairs)
    for delimiter in _DELIMITERS:
        if not any(delimiter in pair for pair in pairs):
            return f"^{delimiter}^" + delimiter.join(pairs)
    raise ValueError(f"no free delimiter among {_DELIMITERS!r} for these values")


def artifact_registry(image: str) -> list[Step]:
    """For an Artifact Registry image: create its Docker repository unless it exists (a
    push to a missing repository fails), and let docker push there with gcloud's
    credentials (`gcloud auth configure-docker` only adds the host once)."""
    match = _ARTIFACT_REGISTRY.fullmatch(image)
    if match is None:
        return []
    location, project, repository = match["location"], match["project"], match["repository"]
    where = [f"--project={project}", f"--location={location}"]
    return [
        Step(
            [
                "gcloud",
                "artifacts",
                "repositories",
                "create",
                repository,
                *where,
                "--repository-format=docker",
                "--description=digit-recognizer images",
            ],
            unless=[
                "gcloud",
                "artifacts",
                "repositories",
                "describe",
                repository,
                *where,
                "--format=value(name)",
            ],
        ),
        Step(["gcloud", "auth", "configure-docker", f"{location}-docker.pkg.dev", "--quiet"]),
    ]


def build_and_push(dockerfile: str, image: str) -> list[Step]:
    """The registry's set-up, then build for Cloud Run's architecture and push."""
    return [
        *artifact_registry(image),
        Step(
            [
                "docker",
                "build",
                "--platform=linux/amd64",
                f"--file={dockerfile}",
                f"--tag={image}",
                ".",
            ]
        ),
        Step(["docker", "push", image]),
    ]


def _common(settings: FunctionSettings | ServingSettings) -> list[str]:
    platform, scaling = settings.platform, settings.scaling
    return [
        f"--project={platform.project}",
        f"--region={platform.region}",
        f"--cpu={scaling.cpu}",
        f"--memory={scaling.memory}",
        f"--concurrency={scaling.concurrency}",
        f"--min-instances={scaling.min_instances}",
        f"--max-instances={scaling.max_instances}",
    ]


def _identity(settings: FunctionSettings | ServingSettings) -> list[str]:
    account = settings.platform.service_account
    return [f"--service-account={account}"] if account else []


def cloud_functions_deploy(settings: FunctionSettings) -> list[str]:
    """Cloud Functions (2nd gen) built from the function/ source directory."""
    argv = [
        "gcloud",
        "functions",
        "deploy",
        settings.name,
        "--gen2",
        "--runtime=python311",
        f"--source={FUNCTION_SOURCE}",
        "--entry-point=recognize",
        "--trigger-http",
        *_common(settings),
        f"--timeout={settings.scaling.timeout_seconds}s",
        "--allow-unauthenticated"
        if settings.allow_unauthenticated
        else "--no-allow-unauthenticated",
        f"--set-env-vars={gcloud_map(settings.env)}",
    ]
    secrets = dict(settings.secrets)
    if settings.ca_secret:  # Cloud Functions spells a file mount /dir:/file=ref
        secrets[f"{CA_MOUNT_DIR}:/{CA_FILE_NAME}"] = settings.ca_secret
    if secrets:
        argv.append(f"--set-secrets={gcloud_map(secrets)}")
    argv += _identity(settings)
    if settings.platform.vpc_connector:
        egress = "all" if settings.platform.vpc_egress == "all-traffic" else "private-ranges-only"
        argv += [
            f"--vpc-connector={settings.platform.vpc_connector}",
            f"--egress-settings={egress}",
        ]
    return argv


def cloud_run_function(settings: FunctionSettings) -> list[str]:
    """The function container (Dockerfile.function) as a Cloud Run service."""
    if settings.image is None:
        raise ValueError("no image: load the settings with load_function(container=True)")
    argv = [
        "gcloud",
        "run",
        "deploy",
        settings.name,
        f"--image={settings.image}",
        "--port=8080",
        *_common(settings),
        f"--timeout={settings.scaling.timeout_seconds}",
        "--allow-unauthenticated"
        if settings.allow_unauthenticated
        else "--no-allow-unauthenticated",
        f"--set-env-vars={gcloud_map(settings.env)}",
    ]
    secrets = dict(settings.secrets)
    if settings.ca_secret:  # Cloud Run spells a file mount /dir/file=ref
        secrets[f"{CA_MOUNT_DIR}/{CA_FILE_NAME}"] = settings.ca_secret
    if secrets:
        argv.append(f"--set-secrets={gcloud_map(secrets)}")
    argv += _identity(settings)
    if settings.platform.vpc_connector:
        argv += [
            f"--vpc-connector={settings.platform.vpc_connector}",
            f"--vpc-egress={settings.platform.vpc_egress}",
        ]
    return argv


def cloud_run_serving(settings: ServingSettings) -> list[str]:
    """TensorFlow Serving (Dockerfile.serving) on Cloud Run, REST on 8501.

    Not public: Cloud Run lets in only requests with an ID token of an account holding
    roles/run.invoker on it (the function sends one, MODEL_SERVER_ID_TOKEN), and internal
    ingress keeps it off the internet besides; TF Serving has no authentication of its
    own. Only 8501 is routed, so gRPC's ModelService (config reloads) is unreachable. CPU
    stays allocated between requests for the batching threads and the model loader.
    """
    return [
        "gcloud",
        "run",
        "deploy",
        settings.name,
        f"--image={settings.image}",
        "--port=8501",
        *_common(settings),
        f"--timeout={settings.scaling.timeout_seconds}",
        f"--ingress={settings.ingress}",
        "--no-allow-unauthenticated",
        "--no-cpu-throttling",
        *_identity(settings),
    ]


def cloud_run_invoker(settings: ServingSettings) -> list[str]:
    """Let the function's service account call the model server (roles/run.invoker)."""
    if settings.invoker is None:
        raise ValueError("no invoker: set SERVING_INVOKER")
    platform = settings.platform
    return [
        "gcloud",
        "run",
        "services",
        "add-iam-policy-binding",
        settings.name,
        f"--project={platform.project}",
        f"--region={platform.region}",
        f"--member=serviceAccount:{settings.invoker}",
        "--role=roles/run.invoker",
    ]
