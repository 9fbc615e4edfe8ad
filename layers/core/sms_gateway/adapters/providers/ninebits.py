"""A 9bits-compatible upstream: another gateway that speaks our own `POST /ng/v1/sendsms` dialect.

References: the 9bits seeds (../shared/seeds/1-9bits-send-and-receive.md, 2-...-with-ref-id.txt, 3-batches.md),
our own docs/dialects/9bits.md and the payload of logic/notify.py `dlr_notification`; webhook signatures follow
Standard Webhooks (https://www.standardwebhooks.com/, "Verifying webhooks": `webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, secrets written `whsec_<base64>`).

Submits: `Authorization: Bearer <token>`, JSON `from`, `to`, `message`, `ref_id` = our client reference (so their
delivery reports echo it) and `delivery_report: "yes"`; the same reference goes in an `Idempotency-Key` header,
so a submit retried after a lost answer is answered again instead of sent twice. The answer's `reference_id`
(one recipient per submit, so one batch per message) is the upstream message id.
Their callbacks go to the webhook URLs configured on our account with them: DLRs to `.../callbacks/<name>/dlr`,
signed (Standard Webhooks); inbound SMS to `.../callbacks/<name>/inbound` with `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from sms_gateway.adapters.http import (
    GATEWAY_ERRORS_MAYBE_TAKEN,
    answer_json,
    answered_id,
    async_client,
    no_answer,
    not_about_the_message,
    refuses_our_account,
    scrubbed,
)
from sms_gateway.adapters.providers.times import sent_time
from sms_gateway.domain import webhooks
from sms_gateway.domain.models import CallbackRequest, DeliveryReport, InboundSms, SubmitRequest, SubmitResult
from sms_gateway.domain.status import MessageStatus
from sms_gateway.domain.text import readable_json
from sms_gateway.errors import CallbackRejected, UpstreamError

SEND_PATH = "/ng/v1/sendsms"
# HTTP statuses after which they may have taken the message: the dialect's 500 says "the request may have been done
# in part, so send it again under the same Idempotency-Key" (docs/dialects/9bits.md), and a 502/504 is a proxy in
# front of them losing the answer. Like no answer at all (`no_answer`): asked again of them alone, which answers the
# repeat of our Idempotency-Key with its first answer, never offered to the fallback. A 503 was not served.
MAYBE_TAKEN_STATUSES = frozenset({500, 502, 504})
SIGNATURE_TOLERANCE_SECONDS = 300

# The one status table: their statuses are ours (docs/dialects/9bits.md); whatever is still on its way upstream
# is `submitted` here, and a message they cancelled after taking it from us did not reach the phone.
STATUS: dict[str, MessageStatus] = {
    "accepted": MessageStatus.SUBMITTED,
    "scheduled": MessageStatus.SUBMITTED,
    "queued": MessageStatus.SUBMITTED,
    "submitted": MessageStatus.SUBMITTED,
    "delivered": MessageStatus.DELIVERED,
    "failed": MessageStatus.FAILED,
    "expired": MessageStatus.EXPIRED,
    "rejected": MessageStatus.REJECTED,
    "cancelled": MessageStatus.FAILED,
}


class NinebitsProvider:
    # No upstream-id link needed: its DLRs echo the ref_id we submit (our reference).
    echoes_client_ref = True
    # Idempotent on the Idempotency-Key (our reference) for 24 hours: a repeat is answered again, not sent again.
    deduplicates_submits = True

    def __init__(
        self,
        *,
        name: str,
        url: str,
        token: str,
        webhook_token: str | None = None,
        webhook_secret: str | None = None,
        signature_tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not webhook_token and not webhook_secret:
            raise ValueError(f"upstream {name!r}: a webhook_token or webhook_secret is required to verify callbacks")
        self.name = name
        self.url = url.rstrip("/")
        # Parsed once: httpx parses a URL given as a string on every request.
        self._send_url = httpx.URL(f"{self.url}{SEND_PATH}")
        self._token = token
        self._webhook_token = webhook_token or None
        self._webhook_secret = webhook_secret or None
        self._tolerance = signature_tolerance
        self._client = client

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> NinebitsProvider:
        return cls(
            name=name,
            url=str(config["url"]),
            token=str(config["token"]),
            webhook_token=config.get("webhook_token") or None,
            webhook_secret=config.get("webhook_secret") or None,
            signature_tolerance=int(config.get("signature_tolerance", SIGNATURE_TOLERANCE_SECONDS)),
            client=client,
        )

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        payload = {
            "from": request.sender,
            "to": request.msisdn.lstrip("+"),
            "message": request.text,
            "ref_id": request.client_ref,
            "delivery_report": "yes" if request.dlr_url else "none",
            # The client's session: a reply to an SMS they forwarded names theirs, and continues it there.
            **({"session_id": request.session_id} if request.session_id else {}),
        }
        client = self._client or async_client()
        try:
            response = await client.post(
                self._send_url,
                json=payload,
                headers={"Authorization": f"Bearer {self._token}", "Idempotency-Key": request.client_ref},
            )
        except httpx.TransportError as error:
            raise no_answer(self.name, error) from error
        reason = scrubbed(_message(response), (self._token,))
        failure = not_about_the_message(
            f"{self.name} answered {response.status_code}: {reason}",
            response,
            gateway_errors=GATEWAY_ERRORS_MAYBE_TAKEN,
            maybe_taken_statuses=MAYBE_TAKEN_STATUSES,
        )
        if failure is not None:
            raise failure
        if response.status_code == 402:
            # Our credits with them ran out: not the message's fault, another upstream may take it.
            raise refuses_our_account(f"{self.name} has no credit for us: {reason}")
        if response.status_code in (401, 404):
            # Our token is unknown or revoked there (401), or our url is not their API (404): our setup, not the
            # message.
            raise refuses_our_account(f"{self.name} refused our account ({response.status_code}): {reason}")
        if response.status_code == 409:
            # The same ref_id is still being answered upstream (or, never by us, reused): wait for that answer
            # rather than hand the message to another upstream and risk sending it twice.
            raise UpstreamError(
                f"{self.name} is still on it: {reason}", permanent=False, retry_after=5.0, per_message=True
            )
        if response.status_code >= 400:
            # 400: an invalid number, a sender not registered, a bad body.
            raise UpstreamError(f"{self.name} refused the message ({response.status_code}): {reason}", permanent=True)
        # A 2xx without a reference_id (or a null or empty one): it may have taken the message. Asked again of 9bits
        # alone (it deduplicates by our Idempotency-Key), never of the fallback. Until 2026-12-07 a null one was
        # recorded as the id "None".
        return SubmitResult(upstream_message_id=answered_id(self.name, response, "reference_id"))

    def verify_callback(self, request: CallbackRequest) -> bool:
        headers = request.headers
        secret = self._webhook_secret
        if secret is not None:
            if "webhook-signature" in headers or "webhook-id" in headers:
                # A signature that is there must be right, whatever else the request carries.
                return webhooks.verify(secret, headers, request.body, now=time.time(), tolerance=self._tolerance)
            if _is_dlr(request):
                return False  # delivery reports must be signed once we know their secret
        # Without the secret a signature cannot be checked, and is no reason to refuse: a notifier that signs (this
        # gateway's own, for an account with a webhook secret) sends the bearer token too.
        given = _bearer(headers.get("authorization"))
        if self._webhook_token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self._webhook_token.encode())

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        payload = _json_object(request.body, "9bits DLR")
        try:
            status = STATUS[str(payload["status"]).lower()]
        except KeyError as error:
            raise CallbackRejected(f"not a 9bits DLR: unknown or missing status {payload.get('status')!r}") from error
        reference_id = payload.get("reference_id")
        return [
            DeliveryReport(
                upstream=self.name,
                upstream_message_id=str(reference_id) if reference_id is not None else None,
                client_ref=_text(payload.get("ref_id")),
                status=status,
                error_code=_text(payload.get("error_code")),
                reported_at=_text(payload.get("reported_at")) or _text(payload.get("status_at")),
            )
        ]

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        payload = _json_object(request.body, "9bits inbound SMS")
        sender, to, text = (_inbound_field(payload, name) for name in ("from", "to", "message"))
        return InboundSms(
            upstream=self.name,
            upstream_message_id=_inbound_id(request, payload),
            msisdn=sender,
            to=to.lstrip("+"),
            text=text,
            # In our one form, or when it came (logged) when their sent_date names no time.
            received_at=sent_time(self.name, _text(payload.get("sent_date"))),
            session_id=_text(payload.get("session_id")),
            telco=_text(payload.get("telco")),
        )
        # Their ref_id is not taken: it is the one we submitted (our message's reference), and a reply's ref_id is our
        # client's own, of the message the reply answers (logic/inbound.py, docs/dialects/9bits.md).


def _inbound_field(payload: dict[str, Any], name: str) -> str:
    """A field of their "Receive SMS" body as text: a string, or a number written as a JSON number (a PHP gateway's
    `2348020000000` unquoted). CallbackRejected for one missing, null or anything else: until session 36 a null
    `from` was taken as the text "None", and the SMS stored and forwarded from the sender "None"."""
    if name not in payload:
        raise CallbackRejected(f"not a 9bits inbound SMS: `{name}` is missing")
    value = payload[name]
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    shown = "null" if value is None else type(value).__name__
    raise CallbackRejected(f"not a 9bits inbound SMS: `{name}` must be text, not {shown}")


def _inbound_id(request: CallbackRequest, payload: dict[str, Any]) -> str:
    """The "Receive SMS" body has no message id: the webhook id when signed (stable across retries), else a digest
    of the fields that make one message, so a retried callback is stored once."""
    webhook_id = request.headers.get("webhook-id")
    if webhook_id:
        return webhook_id
    fields = [str(payload.get(key) or "") for key in ("from", "to", "session_id", "sent_date", "message")]
    return "sha256:" + hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:32]


def _is_dlr(request: CallbackRequest) -> bool:
    """By the path alone: a query added to the DLR URL must not make an unsigned DLR look like something else."""
    return urlsplit(request.url).path.rstrip("/").endswith("/dlr")


def _bearer(header: str | None) -> str:
    scheme, _, value = (header or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _json_object(body: str, what: str) -> dict[str, Any]:
    try:
        payload = readable_json(body)
    except ValueError as error:
        raise CallbackRejected(f"not a {what}: the body is not JSON") from error
    if not isinstance(payload, dict):
        raise CallbackRejected(f"not a {what}: the body is not a JSON object")
    return payload


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _message(response: httpx.Response) -> str:
    try:
        body = answer_json(response)
    except ValueError:
        return response.text
    return str(body.get("message", "")) if isinstance(body, dict) else response.text
