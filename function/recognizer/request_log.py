"""One JSON line on stdout per request: what function platforms collect from a process.

Cloud Logging (and most collectors) parse a JSON line, taking `severity` and `message`
from it and keeping the rest as structured fields. A line says which request it was,
who (as a hash), what it asked, how it ended and where its time went, and never anything
a client may have meant to keep: no image bytes, no base64, no tokens or Authorization,
no raw address or client id, no query values (only the parameter names).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from recognizer import logs

# A caller's X-Request-Id is kept only if it is a plain short token, so it cannot smuggle
# a payload or a secret-sized blob into the log; anything else gets a fresh id.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")
QUERY_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_QUERY_NAMES = 10
MAX_PATH_CHARS = 200
MAX_METHOD_CHARS = 16
CLIENT_HASH_CHARS = 16  # 64 bits: enough to tell clients apart, too short to be a lookup key

_write_lock = threading.Lock()


@dataclass
class Facts:
    """What handling one request learned for its log line and its metrics (metrics.py);
    endpoints fill in what applies."""

    endpoint: str = "unknown"  # the route that answered; "unknown" for a path of none
    images: int | None = None
    model: dict[str, object] | None = None  # version and label that answered
    timings_ms: Mapping[str, float] = field(default_factory=dict)  # Recognition.timings_ms
    replayed: bool | None = None
    verdicts: tuple[str, ...] = ()  # one per recorded prediction (metrics only)
    drift_bins: tuple[Mapping[str, str], ...] = ()  # drift.binned, one per prediction (metrics)


def request_id(header: str | None) -> str:
    """The caller's `X-Request-Id` when it is a sane short token, else a new random one."""
    if header is not None and REQUEST_ID_PATTERN.fullmatch(header):
        return header
    return uuid.uuid4().hex


def client_hash(client_key: str) -> str:
    """A short SHA-256 of the client key: requests of one client group, the key stays out."""
    return hashlib.sha256(client_key.encode("utf-8")).hexdigest()[:CLIENT_HASH_CHARS]


def severity(status: int) -> str:
    """Cloud Logging's severity for an HTTP status: a client's mistake warns, ours errs."""
    if status >= 500:
        return "ERROR"
    if status >= 400:
        return "WARNING"
    return "INFO"


def line(
    *,
    request_id: str,
    client: str,
    method: str,
    path: str,
    query_names: Iterable[str],
    status: int,
    outcome: str,
    total_ms: float,
    facts: Facts,
    correlation: Mapping[str, object] | None = None,
) -> str:
    """The JSON log line (no newline) for one answered request; `client` is the raw key,
    `correlation` the request's trace fields (logs.correlation), grouping it with the
    request's other lines. A path's control characters (%0A, %1b decoded) are escaped by
    JSON, so a client cannot start a line of its own or colour a terminal."""
    method = method[:MAX_METHOD_CHARS]
    path = path[:MAX_PATH_CHARS]
    entry: dict[str, object] = {
        "severity": severity(status),
        "message": f"{method} {path} {status}",
        "request_id": request_id,
        "client": client_hash(client),
        "method": method,
        "path": path,
        "status": status,
        "outcome": outcome,
        **(correlation or {}),
    }
    names = sorted({name for name in query_names if QUERY_NAME_PATTERN.fullmatch(name)})
    if names:
        entry["query"] = names[:MAX_QUERY_NAMES]
    if facts.images is not None:
        entry["images"] = facts.images
    if facts.model is not None:
        entry["model"] = facts.model
    entry["latency_ms"] = {
        "total": round(total_ms, 3),
        **{stage: round(ms, 3) for stage, ms in facts.timings_ms.items()},
    }
    if facts.replayed is not None:
        entry["replayed"] = facts.replayed
    return logs.dumps(entry)


def emit(log_line: str) -> None:
    """Write one line to stdout in one write, flushed: the platform's log pipe reads lines.

    sys.stdout is looked up on every call, not kept: functions-framework may replace it,
    and a test may capture it. The lock keeps threads' lines whole; a write of one short
    line to a pipe is atomic between gunicorn's worker processes too.
    """
    with _write_lock:
        sys.stdout.write(log_line + "\n")
        sys.stdout.flush()
