"""The function's settings: every variable it reads, read and checked once at start-up.

Every problem is reported at once, each naming its variable (env.SettingsError), so a
malformed value stops the function before it serves instead of failing its requests.
The deploy and rollout tools read the function's settings through here too. Every
variable is documented in the README.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

from recognizer import contract
from recognizer.env import Reader
from recognizer.feedback import MIN_SECRET_BYTES
from recognizer.records import Retention
from recognizer.verdict import VerdictPolicy

MiB = 1024 * 1024
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what TF Serving and our URLs accept
LABEL_RULE = "1-64 letters, digits, '_' or '-'"
URL_PATTERN = re.compile(r"https?://[^\s/]+(/\S*)?")
ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s]+")  # scheme://host[:port], no path
DECODE_SHARE = 4  # a quarter of the memory for decoding: the rest is the runtime, bodies, slack
STORES = ("sqlite", "cassandra")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# A Google Cloud project id: 6-30 lower-case letters, digits and hyphens.
PROJECT_PATTERN = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
PROJECT_RULE = "a Google Cloud project id (6-30 lower-case letters, digits or '-')"

CONSISTENCY_LEVELS = ("LOCAL_QUORUM", "QUORUM", "LOCAL_ONE", "ONE", "TWO", "THREE", "ALL")
PROTOCOL_VERSIONS = (4, 5)  # v4+ so unset values leave no tombstones
KEYSPACE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
DC_PATTERN = re.compile(r"[^\s,]{1,128}")


@dataclass(frozen=True)
class CassandraSettings:
    """Connection settings, usually from the CASSANDRA_* environment variables."""

    contact_points: tuple[tuple[str, int], ...]
    port: int = 9042
    keyspace: str = "mnist"
    local_dc: str = "datacenter1"
    consistency: str = "LOCAL_QUORUM"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or reprs
    ssl_ca_file: str | None = None
    ssl_verify_hostname: bool = True
    protocol_version: int = 5
    request_timeout: float = 5.0
    connect_timeout: float = 5.0
    lookback_days: int = 7

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CassandraSettings:
        """CASSANDRA_* alone (default: os.environ), for tools that only talk to Cassandra;
        SettingsError names every malformed variable."""
        read = Reader(os.environ if env is None else env)
        settings = read_cassandra(read)
        read.check()
        return settings


@dataclass(frozen=True)
class Settings:
    model_server_url: str = "http://localhost:8501"
    # Send an ID token from the metadata server (identity.py): a Cloud Run model server
    # that lets in only its invokers.
    model_server_id_token: bool = False
    model_name: str = contract.MODEL_NAME
    model_label: str = "stable"
    canary_label: str = "canary"
    canary_percent: float = 0.0  # share of unpinned clients sent to canary_label, 0-100
    model_timeout_seconds: float = 5.0
    model_retries: int = 2  # retries of a refused connection or a 502/503, within the timeout
    model_retry_backoff_seconds: float = 0.05  # first backoff; doubles, with jitter
    label_cache_seconds: float = 5.0
    prediction_store: str = "sqlite"
    sqlite_path: Path = Path(tempfile.gettempdir()) / "digit-predictions.sqlite3"
    max_request_bytes: int = 10 * MiB
    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 40_000_000  # all images of one request, from their headers
    max_batch_images: int = 64
    upload_store_max_bytes: int = 256 * 1024
    history_max_limit: int = 100
    # RETENTION_DAYS and UPLOAD_RETENTION_DAYS: TTLs on Cassandra, expiry times on SQLite.
    retention: Retention = field(default_factory=Retention)
    # The instance's memory. Each worker process may hold a quarter of it, over its
    # worker count, in images being decoded (docs/reliability.md): 128 MiB at 512 MiB.
    memory_limit_mib: int = 512
    workers: int = 1  # functions-framework's WORKERS: the processes that share the memory
    decode_cpu_seconds: float = 1.0  # CPU time for one request's decoding and preprocessing
    # Logs (logs.py): the root logger's level, and the Google Cloud project that names a
    # request's trace as Cloud Logging links it (None: the bare trace id).
    log_level: str = "INFO"
    trace_project: str | None = None
    # Hostile clients (connection.py, budget.Admission): a socket read or a whole answer's
    # write may take this long; a client with this much of its answers unread is cut off;
    # a worker works on this many images at once, a request waits this long for room.
    client_timeout_seconds: float = 10.0
    client_request_seconds: float = 60.0  # from the request's start to its answer's start
    client_max_unread_bytes: int = 512 * 1024
    # A request's line and headers must be in this long after its connection is accepted
    # (or, kept alive, is readable again); they are read without a thread (worker.py).
    client_header_seconds: float = 10.0
    # A worker resident over this much after a request recycles itself (worker.py); 0: three
    # quarters of its share of MEMORY_LIMIT_MIB (384 MiB at 512 MiB, one worker).
    worker_recycle_mib: int = 0
    admission_images: int = 96
    admission_wait_seconds: float = 0.25
    # One client key's share of the admission queue, and the body bytes that count as one
    # image in it (budget.Admission): a 10 MiB body is 40 images at 256 KiB.
    admission_client_share: float = 0.5
    admission_bytes_per_image: int = 256 * 1024
    # Requests of one worker ready within this long share a model call and a durable
    # write (coalesce.py); a lone request never waits. 0 turns coalescing off.
    coalesce_window_ms: float = 2.0
    # repr=False: a Settings printed in a log or a traceback must not carry the secret.
    api_token: str | None = field(default=None, repr=False)
    predict_requires_token: bool = False
    # Only the token's holder may pin ?version= or ?label= (params.route); on by default
    # when API_TOKEN is set.
    pin_requires_token: bool = False
    # Corrections a client, and a prediction, may have in an hour, per process (ratelimit.py);
    # 0: no limit. The API token is not limited.
    corrections_per_client_per_hour: int = 60
    corrections_per_record_per_hour: int = 5
    # Records one client may create in an hour, per process (ratelimit.UploadLimit); 0: none.
    uploads_per_client_per_hour: int = 0
    # The key of the feedback tokens (feedback.py); every instance must have the same one.
    feedback_secret: bytes | None = field(default=None, repr=False)
    # FEEDBACK_SECRET_PREVIOUS: keys being rotated out, still accepted for verification.
    feedback_previous_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    cors_allowed_origins: frozenset[str] = frozenset()  # "*" allows every origin
    verdict_policy: VerdictPolicy = field(default_factory=VerdictPolicy)  # VERDICT_*
    cassandra: CassandraSettings | None = None  # CASSANDRA_*, when prediction_store is cassandra

    @property
    def feedback_keys(self) -> tuple[bytes, ...]:
        """The keys a feedback token is checked against; tokens are made with the first."""
        if self.feedback_secret is None:
            return ()
        return (self.feedback_secret, *self.feedback_previous_secrets)

    @property
    def recycle_bytes(self) -> int:
        """A worker's resident memory past which it is replaced (worker.py)."""
        mib = self.worker_recycle_mib or self.memory_limit_mib * 3 // 4 // self.workers
        return mib * MiB

    @property
    def decode_budget_bytes(self) -> int:
        """What one worker process may hold at once in images being decoded."""
        return self.memory_limit_mib * MiB // DECODE_SHARE // self.workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Read and check every setting in `env`; SettingsError names each bad variable."""
        default = cls()
        read = Reader(env)
        contact_points = read.raw("CASSANDRA_CONTACT_POINTS")
        store = read.choice(
            "PREDICTION_STORE", "cassandra" if contact_points else default.prediction_store, STORES
        )
        model_label = read.text("MODEL_LABEL", default.model_label, LABEL_PATTERN, LABEL_RULE)
        settings = cls(
            model_server_url=read.text(
                "MODEL_SERVER_URL",
                default.model_server_url,
                URL_PATTERN,
                "an http(s) URL such as http://localhost:8501",
            ).rstrip("/"),
            model_server_id_token=read.flag(
                "MODEL_SERVER_ID_TOKEN", default=default.model_server_id_token
            ),
            model_name=read.text("MODEL_NAME", default.model_name, LABEL_PATTERN, LABEL_RULE),
            model_label=model_label,
            canary_label=read.text("CANARY_LABEL", default.canary_label, LABEL_PATTERN, LABEL_RULE),
            canary_percent=read.number("CANARY_PERCENT", default.canary_percent, 0, 100),
            model_timeout_seconds=read.number(
                "MODEL_SERVER_TIMEOUT_SECONDS", default.model_timeout_seconds, above=0
            ),
            model_retries=read.whole("MODEL_SERVER_RETRIES", default.model_retries, 0),
            model_retry_backoff_seconds=read.number(
                "MODEL_SERVER_RETRY_BACKOFF_SECONDS", default.model_retry_backoff_seconds
            ),
            label_cache_seconds=read.number(
                "MODEL_LABEL_CACHE_SECONDS", default.label_cache_seconds
            ),
            prediction_store=store,
            sqlite_path=read.path("SQLITE_PATH", default.sqlite_path),
            max_request_bytes=read.whole("MAX_REQUEST_BYTES", default.max_request_bytes, 1),
            max_image_pixels=read.whole("MAX_IMAGE_PIXELS", default.max_image_pixels, 1),
            max_request_pixels=read.whole("MAX_REQUEST_PIXELS", default.max_request_pixels, 1),
            max_batch_images=read.whole("MAX_BATCH_IMAGES", default.max_batch_images, 1),
            upload_store_max_bytes=read.whole(
                "UPLOAD_STORE_MAX_BYTES", default.upload_store_max_bytes, 0
            ),
            history_max_limit=read.whole("HISTORY_MAX_LIMIT", default.history_max_limit, 1),
            retention=Retention(
                read.whole("RETENTION_DAYS", default.retention.records_days, 1, 3650),
                read.whole("UPLOAD_RETENTION_DAYS", default.retention.uploads_days, 1, 3650),
            ),
            # Below 128 MiB no image of any use can be decoded.
            memory_limit_mib=read.whole("MEMORY_LIMIT_MIB", default.memory_limit_mib, 128),
            workers=read.whole("WORKERS", default.workers, 1),
            decode_cpu_seconds=read.number(
                "DECODE_CPU_SECONDS", default.decode_cpu_seconds, above=0
            ),
            client_timeout_seconds=read.number(
                "CLIENT_TIMEOUT_SECONDS", default.client_timeout_seconds, above=0
            ),
            client_request_seconds=read.number(
                "CLIENT_REQUEST_SECONDS", default.client_request_seconds, above=0
            ),
            client_max_unread_bytes=read.whole(
                "CLIENT_MAX_UNREAD_BYTES", default.client_max_unread_bytes, 1
            ),
            client_header_seconds=read.number(
                "CLIENT_HEADER_SECONDS", default.client_header_seconds, above=0
            ),
            worker_recycle_mib=read.whole("WORKER_RECYCLE_MIB", default.worker_recycle_mib, 0),
            admission_images=read.whole("ADMISSION_IMAGES", default.admission_images, 1),
            admission_wait_seconds=read.number(
                "ADMISSION_WAIT_SECONDS", default.admission_wait_seconds
            ),
            admission_client_share=read.number(
                "ADMISSION_CLIENT_SHARE", default.admission_client_share, 0, 1, above=0
            ),
            admission_bytes_per_image=read.whole(
                "ADMISSION_BYTES_PER_IMAGE", default.admission_bytes_per_image, 1
            ),
            coalesce_window_ms=read.number(
                "COALESCE_WINDOW_MS", default.coalesce_window_ms, 0, 1000
            ),
            log_level=read.choice("LOG_LEVEL", default.log_level, LOG_LEVELS, upper=True),
            trace_project=read.text("GOOGLE_CLOUD_PROJECT", "", PROJECT_PATTERN, PROJECT_RULE)
            or None,
            verdict_policy=_verdict_policy(read),
            cassandra=read_cassandra(read) if store == "cassandra" else None,
            **_access(read),
        )
        if settings.canary_percent > 0 and settings.canary_label == model_label:
            read.problem(
                f"CANARY_LABEL and MODEL_LABEL are both {model_label!r}: give the canary its own"
            )
        read.check()
        return settings


