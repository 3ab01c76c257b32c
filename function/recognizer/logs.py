"""Every log line as one JSON object, tied to the request it belongs to.

Cloud Logging (and most collectors) read a JSON line as a structured entry: `severity`
and `message` are its own, `logging.googleapis.com/trace` and `.../spanId` group the
lines of one request under its trace, the rest are fields. So the function and the
development model server put one formatter on the root logger: an exception is one entry
with its stack in `stack_trace` (not a dozen lines of text), and a line written while a
request is handled carries that request's id and trace. JSON escapes every control
character, so nothing a client sends (a path with %0A or ESC) can forge or colour a line.

The request's context lives in a contextvar set by `request_context` for the handling
thread; `outgoing_headers` is what the function forwards to the model server, so the
model server's lines carry the same id and trace.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; all-zero ids invalid.
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Google's older header: TRACE_ID/SPAN_ID;o=OPTIONS, the span id in decimal.
CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([01]))?")
_SEVERITY = {"WARNING": "WARNING", "CRITICAL": "CRITICAL", "ERROR": "ERROR", "INFO": "INFO"}


@dataclass(frozen=True)
class Trace:
    """One request's place in a distributed trace."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the caller's span, our parent
    sampled: bool


@dataclass(frozen=True)
class Context:
    request_id: str
    trace: Trace | None


_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "recognizer_request", default=None
)


def parse_trace(headers: Mapping[str, str]) -> Trace | None:
    """The trace from `traceparent` (W3C), else `X-Cloud-Trace-Context`; None if neither
    is present and well formed (a malformed one is ignored, never echoed)."""
    traceparent = (headers.get("traceparent") or "").strip()
    match = TRACEPARENT.fullmatch(traceparent)
    if match and match[1] != "ff" and set(match[2]) != {"0"} and set(match[3]) != {"0"}:
        return Trace(match[2], match[3], int(match[4], 16) & 1 == 1)
    cloud = (headers.get("X-Cloud-Trace-Context") or "").strip()
    match = CLOUD_TRACE.fullmatch(cloud)
    if match and set(match[1]) != {"0"}:
        span = int(match[2] or 0)
        span_id = f"{span:016x}" if 0 < span < 2**64 else secrets.token_hex(8)
        return Trace(match[1].lower(), span_id, match[3] == "1")
    return None


@contextmanager
def request_context(request_id_: str, trace: Trace | None) -> Iterator[Context]:
    """The lines logged inside carry this request's id and trace."""
    context = Context(request_id_, trace)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def outgoing_headers() -> dict[str, str]:
    """What a call made for the current request forwards: its id, and its trace as a
    `traceparent` (the same trace, a new span id for the call); empty outside a request."""
    context = _current.get()
    if context is None:
        return {}
    headers = {"X-Request-Id": context.request_id}
    if context.trace is not None:
        flags = "01" if context.trace.sampled else "00"
        span = secrets.token_hex(8)
        headers["traceparent"] = f"00-{context.trace.trace_id}-{span}-{flags}"
    return headers


def correlation(project: str | None = None) -> dict[str, object]:
    """The current request's fields for a log entry (empty outside a request)."""
    context = _current.get()
    if context is None:
        return {}
    fields: dict[str, object] = {"request_id": context.request_id}
    if context.trace is not None:
        trace = context.trace.trace_id
        fields[TRACE_FIELD] = f"projects/{project}/traces/{trace}" if project else trace
        fields[SPAN_FIELD] = context.trace.span_id
        fields[SAMPLED_FIELD] = context.trace.sampled
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (control characters escaped by JSON)."""

    def __init__(self, component: str, project: str | None = None) -> None:
        super().__init__()
        self.component = component
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "severity": _SEVERITY.get(record.levelname, "DEBUG"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
            "component": self.component,
            **correlation(self.project),
        }
        if record.exc_info:
            entry["stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.stack_info:
            entry["stack_trace"] = record.stack_info
        return dumps(entry)


def dumps(entry: Mapping[str, object]) -> str:
    """The one spelling of a line: compact, ASCII only (so no byte can break it)."""
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=True, default=str)


def configure(
    component: str,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    *,
    project: str | None = None,
) -> None:
    """Put the JSON formatter on the root logger at `level`, in place of one put there
    before; `project` names traces as Cloud Logging links them (projects/PROJECT/traces/ID),
    None logs the bare trace id. Without `stream`, sys.stdout as it is at each line."""
    handler = logging.StreamHandler(stream) if stream is not None else _StdoutHandler()
    handler.setFormatter(JsonFormatter(component, project))
    root = logging.getLogger()
    for old in list(root.handlers):  # others' (a test's log capture) stay
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class _StdoutHandler(logging.StreamHandler):
    """sys.stdout looked up on every line: functions-framework may replace it, and a test
    may capture it (as request_log.emit does)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass
