"""Time and backlog budgets on the client's connection, which Flask does not see.

The demo and Cloud Run serve gunicorn's threads with no proxy in front: a thread blocked
writing an answer nobody reads, or reading a body that never comes, is a thread the other
clients cannot have. gunicorn hands the application its socket (`gunicorn.socket`); other
servers (Werkzeug's, the test client) do not, and nothing is done there.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import termios
from collections.abc import Mapping


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


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue the peer has not taken (Linux's TIOCOUTQ)."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), "little")
    except OSError:
        return 0
