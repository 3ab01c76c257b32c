"""gunicorn's threaded worker, giving a request a thread only once its head is in, and
leaving gracefully once it holds too much memory. serve.py configures it.

gunicorn's gthread worker hands a connection to a thread as soon as a byte arrives, and
the thread then reads the request line and headers with no timeout, before the function
(and connection.py's budgets) ever runs: a client sending its headers a byte every few
seconds held a thread for as long as it liked, and eight of them held every thread. Here
the worker's own poller reads each head without a thread, up to its blank line; a head
not complete `head_seconds` after the connection was accepted (or, kept alive, became
readable again) is closed, so it holds no thread and a connection slot only that long.

Recycling, as gunicorn's max_requests but by memory: a worker whose resident memory after
a request is over `recycle_bytes` stops accepting, finishes what it has in progress (their
answers say Connection: close) and exits; the arbiter starts another. Connections made
meanwhile wait in the listening socket's backlog, so no request is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import time
from functools import partial

from gunicorn.workers import gthread

HEAD_END = b"\r\n\r\n"
BARE_HEAD_END = b"\n\n"  # not HTTP, but gunicorn's parser, not a deadline, should say so
# A head (request line and headers) is read without a thread, so its size is bounded
# here: 128 KiB lets the hostile corpus's 100 KB query strings reach the function, which
# judges them (functions-framework sets gunicorn's limit_request_line=0); a 1 MB URL is
# refused before it costs more than this per connection.
MAX_HEAD_BYTES = 128 * 1024
READ_BYTES = 16 * 1024
_TOO_LARGE_BODY = json.dumps(
    {
        "error": {
            "code": "request_head_too_large",
            "message": f"the request line and headers are over {MAX_HEAD_BYTES} bytes",
        }
    },
    separators=(",", ":"),
).encode()
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n\r\n" + _TOO_LARGE_BODY
)


def resident_bytes() -> int:
    """This process's resident memory (Linux's /proc/self/statm); 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _complete(head: bytearray) -> bool:
    return HEAD_END in head or BARE_HEAD_END in head


def configured(head_seconds: float, recycle_bytes: int) -> type[Worker]:
    """The worker class gunicorn is given (`worker_class`), with these budgets."""
    return type(
        "RecognizerWorker",
        (Worker,),
        {"head_seconds": head_seconds, "recycle_bytes": recycle_bytes, "__module__": __name__},
    )


class Worker(gthread.ThreadWorker):
    head_seconds: float = 10.0
    recycle_bytes: int = 0  # 0: never recycled

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Connections whose head is being read, oldest first, with their deadline.
        self._heads: dict[gthread.TConn, float] = {}

    def _reads_heads(self, conn: gthread.TConn) -> bool:
        """TLS and HTTP/2 with prior knowledge read the socket in their own way."""
        if self.cfg.is_ssl or conn.is_http2:
            return False
        return conn.parser is not None or not gthread.negotiation.prior_knowledge_allowed(
            self.cfg, conn.client
        )

    def enqueue_req(self, conn: gthread.TConn) -> None:
        """Main thread: a connection with a request to read. It gets a thread once the
        request's head is in; until then the poller reads it."""
        if getattr(conn, "head", None) is not None or not self._reads_heads(conn):
            super().enqueue_req(conn)
            return
        pending = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.head = bytearray(pending)
        if _complete(conn.head):
            super().enqueue_req(conn)
            return
        conn.sock.setblocking(False)
        self._heads[conn] = time.monotonic() + self.head_seconds
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: gthread.TConn, sock: socket.socket) -> None:
        try:
            data = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(conn)
            return
        conn.head += data
        if _complete(conn.head):
            self._unwatch(conn)
            conn.data_ready = True  # gthread would otherwise wait for more on the thread
            super().enqueue_req(conn)
        elif len(conn.head) > MAX_HEAD_BYTES:
            with contextlib.suppress(OSError):
                sock.send(HEAD_TOO_LARGE)
            self._drop(conn)

    def _unwatch(self, conn: gthread.TConn) -> None:
        del self._heads[conn]
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn: gthread.TConn) -> None:
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Main thread, every poll: also close the heads past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, at in self._heads.items() if at <= now]:
            self._drop(conn)

    def handle(self, conn: gthread.TConn) -> object:
        """A thread: the head the poller read goes back in front of the parser."""
        head = getattr(conn, "head", None)
        conn.head = None
        if head:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(head))
        return super().handle(conn)

    def handle_request(self, req: object, conn: gthread.TConn) -> bool:
        keepalive = super().handle_request(req, conn)
        if self.recycle_bytes and self.alive:
            resident = resident_bytes()
            if resident > self.recycle_bytes:
                self.log.warning(
                    "Recycling worker %s: %d MiB resident after a request, over %d MiB",
                    self.pid,
                    resident >> 20,
                    self.recycle_bytes >> 20,
                )
                self.handle_exit(None, None)  # as SIGTERM: graceful
        return keepalive
