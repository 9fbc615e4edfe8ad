"""The chaos run's client webhook: a server on 127.0.0.1 that fails a share of requests and records the rest."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sms_gateway.domain.webhooks import verify
from sms_gateway_tools.localstack.httpserver import RequestHandler, ServerThread, TrackingHTTPServer


@dataclass
class Delivery:
    """One notification the client accepted (answered 200), by its webhook-id, and the accounts whose webhook token
    it came with (more than one only when a repeat came with another account's)."""

    webhook_id: str
    body: dict[str, Any]
    account_ids: set[str]
    times: int = 1


@dataclass(frozen=True)
class Client:
    """An account as the webhook knows it by its bearer token: whose it is, and the secret it signs with."""

    account_id: str
    signing_secret: str


@dataclass
class WebhookLog:
    requests: int = 0
    failed: int = 0
    # Refused with 400: a token the webhook does not know (or none), or a missing or bad signature.
    bad_signatures: int = 0
    # webhook-id -> the notification; `times` counts accepted repeats of the same id (the client dedups them).
    delivered: dict[str, Delivery] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        return sum(delivery.times - 1 for delivery in self.delivered.values())


class FlakyWebhook:
    """Answers 500 to a `failure_rate` share of POSTs, 200 `{"ok":true}` to the others, which it records.

    Every account posts to this one URL, told apart by its webhook token (the request's bearer token): `register`
    each. A request must carry a registered token and the Standard Webhooks headers signed with that account's
    secret; any other is counted and refused with 400. Each accepted notification keeps the account whose token
    it came with, so the invariants can tell one delivered to another account."""

    def __init__(self, failure_rate: float = 0.3, seed: int | None = None) -> None:
        self.failure_rate = failure_rate
        self.clients: dict[str, Client] = {}
        self.log = WebhookLog()
        self._random = random.Random(seed)  # noqa: S311 (repeatable fault injection, not a secret)
        self._lock = threading.Lock()
        self._server: ServerThread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the webhook is not running")
        return f"http://127.0.0.1:{self._server.server.port}"

    def start(self) -> FlakyWebhook:
        server = TrackingHTTPServer(("127.0.0.1", 0), _Handler)
        server.webhook = self  # type: ignore[attr-defined]
        self._server = ServerThread(server, name="chaos-client-webhook")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FlakyWebhook:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def register(self, token: str, *, account_id: str, signing_secret: str) -> None:
        self.clients[token] = Client(account_id=account_id, signing_secret=signing_secret)

    def receive(self, headers: dict[str, str], raw: bytes) -> int:
        """Decides one request's answer and records an accepted notification; returns the HTTP status."""
        with self._lock:
            self.log.requests += 1
            if self._random.random() < self.failure_rate:
                self.log.failed += 1
                return 500
        body = json.loads(raw)
        client = self.clients.get(headers.get("authorization", "").removeprefix("Bearer ").strip())
        # `verify` also refuses a request without webhook-id, webhook-timestamp or webhook-signature.
        if client is None or not verify(client.signing_secret, headers, raw.decode(), now=time.time()):
            with self._lock:
                self.log.bad_signatures += 1
            return 400
        webhook_id = headers["webhook-id"]
        with self._lock:
            known = self.log.delivered.get(webhook_id)
            if known is None:
                self.log.delivered[webhook_id] = Delivery(webhook_id, body, account_ids={client.account_id})
            else:
                known.times += 1
                known.account_ids.add(client.account_id)
        return 200


class _Handler(RequestHandler):
    server_version = "chaos-client-webhook"

    def do_POST(self) -> None:
        webhook: FlakyWebhook = self.server.webhook  # type: ignore[attr-defined]
        raw = self.read_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            status = webhook.receive(headers, raw)
        except ValueError:
            status = 400
        self.send_json(status, {"ok": True} if status == 200 else {"error": "chaos"})
