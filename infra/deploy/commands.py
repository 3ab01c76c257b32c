"""The exact commands of a deployment, as argument lists (gcloud and docker).

Kept free of I/O so a dry run and a test see precisely what would run. Paths are
relative to the repository root, where the commands run.
"""

from __future__ import annotations

from collections.abc import Mapping

from infra.deploy.settings import CA_FILE_NAME, CA_MOUNT_DIR, FunctionSettings, ServingSettings

FUNCTION_SOURCE = "function"
FUNCTION_DOCKERFILE = "Dockerfile.function"
SERVING_DOCKERFILE = "Dockerfile.serving"
# gcloud's alternative list delimiters (`gcloud topic escaping`), tried in this order.
_DELIMITERS = "@|;#~"


def gcloud_map(items: Mapping[str, str]) -> str:
    """KEY=VALUE pairs for a gcloud map flag; switches delimiter when a value has a comma."""
    pairs = [f"{key}={value}" for key, value in items.items()]
    if not any("," in pair for pair in pairs):
        return ",".join(pairs)
    for delimiter in _DELIMITERS:
        if not any(delimiter in pair for pair in pairs):
            return f"^{delimiter}^" + delimiter.join(pairs)
    raise ValueError(f"no free delimiter among {_DELIMITERS!r} for these values")


def build_and_push(dockerfile: str, image: str) -> list[list[str]]:
    """Build for Cloud Run's architecture and push to the registry."""
    return [
        [
            "docker",
            "build",
            "--platform=linux/amd64",
            f"--file={dockerfile}",
            f"--tag={image}",
            ".",
        ],
        ["docker", "push", image],
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

    No IAM check (the function sends no identity token); internal ingress is what keeps
    it private. CPU stays allocated between requests for the batching threads and the
    model loader.
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
        "--allow-unauthenticated",
        "--no-cpu-throttling",
        *_identity(settings),
    ]
