"""Helper processes for the benchmarks: the upstream simulator, moto, and a client's webhook, each in a child process
of its own, so that their CPU is never counted as the measured function's."""

from __future__ import annotations

import multiprocessing
import threading
import time
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

SIMULATOR_LATENCY = 0.050


def _serve(kind: str, options: dict[str, Any], conn: Connection) -> None:
    """Runs in a child process: serves until the parent says stop; answers "cpu" with this process's CPU time,
    "stats" with the simulator's counts and "posts" with the webhook's."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    server: Any
    if kind == "simulator":
        from sms_gateway_tools.simulator import UpstreamSimulator

        # DLRs an hour away: none is posted while we measure (the gateway's callback URL is not running).
        server = UpstreamSimulator(
            options["secret"], submit_latency=options.get("latency", SIMULATOR_LATENCY), dlr_delay=3600
        ).start()
        conn.send(server.url)
    elif kind == "moto":
        from sms_gateway_tools.localstack.moto_server import EmbeddedMoto

        server = EmbeddedMoto()
        conn.send(server.start())
    elif kind == "webhook":
        server = _WebhookServer(options.get("latency", 0.0))
        conn.send(server.url)
    else:
        raise ValueError(f"no helper of kind {kind!r}")
    try:
        while True:
            command = conn.recv()
            if command == "cpu":
                conn.send(time.process_time())
            elif command == "stats":
                conn.send(server.stats() if kind == "simulator" else {})
            elif command == "posts":
                conn.send(server.posts())
            else:
                break
    finally:
        server.stop()


class _WebhookServer:
    """bench.moto_gateway's client webhook, served from this (child) process."""

    def __init__(self, latency: float) -> None:
        from bench.moto_gateway import serve_client_webhook

        self._server = serve_client_webhook(latency)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def posts(self) -> int:
        return int(self._server.posts)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Helper:
    """A child process serving the simulator, moto or a client webhook on 127.0.0.1."""

    def __init__(self, kind: str, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._lock = threading.Lock()
        self._process = context.Process(target=_serve, args=(kind, options, child), name=f"bench-{kind}", daemon=True)
        self._process.start()
        if not self._conn.poll(60):
            self.stop()
            raise RuntimeError(f"the {kind} process did not start")
        self.url: str = self._conn.recv()

    def ask(self, command: str) -> Any:
        with self._lock:  # one question and its answer at a time on the pipe, whichever thread asks
            self._conn.send(command)
            return self._conn.recv()

    def stop(self) -> None:
        with suppress(OSError):
            self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
