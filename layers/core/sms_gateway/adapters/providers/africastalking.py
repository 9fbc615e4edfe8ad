"""Africa's Talking SMS: form-encoded submits with an apiKey header; DLR and incoming-message callbacks by form POST.

API documentation this adapter follows:
- Sending: https://developers.africastalking.com/docs/sms/sending/bulk (also docs.africastalking.com/sms/sending):
  `POST https://api.africastalking.com/version1/messaging` (sandbox `https://api.sandbox.africastalking.com/...`),
  headers `apiKey` and `Accept: application/json`, form fields `username`, `to`, `message`, `from`, `bulkSMSMode`,
  `enqueue`; answers `{"SMSMessageData": {"Message": ..., "Recipients": [{"statusCode", "number", "status", "cost",
  "messageId"}]}}` with a per-recipient statusCode (100-102 accepted, 401-409 and 500-502 refused); a refused
  entry's messageId is "None", so one carrying a real id is taken whatever its code.
- Notifications: https://developers.africastalking.com/docs/sms/notifications (also docs.africastalking.com/sms/
  notifications and /sms/deliveryreports): delivery reports are form POSTs with `id`, `status`, `phoneNumber`,
  `networkCode`, `failureReason`, `retryCount`; incoming messages are form POSTs with `date`, `from`, `to`, `text`,
  `id`, `linkId`, `networkCode`. Both callback URLs are set once per application in the AT dashboard.
- The official Python SDK (github.com/AfricasTalkingLtd/africastalking-python, africastalking/SMS.py) sends the same
  fields, with `bulkSMSMode=1` and `enqueue=1` when asked.

Africa's Talking neither signs its callbacks nor echoes a reference of ours: a DLR is matched by its `id` (the
messageId the submit answered) through the upstream index, and callbacks are verified by a secret token that the
operator puts in the callback URLs configured at AT (`...?token=<callback_token>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl

import httpx

from sms_gateway.adapters.http import (
    GATEWAY_ERRORS_MAYBE_TAKEN,
    answer_json,
    async_client,
    flag_setting,
    no_answer,
    not_about_the_message,
    not_sent_there,
    refuses_our_account,
    scrubbed,
    unreadable_take,
)
from sms_gateway.adapters.providers.times import sent_time
from sms_gateway.adapters.providers.tokens import (
    MIN_TOKEN_LENGTH,
    TOKEN_PARAM,
    previous_tokens_setting,
    secret_setting,
    token_verified,
)
from sms_gateway.domain.models import CallbackRequest, DeliveryReport, InboundSms, SubmitRequest, SubmitResult
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError
from sms_gateway.observability import logger

LIVE_BASE_URL = "https://api.africastalking.com"
SANDBOX_BASE_URL = "https://api.sandbox.africastalking.com"
MESSAGING_PATH = "/version1/messaging"


class Outcome(Enum):
    ACCEPTED = "accepted"
    PERMANENT = "permanent"  # the recipient or our sender is refused: retrying cannot help
    TRANSIENT = "transient"  # AT or our AT account is the problem: fallback upstream, then retry
    # AT has no route for the number: our setup there, not the message (as Jasmin's and Kannel's no route). The
    # fallback upstream at once; without one it fails (refunded), since AT asked again answers the same.
    NOT_SENT_THERE = "not_sent_there"


# Per-recipient statusCode of a submit answer: (AT's name for it, what it means for the message).
RECIPIENT_STATUS: dict[int, tuple[str, Outcome]] = {
    100: ("Processed", Outcome.ACCEPTED),
    101: ("Sent", Outcome.ACCEPTED),
    102: ("Queued", Outcome.ACCEPTED),
    # Held by AT's fraud/risk checks for this content or sender: resubmitting the same text is held again.
    401: ("RiskHold", Outcome.PERMANENT),
    402: ("InvalidSenderId", Outcome.PERMANENT),
    403: ("InvalidPhoneNumber", Outcome.PERMANENT),
    404: ("UnsupportedNumberType", Outcome.PERMANENT),
    # Our AT balance ran out: another upstream can send it now, or AT once the operator tops up.
    405: ("InsufficientBalance", Outcome.TRANSIENT),
    406: ("UserInBlacklist", Outcome.PERMANENT),
    # AT has no route to that network: a fallback upstream may have one. Until 2026-12-06 transient: without a
    # fallback it came back to the same refusal on every attempt until the dispatcher gave up.
    407: ("CouldNotRoute", Outcome.NOT_SENT_THERE),
    409: ("DoNotDisturbRejection", Outcome.PERMANENT),
    500: ("InternalServerError", Outcome.TRANSIENT),
    501: ("GatewayError", Outcome.TRANSIENT),
    # The operator's gateway refused this message (sender or number not allowed on that network).
    502: ("RejectedByGateway", Outcome.PERMANENT),
}
_BY_NAME = {name.lower(): (code, outcome) for code, (name, outcome) in RECIPIENT_STATUS.items()}

# Delivery report `status` (compared case-insensitively) -> ours.
DLR_STATUS: dict[str, MessageStatus] = {
    "sent": MessageStatus.SUBMITTED,
    "submitted": MessageStatus.SUBMITTED,
    "buffered": MessageStatus.SUBMITTED,
    "success": MessageStatus.DELIVERED,
    "rejected": MessageStatus.REJECTED,
    "failed": MessageStatus.FAILED,
    "absentsubscriber": MessageStatus.FAILED,
    "expired": MessageStatus.EXPIRED,
}


class AfricasTalkingProvider:
    def __init__(
        self,
        *,
        name: str,
        username: str,
        api_key: str,
        callback_token: str,
        previous_callback_tokens: list[str] | None = None,
        base_url: str | None = None,
        bulk_sms_mode: int | None = 1,
        enqueue: bool = False,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not username or not api_key:
            raise ValueError("an africastalking upstream needs username and api_key")
        self.name = name
        self._username = username
        self._api_key = api_key
        # The current token first; the ones a rotation replaced are still taken until removed (tokens.py). The token
        # is the only check on AT's callbacks: as long as Jasmin's and Kannel's, and never null read as "None".
        self._callback_tokens = (
            secret_setting(name, "callback_token", callback_token, min_length=MIN_TOKEN_LENGTH),
            *previous_tokens_setting(name, previous_callback_tokens),
        )
        root = base_url or (SANDBOX_BASE_URL if username == "sandbox" else LIVE_BASE_URL)
        # Parsed once: httpx parses a URL given as a string on every request.
        self._url = httpx.URL(f"{root.rstrip('/')}{MESSAGING_PATH}")
        self._bulk_sms_mode = bulk_sms_mode
        self._enqueue = enqueue
        self._client = client

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> AfricasTalkingProvider:
        username = str(config["username"])
        sandbox = config.get("sandbox")
        base_url = config.get("base_url")
        if not base_url and sandbox is not None:
            # Read as a real yes or no: the text "false" was truthy, and live sends went to the sandbox (never sent).
            base_url = SANDBOX_BASE_URL if flag_setting(name, "sandbox", sandbox, False) else LIVE_BASE_URL
        bulk_sms_mode = config.get("bulk_sms_mode", 1)
        return cls(
            name=name,
            username=username,
            api_key=str(config["api_key"]),
            callback_token=config["callback_token"],
            previous_callback_tokens=config.get("previous_callback_tokens"),
            base_url=base_url,
            bulk_sms_mode=None if bulk_sms_mode is None else int(bulk_sms_mode),
            enqueue=str(config.get("enqueue", False)).lower() in ("1", "true", "yes"),
            client=client,
        )

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        # AT calls the DLR URL set in its dashboard, so request.dlr_url is not sent; AT echoes no reference of ours.
        form = {"username": self._username, "to": request.msisdn, "message": request.text}
        if request.sender:
            form["from"] = request.sender
        if self._bulk_sms_mode is not None:
            form["bulkSMSMode"] = str(self._bulk_sms_mode)
        if self._enqueue:
            form["enqueue"] = "1"
        client = self._client or async_client()
        try:
            response = await client.post(
                self._url, data=form, headers={"apiKey": self._api_key, "Accept": "application/json"}
            )
        except httpx.TransportError as error:
            raise no_answer(self.name, error) from error
        status = response.status_code
        # A 502/504 is AT's edge (or our proxy) losing the answer of a request passed on: AT may be sending it.
        failure = not_about_the_message(
            f"{self.name} answered {status}", response, gateway_errors=GATEWAY_ERRORS_MAYBE_TAKEN
        )
        if failure is not None:
            raise failure
        if status in (401, 403):
            # A wrong username or API key: our setup, not the message. Offered to the fallback, then retried.
            raise refuses_our_account(f"{self.name} refused our credentials ({status})")
        if not response.is_success:
            raise UpstreamError(
                f"{self.name} refused the request ({status}): {scrubbed(response.text, (self._api_key,), limit=120)}",
                permanent=True,
            )
        return self._result(response, request.msisdn)

    def _result(self, response: httpx.Response, msisdn: str) -> SubmitResult:
        try:
            data = answer_json(response)["SMSMessageData"]
            recipients = data.get("Recipients") or []
            summary = str(data.get("Message") or "")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # AT took the request: it may be sending the message, which its DLR (or the DLR wait) settles.
            raise unreadable_take(self.name, f"answered {response.status_code} with an unreadable body") from error
        recipient = _recipient(recipients, msisdn)
        if recipient is None:
            # Nothing was sent; AT names the reason in Message (e.g. "InvalidSenderId").
            code, outcome = _BY_NAME.get(summary.strip().lower(), (None, Outcome.PERMANENT))
            raise _refusal(
                f"{self.name} sent nothing: {scrubbed(summary, (self._api_key,), limit=120) or 'no recipients'}",
                outcome,
            )
        code = _int(recipient.get("statusCode"))
        known = RECIPIENT_STATUS.get(code) if code is not None else None
        name, outcome = known or (str(recipient.get("status") or "unknown"), _unknown_outcome(code))
        message_id = _message_id(recipient)
        if known is None and message_id is not None:
            # AT names every entry it refused "None": one with a real messageId is a message AT has, whatever code a
            # new API version gives it. Offered to the fallback it went out twice (until 2026-12-07); taken here, AT's
            # DLR, found by that id, settles it (a refusal after all: no DLR, expired and refunded after the wait).
            logger.warning(
                "africastalking took the message with a statusCode we do not know",
                extra={"upstream": self.name, "status_code": recipient.get("statusCode"), "status": name},
            )
            return SubmitResult(upstream_message_id=message_id)
        if outcome is Outcome.ACCEPTED:
            if message_id is None:
                raise unreadable_take(self.name, "accepted the message without a messageId")
            return SubmitResult(upstream_message_id=message_id)
        raise _refusal(f"{self.name} refused the recipient: {code} {name}", outcome)

    def verify_callback(self, request: CallbackRequest) -> bool:
        return token_verified(request, self._callback_tokens)

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        fields = _callback_fields(request)
        message_id = fields.get("id", "")
        raw_status = fields.get("status", "")
        status = DLR_STATUS.get(raw_status.lower())
        if not message_id or status is None:
            raise CallbackRejected(f"not an africastalking delivery report: status {raw_status!r}")
        return [
            DeliveryReport(
                upstream=self.name,
                upstream_message_id=message_id,
                client_ref=None,
                status=status,
                error_code=fields.get("failureReason") or None,
            )
        ]

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        fields = _callback_fields(request)
        try:
            return InboundSms(
                upstream=self.name,
                upstream_message_id=fields.get("id") or None,
                msisdn=fields["from"],
                # Shortcodes arrive as digits, long numbers may carry "+": ours are registered as digits.
                to=fields["to"].lstrip("+"),
                text=fields.get("text", ""),
                # Read into UTC, or when it came (logged) when AT's `date` names no time.
                received_at=sent_time(self.name, fields.get("date")),
            )
        except KeyError as error:
            raise CallbackRejected(f"not an africastalking incoming message: {error} missing") from error

    def __repr__(self) -> str:
        return f"AfricasTalkingProvider(name={self.name!r}, username={self._username!r})"


def _recipient(recipients: Any, msisdn: str) -> dict[str, Any] | None:
    if not isinstance(recipients, list):
        return None
    entries = [entry for entry in recipients if isinstance(entry, dict)]
    for entry in entries:
        if str(entry.get("number", "")).lstrip("+") == msisdn.lstrip("+"):
            return entry
    return entries[0] if entries else None


def _message_id(recipient: Mapping[str, Any]) -> str | None:
    """The entry's messageId; None when absent, empty or "None" (what AT gives an entry it refused)."""
    message_id = str(recipient.get("messageId") or "")
    return None if not message_id or message_id == "None" else message_id


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _refusal(described: str, outcome: Outcome) -> UpstreamError:
    if outcome is Outcome.TRANSIENT:
        return UpstreamError(described, permanent=False, unavailable=True)
    if outcome is Outcome.NOT_SENT_THERE:
        return not_sent_there(described)
    return UpstreamError(described, permanent=True)


def _unknown_outcome(code: int | None) -> Outcome:
    # A code this table does not know, on an entry without a messageId (one with an id AT has taken): 4xx codes
    # name a refusal, anything else is treated as AT's trouble.
    return Outcome.PERMANENT if code is not None and 400 <= code < 500 else Outcome.TRANSIENT


def _callback_fields(request: CallbackRequest) -> dict[str, str]:
    """Form fields of a POST callback (the query, minus our token, for a GET one)."""
    if request.method.upper() == "POST" and request.body:
        return dict(parse_qsl(request.body, keep_blank_values=True))
    return {key: value for key, value in request.query.items() if key != TOKEN_PARAM}
