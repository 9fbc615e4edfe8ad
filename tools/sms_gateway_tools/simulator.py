"""The upstream simulator: a fake SMSC over HTTP for the local stack and the end-to-end tests.

Protocol (see docs/local-stack.md):

- `POST /sms/send` with `Authorization: Bearer <secret>` and JSON
  `{"client_ref", "from", "to", "text", "dlr_url"}` answers `{"message_id": "sim-...", "status": "accepted"}`.
  A repeated `client_ref` answers the first message id again and is counted as a duplicate.
- After `dlr_delay` seconds the DLR `{"message_id", "client_ref", "to", "status", "error_code",
  "submitted_at", "done_at", "part", "parts"}` is POSTed to `dlr_url`, signed with `X-Simulator-Timestamp`
  and `X-Simulator-Signature` = hex HMAC-SHA256(secret, timestamp + "." + raw body). A multi-part text
  gets one DLR per part, as an SMSC reports each segment (a failed message fails its last part).
- `POST /control/inbound` `{"from", "to", "message"}` makes the simulator POST an inbound SMS
  `{"message_id", "from", "to", "text", "received_at"}` to `inbound_url`, signed the same way.
- `GET /stats`, `GET /messages`, `POST /control/settings`, `POST /control/reset`, `GET /health`.
- Fault injection, all off by default: `error_rate` (500 before accepting), `timeout_rate` (accept, then
  answer only after `timeout_delay` seconds, past the sender's read timeout), `dlr_duplicate_rate` (each DLR
  sent twice), `dlr_reorder_rate` (parts reported last to first, then an older ENROUTE report after them).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import random
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

# The signature the gateway checks (the layer's own): one HMAC and one constant-time comparison of bytes for both.
from sms_gateway.adapters.providers.simulator import signature as sign
from sms_gateway.adapters.providers.simulator import signature_matches as verify  # noqa: F401 (the tests' import)
from sms_gateway.domain.segments import segment
from sms_gateway_tools.localstack.httpserver import RequestHandler, ServerThread, TrackingHTTPServer
from sms_gateway_tools.localstack.timers import DelayedExecutor

logger = logging.getLogger("sms_gateway_tools.simulator")

TIMESTAMP_HEADER = "X-Simulator-Timestamp"
SIGNATURE_HEADER = "X-Simulator-Signature"
# Delays before the 2nd, 3rd and 4th attempt to deliver a callback.
CALLBACK_RETRY_DELAYS = (0.5, 1.0, 2.0)
CALLBACK_TIMEOUT = 5.0
SETTINGS = (
    "failure_rate",
    "dlr_delay",
    "submit_latency",
    "error_rate",
    "timeout_rate",
    "timeout_delay",
    "dlr_duplicate_rate",
    "dlr_reorder_rate",
)
# The extra report sent after the final one when DLRs are reordered: an SMSC's intermediate state.
INTERMEDIATE_STATUS = "ENROUTE"
# Seconds after the final DLR that a duplicate or an out-of-order older report follows.
LATE_REPORT_DELAY = 0.3


def signed_headers(secret: str, body: str) -> dict[str, str]:
    """The headers of a callback with JSON `body`, signed with `secret` as an upstream of the simulator's kind."""
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }


def inbound_payload(sender: str, to: str, message: str) -> dict[str, str]:
    """An inbound SMS as the simulator posts it to `/callbacks/<upstream>/inbound`."""
    return {
        "message_id": f"sim-in-{uuid.uuid4().hex}",
        "from": sender,
        "to": to,
        "text": message,
        "received_at": _now_iso(),
    }


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Submit:
    message_id: str
    client_ref: str | None
    sender: str | None
    to: str
    text: str
    dlr_url: str | None
    submitted_at: str
    duplicates: int = 0
    # Of those, the repeats that came after the sender had been answered 'accepted'.
    duplicates_after_accept: int = 0
    dlr_status: str | None = None
    dlr_delivered: bool = False
    # When the DLR that completed the message was answered 2xx by the gateway.
    dlr_delivered_at: str | None = None
    parts: int = 1
    dlr_parts_delivered: int = 0
    # Whether the sender was answered in time at least once: a repeat after that is a second send, not a retry.
    acknowledged: bool = False

    def part_status(self, part: int) -> str | None:
        """A failed multi-part message fails on its last part; the parts before it were delivered."""
        return self.dlr_status if part == self.parts else "DELIVRD"

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "client_ref": self.client_ref,
            "from": self.sender,
            "to": self.to,
            "text": self.text,
            "dlr_url": self.dlr_url,
            "submitted_at": self.submitted_at,
            "duplicates": self.duplicates,
            "duplicates_after_accept": self.duplicates_after_accept,
            "dlr_status": self.dlr_status,
            "dlr_delivered": self.dlr_delivered,
            "dlr_delivered_at": self.dlr_delivered_at,
            "parts": self.parts,
        }