def _verdict_policy(read: Reader) -> VerdictPolicy:
    """VERDICT_<FIELD> for each threshold: shares in [0, 1], except the aspect ratio."""
    values: dict[str, object] = {}
    for threshold in fields(VerdictPolicy):
        name = f"VERDICT_{threshold.name.upper()}"
        if threshold.name == "min_confidence_by_version":
            values[threshold.name] = _per_version(read, name, threshold.default_factory())
        elif threshold.name == "max_aspect":
            values[threshold.name] = read.number(name, threshold.default, above=0)
        else:
            values[threshold.name] = read.number(name, threshold.default, 0, 1)
    return VerdictPolicy(**values)


def _per_version(read: Reader, name: str, default: Mapping[int, float]) -> Mapping[int, float]:
    """`VERSION=SHARE,...`, e.g. `3=0.6,5=0.5`; a blank value keeps the default."""
    raw = read.raw(name)
    if raw is None:
        return default
    shares: dict[int, float] = {}
    for item in raw.split(","):
        version, equals, share = (part.strip() for part in item.partition("="))
        number = _share(share)
        if not (equals and version.isdigit() and int(version) >= 1 and number is not None):
            read.problem(
                f"{name} must be VERSION=SHARE pairs separated by commas, each version a whole "
                f"number of at least 1 and each share from 0 to 1 (e.g. 3=0.6), not {raw!r}"
            )
            return default
        if int(version) in shares:
            read.problem(f"{name} names version {int(version)} twice")
        shares[int(version)] = number
    return MappingProxyType(shares)


