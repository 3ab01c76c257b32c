"""Settings, read once from the environment (every variable is documented in the README)."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from recognizer.feedback import MIN_SECRET_BYTES
from recognizer.verdict import VerdictPolicy

MiB = 1024 * 1024
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what TF Serving and our URLs accept
ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s]+")  # scheme://host[:port], no path
DECODE_SHARE = 4  # a quarter of the memory for decoding: the rest is the runtime, bodies, slack
FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Settings:
    model_server_url: str = "http://localhost:8501"
    model_name: str = "mnist"
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
    # The instance's memory. Each worker process may hold a quarter of it, over its
    # worker count, in images being decoded (docs/reliability.md): 128 MiB at 512 MiB.
    memory_limit_mib: int = 512
    workers: int = 1  # functions-framework's WORKERS: the processes that share the memory
    decode_cpu_seconds: float = 1.0  # CPU time for one request's decoding and preprocessing
    # repr=False: a Settings printed in a log or a traceback must not carry the secret.
    api_token: str | None = field(default=None, repr=False)
    predict_requires_token: bool = False
    # The key of the feedback tokens (feedback.py); every instance must have the same one.
    feedback_secret: bytes | None = field(default=None, repr=False)
    cors_allowed_origins: frozenset[str] = frozenset()  # "*" allows every origin
    verdict_policy: VerdictPolicy = field(default_factory=VerdictPolicy)  # VERDICT_*

    @property
    def decode_budget_bytes(self) -> int:
        """What one worker process may hold at once in images being decoded."""
        return self.memory_limit_mib * MiB // DECODE_SHARE // self.workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Build settings from `env`; a malformed value is a startup error naming the variable."""
        default = cls()
        store = env.get("PREDICTION_STORE") or (
            "cassandra" if env.get("CASSANDRA_CONTACT_POINTS") else "sqlite"
        )
        if store not in {"sqlite", "cassandra"}:
            raise ValueError(f"PREDICTION_STORE must be 'sqlite' or 'cassandra', not {store!r}")
        model_label = env.get("MODEL_LABEL", default.model_label)
        canary_label, canary_percent = _canary(env, model_label, default)
        return cls(
            model_server_url=env.get("MODEL_SERVER_URL", default.model_server_url).rstrip("/"),
            model_name=env.get("MODEL_NAME", default.model_name),
            model_label=model_label,
            canary_label=canary_label,
            canary_percent=canary_percent,
            model_timeout_seconds=_number(
                env, "MODEL_SERVER_TIMEOUT_SECONDS", default.model_timeout_seconds
            ),
            model_retries=int(_number(env, "MODEL_SERVER_RETRIES", default.model_retries)),
            model_retry_backoff_seconds=_number(
                env, "MODEL_SERVER_RETRY_BACKOFF_SECONDS", default.model_retry_backoff_seconds
            ),
            label_cache_seconds=_number(
                env, "MODEL_LABEL_CACHE_SECONDS", default.label_cache_seconds
            ),
            prediction_store=store,
            sqlite_path=Path(env.get("SQLITE_PATH", str(default.sqlite_path))),
            max_request_bytes=_limit(env, "MAX_REQUEST_BYTES", default.max_request_bytes),
            max_image_pixels=_limit(env, "MAX_IMAGE_PIXELS", default.max_image_pixels),
            max_request_pixels=_limit(env, "MAX_REQUEST_PIXELS", default.max_request_pixels),
            max_batch_images=_limit(env, "MAX_BATCH_IMAGES", default.max_batch_images),
            upload_store_max_bytes=int(
                _number(env, "UPLOAD_STORE_MAX_BYTES", default.upload_store_max_bytes)
            ),
            history_max_limit=_limit(env, "HISTORY_MAX_LIMIT", default.history_max_limit),
            memory_limit_mib=_memory_limit(env, default.memory_limit_mib),
            workers=_limit(env, "WORKERS", default.workers),
            decode_cpu_seconds=_positive(env, "DECODE_CPU_SECONDS", default.decode_cpu_seconds),
            verdict_policy=_verdict_policy(env),
            **_access(env),
        )