@dataclass
class _Stats:
    submits: int = 0
    unique: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors_injected: int = 0
    dlrs_sent: int = 0
    dlrs_failed: int = 0
    inbound_sent: int = 0
    inbound_failed: int = 0
    timeouts_injected: int = 0
    # Repeats of a client_ref (all counted in `duplicates`) whose earlier answers all came too late for the
    # sender, i.e. retries after a timeout; and repeats after the sender had been told it was accepted.
    resubmits_after_timeout: int = 0
    resubmits_after_accept: int = 0
    dlrs_duplicated: int = 0
    dlrs_reordered: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Settings:
    failure_rate: float = 0.0
    dlr_delay: float = 0.3
    submit_latency: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    # Longer than the dispatcher's default read timeout (10 s), so a held answer is a timeout for it.
    timeout_delay: float = 12.0
    dlr_duplicate_rate: float = 0.0
    dlr_reorder_rate: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in SETTINGS}


class UpstreamSimulator:
    """A fake SMSC. `start()` binds 127.0.0.1:`port` (0 = a free port); `stop()` ends every thread."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        inbound_url: str | None = None,
        dlr_delay: float = 0.3,
        failure_rate: float = 0.0,
        submit_latency: float = 0.0,
        error_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.secret = secret or secrets.token_hex(32)
        self.inbound_url = inbound_url
        self._host = host
        self._port = port
        self._settings = _Settings(
            failure_rate=failure_rate,
            dlr_delay=dlr_delay,
            submit_latency=submit_latency,
            error_rate=error_rate,
        )
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._by_ref: dict[str, Submit] = {}
        self._submits: list[Submit] = []
        # A seed makes the injected faults repeatable (they are not secrets).
        self._random: random.Random = secrets.SystemRandom() if seed is None else random.Random(seed)  # noqa: S311
        self._callbacks = DelayedExecutor("simulator-callbacks", max_workers=8)
        self._client: httpx.Client | None = None
        self._server: ServerThread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> UpstreamSimulator:
        if self._server is not None:
            return self
        self._client = httpx.Client(timeout=CALLBACK_TIMEOUT)
        self._callbacks.start()
        server = TrackingHTTPServer((self._host, self._port), _SimulatorHandler)
        server.simulator = self  # type: ignore[attr-defined]
        self._server = ServerThread(server, name="simulator-http")
        self._server.start()
        logger.info("upstream simulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._callbacks.stop()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> UpstreamSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return self._server.server.port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # -- state -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        with self._lock:
            return self._stats.to_dict()

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [submit.to_dict() for submit in self._submits]

    def settings(self) -> dict[str, float]:
        with self._lock:
            return self._settings.to_dict()

    def configure(self, **changes: Any) -> dict[str, float]:
        """Changes `failure_rate`, `dlr_delay`, `submit_latency` and/or `error_rate` at run time."""
        unknown = set(changes) - set(SETTINGS) - {"inbound_url"}
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in changes.items():
                if name == "inbound_url":
                    self.inbound_url = None if value is None else str(value)
                    continue
                number = float(value)
                if number < 0 or (name.endswith("_rate") and number > 1):
                    raise ValueError(f"{name} out of range: {value!r}")
                setattr(self._settings, name, number)
            return self._settings.to_dict()

    def reseed(self, seed: int) -> None:
        """Makes the injected faults repeatable (as far as thread timing allows)."""
        with self._lock:
            self._random = random.Random(seed)  # noqa: S311

    def reset(self) -> None:
        with self._lock:
            self._stats = _Stats()
            self._by_ref.clear()
            self._submits.clear()

    # -- the SMSC --------------------------------------------------------------------------------

    def submit(self, payload: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Handles one `/sms/send` body (already authenticated); returns (HTTP status, JSON answer)."""
        status, answer, _ = self.accept(payload)
        return status, answer

    def accept(self, payload: Mapping[str, Any]) -> tuple[int, dict[str, Any], float]:
        """`submit`, plus how many seconds to hold the answer back (an injected timeout; 0 = answer now)."""
        to = payload.get("to")
        text = payload.get("text")
        client_ref = payload.get("client_ref")
        dlr_url = payload.get("dlr_url")
        if not isinstance(to, str) or not to.lstrip("+").isdigit() or not isinstance(text, str):
            with self._lock:
                self._stats.rejected += 1
            return 400, {"error": "'to' (digits) and 'text' (string) are required"}, 0.0
        if client_ref is not None and not isinstance(client_ref, str):
            client_ref = str(client_ref)
        if dlr_url is not None and (not isinstance(dlr_url, str) or urlsplit(dlr_url).scheme not in ("http", "https")):
            with self._lock:
                self._stats.rejected += 1
            return 400, {"error": "'dlr_url' must be an http(s) URL or null"}, 0.0
        with self._lock:
            settings = _Settings(**self._settings.__dict__)
            self._stats.submits += 1
            if settings.error_rate and self._random.random() < settings.error_rate:
                self._stats.errors_injected += 1
                return 500, {"error": "simulated upstream failure"}, 0.0
            hold = self._timeout_hold(settings)
            if client_ref is not None and client_ref in self._by_ref:
                existing = self._by_ref[client_ref]
                existing.duplicates += 1
                self._stats.duplicates += 1
                if existing.acknowledged:
                    existing.duplicates_after_accept += 1
                    self._stats.resubmits_after_accept += 1
                else:
                    self._stats.resubmits_after_timeout += 1
                return 200, {"message_id": existing.message_id, "status": "accepted", "duplicate": True}, hold
            submit = Submit(
                message_id=f"sim-{uuid.uuid4().hex}",
                client_ref=client_ref,
                sender=None if payload.get("from") is None else str(payload.get("from")),
                to=to.lstrip("+"),
                text=text,
                dlr_url=dlr_url,
                submitted_at=_now_iso(),
                parts=segment(text).parts,
            )
            submit.dlr_status = (
                "UNDELIV" if settings.failure_rate and self._random.random() < settings.failure_rate else "DELIVRD"
            )
            self._stats.unique += 1
            self._submits.append(submit)
            if client_ref is not None:
                self._by_ref[client_ref] = submit
            duplicated = bool(settings.dlr_duplicate_rate) and self._random.random() < settings.dlr_duplicate_rate
            reordered = bool(settings.dlr_reorder_rate) and self._random.random() < settings.dlr_reorder_rate
            self._stats.dlrs_duplicated += int(duplicated and submit.dlr_url is not None)
            self._stats.dlrs_reordered += int(reordered and submit.dlr_url is not None)
        if submit.dlr_url:
            self._schedule_dlrs(submit, settings.dlr_delay, duplicated=duplicated, reordered=reordered)
        return 200, {"message_id": submit.message_id, "status": "accepted"}, hold

    def _timeout_hold(self, settings: _Settings) -> float:
        """Seconds to hold an accepted submit's answer (called under the lock)."""
        if not settings.timeout_rate or self._random.random() >= settings.timeout_rate:
            return 0.0
        self._stats.timeouts_injected += 1
        return settings.timeout_delay

    def acknowledge(self, client_ref: str | None) -> None:
        """Notes that the sender got the accept answer in time (so a repeat of this client_ref is a second send)."""
        with self._lock:
            if client_ref is not None and client_ref in self._by_ref:
                self._by_ref[client_ref].acknowledged = True

    def _schedule_dlrs(self, submit: Submit, delay: float, *, duplicated: bool, reordered: bool) -> None:
        parts = list(range(1, submit.parts + 1))
        for part in reversed(parts) if reordered else parts:
            self._callbacks.call_later(delay, functools.partial(self._send_dlr, submit, part, 0))
        late = delay + LATE_REPORT_DELAY
        for part in parts:
            if duplicated:
                self._callbacks.call_later(late, functools.partial(self._send_dlr, submit, part, 0, extra=True))
            if reordered:
                # An older, intermediate state reported after the final one.
                self._callbacks.call_later(
                    late, functools.partial(self._send_dlr, submit, part, 0, extra=True, status=INTERMEDIATE_STATUS)
                )

    def _send_dlr(self, submit: Submit, part: int, attempt: int, *, extra: bool = False, status: str = "") -> None:
        """POSTs one part's DLR (retried on failure). `extra` marks an injected duplicate or out-of-order report,
        which does not count towards the message's DLRs delivered; `status` overrides the part's status."""
        status_of_part = status or submit.part_status(part)
        intermediate = status_of_part == INTERMEDIATE_STATUS
        payload = {
            "message_id": submit.message_id,
            "client_ref": submit.client_ref,
            "to": submit.to,
            "status": status_of_part,
            "error_code": "000" if status_of_part in ("DELIVRD", INTERMEDIATE_STATUS) else "001",
            "submitted_at": submit.submitted_at,
            "done_at": submit.submitted_at if intermediate else _now_iso(),
            "part": part,
            "parts": submit.parts,
        }
        answered = self._post_signed(str(submit.dlr_url), payload)
        if answered is not None and 200 <= answered < 300:
            with self._lock:
                if not extra:
                    submit.dlr_parts_delivered += 1
                    submit.dlr_delivered = submit.dlr_parts_delivered >= submit.parts
                    if submit.dlr_delivered and submit.dlr_delivered_at is None:
                        submit.dlr_delivered_at = _now_iso()
                self._stats.dlrs_sent += 1
            return
        if attempt < len(CALLBACK_RETRY_DELAYS):
            delay = CALLBACK_RETRY_DELAYS[attempt]
            retry = functools.partial(self._send_dlr, submit, part, attempt + 1, extra=extra, status=status)
            if self._callbacks.call_later(delay, retry):
                return
        logger.warning("DLR for %s not delivered to %s (last status %s)", submit.message_id, submit.dlr_url, answered)
        with self._lock:
            self._stats.dlrs_failed += 1

    def send_inbound(self, sender: str, to: str, message: str) -> dict[str, Any]:
        """Posts one inbound SMS to `inbound_url` now; answers what `/control/inbound` answers."""
        payload = inbound_payload(sender, to, message)
        status = self._post_signed(self.inbound_url, payload) if self.inbound_url else None
        delivered = status is not None and 200 <= status < 300
        with self._lock:
            if delivered:
                self._stats.inbound_sent += 1
            else:
                self._stats.inbound_failed += 1
        return {"message_id": payload["message_id"], "delivered": delivered, "status": status}

    def _post_signed(self, url: str, payload: Mapping[str, Any]) -> int | None:
        client = self._client
        if client is None:
            return None
        body = json.dumps(payload, separators=(",", ":"))
        try:
            return client.post(url, content=body.encode(), headers=signed_headers(self.secret, body)).status_code
        except (httpx.HTTPError, RuntimeError) as error:
            logger.info("callback to %s failed: %s", url, error)
            return None


