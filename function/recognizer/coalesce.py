"""Requests in flight in one worker that reach the same step together share one call.

A model call and a durable write cost mostly the same whatever they carry (an HTTP round
trip, a JSON frame; a transaction and its fsync), so the requests of one worker that are
ready at about the same time go as one: the first to arrive leads, takes every member
waiting with the same key, runs the shared call once, and hands each member its own part
of the result, or the shared failure. Members that arrive while a call runs wait for it
to end and go together in the next one (as a group commit does), so batches grow with
load and need no timer. The leader waits up to `window_seconds` for more only while
other requests that will take this step are still on their way (`expect`); alone, it
does not wait at all. A window of 0 turns coalescing off: every call is its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Member(Generic[T, R]):
    item: T
    size: int
    done: bool = False
    lead: bool = False  # promoted: it runs the next call for the members left waiting
    result: R | None = None
    error: BaseException | None = None


@dataclass
class _Group(Generic[T, R]):
    waiting: list[_Member[T, R]] = field(default_factory=list)
    leading: bool = False  # a member is collecting or running a call for this key


class Coalescer(Generic[K, T, R]):
    """Runs `run(key, items)` once for the items submitted together under `key`.

    `run` returns one result per item, in order; what it raises, every member raises.
    A call carries at most `max_size` (by `size` of each item; a bigger item goes alone).
    """

    def __init__(
        self,
        run: Callable[[K, Sequence[T]], Sequence[R]],
        window_seconds: float,
        max_size: int,
        size: Callable[[T], int] = lambda item: 1,
    ) -> None:
        self._run = run
        self._window = window_seconds
        self._max_size = max_size
        self._size = size
        self._changed = threading.Condition()
        self._groups: dict[K, _Group[T, R]] = {}
        self._coming: dict[K, int] = {}  # requests on their way to submit under each key
        self._expected = threading.local()  # the keys this thread is counted as coming to
        self.calls = 0  # calls made, and times a leader waited for more: what tests count
        self.waits = 0

    @contextmanager
    def expect(self, key: K) -> Iterator[None]:
        """Around a request that may `submit` under `key`: a leader may wait for it."""
        if self._window <= 0:
            yield
            return
        expected = self._expected.__dict__.setdefault("keys", set())
        if key in expected:  # already counted
            yield
            return
        with self._changed:
            self._coming[key] = self._coming.get(key, 0) + 1
            expected.add(key)
        try:
            yield
        finally:
            with self._changed:
                self._arrived(key)

    def leave(self, key: K) -> None:
        """This thread will not submit under `key` itself after all: none need wait for it."""
        with self._changed:
            self._arrived(key)

    def submit(self, key: K, item: T) -> R:
        """`item`'s result from a call shared with the others ready under `key`."""
        if self._window <= 0:
            with self._changed:
                self.calls += 1
            return self._run(key, [item])[0]
        member: _Member[T, R] = _Member(item, self._size(item))
        with self._changed:
            group = self._groups.setdefault(key, _Group())
            group.waiting.append(member)
            self._arrived(key)
            if group.leading:
                while not (member.done or member.lead):
                    self._changed.wait()
                if member.done:
                    return _outcome(member)
            group.leading = True
            batch = self._collect(key, group)
        self._call(key, batch)
        with self._changed:
            if group.waiting:
                group.waiting[0].lead = True  # arrived during the call: it leads the next
            else:
                group.leading = False
                del self._groups[key]
            self._changed.notify_all()
        return _outcome(member)

    def _collect(self, key: K, group: _Group[T, R]) -> list[_Member[T, R]]:
        """The members of the next call; called with the lock held, by the leader."""
        deadline = time.monotonic() + self._window
        while self._coming.get(key, 0) > 0 and sum(m.size for m in group.waiting) < self._max_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.waits += 1
            self._changed.wait(left)
        count = self._fits(group.waiting)
        batch, group.waiting[:] = group.waiting[:count], group.waiting[count:]
        return batch

    def _fits(self, members: Sequence[_Member[T, R]]) -> int:
        """How many of the first `members` one call can carry (at least one)."""
        total = 0
        for count, member in enumerate(members):
            total += member.size
            if total > self._max_size:
                return max(count, 1)
        return len(members)

    def _call(self, key: K, batch: list[_Member[T, R]]) -> None:
        """Run the shared call outside the lock; each member gets its part or the failure."""
        with self._changed:
            self.calls += 1
        try:
            results = self._run(key, [member.item for member in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
        except BaseException as error:  # every member fails as the call did
            for member in batch:
                member.error = error
        else:
            for member, result in zip(batch, results, strict=True):
                member.result = result
        with self._changed:
            for member in batch:
                member.done = True
            self._changed.notify_all()

    def _arrived(self, key: K) -> None:
        """This thread is no longer on its way under `key` (it submitted, or left without);
        called with the lock held."""
        expected = self._expected.__dict__.get("keys", ())
        if key not in expected:
            return
        expected.discard(key)
        coming = self._coming.get(key, 0)
        if coming <= 1:
            self._coming.pop(key, None)
        else:
            self._coming[key] = coming - 1
        self._changed.notify_all()


def _outcome(member: _Member[T, R]) -> R:
    if member.error is not None:
        raise member.error
    return member.result  # type: ignore[return-value]
