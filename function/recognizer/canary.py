"""Which model answers a request: a pinned version or label, else canary or stable by client.

Unpinned traffic is split by a stable hash of a client key, not at random per request,
so one person keeps seeing one version while a rollout is under way, and raising the
canary share only adds clients to the canary (a client at bucket 7.3 is in at 8% and at
every larger share). SHA-256 rather than Python's `hash()`, which is salted per process:
every worker and every instance of the function must put a client in the same bucket.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_BUCKETS = 10_000  # shares resolve to 0.01 percentage points


@dataclass(frozen=True)
class Route:
    """A pinned version, else the version `label` points at; `fallback` answers if it cannot."""

    label: str
    version: int | None = None
    fallback: str | None = None  # only for the function's own canary choice, never for a pin


def client_key(client_id: str | None, remote_addr: str | None) -> str:
    """The key a client is bucketed by: its `X-Client-Id` when sent, else its address."""
    if client_id and client_id.strip():
        return f"id:{client_id.strip()}"
    return f"addr:{remote_addr or ''}"


def bucket(key: str) -> float:
    """Where `key` falls in [0, 100): the same on every process, host and Python version."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS * 100 / _BUCKETS


def unpinned(key: str, canary_percent: float, stable_label: str, canary_label: str) -> Route:
    """`canary_percent` of clients go to canary (stable if it cannot answer), the rest to stable."""
    if canary_percent > 0 and bucket(key) < canary_percent:
        return Route(label=canary_label, fallback=stable_label)
    return Route(label=stable_label)