def _share(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if 0 <= number <= 1 else None


def _access(read: Reader) -> dict[str, object]:
    """API_TOKEN, PREDICT_REQUIRES_TOKEN, PIN_REQUIRES_TOKEN, CORRECTIONS_PER_*,
    CORS_ALLOWED_ORIGINS and FEEDBACK_SECRET."""
    token = read.secret("API_TOKEN")
    if token is not None and (token != token.strip() or not token.isprintable()):
        read.problem("API_TOKEN must not have spaces around it or control characters in it")
    predict_requires_token = read.flag("PREDICT_REQUIRES_TOKEN", default=False)
    if predict_requires_token and token is None:
        read.problem("PREDICT_REQUIRES_TOKEN is true but API_TOKEN is unset: set API_TOKEN")
    pin_requires_token = read.flag("PIN_REQUIRES_TOKEN", default=token is not None)
    if pin_requires_token and token is None:
        read.problem("PIN_REQUIRES_TOKEN is true but API_TOKEN is unset: set API_TOKEN")
    origins = frozenset(
        origin.strip().rstrip("/")
        for origin in (read.raw("CORS_ALLOWED_ORIGINS") or "").split(",")
        if origin.strip()
    )
    for origin in sorted(origins - {"*"}):
        if not ORIGIN_PATTERN.fullmatch(origin):
            read.problem(
                "CORS_ALLOWED_ORIGINS must be '*' or comma-separated origins like "
                f"https://example.com:8443, not {origin[:80]!r}"
            )
    secret = read.secret("FEEDBACK_SECRET")
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        read.problem(
            f"FEEDBACK_SECRET must be at least {MIN_SECRET_BYTES} bytes (e.g. 64 random hex "
            "digits: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    previous = tuple(
        key.strip().encode() for key in (read.secret("FEEDBACK_SECRET_PREVIOUS") or "").split(",")
    )
    previous = tuple(key for key in previous if key)
    if previous and secret is None:
        read.problem("FEEDBACK_SECRET_PREVIOUS is set but FEEDBACK_SECRET is unset")
    elif any(len(key) < MIN_SECRET_BYTES for key in previous):
        read.problem(
            f"FEEDBACK_SECRET_PREVIOUS must be comma-separated keys of at least "
            f"{MIN_SECRET_BYTES} bytes each (the FEEDBACK_SECRET values being rotated out)"
        )
    return {
        "api_token": token,
        "feedback_secret": None if secret is None else secret.encode(),
        "feedback_previous_secrets": previous,
        "predict_requires_token": predict_requires_token,
        "pin_requires_token": pin_requires_token,
        "corrections_per_client_per_hour": read.whole(
            "CORRECTIONS_PER_CLIENT_PER_HOUR", Settings.corrections_per_client_per_hour, 0
        ),
        "corrections_per_record_per_hour": read.whole(
            "CORRECTIONS_PER_RECORD_PER_HOUR", Settings.corrections_per_record_per_hour, 0
        ),
        "uploads_per_client_per_hour": read.whole(
            "UPLOADS_PER_CLIENT_PER_HOUR", Settings.uploads_per_client_per_hour, 0
        ),
        "cors_allowed_origins": origins,
    }


def read_cassandra(read: Reader) -> CassandraSettings:
    """CASSANDRA_*: the prediction store's connection, checked like every other setting."""
    default = CassandraSettings(contact_points=())
    port = read.whole("CASSANDRA_PORT", default.port, 1, 65535)
    points = read.required("CASSANDRA_CONTACT_POINTS", "comma-separated host[:port]")
    username = read.raw("CASSANDRA_USERNAME")
    password = read.secret("CASSANDRA_PASSWORD")
    if (username is None) != (password is None):
        read.problem("set CASSANDRA_USERNAME and CASSANDRA_PASSWORD together")
    ca_file = read.path("CASSANDRA_SSL_CA_FILE", None, must_exist=True)
    protocol = read.whole(
        "CASSANDRA_PROTOCOL_VERSION", default.protocol_version, *PROTOCOL_VERSIONS
    )
    return CassandraSettings(
        contact_points=_contact_points(read, points, port) if points else (),
        port=port,
        keyspace=read.text(
            "CASSANDRA_KEYSPACE",
            default.keyspace,
            KEYSPACE_PATTERN,
            "a letter, then letters, digits and _ (at most 48)",
        ),
        local_dc=read.text(
            "CASSANDRA_LOCAL_DC", default.local_dc, DC_PATTERN, "a name without spaces or commas"
        ),
        consistency=read.choice(
            "CASSANDRA_CONSISTENCY", default.consistency, CONSISTENCY_LEVELS, upper=True
        ),
        username=username,
        password=password,
        ssl_ca_file=None if ca_file is None else str(ca_file),
        ssl_verify_hostname=read.flag("CASSANDRA_SSL_VERIFY_HOSTNAME", default.ssl_verify_hostname),
        protocol_version=protocol,
        request_timeout=read.number(
            "CASSANDRA_REQUEST_TIMEOUT_SECONDS", default.request_timeout, high=3600, above=0
        ),
        connect_timeout=read.number(
            "CASSANDRA_CONNECT_TIMEOUT_SECONDS", default.connect_timeout, high=3600, above=0
        ),
        lookback_days=read.whole("CASSANDRA_RECENT_LOOKBACK_DAYS", default.lookback_days, 1, 366),
    )


def _contact_points(read: Reader, raw: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """'a, b:9043, [::1]:9044' -> (('a', 9042), ('b', 9043), ('::1', 9044))."""
    points = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            read.problem(f"CASSANDRA_CONTACT_POINTS={raw!r} has an empty entry")
            continue
        host, port = item, None
        if item.startswith("["):  # [ipv6] or [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest or None
        elif item.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
            host, port = item.split(":")
        if not host or any(c.isspace() for c in host):
            read.problem(f"CASSANDRA_CONTACT_POINTS entry {item!r} has no valid host")
        elif port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            read.problem(f"CASSANDRA_CONTACT_POINTS entry {item!r}: port must be 1 to 65535")
        else:
            points.append((host, default_port if port is None else int(port)))
    return tuple(points)
