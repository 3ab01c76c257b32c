"""Time and backlog budgets on the client's connection, which Flask does not see.

The demo and Cloud Run serve gunicorn's threads with no proxy in front: a thread blocked
writing an answer nobody reads, or reading a body that never comes, is a thread the other
clients cannot have. gunicorn hands the application its socket (`gunicorn.socket`); other
servers (Werkzeug's, the test client) do not, and nothing is done there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import termios
import threading
import time
from collections.abc import Iterator, Mapping

WATCH_EVERY_SECONDS = 0.25


class ClientNotReading(Exception):
    """The client has left earlier answers on this connection unread: it is shut."""


def guard(environ: Mapping[str, object], timeout_seconds: float, max_unread_bytes: int) -> None:
    """Bound this request's socket reads and writes by `timeout_seconds` (sendall counts the
    whole answer), and shut a connection whose client has not read what it was sent.

    A client that pipelines requests and never reads the answers fills the socket's send
    queue; before it is full (and a thread blocks on it) the connection is shut, so the
    thread answers nothing and is free at once.
    """
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return
    sock.settimeout(timeout_seconds)
    unread = unsent_bytes(sock)
    if unread > max_unread_bytes:
        with contextlib.suppress(OSError):  # already gone
            sock.shutdown(socket.SHUT_RDWR)
        raise ClientNotReading(
            f"the client left {unread:,} bytes of earlier answers unread; connection closed"
        )


@contextlib.contextmanager
def deadline(environ: Mapping[str, object], seconds: float) -> Iterator[None]:
    """The connection is shut if the request is still being worked on (its body still
    being read, most likely: a client sending a byte every few seconds beats any per-read
    timeout) `seconds` after it began. The answer's write has its own timeout (guard)."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        yield
        return
    token = _WATCHDOG.watch(sock, time.monotonic() + seconds)
    try:
        yield
    finally:
        _WATCHDOG.release(token)


class _Watchdog:
    """One thread per worker process that shuts the sockets whose deadline has passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[object, tuple[float, socket.socket]] = {}
        self._pid = 0  # the process the thread runs in: gunicorn forks after import

    def watch(self, sock: socket.socket, at: float) -> object:
        token = object()
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="deadline-watchdog", daemon=True).start()
            self._watched[token] = (at, sock)
        return token

    def release(self, token: object) -> None:
        with self._lock:
            self._watched.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_EVERY_SECONDS)
            now = time.monotonic()
            with self._lock:
                late = [token for token, (at, _) in self._watched.items() if at <= now]
                socks = [self._watched.pop(token)[1] for token in late]
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue the peer has not taken (Linux's TIOCOUTQ)."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), "little")
    except OSError:
        return 0
