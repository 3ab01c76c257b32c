"""What one worker process may work on at once, shared by all its request threads.

Two rooms of the same kind. The decoded-memory budget: a request reserves what decoding
its image will take at the peak (preprocess.decode_cost, from the header) before decoding
it, and what reading its body will take before a byte is read; an image that alone exceeds
it is refused (413), and one that does not fit beside the others waits briefly, then gets
503 with Retry-After. The admission queue: how many images the worker works on at once,
so under a flood the requests beyond what it can do are refused quickly (503,
Retry-After) instead of every request, and the model server's queue, slowing down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

MiB = 1024 * 1024
WAIT_SECONDS = 0.5  # how long a request waits for room before it is told to come back


class DecodeBusy(Exception):
    """Decoding this image now would take the process over its memory budget."""


class Busy(Exception):
    """The worker's admission queue is full: come back after Retry-After."""


class _Room:
    """`total` units; holders wait up to `wait_seconds` for theirs, then are refused."""

    def __init__(self, total: int, wait_seconds: float) -> None:
        self._total = total
        self._wait = wait_seconds
        self._held = 0
        self._room = threading.Condition()

    @contextmanager
    def _hold(self, units: int, refusal: Callable[[int], Exception]) -> Iterator[None]:
        units = min(units, self._total)
        deadline = time.monotonic() + self._wait
        with self._room:
            while self._held + units > self._total:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise refusal(units)
                self._room.wait(left)
            self._held += units
        try:
            yield
        finally:
            with self._room:
                self._held -= units
                self._room.notify_all()


class DecodeBudget(_Room):
    def __init__(self, total_bytes: int, wait_seconds: float = WAIT_SECONDS) -> None:
        super().__init__(total_bytes, wait_seconds)
        self.total_bytes = total_bytes

    @property
    def held_bytes(self) -> int:
        with self._room:
            return self._held

    def hold(self, nbytes: int) -> AbstractContextManager[None]:
        """Reserve `nbytes` for the block; the caller has checked they fit in the total."""
        return self._hold(
            nbytes,
            lambda units: DecodeBusy(
                f"the server is decoding other images and has no room for this one "
                f"({units / MiB:,.0f} MiB) within its memory budget: try again shortly"
            ),
        )


class Admission(_Room):
    """At most `images` images in progress in this process; a request waits for its room
    at most `wait_seconds`. Counted in images, so one 64-image batch cannot take the room
    of many normal clients' one each."""

    def admit(self, images: int) -> AbstractContextManager[None]:
        return self._hold(
            images,
            lambda units: Busy(
                f"the server is working on as many images as it takes at once ({self._total}):"
                " try again after Retry-After"
            ),
        )
