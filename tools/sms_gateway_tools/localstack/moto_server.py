"""moto in this process, on a free 127.0.0.1 port: DynamoDB, SQS, EventBridge Scheduler and SSM."""

from __future__ import annotations

import logging
import threading
import urllib.request
from typing import Any

from sms_gateway_tools.localstack.shared_state import make_methods_take_turns

logger = logging.getLogger("sms_gateway_tools.localstack.moto")

# DynamoDB's write actions: each applies to its items atomically on AWS.
_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")
_dynamodb_writes_turns = threading.RLock()


def serialise_dynamodb_writes() -> None:
    """Makes moto apply DynamoDB writes one at a time, in this process, from now on (idempotent). DynamoDB applies
    a conditional write to its item atomically; moto's handler does not lock (it even reads the old item before its
    backend applies the write), so two threads' conditional updates of one item can both succeed inside moto: a
    double refund that AWS would never allow. The consumers handle records concurrently (the dispatcher's messages,
    the notifier's records), so the local stack and the tests need DynamoDB's semantics here, not moto's."""
    from moto.dynamodb.responses import DynamoHandler

    make_methods_take_turns(DynamoHandler, _DYNAMODB_WRITES, _dynamodb_writes_turns)


class EmbeddedMoto:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> str:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO: keep that off the console unless debugging.
        werkzeug = logging.getLogger("werkzeug")
        if not werkzeug.isEnabledFor(logging.DEBUG):
            werkzeug.setLevel(logging.WARNING)
        serialise_dynamodb_writes()
        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint = f"http://{host}:{port}"
        # moto's backends are process-wide: start from a clean slate.
        self.reset()
        logger.info("moto listening on %s", self.endpoint)
        return self.endpoint

    def reset(self) -> None:
        if not self.endpoint:
            return
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310 (our own http URL)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def stop(self) -> None:
        server = self._server
        self._server = None
        if server is None:
            return
        try:
            self.reset()
        except OSError as error:
            logger.debug("moto reset on stop failed: %s", error)
        server.stop()
        # ThreadedMotoServer.stop() shuts the loop down but leaves the listening socket open.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()
        self.endpoint = ""


def queue_contents(queue_url: str) -> list[Any]:
    """The messages moto holds for a queue, visible or hidden (its `Message` objects: `body`, `visible_at` in epoch
    ms), read from its memory: the embedded server and `mock_aws` both keep their backends in this process. SQS
    itself only counts hidden messages, and the local tools need to tell a settle check waiting out its hours, or a
    notification waiting for its retry, from work in progress."""
    from moto.sqs.models import sqs_backends

    name = queue_url.rsplit("/", 1)[-1]
    return [
        message
        for backend in list(sqs_backends.values())
        for regional in list(backend.values())
        for queue_name, queue in list(regional.queues.items())
        if queue_name == name
        for message in list(queue._messages)
    ]