def _canary(env: Mapping[str, str], model_label: str, default: Settings) -> tuple[str, float]:
    """CANARY_LABEL and CANARY_PERCENT, checked against each other and MODEL_LABEL."""
    label = env.get("CANARY_LABEL") or default.canary_label
    percent = _number(env, "CANARY_PERCENT", default.canary_percent)
    if not 0 <= percent <= 100:  # also refuses nan
        raise ValueError(f"CANARY_PERCENT must be between 0 and 100, not {env['CANARY_PERCENT']!r}")
    if not LABEL_PATTERN.fullmatch(label):
        raise ValueError(f"CANARY_LABEL must be 1-64 letters, digits, '_' or '-', not {label!r}")
    if percent > 0 and label == model_label:
        raise ValueError(
            f"CANARY_LABEL and MODEL_LABEL are both {label!r}: give the canary its own"
        )
    return label, percent


def _verdict_policy(env: Mapping[str, str]) -> VerdictPolicy:
    """VERDICT_<FIELD> for each threshold: shares in [0, 1], except the aspect ratio."""
    values = {}
    for threshold in fields(VerdictPolicy):
        name = f"VERDICT_{threshold.name.upper()}"
        value = _number(env, name, threshold.default)
        if threshold.name == "max_aspect":
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number above 0, not {env[name]!r}")
        elif not 0 <= value <= 1:  # also refuses nan
            raise ValueError(f"{name} must be between 0 and 1, not {env[name]!r}")
        values[threshold.name] = value
    return VerdictPolicy(**values)


def _access(env: Mapping[str, str]) -> dict[str, object]:
    """API_TOKEN, PREDICT_REQUIRES_TOKEN, CORS_ALLOWED_ORIGINS and FEEDBACK_SECRET."""
    token = env.get("API_TOKEN") or None
    if token is not None and (token != token.strip() or not token.isprintable()):
        raise ValueError("API_TOKEN must not have spaces around it or control characters in it")
    predict_requires_token = _flag(env, "PREDICT_REQUIRES_TOKEN", default=False)
    if predict_requires_token and token is None:
        raise ValueError("PREDICT_REQUIRES_TOKEN is true but API_TOKEN is unset: set API_TOKEN")
    origins = frozenset(
        origin.strip().rstrip("/")
        for origin in env.get("CORS_ALLOWED_ORIGINS", "").split(",")
        if origin.strip()
    )
    for origin in origins - {"*"}:
        if not ORIGIN_PATTERN.fullmatch(origin):
            raise ValueError(
                "CORS_ALLOWED_ORIGINS must be '*' or comma-separated origins like "
                f"https://example.com:8443, not {origin[:80]!r}"
            )
    secret = env.get("FEEDBACK_SECRET") or None
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"FEEDBACK_SECRET must be at least {MIN_SECRET_BYTES} bytes (e.g. 64 random hex "
            "digits: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return {
        "api_token": token,
        "feedback_secret": None if secret is None else secret.encode(),
        "predict_requires_token": predict_requires_token,
        "cors_allowed_origins": origins,
    }


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return FLAGS[raw.strip().lower()]
    except KeyError:
        raise ValueError(f"{name} must be true or false, not {raw[:20]!r}") from None


def _memory_limit(env: Mapping[str, str], default: int) -> int:
    """MEMORY_LIMIT_MIB: at least 128 (below it no image of any use can be decoded)."""
    value = _limit(env, "MEMORY_LIMIT_MIB", default)
    if value < 128:
        raise ValueError(f"MEMORY_LIMIT_MIB must be at least 128, not {env['MEMORY_LIMIT_MIB']!r}")
    return value


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number above 0, not {env[name]!r}")
    return value


def _limit(env: Mapping[str, str], name: str, default: int) -> int:
    """A whole number of at least 1: a limit of 0 would refuse every request."""
    value = _number(env, name, default)
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise ValueError(f"{name} must be a whole number of at least 1, not {env[name]!r}")
    return int(value)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {raw!r}")
    return value
