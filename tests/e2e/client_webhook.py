"""The client's own webhook server for end-to-end tests: records each POST, answers valid JSON as the seeds require."""

from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ClientWebhook:
    """Listens on 127.0.0.1; answers 500 to its first `failures` POSTs, then 200 with a JSON body."""

    def __init__(self, failures: int = 0) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.failures = failures
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 500 if outer.failures > 0 else 200
                outer.failures -= 1
                outer.received.put(
                    {
                        "at": time.monotonic(),
                        "status": status,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": json.loads(raw),
                        "raw": raw.decode(),
                    }
                )
                answer = b'{"error":"busy"}' if status == 500 else b'{"ok":true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ClientWebhook:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next(self, path: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next POST to `path` (others are skipped), waiting up to `timeout` seconds for each POST: generous, for
        a loaded machine, since it returns as soon as the POST is in."""
        while True:
            request = self.received.get(timeout=timeout)
            if request["path"] == path:
                return request
