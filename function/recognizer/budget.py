"""The decoded-memory budget of one worker process, shared by all its request threads.

A request reserves what decoding its image will take at the peak (preprocess.decode_cost,
from the header) before decoding it, and gives it back after. What concurrent requests
may hold at once is bounded by the budget, so no mix of requests can take a worker past
its memory: an image that alone exceeds it is refused (413), and one that does not fit
beside the others waits briefly, then gets 503 with Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MiB = 1024 * 1024
WAIT_SECONDS = 0.5  # how long a request waits for room before it is told to come back


class DecodeBusy(Exception):
    """Decoding this image now would take the process over its memory budget."""


class DecodeBudget:
    def __init__(self, total_bytes: int, wait_seconds: float = WAIT_SECONDS) -> None:
        self.total_bytes = total_bytes
        self._wait = wait_seconds
        self._held = 0
        self._room = threading.Condition()

    @property
    def held_bytes(self) -> int:
        with self._room:
            return self._held

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Reserve `nbytes` for the block; the caller has checked they fit in the total."""
        nbytes = min(nbytes, self.total_bytes)
        deadline = time.monotonic() + self._wait
        with self._room:
            while self._held + nbytes > self.total_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DecodeBusy(
                        f"the server is decoding other images and has no room for this one "
                        f"({nbytes / MiB:,.0f} MiB) within its memory budget: try again shortly"
                    )
                self._room.wait(left)
            self._held += nbytes
        try:
            yield
        finally:
            with self._room:
                self._held -= nbytes
                self._room.notify_all()
