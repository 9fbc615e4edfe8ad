"""The local upstream simulator (a fake SMSC): JSON submits, HMAC-signed DLR and inbound callbacks."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import httpx

from sms_gateway.adapters.http import (
    answered_id,
    async_client,
    flag_setting,
    gateway_errors_setting,
    no_answer,
    not_about_the_message,
    scrubbed,
)
from sms_gateway.adapters.providers.receipts import settles_as
from sms_gateway.adapters.providers.tokens import secret_setting
from sms_gateway.domain.ids import epoch_seconds
from sms_gateway.domain.models import CallbackRequest, DeliveryReport, InboundSms, SubmitRequest, SubmitResult
from sms_gateway.domain.status import MessageStatus
from sms_gateway.domain.text import readable_json
from sms_gateway.errors import CallbackRejected, UpstreamError

# SMPP-style receipt states as the simulator reports them (the same words Kannel and Jasmin use, read alike: ACCEPTD
# and UNKNOWN are interim, receipts.py).
DLR_STATUS = {
    "DELIVRD": MessageStatus.DELIVERED,
    "UNDELIV": MessageStatus.FAILED,
    "EXPIRED": MessageStatus.EXPIRED,
    "REJECTD": MessageStatus.REJECTED,
    "DELETED": MessageStatus.FAILED,
    "ACCEPTD": MessageStatus.SUBMITTED,
    "ENROUTE": MessageStatus.SUBMITTED,
    "UNKNOWN": MessageStatus.SUBMITTED,
}
SIGNATURE_TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: str | int, body: str | bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<raw body>` keyed with the shared secret."""
    raw = body.encode() if isinstance(body, str) else body
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()


def signature_matches(secret: str, timestamp: str, body: str | bytes, given: str) -> bool:
    """Whether `given` is the signature of `body` at `timestamp`, compared in constant time as bytes: a header in
    characters other than ASCII is a wrong signature, not the TypeError compare_digest raises for such a str."""
    return hmac.compare_digest(signature(secret, timestamp, body).encode(), given.encode())


class SimulatorProvider:
    # No upstream-id link needed: its DLRs carry the client_ref we submitted.
    echoes_client_ref = True

    def __init__(
        self,
        *,
        name: str,
        url: str,
        secret: str,
        client: httpx.AsyncClient | None = None,
        deduplicates: bool = True,
        gateway_errors: str | None = None,
    ) -> None:
        self._gateway_errors = gateway_errors_setting(name, gateway_errors)
        self.name = name
        # It answers a repeated client_ref with the first message id, not sending again. Configured off
        # (`"deduplicates": false`), the dispatcher treats it like an upstream that cannot tell repeats (Kannel): what
        # `sms-gateway chaos` runs against by default, so that any repeat it counts is one a real upstream would send.
        self.deduplicates_submits = deduplicates
        self.url = url.rstrip("/")
        # Parsed once: httpx parses a URL given as a string on every request.
        self._send_url = httpx.URL(f"{self.url}/sms/send")
        self._secret = secret_setting(name, "secret", secret)
        self._client = client

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> SimulatorProvider:
        return cls(
            name=name,
            url=str(config["url"]),
            secret=config["secret"],
            deduplicates=flag_setting(name, "deduplicates", config.get("deduplicates"), default=True),
            gateway_errors=config.get("gateway_errors"),
            client=client,
        )

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        client = self._client or async_client()
        try:
            response = await client.post(
                self._send_url,
                json={
                    "client_ref": request.client_ref,
                    "from": request.sender,
                    "to": request.msisdn.lstrip("+"),
                    "text": request.text,
                    "dlr_url": request.dlr_url,
                },
                headers={"Authorization": f"Bearer {self._secret}"},
            )
        except httpx.TransportError as error:
            raise no_answer(self.name, error) from error
        failure = not_about_the_message(
            f"{self.name} answered {response.status_code}", response, gateway_errors=self._gateway_errors
        )
        if failure is not None:
            raise failure
        if response.status_code >= 400:
            raise UpstreamError(
                f"{self.name} refused the message: {scrubbed(response.text, (self._secret,))}", permanent=True
            )
        # No id (or a null or empty one): it, or a proxy in front of it, took the request and the simulator may be
        # sending the message. Asked again of it alone (it answers a repeat of our client_ref with its first answer),
        # never of the fallback. Until 2026-12-07 a KeyError that crashed the dispatch of the record, and a null id
        # recorded as "None".
        return SubmitResult(upstream_message_id=answered_id(self.name, response, "message_id"))

    def verify_callback(self, request: CallbackRequest) -> bool:
        timestamp = request.headers.get("x-simulator-timestamp", "")
        given = request.headers.get("x-simulator-signature", "")
        seconds = epoch_seconds(timestamp)
        if seconds is None or abs(time.time() - seconds) > SIGNATURE_TOLERANCE_SECONDS:
            return False
        return signature_matches(self._secret, timestamp, request.body, given)

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        try:
            payload = readable_json(request.body)
            state = str(payload["status"]).upper()
            status = DLR_STATUS[state]
            # A multi-part message is reported part by part (as an SMSC reports each segment it delivered).
            part = int(payload["part"]) if int(payload.get("parts") or 1) > 1 else None
            # Inside the try: a field of the wrong type (a numeric client_ref) is pydantic's ValueError, a 400.
            return [
                DeliveryReport(
                    upstream=self.name,
                    upstream_message_id=payload.get("message_id"),
                    client_ref=payload.get("client_ref"),
                    status=status,
                    error_code=payload.get("error_code"),
                    reported_at=payload.get("done_at"),
                    part=part,
                    settles_as=settles_as(state),
                )
            ]
        except (ValueError, KeyError, TypeError) as error:
            raise CallbackRejected(f"not a simulator DLR: {error}") from error

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        try:
            payload = readable_json(request.body)
            return InboundSms(
                upstream=self.name,
                upstream_message_id=payload.get("message_id"),
                msisdn=str(payload["from"]),
                to=str(payload["to"]),
                text=str(payload["text"]),
                received_at=str(payload["received_at"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise CallbackRejected(f"not a simulator inbound SMS: {error}") from error
