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

MAX_BODY_BYTES = 128 * 1024 * 1024
MAX_INFLATED_BYTES = 100 * 1024 * 1024  # ZLib::kMaxUncompressedBytes


def inflate_gzip(body: bytes) -> bytes:
    """UncompressGzipAndAllocate: trust the trailer's length up to the limit; b"" on failure."""
    expected = int.from_bytes(body[-4:], "little") if len(body) > 4 else 0
    if expected > MAX_INFLATED_BYTES:
        return b""
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
    timeout = 300  # seconds an idle keep-alive connection may stay open
    server: HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

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
            body = inflate_gzip(body)
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
        self._handler_threads: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
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

    def close_idle_connections(self) -> None:
        """Wake handlers blocked reading the next request; replies in flight still go out."""
        self.stopping = True
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RD)