class _SimulatorHandler(RequestHandler):
    server_version = "sms-simulator"

    @property
    def simulator(self) -> UpstreamSimulator:
        return self.server.simulator  # type: ignore[attr-defined]

    def _json_body(self) -> Any:
        raw = self.read_body()
        return json.loads(raw) if raw.strip() else {}

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/stats":
            self.send_json(200, self.simulator.stats())
        elif path == "/messages":
            self.send_json(200, self.simulator.messages())
        elif path == "/control/settings":
            self.send_json(200, self.simulator.settings())
        elif path == "/health":
            self.send_json(200, {"ok": True})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            payload = self._json_body()
        except (ValueError, UnicodeDecodeError):
            self.send_json(400, {"error": "the body must be JSON"})
            return
        if not isinstance(payload, dict):
            self.send_json(400, {"error": "the body must be a JSON object"})
            return
        if path == "/sms/send":
            self._send_sms(payload)
        elif path == "/control/inbound":
            missing = [name for name in ("from", "to", "message") if not isinstance(payload.get(name), str)]
            if missing:
                self.send_json(400, {"error": f"missing: {', '.join(missing)}"})
                return
            self.send_json(200, self.simulator.send_inbound(payload["from"], payload["to"], payload["message"]))
        elif path == "/control/settings":
            try:
                self.send_json(200, self.simulator.configure(**payload))
            except (TypeError, ValueError) as error:
                self.send_json(400, {"error": str(error)})
        elif path == "/control/reset":
            self.simulator.reset()
            self.send_json(200, {"reset": True})
        else:
            self.send_json(404, {"error": "not found"})

    def _send_sms(self, payload: dict[str, Any]) -> None:
        simulator = self.simulator
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {simulator.secret}".encode()):
            self.send_json(401, {"error": "invalid credentials"})
            return
        latency = simulator.settings()["submit_latency"]
        if latency:
            time.sleep(latency)
        status, answer, hold = simulator.accept(payload)
        if hold:
            # An injected timeout: the message was accepted, but the sender gives up before it hears so.
            time.sleep(hold)
            with contextlib.suppress(OSError):
                self.send_json(status, answer)
            return
        self.send_json(status, answer)
        if status == 200:
            simulator.acknowledge(payload.get("client_ref"))
