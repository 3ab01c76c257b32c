"""Corrections per client and per record, counted in a sliding window, in this process.

A correction is evidence for the canary analysis and for training: one client must not
be able to send thousands (the issue's 1,548 on one record in 6 s). Each key (a client,
a record) may act `limit` times in any `window_seconds`; the next is refused with how long
to wait. The counts live in the process: N instances (or gunicorn workers) let a client
N times as many, which bounds a flood but is no exact quota; the API token is not
limited (an operator correcting in bulk).
"""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_KEYS = 100_000  # past it the oldest keys are forgotten: memory stays bounded


class RateLimited(Exception):
    """Too many corrections; `retry_after` says in how many seconds one is allowed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SlidingWindow:
    """At most `limit` events per key in any `window_seconds`; limit 0 means no limit."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self._limit = limit
        self._window = window_seconds
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, key: str, now: float | None = None) -> float:
        """0 if `key` may act now, else how long until it may."""
        if self._limit == 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.get(key)
            if events is None:
                return 0.0
            while events and events[0] <= now - self._window:
                events.popleft()
            if len(events) < self._limit:
                return 0.0
            return events[0] + self._window - now

    def record(self, key: str, now: float | None = None) -> None:
        if self._limit == 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.pop(key, None) or deque()
            events.append(now)
            self._events[key] = events  # re-inserted: the dict's order is least recent first
            while len(self._events) > MAX_KEYS:
                del self._events[next(iter(self._events))]


class CorrectionLimits:
    """CORRECTIONS_PER_CLIENT_PER_HOUR and CORRECTIONS_PER_RECORD_PER_HOUR."""

    def __init__(self, per_client: int, per_record: int, window_seconds: float = 3600.0) -> None:
        self._clients = SlidingWindow(per_client, window_seconds)
        self._records = SlidingWindow(per_record, window_seconds)

    def admit(self, client: str, record: str) -> None:
        """Count one correction, or raise RateLimited (and count nothing)."""
        now = time.monotonic()
        for window, key, whose in (
            (self._clients, client, "from this client"),
            (self._records, record, "of this prediction"),
        ):
            wait = window.wait_seconds(key, now)
            if wait > 0:
                raise RateLimited(f"too many corrections {whose}; try again in {wait:.0f} s", wait)
        self._clients.record(client, now)
        self._records.record(record, now)


class TooManyUploads(RateLimited):
    """Too many records from this client in the window (UPLOADS_PER_CLIENT_PER_HOUR)."""


class UploadLimit:
    """UPLOADS_PER_CLIENT_PER_HOUR: the records one client may create in an hour, per
    process (each image of a batch is one). What a client may store is bounded with it:
    at most this many uploads of UPLOAD_STORE_MAX_BYTES each."""

    def __init__(self, per_client: int, window_seconds: float = 3600.0) -> None:
        self._window = SlidingWindow(per_client, window_seconds)

    def admit(self, client: str, images: int) -> None:
        """Count `images` records, or raise TooManyUploads (and count nothing)."""
        now = time.monotonic()
        wait = self._window.wait_seconds(client, now)
        if wait > 0:
            raise TooManyUploads(
                f"too many predictions from this client this hour; try again in {wait:.0f} s",
                wait,
            )
        for _ in range(images):
            self._window.record(client, now)
