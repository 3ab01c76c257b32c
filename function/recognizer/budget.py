"""What one worker process may work on at once, shared by all its request threads.

Two rooms of the same kind. The decoded-memory budget: a request reserves what decoding
its image will take at the peak (preprocess.decode_cost, from the header) before decoding
it, and what reading its body will take before a byte is read; an image that alone exceeds
it is refused (413), and one that does not fit beside the others waits briefly, then gets
503 with Retry-After. The admission queue: how many images the worker works on at once,
so under a flood the requests beyond what it can do are refused quickly (503,
Retry-After) instead of every request, and the model server's queue, slowing down; a body
counts in it by its size from before it is read, and one client may hold only a share.
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
    """`total` units; holders wait up to `wait_seconds` for theirs, then are refused. A key
    (a client) may hold at most `key_share` of the total at once."""

    def __init__(self, total: int, wait_seconds: float, key_share: float = 1.0) -> None:
        self._total = total
        self._wait = wait_seconds
        self._key_cap = max(1, int(total * key_share))
        self._held = 0
        self._by_key: dict[str, int] = {}
        self._room = threading.Condition()

    def _take(self, units: int, key: str, refusal: Callable[[int], Exception]) -> int:
        """Wait for `units` more for `key` (cut to what one key may hold); what was taken."""
        units = min(units, self._key_cap)
        deadline = time.monotonic() + self._wait
        with self._room:
            while (
                self._held + units > self._total or self._by_key.get(key, 0) + units > self._key_cap
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise refusal(units)
                self._room.wait(left)
            self._held += units
            self._by_key[key] = self._by_key.get(key, 0) + units
        return units

    def _give_back(self, units: int, key: str) -> None:
        with self._room:
            self._held -= units
            left = self._by_key.pop(key) - units
            if left:
                self._by_key[key] = left
            self._room.notify_all()

    @contextmanager
    def _hold(
        self, units: int, refusal: Callable[[int], Exception], key: str = ""
    ) -> Iterator[None]:
        taken = self._take(units, key, refusal)
        try:
            yield
        finally:
            self._give_back(taken, key)


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
    """At most `images` images in progress in this process, a request waiting for its room
    at most `wait_seconds`. Counted in images, so one 64-image batch cannot take the room
    of many normal clients' one each, and a body in images too, one per `bytes_per_image`
    of it: parsing and decoding a 10 MiB body costs CPU by its size, and a flood of them
    took every core from the one-image requests beside it. One client (params.client_key)
    holds at most `client_share` of the room, so its flood leaves room for the others."""

    def __init__(
        self,
        images: int,
        wait_seconds: float,
        client_share: float = 1.0,
        bytes_per_image: int = 256 * 1024,
    ) -> None:
        super().__init__(images, wait_seconds, client_share)
        self._bytes_per_image = bytes_per_image

    def body_images(self, nbytes: int) -> int:
        """What a body of `nbytes` costs in the queue: its size in images, at least one."""
        return max(1, -(-nbytes // self._bytes_per_image))

    @contextmanager
    def admit(self, images: int, client: str = "") -> Iterator[Callable[[int], None]]:
        """Room for `images` for the block, which may `grow` it (once a body's images are
        counted) to more; each wait is at most `wait_seconds`, then Busy."""
        held = self._take(images, client, self._refusal)

        def grow(to: int) -> None:
            nonlocal held
            to = min(to, self._key_cap)
            if to > held:
                held += self._take(to - held, client, self._refusal)

        try:
            yield grow
        finally:
            self._give_back(held, client)

    def _refusal(self, units: int) -> Busy:
        return Busy(
            f"the server is working on as many images as it takes at once ({self._total}),"
            f" or this client on its share of them ({self._key_cap}): try again after"
            " Retry-After"
        )
