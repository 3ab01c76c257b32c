"""Deployment settings from environment variables, validated before any command runs.

Every problem is collected and reported at once, naming the variable (one SettingsError,
read with the function's own reader), so a deploy never starts half-configured. The
function's settings are checked by the function's own Settings.from_env, on exactly the
environment it will be given. Secrets are accepted only as Secret Manager references
(`name:version`); a password given by value is refused rather than silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from recognizer.config import Settings
from recognizer.env import Reader, SettingsError
from recognizer.feedback import MIN_SECRET_BYTES

# Function settings copied to the deployed function when set, and checked as the function
# checks them (function/recognizer/config.py). Not here: CASSANDRA_PASSWORD, API_TOKEN,
# FEEDBACK_SECRET and CASSANDRA_SSL_CA_FILE (secrets, by reference below), SQLITE_PATH and
# PREDICTION_STORE (always Cassandra in the cloud), PORT (the platform sets it),
# MODEL_SERVER_URL and CASSANDRA_CONTACT_POINTS (required, validated).
FUNCTION_PASSTHROUGH = (
    "MODEL_NAME",
    "MODEL_LABEL",
    "CANARY_LABEL",
    "CANARY_PERCENT",
    "MODEL_SERVER_TIMEOUT_SECONDS",
    "MODEL_SERVER_RETRIES",
    "MODEL_SERVER_RETRY_BACKOFF_SECONDS",
    "MODEL_LABEL_CACHE_SECONDS",
    "MAX_REQUEST_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_REQUEST_PIXELS",
    "MAX_BATCH_IMAGES",
    "DECODE_CPU_SECONDS",
    "UPLOAD_STORE_MAX_BYTES",
    "HISTORY_MAX_LIMIT",
    "PREDICT_REQUIRES_TOKEN",
    "MODEL_SERVER_ID_TOKEN",
    "PIN_REQUIRES_TOKEN",
    "CORRECTIONS_PER_CLIENT_PER_HOUR",
    "CORRECTIONS_PER_RECORD_PER_HOUR",
    "CORS_ALLOWED_ORIGINS",
    "VERDICT_MIN_CONFIDENCE",
    "VERDICT_MIN_CONFIDENCE_BY_VERSION",
    "VERDICT_MIN_CANDIDATE",
    "VERDICT_MIN_UNSURE_MASS",
    "VERDICT_MIN_INK_EXTENT",
    "VERDICT_MAX_ASPECT",
    "VERDICT_EDGE_MARGIN",
    "CASSANDRA_PORT",
    "CASSANDRA_KEYSPACE",
    "CASSANDRA_LOCAL_DC",
    "CASSANDRA_CONSISTENCY",
    "CASSANDRA_USERNAME",
    "CASSANDRA_SSL_VERIFY_HOSTNAME",
    "CASSANDRA_PROTOCOL_VERSION",
    "CASSANDRA_REQUEST_TIMEOUT_SECONDS",
    "CASSANDRA_CONNECT_TIMEOUT_SECONDS",
    "CASSANDRA_RECENT_LOOKBACK_DAYS",
    "RETENTION_DAYS",
    "UPLOAD_RETENTION_DAYS",
    "UPLOADS_PER_CLIENT_PER_HOUR",
    "ADMISSION_IMAGES",
    "ADMISSION_WAIT_SECONDS",
    "ADMISSION_BYTES_PER_IMAGE",
    "ADMISSION_CLIENT_SHARE",
    "CLIENT_HEADER_SECONDS",
    "CLIENT_TIMEOUT_SECONDS",
    "CLIENT_REQUEST_SECONDS",
    "CLIENT_MAX_UNREAD_BYTES",
    "WORKER_RECYCLE_MIB",
    "COALESCE_WINDOW_MS",
    "LOG_LEVEL",
)
# Secrets the function reads from its environment; each is deployed from <NAME>_SECRET.
SECRETS = ("CASSANDRA_PASSWORD", "API_TOKEN", "FEEDBACK_SECRET", "FEEDBACK_SECRET_PREVIOUS")
# Where a CA bundle given by CASSANDRA_SSL_CA_SECRET is mounted in the function.
CA_MOUNT_DIR = "/etc/secrets/cassandra-ca"
CA_FILE_NAME = "ca.pem"

_SECRET_REF = re.compile(
    r"(projects/[a-z0-9-]+/secrets/)?[A-Za-z0-9_-]{1,255}:(latest|[1-9][0-9]*)"
)
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_SERVICE_ACCOUNT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.gserviceaccount\.com")
_NAME = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_MEMORY = re.compile(r"([1-9][0-9]*)(Mi|Gi)")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# REGISTRY/PATH then :TAG, @sha256:DIGEST or both (the distribution spec's grammar, with
# the registry host required); the digest is what pins, a tag beside it is a label.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?P<name>[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/{_PATH_COMPONENT})+)"
    rf"(:(?P<tag>{_TAG.pattern}))?"
    r"(@(?P<digest>sha256:[0-9a-f]{64}))?"
)
# Cloud Run's CPU and memory table (Cloud Functions 2nd gen runs on Cloud Run and checks
# the same): MiB of memory allowed with each whole number of CPUs. Below 1 CPU (0.08 to
# 0.999): at most 512 MiB below 0.5 CPU, at most 1 GiB below 1, and one request at a time.
MEMORY_BY_CPU = {
    1: (128, 4 * 1024),
    2: (128, 8 * 1024),
    4: (2 * 1024, 16 * 1024),
    6: (4 * 1024, 24 * 1024),
    8: (4 * 1024, 32 * 1024),
}
_FRACTIONAL_CPU = re.compile(r"0\.[0-9]{1,3}")


@dataclass(frozen=True)
class Platform:
    """Where a service runs and as whom."""

    project: str
    region: str
    service_account: str | None = None
    vpc_connector: str | None = None
    vpc_egress: str = "private-ranges-only"  # Cloud Run's spelling


@dataclass(frozen=True)
class Scaling:
    """Instance count, per-instance concurrency and size."""

    min_instances: int
    max_instances: int
    concurrency: int
    cpu: str
    memory: str
    timeout_seconds: int


@dataclass(frozen=True)
class FunctionSettings:
    """The recognize function, as source (Cloud Functions) or container (Cloud Run)."""

    platform: Platform
    name: str
    scaling: Scaling
    allow_unauthenticated: bool
    env: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict)  # env var -> name:version
    ca_secret: str | None = None
    image: str | None = None


@dataclass(frozen=True)
class ServingSettings:
    """TensorFlow Serving with the models baked in, on Cloud Run."""

    platform: Platform
    name: str
    scaling: Scaling
    ingress: str
    invoker: str | None  # the function's service account, given roles/run.invoker
    image: str


class _Reader(Reader):
    """The function's reader, with the deploy tool's own kinds of value."""

    def get(self, name: str) -> str:
        return self.raw(name) or ""

    def matching(self, name: str, pattern: re.Pattern[str], default: str, example: str) -> str:
        return self.text(name, default, pattern, f"like {example}")

    def required_matching(
        self, name: str, what: str, pattern: re.Pattern[str], example: str
    ) -> str:
        value = self.required(name, what)
        return self.matching(name, pattern, "", example) if value else value

    def secret_ref(self, name: str) -> str | None:
        value = self.get(name)
        if value and not _SECRET_REF.fullmatch(value):
            # Never echo the value: it may be the secret itself, pasted by mistake.
            self.problem(
                f"{name} is not a Secret Manager reference such as "
                "cassandra-password:3 or projects/p/secrets/cassandra-password:latest"
            )
        return value or None


def _platform(read: _Reader) -> Platform:
    connector = read.get("VPC_CONNECTOR") or None
    egress = read.choice(
        "VPC_EGRESS", "private-ranges-only", ("private-ranges-only", "all-traffic")
    )
    if read.get("VPC_EGRESS") and connector is None:
        read.problems.append("VPC_EGRESS needs VPC_CONNECTOR (the connector the traffic leaves by)")
    return Platform(
        project=read.required_matching(
            "GCP_PROJECT", "the Google Cloud project id", _PROJECT, "my-project-123"
        ),
        region=read.required_matching(
            "GCP_REGION", "the region, e.g. europe-west1", _REGION, "europe-west1"
        ),
        service_account=read.get("SERVICE_ACCOUNT") or None,
        vpc_connector=connector,
        vpc_egress=egress,
    )


def image_problem(variable: str, image: str) -> str | None:
    """Why `image` is no deployable reference, or None: REGISTRY/PATH:TAG (a version, not
    latest), REGISTRY/PATH@sha256:DIGEST or REGISTRY/PATH:TAG@sha256:DIGEST."""
    match = _IMAGE.fullmatch(image)
    if match is None or not (match["tag"] or match["digest"]):
        return (
            f"{variable}={image!r} must be a registry path with a version tag or a digest, "
            "e.g. europe-west1-docker.pkg.dev/p/repo/name:1.2.3 or .../name@sha256:<64 hex>"
        )
    if match["tag"] == "latest" and not match["digest"]:
        return f"{variable}={image!r}: latest is no version; give a version tag or a digest"
    return None


def has_digest(image: str) -> bool:
    match = _IMAGE.fullmatch(image)
    return bool(match and match["digest"])


def _image(read: _Reader, variable: str, name: str, project: str, region: str) -> str:
    """VARIABLE if set, else REGION-docker.pkg.dev/PROJECT/ARTIFACT_REPOSITORY/NAME:IMAGE_TAG."""
    explicit = read.get(variable)
    if explicit:
        problem = image_problem(variable, explicit)
        if problem:
            read.problems.append(problem)
        return explicit
    tag = read.required(
        "IMAGE_TAG", f"the image tag, e.g. $(git rev-parse --short HEAD) (or set {variable})"
    )
    if tag and (not _TAG.fullmatch(tag) or tag == "latest"):
        read.problems.append(f"IMAGE_TAG={tag!r} must be a version tag, not latest")
    repository = read.matching("ARTIFACT_REPOSITORY", _NAME, "digit-recognizer", "digit-recognizer")
    return f"{region}-docker.pkg.dev/{project}/{repository}/{name}:{tag}"


def _mebibytes(memory: str) -> int | None:
    match = _MEMORY.fullmatch(memory)
    if match is None:
        return None
    return int(match[1]) * (1024 if match[2] == "Gi" else 1)


def _size(mebibytes: int) -> str:
    return f"{mebibytes // 1024}Gi" if mebibytes % 1024 == 0 else f"{mebibytes}Mi"


def size_problem(prefix: str, cpu: str, memory: str, concurrency: int) -> str | None:
    """Why Cloud Run (and Cloud Functions 2nd gen) would refuse this CPU, memory and
    concurrency together, naming the variables; None if they fit."""
    cpu_var, memory_var = f"{prefix}CPU", f"{prefix}MEMORY"
    mebibytes = _mebibytes(memory)
    if mebibytes is None:
        return None  # reported as malformed already
    both = f"{cpu_var}={cpu} with {memory_var}={memory}"
    if _FRACTIONAL_CPU.fullmatch(cpu):
        high = 512 if float(cpu) < 0.5 else 1024
        if mebibytes > high:
            least = "1" if mebibytes > 1024 else "0.5"
            return (
                f"{both} does not fit: below 1 CPU Cloud Run allows at most 512Mi "
                f"(under 0.5 CPU) or 1Gi (under 1 CPU); set {cpu_var}={least} or more, "
                f"or {memory_var}={_size(high)} or less"
            )
        if mebibytes < 128:
            return f"{both} does not fit: Cloud Run needs {memory_var}=128Mi or more"
        if concurrency != 1:
            return (
                f"{cpu_var}={cpu} with {prefix}CONCURRENCY={concurrency} does not fit: "
                f"below 1 CPU Cloud Run serves one request at a time; set "
                f"{prefix}CONCURRENCY=1 or {cpu_var}=1"
            )
        return None
    low, high = MEMORY_BY_CPU[int(cpu)]
    if low <= mebibytes <= high:
        return None
    if mebibytes > high:
        fitting = [n for n, (_, top) in MEMORY_BY_CPU.items() if mebibytes <= top]
        fix = (
            f"set {cpu_var}={fitting[0]} or more, or {memory_var}={_size(high)} or less"
            if fitting
            else f"Cloud Run's largest is {_size(MEMORY_BY_CPU[8][1])}"
        )
    else:
        fix = f"set {memory_var}={_size(low)} or more, or fewer CPUs"
    return (
        f"{both} does not fit: Cloud Run allows {_size(low)} to {_size(high)} of memory "
        f"with {cpu} CPU; {fix}"
    )


def _scaling(
    read: _Reader, prefix: str, default: Scaling, memory_example: str, *, fractional_cpu: bool
) -> Scaling:
    """Instance bounds and sizes from `<prefix>MIN_INSTANCES`, `<prefix>CPU`, ..."""
    cpu = read.get(f"{prefix}CPU") or default.cpu
    whole = tuple(str(n) for n in MEMORY_BY_CPU)
    fraction_ok = fractional_cpu and _FRACTIONAL_CPU.fullmatch(cpu) and float(cpu) >= 0.08
    if cpu not in whole and not fraction_ok:
        fractions = " or a fraction from 0.08 to 0.999" if fractional_cpu else ""
        read.problems.append(f"{prefix}CPU={cpu!r} must be one of {', '.join(whole)}{fractions}")
    scaling = Scaling(
        min_instances=read.whole(f"{prefix}MIN_INSTANCES", default.min_instances, 0, 1000),
        max_instances=read.whole(f"{prefix}MAX_INSTANCES", default.max_instances, 1, 1000),
        concurrency=read.whole(f"{prefix}CONCURRENCY", default.concurrency, 1, 1000),
        cpu=cpu,
        memory=read.matching(f"{prefix}MEMORY", _MEMORY, default.memory, memory_example),
        timeout_seconds=read.whole(f"{prefix}TIMEOUT_SECONDS", default.timeout_seconds, 1, 3600),
    )
    if scaling.min_instances > scaling.max_instances:
        read.problems.append(f"{prefix}MIN_INSTANCES must not exceed {prefix}MAX_INSTANCES")
    if cpu in whole or fraction_ok:
        problem = size_problem(prefix, cpu, scaling.memory, scaling.concurrency)
        if problem:
            read.problems.append(problem)
    return scaling


def load_function(environ: Mapping[str, str], *, container: bool) -> FunctionSettings:
    """Settings for `function` (container=False) or `run-function` (container=True)."""
    read = _Reader(environ)
    platform = _platform(read)
    scaling = _scaling(
        read, "", Scaling(0, 10, 8, "1", "512Mi", 60), "512Mi or 1Gi", fractional_cpu=True
    )

    for secret in SECRETS:
        if read.env.get(secret):
            read.problems.append(
                f"{secret} holds a value: secrets are deployed by reference only. "
                f"Store it in Secret Manager, set {secret}_SECRET=name:version "
                f"and unset {secret}"
            )
    model_server = read.required("MODEL_SERVER_URL", "the TensorFlow Serving REST URL")
    password = read.secret_ref("CASSANDRA_PASSWORD_SECRET")
    if (password is None) != (not read.get("CASSANDRA_USERNAME")):
        read.problems.append("set CASSANDRA_USERNAME and CASSANDRA_PASSWORD_SECRET together")
    api_token = read.secret_ref("API_TOKEN_SECRET")
    feedback_secret = read.secret_ref("FEEDBACK_SECRET_SECRET")
    feedback_previous = read.secret_ref("FEEDBACK_SECRET_PREVIOUS_SECRET")
    ca_secret = read.secret_ref("CASSANDRA_SSL_CA_SECRET")

    env = {
        "MODEL_SERVER_URL": model_server.rstrip("/"),
        "PREDICTION_STORE": "cassandra",
        "CASSANDRA_CONTACT_POINTS": read.get("CASSANDRA_CONTACT_POINTS"),  # required: checked
    }
    env.update({name: read.get(name) for name in FUNCTION_PASSTHROUGH if read.get(name)})
    env["GOOGLE_CLOUD_PROJECT"] = platform.project  # its trace ids name the project
    if ".run.app" in model_server and "MODEL_SERVER_ID_TOKEN" not in env:
        env["MODEL_SERVER_ID_TOKEN"] = "true"  # run-serving lets in only its invokers
    if ca_secret:
        env["CASSANDRA_SSL_CA_FILE"] = f"{CA_MOUNT_DIR}/{CA_FILE_NAME}"
    # functions-framework's gunicorn: one process, a thread per concurrent request.
    env["WORKERS"] = str(read.whole("WORKERS", 1, 1, 16))
    env["THREADS"] = str(scaling.concurrency)
    # The decode budgets are sized from the instance's memory (docs/reliability.md): always
    # the MEMORY the instance is given, never a number of its own that could disagree.
    mebibytes = _mebibytes(scaling.memory)
    if mebibytes is not None:
        env["MEMORY_LIMIT_MIB"] = str(mebibytes)
    for name, value in env.items():
        if "\n" in value:
            read.problems.append(f"{name} must be a single line")
    read.problems.extend(
        _function_problems(
            env,
            password=bool(read.get("CASSANDRA_USERNAME")),
            api_token=api_token is not None,
            feedback_secret=feedback_secret is not None,
            feedback_previous=feedback_previous is not None,
        )
    )

    name = read.matching("FUNCTION_NAME", _NAME, "digit-recognizer", "digit-recognizer")
    image = (
        _image(
            read, "FUNCTION_IMAGE", "digit-recognizer-function", platform.project, platform.region
        )
        if container
        else None
    )
    allow = read.flag("ALLOW_UNAUTHENTICATED", False)
    read.check()
    return FunctionSettings(
        platform=platform,
        name=name,
        scaling=scaling,
        allow_unauthenticated=allow,
        env=env,
        secrets={
            name: ref
            for name, ref in (
                ("CASSANDRA_PASSWORD", password),
                ("API_TOKEN", api_token),
                ("FEEDBACK_SECRET", feedback_secret),
                ("FEEDBACK_SECRET_PREVIOUS", feedback_previous),
            )
            if ref
        },
        ca_secret=ca_secret,
        image=image,
    )


def _function_problems(
    env: Mapping[str, str],
    *,
    password: bool,
    api_token: bool,
    feedback_secret: bool,
    feedback_previous: bool = False,
) -> list[str]:
    """What the function would refuse at start-up in `env`. The secrets it is given by
    reference are stood in for (their values are Secret Manager's; the user name and
    password pair is this tool's own check); the CA bundle exists only where it is
    mounted; WORKERS and MEMORY_LIMIT_MIB are this tool's own, checked by its own rules."""
    stand_ins = {
        "CASSANDRA_PASSWORD": "by-reference" if password else "",
        "API_TOKEN": "by-reference" if api_token else "",
        "FEEDBACK_SECRET": "x" * MIN_SECRET_BYTES if feedback_secret else "",
        "FEEDBACK_SECRET_PREVIOUS": "y" * MIN_SECRET_BYTES if feedback_previous else "",
    }
    own = {"CASSANDRA_SSL_CA_FILE", "WORKERS", "MEMORY_LIMIT_MIB"}
    checked = {name: value for name, value in env.items() if name not in own}
    try:
        Settings.from_env({**checked, **stand_ins})
    except SettingsError as refused:
        return refused.problems
    return []


def load_serving(environ: Mapping[str, str]) -> ServingSettings:
    """Settings for `run-serving`: TensorFlow Serving on Cloud Run, reachable only inside."""
    read = _Reader(environ)
    platform = _platform(read)
    # Whole CPUs only: TF Serving keeps its CPU allocated (--no-cpu-throttling), which
    # Cloud Run refuses below 1 CPU.
    scaling = _scaling(
        read, "SERVING_", Scaling(1, 5, 32, "2", "2Gi", 60), "2Gi", fractional_cpu=False
    )
    # TF Serving has no authentication: Cloud Run's IAM check (the function's ID token)
    # and internal ingress keep it private.
    ingress = read.get("SERVING_INGRESS") or "internal"
    if ingress == "all":
        read.problems.append(
            "SERVING_INGRESS=all would put TensorFlow Serving on the internet without "
            "authentication; use internal or internal-and-cloud-load-balancing"
        )
    else:
        ingress = read.choice(
            "SERVING_INGRESS", "internal", ("internal", "internal-and-cloud-load-balancing")
        )
    name = read.matching("SERVING_NAME", _NAME, "tf-serving", "tf-serving")
    image = _image(
        read, "SERVING_IMAGE", "digit-recognizer-serving", platform.project, platform.region
    )
    invoker = read.get("SERVING_INVOKER") or None
    if invoker is not None and not _SERVICE_ACCOUNT.fullmatch(invoker):
        read.problems.append(
            "SERVING_INVOKER must be the function's service account e-mail "
            f"(name@project.iam.gserviceaccount.com), not {invoker[:80]!r}"
        )
    read.check()
    return ServingSettings(
        platform=platform,
        name=name,
        scaling=scaling,
        ingress=ingress,
        invoker=invoker,
        image=image,
    )
