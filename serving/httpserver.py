"""A threading HTTP/1.1 server with keep-alive that hands requests to a RestApi.

Headers and body leave in one write with Nagle off, so small JSON replies do not
wait on delayed ACKs. stop() can wake idle keep-alive connections and wait for
handler threads, so shutdown neither hangs nor cuts replies in flight.

Like TF Serving's net_http server (evhttp_request.cc), a body whose Content-Encoding
contains "gzip" is inflated before the API sees it (at most 100 MiB; one that does not
inflate is handed on empty), and protocol-level errors are libevent's HTML pages.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from recognizer import logs, request_log
from serving.rest import Response, RestApi, error_body, libevent_error

log = logging.getLogger(__name__)

# A body, and a gzip body once inflated, past MAX_BODY_BYTES is answered 413 before it is
# parsed. TF Serving's own cap on an inflated body is 100 MiB (ZLib::kMaxUncompressedBytes)
# and it has none on a plain one; parsed in Python, 100 MiB of JSON took 2 GB and 6 s.
# The function sends at most 64 images a request (~400 KB of JSON).
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_INFLATED_BYTES = 100 * 1024 * 1024  # ZLib::kMaxUncompressedBytes
# Connections held at once, each a thread: past it, the longest-idle kept-alive one is
# closed to make room (an idle connection waiting for its next request costs a thread).
MAX_CONNECTIONS = 256
IDLE_SECONDS = 60  # an idle keep-alive connection is closed after this


class InflatedTooLarge(ValueError):
    """A gzip body says it inflates past MAX_BODY_BYTES."""


def inflate_gzip(body: bytes) -> bytes:
    """UncompressGzipAndAllocate: trust the trailer's length up to the limit; b"" on failure.
    Past MAX_BODY_BYTES (below TF Serving's 100 MiB) nothing is inflated: InflatedTooLarge."""
    expected = int.from_bytes(body[-4:], "little") if len(body) > 4 else 0
    if expected > MAX_INFLATED_BYTES:
        return b""
    if expected > MAX_BODY_BYTES:
        raise InflatedTooLarge(expected)
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = inflater.decompress(body, expected + 1)
    except zlib.error:
        return b""
    if len(data) != expected or not inflater.eof:
        return b""
    return data


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; the server's RestApi does the work."""

    protocol_version = "HTTP/1.1"
    server_version = "DevModelServer"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one write
    timeout = IDLE_SECONDS  # seconds an idle keep-alive connection may stay open
    server: HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def handle_one_request(self) -> None:
        # Idle until the next request's first byte: the server may close the connection
        # meanwhile to make room for another (HttpServer._make_room).
        self.server.idle(self.connection, waiting=True)
        try:
            self.rfile.peek(1)
        except OSError:  # the idle timeout, or shut by _make_room
            self.close_connection = True
            return
        finally:
            self.server.idle(self.connection, waiting=False)
        super().handle_one_request()

    def _dispatch(self) -> None:
        # What the function forwards (its request id, the trace) rides on every line
        # logged while this request is handled, as on the function's own (logs.py).
        request_id = request_log.request_id(self.headers.get("X-Request-Id"))
        with logs.request_context(request_id, logs.parse_trace(self.headers)):
            self._answer()

    def _answer(self) -> None:
        body = self._read_body()
        if body is None:
            return
        if body and "gzip" in self.headers.get("Content-Encoding", ""):
            try:
                body = inflate_gzip(body)
            except InflatedTooLarge:
                self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")
                return
        response = self.server.api.handle(self.command, self.path, body, self.headers)
        self._send(response)

    def handle_expect_100(self) -> bool:
        # "100 Continue" must leave now, not sit in the write buffer until the reply.
        super().handle_expect_100()
        self.wfile.flush()
        return True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._fail(HTTPStatus.BAD_REQUEST, "Invalid Content-Length")
            return None
        if length > MAX_BODY_BYTES:
            self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _read_chunked(self) -> bytes | None:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self._fail(HTTPStatus.BAD_REQUEST, "Malformed chunked request body")
                return None
            total += size
            if total > MAX_BODY_BYTES:
                self._fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request body too large")
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _fail(self, status: int, message: str) -> None:
        self.close_connection = True
        self._send(Response(status, error_body(message), headers=(("Connection", "close"),)))

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers:
            self.send_header(key, value)
            if key == "Connection" and value == "close":
                self.close_connection = True
        if self.server.stopping and not self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unknown method): libevent's page."""
        self.close_connection = True
        try:
            response = libevent_error(code)
        except ValueError:
            response = libevent_error(HTTPStatus.BAD_REQUEST)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class HttpServer(ThreadingHTTPServer):
    """A threading HTTP server that can close idle keep-alive connections on stop."""

    daemon_threads = True

    def __init__(self, host: str, port: int, api: RestApi) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.api = api
        self.stopping = False
        self._connections: set[socket.socket] = set()
        self._idle: dict[socket.socket, float] = {}  # waiting for a request, since when
        self._handler_threads: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._make_room()
        # Daemon handler threads that stop() can still wait for (ThreadingMixIn forgets them).
        thread = threading.Thread(
            target=self._process_tracked, args=(request, client_address), daemon=True
        )
        with self._connections_lock:
            self._handler_threads.add(thread)
        thread.start()

    def _process_tracked(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._handler_threads.discard(threading.current_thread())

    def join_handlers(self, timeout: float) -> None:
        """Wait (up to timeout seconds in all) for handler threads to finish."""
        deadline = time.monotonic() + timeout
        with self._connections_lock:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)
                self._idle.pop(connection, None)

    def idle(self, connection: socket.socket, *, waiting: bool) -> None:
        """Mark a connection as waiting for its next request (or not any more)."""
        with self._connections_lock:
            if waiting:
                self._idle[connection] = time.monotonic()
            else:
                self._idle.pop(connection, None)

    def _make_room(self) -> None:
        """At MAX_CONNECTIONS, shut the longest-idle connections: their threads end, and an
        attacker's thousands of idle sockets cost at most MAX_CONNECTIONS threads."""
        with self._connections_lock:
            excess = len(self._connections) + 1 - MAX_CONNECTIONS
            oldest = sorted(self._idle, key=self._idle.__getitem__)[: max(excess, 0)]
            for connection in oldest:
                del self._idle[connection]
        for connection in oldest:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def close_idle_connections(self) -> None:
        """Wake handlers blocked reading the next request; replies in flight still go out."""
        self.stopping = True
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RD)
