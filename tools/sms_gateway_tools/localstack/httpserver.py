"""Small HTTP/1.1 server plumbing shared by the API bridge and the upstream simulator (stdlib only)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger("sms_gateway_tools.localstack.http")

# An idle keep-alive connection is closed after this many seconds, so its thread ends by itself.
IDLE_CONNECTION_TIMEOUT = 30.0
MAX_BODY_BYTES = 10 * 1024 * 1024


class TrackingHTTPServer(ThreadingHTTPServer):
    """A threading server that remembers its open connections, so `stop()` can close keep-alive ones."""

    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog is 5: the dispatcher opens up to DISPATCH_CONCURRENCY connections at
    # once, and connections past the backlog were reset before the server accepted them.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that hung up before its answer (a client's timeout, which the chaos run injects) is one debug
        line, not socketserver's traceback on stderr; anything else is still printed in full."""
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            logger.debug("%s hung up before its answer: %s", client_address, error)
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class ServerThread:
    """Runs a `TrackingHTTPServer` in a background thread and stops it completely."""

    def __init__(self, server: TrackingHTTPServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        self.server.serve_forever(poll_interval=0.1)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout)
        self.server.server_close()
        self.server.close_connections()


class RequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, bodies by Content-Length or chunked, quiet logging."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT
    # Headers and body go out in separate writes: with Nagle's algorithm the body waits for the client's
    # delayed ACK of the headers, adding about 40 ms to every answer on a keep-alive connection.
    disable_nagle_algorithm = True
    server_version = "sms-gateway-local"

    def version_string(self) -> str:
        return self.server_version

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            size = int(size_line or b"0", 16)
            if size == 0:
                # Trailers end with an empty line.
                while self.rfile.readline(1024).strip():
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("request body too large")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(16)

    def send(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for name, value in headers or []:
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send(status, body, [("Content-Type", "application/json"), *(headers or [])])

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)
